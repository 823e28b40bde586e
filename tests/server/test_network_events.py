"""NETWORK_LOW_STOCK / NETWORK_OUT_OF_STOCK / NETWORK_BACK_IN_STOCK end to end (real Redis,
in-process server): a network level's class (out / low / in stock against the network's
low_stock_threshold) changing for any reason makes one event, once, also across restarts."""

from __future__ import annotations

import pytest

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_events import Events, caught_up, move
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer
from unistock.server.persistence.codec import LOW, OK, network_level_value
from unistock.server.persistence.keys import Keyspace
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

NET = [pb.NETWORK_LOW_STOCK, pb.NETWORK_OUT_OF_STOCK, pb.NETWORK_BACK_IN_STOCK]


async def setup(admin: UnistockClient, threshold: int = 5) -> None:
    await admin.upsert_locations(
        [apb.Location(location_id=loc, type=apb.STORE) for loc in ("s1", "s2", "s3")]
    )
    await admin.upsert_networks(
        [
            apb.Network(network_id="web", location_ids=["s1", "s2"], low_stock_threshold=threshold),
            apb.Network(network_id="mkt", location_ids=["s3"]),
        ]
    )


def summary(ev: pb.InventoryEvent) -> tuple[int, str, str, int]:
    assert (ev.location_id, ev.reservation_id, ev.store_id) == ("", "", ""), ev
    return ev.type, ev.network, ev.sku, ev.available


async def ready(srv: UnistockServer) -> None:
    assert srv.networks is not None
    await srv.networks.ready.wait()
    await caught_up(srv)


async def stocked(
    make_server: MakeServer, redis_url: str, *receipts: tuple[str, int]
) -> UnistockServer:
    """A server with setup's master data and these receipts (sku, units) at s1, derived."""
    srv = await make_server(redis_url)
    async with (
        UnistockClient(target(srv), TOKENS["admin"]) as admin,
        UnistockClient(target(srv), TOKENS["backoffice"]) as bo,
    ):
        await setup(admin)
        await ready(srv)
        for sku, units in receipts:
            await move(bo, pb.RECEIPT, sku, "s1", units)
        await caught_up(srv)
    return srv


async def test_each_class_change_of_a_network_level_makes_one_event(
    server: UnistockServer,
    backoffice: UnistockClient,
    admin: UnistockClient,
    client: UnistockClient,
) -> None:
    await setup(admin)
    await ready(server)
    ev = Events(server, types=NET)
    web = Events(server, types=NET, networks=["web"])  # the network filter: web's only
    await ev.started()
    await move(backoffice, pb.RECEIPT, "A", "s1", 3)  # web: 0 -> 3, low
    [low] = await ev.take(1)
    assert summary(low) == (pb.NETWORK_LOW_STOCK, "web", "A", 3)
    assert "out of stock -> low" in low.detail
    assert "threshold 5" in low.detail
    await move(backoffice, pb.RECEIPT, "A", "s2", 10)  # 13: in stock
    await move(backoffice, pb.RECEIPT, "A", "s3", 1)  # mkt (threshold 0): 0 -> 1, in stock
    got = await ev.take(2)
    assert sorted(summary(e) for e in got) == [
        (pb.NETWORK_BACK_IN_STOCK, "mkt", "A", 1),
        (pb.NETWORK_BACK_IN_STOCK, "web", "A", 13),
    ]
    await move(backoffice, pb.SALE, "A", "s2", 2)  # 11: still in stock, no event
    await move(backoffice, pb.SALE, "A", "s2", 6)  # 5: low
    [low2] = await ev.take(1)
    assert summary(low2) == (pb.NETWORK_LOW_STOCK, "web", "A", 5)
    # Reservations take the rest (no movement): out of stock; a release: low again.
    await client.reserve("r1", [("A", "s1", 3), ("A", "s2", 2)])
    [out] = await ev.take(1)
    assert summary(out) == (pb.NETWORK_OUT_OF_STOCK, "web", "A", 0)
    await client.release("r1")
    [back_low] = await ev.take(1)
    assert summary(back_low) == (pb.NETWORK_LOW_STOCK, "web", "A", 5)
    # The threshold lowered below the level: in stock, without any stock moving.
    await setup(admin, threshold=4)
    [raised] = await ev.take(1)
    assert summary(raised) == (pb.NETWORK_BACK_IN_STOCK, "web", "A", 5)
    assert "threshold 4" in raised.detail
    # A member leaving the network: its units leave the level (5 - 2 = 3: low).
    await admin.upsert_networks(
        [apb.Network(network_id="web", location_ids=["s1"], low_stock_threshold=4)]
    )
    [left] = await ev.take(1)
    assert summary(left) == (pb.NETWORK_LOW_STOCK, "web", "A", 3)
    await ev.nothing_more(server)
    mine = [low, *[g for g in got if g.network == "web"], low2, out, back_low, raised, left]
    assert await web.take(7) == mine
    await web.nothing_more(server)
    ids = [e.event_id for e in (low, *got, low2, out, back_low, raised, left)]
    assert ids == sorted(ids, key=lambda i: tuple(int(x) for x in i.split("-")))
    await ev.close()
    await web.close()


