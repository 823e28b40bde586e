"""Network availability through gRPC (issue 10 item 1) on a real server, Redis and SQLite:
GetNetworkAvailability sums the members' durable available (after safety stock and holds),
follows membership changes and restarts; WatchNetworkAvailability sends the levels, then every
change in version order, resumes from known versions, and its versions grow across restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, mv, send
from unistock.client import UnistockClient, UnistockClientError
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

LOCS = ["s1", "s2", "dc"]


async def setup(c: UnistockClient, members: list[str]) -> None:
    await c.upsert_locations([apb.Location(location_id=loc, type=apb.STORE) for loc in LOCS])
    await c.upsert_networks([apb.Network(network_id="web", location_ids=members)])


async def web(c: UnistockClient, *skus: str) -> list[tuple[int, int]]:
    return [(lv.available, lv.locations) for lv in await c.get_network_availability("web", skus)]


async def test_network_available_follows_stock_holds_safety_stock_membership_and_restarts(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await setup(c, ["s1", "s2"])
        await send(
            c,
            batch(
                "wms",
                mv(1, "RECEIPT", "A", "s1", 5),
                mv(2, "RECEIPT", "A", "s2", 3),
                mv(3, "RECEIPT", "A", "dc", 100),
            ),
        )
        assert await web(c, "A", "NEVER") == [(8, 2), (0, 2)]
        await c.reserve("cart-1", [("A", "s1", 2)], kind="CART")
        await c.set_safety_stock([apb.SafetyStock(sku="A", location_id="s2", units=1)])
        assert await web(c, "A") == [(5, 2)]  # 3 + 2
        await setup(c, ["s1", "dc"])  # s2 leaves, the DC joins
        assert await web(c, "A") == [(103, 2)]
        await send(c, batch("till", mv(1, "SALE", "A", "dc", 10)))
        assert await web(c, "A") == [(93, 2)]
    await srv.stop()
    srv = await make_server(clean_redis_url, max_resident=1)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        assert await web(c, "A") == [(93, 2)]
        await c.release("cart-1")
        assert await web(c, "A") == [(95, 2)]


async def test_unknown_networks_and_bad_requests(
    admin: UnistockClient, client: UnistockClient
) -> None:
    await setup(admin, ["s1"])
    with pytest.raises(UnistockClientError) as err:
        await client.get_network_availability("nope", ["A"])
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    for network, skus, field in [
        ("web", [], "skus"),
        ("", ["A"], "network"),
        ("web", ["a b"], "skus[0]"),
    ]:
        with pytest.raises(UnistockClientError) as err:
            await client.get_network_availability(network, skus)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert field in str(err.value)
    with pytest.raises(UnistockClientError) as err:
        async for _ in client.watch_networks(["nope"]):
            pass
    assert err.value.code == grpc.StatusCode.NOT_FOUND


async def collect(
    stream: AsyncIterator[pb.WatchNetworkAvailabilityResponse], until: int
) -> tuple[list[pb.NetworkLevel], list[pb.NetworkLevel]]:
    """(snapshot levels, then changes until `until` available is seen for A)."""
    snapshot: list[pb.NetworkLevel] = []
    changes: list[pb.NetworkLevel] = []
    done = False
    async for msg in stream:
        (changes if done else snapshot).extend(msg.levels)
        if msg.snapshot_complete:
            done = True
        if any(lv.sku == "A" and lv.available == until for lv in changes):
            break
    return snapshot, changes


async def test_watch_sends_levels_then_changes_in_version_order_and_resumes(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    async with (
        UnistockClient(target(srv), TOKENS["admin"]) as c,
        UnistockClient(target(srv), TOKENS["channel"]) as channel,
    ):
        await setup(c, ["s1", "s2"])
        await send(c, batch("wms", mv(1, "RECEIPT", "A", "s1", 5), mv(2, "RECEIPT", "B", "s2", 1)))
        stream = channel.watch_networks(["web"], ["A", "B"])
        watcher = asyncio.create_task(collect(stream, until=1))
        await asyncio.sleep(0.2)
        for seq in range(3, 7):  # 5 -> 1, one sale at a time
            await send(c, batch("wms", mv(seq, "SALE", "A", "s1", 1)))
        snapshot, changes = await asyncio.wait_for(watcher, 10)
        assert sorted((lv.sku, lv.available) for lv in snapshot) == [("A", 5), ("B", 1)]
        seen = [lv for lv in changes if lv.sku == "A"]
        assert seen[-1].available == 1
        versions = [lv.version for lv in seen]
        assert versions == sorted(versions)
        assert versions[0] > next(lv.version for lv in snapshot if lv.sku == "A")
        known = {("A", "web"): seen[-1].version, ("B", "web"): 0}
        # Resuming with what it has: only B comes again (A is not newer).
        async for msg in channel.watch_networks(["web"], known_versions=known):
            assert [lv.sku for lv in msg.levels] == ["B"]
            break
    await srv.stop()
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["channel"]) as channel:
        [a] = await channel.get_network_availability("web", ["A"])
        assert a.available == 1
        assert a.version > seen[-1].version  # versions grow across restarts
        async for msg in channel.watch_networks(["web"], ["A"], known_versions=known):
            assert [(lv.sku, lv.available) for lv in msg.levels] == [("A", 1)]  # newer now
            break
