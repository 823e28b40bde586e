"""ListReservations and WatchReservations (issue 11 item 3) on a real server and Redis:
reservations by customer, channel and location, per state, paged; a watch's snapshot then its
transitions; validation, roles, a slow watcher, a restart."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from grpc import aio

from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb
from unistock.v1 import inventory_pb2_grpc as pb_grpc

DEADLINE = 20.0
T = pb.ReservationUpdate.Transition
Stream = AsyncIterator[pb.WatchReservationsResponse]


async def stock(c: UnistockClient, *keys: tuple[str, str], units: int = 100) -> None:
    batch = pb.MovementBatch(
        source_id="seed",
        movements=[
            pb.Movement(seq=i, sku=s, location_id=loc, type=pb.RECEIPT, quantity=units)
            for i, (s, loc) in enumerate(keys, 1)
        ],
    )
    acks = [a async for a in c.apply_movements([batch])]
    assert not acks[0].rejections


async def ids(c: UnistockClient, **where: object) -> list[str]:
    return [r.reservation_id async for r in c.reservations(**where)]  # type: ignore[arg-type]


@pytest.fixture
async def shop(
    server: UnistockServer, admin: UnistockClient, client: UnistockClient
) -> UnistockClient:
    await stock(admin, ("SHOE", "store-2"), ("SHOE", "store-3"), ("HAT", "store-2"), ("HAT", "dc"))
    return client


async def test_list_by_customer_channel_location_and_state(shop: UnistockClient) -> None:
    c = shop
    await c.reserve("r1", [("SHOE", "store-2", 1)], channel="web", customer_id="ann")
    await c.reserve(
        "r2", [("HAT", "store-2", 1), ("HAT", "dc", 1)], channel="app", customer_id="bob"
    )
    await c.reserve("r3", [("SHOE", "store-3", 1)], channel="web", customer_id="ann")
    await c.reserve("r4", [("HAT", "dc", 2)], kind="ORDER", channel="call-centre")
    await c.release("r3")
    assert await ids(c, customer_id="ann") == ["r1", "r3"]
    assert await ids(c, customer_id="ann", states=["ACTIVE"]) == ["r1"]
    assert await ids(c, customer_id="ann", states=["RELEASED"]) == ["r3"]
    assert await ids(c, channel="web") == ["r1", "r3"]
    assert await ids(c, location_id="store-2") == ["r1", "r2"]
    assert await ids(c, location_id="dc") == ["r2", "r4"]
    assert await ids(c, location_id="dc", channel="app") == ["r2"]
    assert await ids(c, customer_id="ann", location_id="store-3") == ["r3"]
    assert await ids(c, customer_id="nobody") == []
    newest = await c.list_reservations(location_id="dc", newest_first=True)
    assert [r.reservation_id for r in newest.reservations] == ["r4", "r2"]
    first = (await c.list_reservations(customer_id="ann")).reservations[0]
    assert first.state == pb.ACTIVE
    assert (first.customer_id, first.channel) == ("ann", "web")
    assert [(ln.sku, ln.location_id) for ln in first.lines] == [("SHOE", "store-2")]


async def test_index_follows_fulfil_extend_move_and_expiry(
    shop: UnistockClient, server: UnistockServer
) -> None:
    c = shop
    await c.reserve("cc", [("SHOE", "store-2", 2)], kind="CLICK_AND_COLLECT", customer_id="ann")
    await c.extend("cc", 3600)
    assert await ids(c, location_id="store-2", states=["ACTIVE"]) == ["cc"]
    await c.fulfil("cc", [("SHOE", "store-2", 1)], request_id="half")
    assert await ids(c, location_id="store-2", states=["ACTIVE"]) == ["cc"]
    # Moved: it leaves the old location's index for the new one's.
    await c.reserve("move-me", [("HAT", "store-2", 1)], customer_id="bob")
    assert await ids(c, location_id="store-2", customer_id="bob") == ["move-me"]
    await c.transfer_reservation("move-me", "mv-2", [("HAT", "store-2", "dc", 1)])
    assert await ids(c, location_id="store-2", customer_id="bob") == []
    assert await ids(c, location_id="dc", customer_id="bob") == ["move-me"]
    await c.fulfil("cc")
    assert await ids(c, customer_id="ann", states=["FULFILLED"]) == ["cc"]
    assert await ids(c, customer_id="ann", states=["ACTIVE"]) == []
    # Expiry (the server's sweeper): the cart moves to the EXPIRED index.
    await c.reserve("cart", [("HAT", "store-2", 1)], ttl_seconds=1, customer_id="cy")
    async with asyncio.timeout(DEADLINE):
        while await ids(c, customer_id="cy", states=["EXPIRED"]) != ["cart"]:  # noqa: ASYNC110
            await asyncio.sleep(0.2)
    assert await ids(c, customer_id="cy", states=["ACTIVE"]) == []


async def test_paging_misses_nothing_and_repeats_nothing_while_writes_happen(
    shop: UnistockClient,
) -> None:
    c = shop
    before = [f"p{i:03d}" for i in range(60)]
    for rid in before:
        await c.reserve(rid, [("HAT", "dc", 1)], channel="web")
    seen: list[str] = []
    token = ""
    n = 0
    while True:
        page = await c.list_reservations(channel="web", page_size=7, page_token=token)
        seen += [r.reservation_id for r in page.reservations]
        # Meanwhile: new reservations (after the cursor), and some listed ones end.
        await c.reserve(f"q{n:03d}", [("HAT", "dc", 1)], channel="web")
        await c.release(before[n])
        n += 1
        token = page.next_page_token
        if not token:
            break
    assert len(seen) == len(set(seen)), "a reservation listed twice"
    assert set(before) <= set(seen), "a reservation that existed throughout was missed"


async def test_validation_errors_name_the_field(shop: UnistockClient) -> None:
    c = shop
    cases: list[tuple[dict[str, object], str]] = [
        ({}, "customer_id"),
        ({"customer_id": "x", "states": [9]}, "states[0]"),
        ({"customer_id": "x", "page_size": 1001}, "page_size"),
        ({"customer_id": "x", "page_token": "garbage!"}, "page_token"),
        ({"location_id": "bad id"}, "location_id"),
        ({"channel": "tab\there"}, "channel"),
    ]
    for kwargs, field in cases:
        with pytest.raises(UnistockClientError) as err:
            await c.list_reservations(**kwargs)  # type: ignore[arg-type]
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, kwargs
        assert field in err.value.details, (kwargs, err.value.details)
    with pytest.raises(UnistockClientError) as err:
        async for _ in c.watch_reservations():
            pass
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "customer_id" in err.value.details
    # A token is bound to its order.
    await c.reserve("t1", [("HAT", "dc", 1)], customer_id="tok")
    await c.reserve("t2", [("HAT", "dc", 1)], customer_id="tok")
    page = await c.list_reservations(customer_id="tok", page_size=1)
    assert page.next_page_token
    with pytest.raises(UnistockClientError) as err:
        await c.list_reservations(
            customer_id="tok", page_token=page.next_page_token, newest_first=True
        )
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in err.value.details


async def test_roles(shop: UnistockClient, server: UnistockServer) -> None:
    await shop.reserve("role-1", [("HAT", "dc", 1)], customer_id="ann")
    for role in ("channel", "backoffice", "admin"):
        async with UnistockClient(target(server), TOKENS[role]) as c:
            assert await ids(c, customer_id="ann") == ["role-1"], role
    async with UnistockClient(target(server), "not-a-known-token-at-all") as c:
        with pytest.raises(UnistockClientError) as err:
            await c.list_reservations(customer_id="ann")
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


# -- WatchReservations ------------------------------------------------------------------------


async def next_msg(stream: Any) -> pb.WatchReservationsResponse:
    async with asyncio.timeout(DEADLINE):
        return await anext(stream)


async def snapshot(stream: Any) -> list[pb.ReservationUpdate]:
    out: list[pb.ReservationUpdate] = []
    while True:
        msg = await next_msg(stream)
        out += msg.updates
        if msg.snapshot_complete:
            return out


async def updates(stream: Stream, n: int) -> list[pb.ReservationUpdate]:
    out: list[pb.ReservationUpdate] = []
    while len(out) < n:
        msg = await next_msg(stream)
        assert not msg.snapshot_complete
        out += msg.updates
    return out


async def drain(stream: Any) -> None:
    async for _ in stream:
        pass


def summary(u: pb.ReservationUpdate) -> tuple[str, list[int], int]:
    return u.reservation.reservation_id, list(u.transitions), u.reservation.state


async def test_click_and_collect_reaches_the_store_and_the_customer_watch(
    shop: UnistockClient,
) -> None:
    c = shop
    await c.reserve("old", [("HAT", "store-2", 1)], kind="CLICK_AND_COLLECT", customer_id="ann")
    store = c.watch_reservations(location_id="store-2", states=["ACTIVE"])
    customer = c.watch_reservations(customer_id="ann")
    try:
        assert [summary(u) for u in await snapshot(store)] == [("old", [], pb.ACTIVE)]
        assert [summary(u) for u in await snapshot(customer)] == [("old", [], pb.ACTIVE)]
        await c.reserve(
            "cc-1", [("SHOE", "store-2", 1)], kind="CLICK_AND_COLLECT", customer_id="ann"
        )
        await c.reserve("other", [("SHOE", "store-3", 1)], customer_id="zed")  # neither
        await c.fulfil("cc-1")
        expected = [("cc-1", [T.CREATED], pb.ACTIVE), ("cc-1", [T.FULFILLED], pb.FULFILLED)]
        # The store watches ACTIVE only: it still sees the reservation leave (FULFILLED).
        assert [summary(u) for u in await updates(store, 2)] == expected
        got = await updates(customer, 2)
        assert [summary(u) for u in got] == expected
        assert got[0].at_ms > 0
        assert got[0].reservation.lines[0].location_id == "store-2"
        # A move away from store-2 reaches the store's watch too.
        await c.transfer_reservation("old", "away", [("HAT", "store-2", "dc", 1)])
        [moved] = await updates(store, 1)
        assert summary(moved) == ("old", [T.MOVED], pb.ACTIVE)
        assert moved.reservation.lines[0].location_id == "dc"
    finally:
        await store.aclose()  # type: ignore[attr-defined]
        await customer.aclose()  # type: ignore[attr-defined]


async def test_a_watcher_that_never_reads_is_cut(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url, watch_max_pending=20)
    skus = [f"BIG-{i:03d}-{'x' * 100}" for i in range(50)]
    async with (
        UnistockClient(target(srv), TOKENS["admin"]) as c,
        # No BDP probing: the transport's window stays at 64 KB (not grown to megabytes).
        aio.insecure_channel(target(srv), options=[("grpc.http2.bdp_probe", 0)]) as raw,
    ):
        await stock(c, *((s, "dc") for s in skus))
        call = pb_grpc.InventoryServiceStub(raw).WatchReservations(
            pb.WatchReservationsRequest(channel="web"),
            metadata=(("authorization", f"Bearer {TOKENS['channel']}"),),
        )
        stream = aiter(call)
        try:
            assert await snapshot(stream) == []
            [sub] = next(iter(srv.service.reservation_hub._by.values()))
            # Never read while 300 updates of ~6 KB each happen: far more than the transport
            # takes in, so they wait at the server, and past 20 the watcher is cut.
            largest = 0
            for i in range(150):
                await c.reserve(f"s{i}", [(s, "dc", 1) for s in skus], channel="web")
                await c.release(f"s{i}")
                largest = max(largest, len(sub.pending))
            assert largest <= 20
            assert sub.overflowed
            assert not sub.pending
            assert srv.service.reservation_hub._by == {}
            dropped = srv.metrics.registry.get_sample_value(
                "unistock_reservation_watchers_dropped_total"
            )
            assert dropped == 1
            with pytest.raises(aio.AioRpcError) as err:
                await asyncio.wait_for(drain(stream), DEADLINE)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            call.cancel()


async def test_indexes_survive_a_restart_and_passivation(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await stock(c, ("HAT", "dc"))
        await c.reserve("k1", [("HAT", "dc", 1)], customer_id="ann")
        await c.reserve("k2", [("HAT", "dc", 1)], customer_id="ann")
        await c.release("k2")
    await srv.stop()
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        assert await ids(c, customer_id="ann", states=["ACTIVE"]) == ["k1"]
        assert await ids(c, customer_id="ann", states=["RELEASED"]) == ["k2"]
        # The record is read back from Redis (no longer cached) and changes: the index follows.
        srv.inventory.reservations._cache.clear()
        await c.release("k1")
        assert await ids(c, customer_id="ann", states=["ACTIVE"]) == []
        assert await ids(c, customer_id="ann") == ["k1", "k2"]


async def test_records_stored_before_the_indexes_are_backfilled_at_start_up(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await stock(c, ("HAT", "dc"))
        await c.reserve("old-1", [("HAT", "dc", 1)], customer_id="ann")
        await c.reserve("old-2", [("HAT", "dc", 1)], customer_id="ann")
        await c.release("old-2")
        # A watcher open when the server stops is told UNAVAILABLE (watch again elsewhere).
        stream = c.watch_reservations(customer_id="ann")
        assert len(await snapshot(stream)) == 2
        await srv.stop()
        with pytest.raises(UnistockClientError) as err:
            await asyncio.wait_for(drain(stream), DEADLINE)
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
    # As an older version left them: records, no index, no partition marked done.
    client = srv.store.client.__class__.from_url(clean_redis_url)
    try:
        names = [k async for k in client.scan_iter(match="us:*:rix*")]
        assert names
        await client.delete(*names)
        fields = [f for f in await client.hkeys("us:meta") if cast(bytes, f).startswith(b"rix:")]
        if fields:  # the first start's backfill (of nothing) may not have finished
            await client.hdel("us:meta", *fields)
    finally:
        await client.aclose()
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        async with asyncio.timeout(DEADLINE):
            while await ids(c, customer_id="ann") != ["old-1", "old-2"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        assert await ids(c, customer_id="ann", states=["RELEASED"]) == ["old-2"]
    backfilled = srv.metrics.registry.get_sample_value(
        "unistock_reservation_index_backfilled_total"
    )
    assert backfilled == 2