async def test_a_restart_repeats_none_and_publishes_what_changed_while_down(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await stocked(make_server, clean_redis_url, ("A", 3), ("B", 9))
    ev = Events(srv, types=NET, after_event_id="0-0")
    first = sorted(summary(e) for e in await ev.take(2))
    assert first == [
        (pb.NETWORK_LOW_STOCK, "web", "A", 3),
        (pb.NETWORK_BACK_IN_STOCK, "web", "B", 9),
    ]
    await ev.close()
    await srv.stop()
    # While it is down, the published class of web/B is made stale (as if a member had gone
    # stale or a threshold had changed meanwhile: the stored class is what was published).
    ks = Keyspace()
    redis = srv.store.client.__class__.from_url(clean_redis_url)
    try:
        field = "web|B"
        key = ks.network_status(ks.network_level_partition("web", "B"))
        stored = await redis.hget(key, field)
        assert stored is not None
        assert stored.endswith(b"2")
        await redis.hset(key, field, network_level_value(1, LOW))
    finally:
        await redis.aclose()
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
        await ready(srv)
        everything = Events(srv, types=NET, after_event_id="0-0")
        events = await everything.take(3)
        # web/A (low) is not published again; web/B's class differs from the stored one: once.
        assert [summary(e) for e in events[2:]] == [(pb.NETWORK_BACK_IN_STOCK, "web", "B", 9)]
        assert "low -> in stock" in events[2].detail
        await move(bo, pb.SALE, "A", "s1", 3)
        [out] = await everything.take(1)
        assert summary(out) == (pb.NETWORK_OUT_OF_STOCK, "web", "A", 0)
        await everything.nothing_more(srv)
        await everything.close()


async def test_a_first_start_publishes_nothing_for_levels_never_published(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    """An upgrade: stock exists, no class was ever published (the netstat hashes are empty);
    the start takes the levels as they are, and only later changes make events."""
    srv = await stocked(make_server, clean_redis_url, ("A", 20))
    await srv.stop()
    ks = Keyspace()
    redis = srv.store.client.__class__.from_url(clean_redis_url)
    try:
        for p in range(ks.partitions):
            await redis.delete(ks.network_status(p))
    finally:
        await redis.aclose()
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
        await ready(srv)
        ev = Events(srv, types=NET, after_event_id="0-0")  # all of them, before and after
        [before] = await ev.take(1)
        assert summary(before) == (pb.NETWORK_BACK_IN_STOCK, "web", "A", 20)
        await ev.nothing_more(srv)
        stored = await srv.store.client.hget(
            ks.network_status(ks.network_level_partition("web", "A")), "web|A"
        )
        assert stored is not None
        assert stored.endswith(str(OK).encode())
        await move(bo, pb.SALE, "A", "s1", 16)
        [low] = await ev.take(1)
        assert summary(low) == (pb.NETWORK_LOW_STOCK, "web", "A", 4)
        assert "in stock -> low" in low.detail
        await ev.close()


@pytest.mark.parametrize("threshold", [0])
async def test_without_a_threshold_only_out_and_back_in_stock(
    server: UnistockServer, backoffice: UnistockClient, admin: UnistockClient, threshold: int
) -> None:
    await setup(admin, threshold)
    await ready(server)
    ev = Events(server, types=NET, networks=["web"])
    await ev.started()
    await move(backoffice, pb.RECEIPT, "A", "s1", 1)
    await move(backoffice, pb.SALE, "A", "s1", 1)
    got = [summary(e) for e in await ev.take(2)]
    assert got == [
        (pb.NETWORK_BACK_IN_STOCK, "web", "A", 1),
        (pb.NETWORK_OUT_OF_STOCK, "web", "A", 0),
    ]
    await ev.nothing_more(server)
    await ev.close()
