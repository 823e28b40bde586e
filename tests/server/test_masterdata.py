"""Master data through AdminService on a real server, Redis and SQL (SQLite and PostgreSQL,
issue 9 item 4): upserts are all-or-nothing and validated naming the row and field; a safety
stock set through the API shows in every level (and available) when the call returns, also on
watch streams, for passivated positions and after a restart; a location's default safety stock
applies to its positions without one of their own; role admin only."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, level, mv, send
from unistock.client import UnistockClient, UnistockClientError
from unistock.server.app.server import UnistockServer
from unistock.server.domain.values import MAX_QUANTITY
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

S1 = apb.Location(
    location_id="s1",
    type=apb.STORE,
    name="Store 1",
    latitude=48.137,
    longitude=11.575,
    has_position=True,
    store_id="store-1",
    click_and_collect=True,
    e_reservation=True,
    default_safety_stock=2,
)
DC = apb.Location(location_id="dc", type=apb.WAREHOUSE, name="DC", ship_from_store=False)


async def test_locations_networks_products_round_trip_and_survive_a_restart(
    make_server: MakeServer, clean_redis_url: str, sql_url: str
) -> None:
    srv = await make_server(clean_redis_url, database_url=sql_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        assert await c.upsert_locations([S1, DC]) == 2
        web = apb.Network(
            network_id="web",
            channel="web-shop",
            location_ids=["dc", "s1"],
            staleness_limit_seconds=300,
            low_stock_threshold=5,
        )
        assert await c.upsert_networks([web]) == 1
        shoe = apb.Product(
            sku="SHOE-42", gtin="4006381333931", model="SHOE", size="42", colour="black"
        )
        assert await c.upsert_products([shoe]) == 1
        assert [loc.location_id for loc in await c.list_locations()] == ["dc", "s1"]
    await srv.stop()
    srv = await make_server(clean_redis_url, database_url=sql_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        dc, s1 = await c.list_locations()
        assert s1 == S1
        assert dc == DC
        [n] = await c.list_networks()
        web.stale_policy = apb.Network.EXCLUDE  # unset: listed as the policy applied
        assert n == web
        assert n.low_stock_threshold == 5
    assert srv.master.networks["web"].low_stock_threshold == 5
    assert srv.master.products["SHOE-42"].gtin == "04006381333931"  # stored as GTIN-14
    assert srv.master.sku_of_gtin["04006381333931"] == "SHOE-42"


async def test_safety_stock_shows_in_every_level_at_once(
    make_server: MakeServer, clean_redis_url: str, sql_url: str
) -> None:
    srv = await make_server(clean_redis_url, database_url=sql_url, max_resident=1)
    async with (
        UnistockClient(target(srv), TOKENS["admin"]) as c,
        UnistockClient(target(srv), TOKENS["channel"]) as channel,
    ):
        await send(
            c, batch("wms", mv(1, "RECEIPT", "SHOE", "s1", 10), mv(2, "RECEIPT", "BAG", "s1", 4))
        )
        seen: list[pb.StockLevel] = []

        async def watch() -> None:
            async for msg in channel.watch(["SHOE"], []):
                seen.extend(msg.levels)

        watcher = asyncio.create_task(watch())
        # The location's default applies to its positions that have none of their own.
        await c.upsert_locations([S1])
        shoe, bag = await c.get_availability(keys=[("SHOE", "s1"), ("BAG", "s1")])
        assert (shoe.safety_stock, shoe.available) == (2, 8)
        assert (bag.safety_stock, bag.available) == (2, 2)
        # A position's own safety stock overrides it, at once, for every channel.
        await c.set_safety_stock([apb.SafetyStock(sku="SHOE", location_id="s1", units=7)])
        lv = await level(channel, "SHOE", "s1")
        assert (lv.safety_stock, lv.available) == (7, 3)
        with pytest.raises(UnistockClientError) as err:
            await channel.reserve("r-1", [("SHOE", "s1", 4)], kind="CART")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        # The default changes: positions without their own follow, the others keep theirs.
        await c.upsert_locations([apb.Location(**{**_fields(S1), "default_safety_stock": 0})])
        shoe, bag = await c.get_availability(keys=[("SHOE", "s1"), ("BAG", "s1")])
        assert (shoe.safety_stock, bag.safety_stock) == (7, 0)
        # Cleared: the position follows its location again.
        await c.set_safety_stock([apb.SafetyStock(sku="SHOE", location_id="s1", clear=True)])
        assert (await level(c, "SHOE", "s1")).safety_stock == 0
        # A position never seen starts with its location's default.
        await c.upsert_locations([apb.Location(**{**_fields(S1), "default_safety_stock": 3})])
        assert (await level(c, "NEW", "s1")).safety_stock == 3
        for _ in range(100):  # the watch stream saw every step (it may coalesce, never reorder)
            if [x.safety_stock for x in seen][-1:] == [3]:
                break
            await asyncio.sleep(0.05)
        steps = [x.safety_stock for x in seen]
        assert steps[-1] == 3
        assert [s for i, s in enumerate(steps) if i == 0 or steps[i - 1] != s] in (
            [0, 2, 7, 0, 3],
            [2, 7, 0, 3],
        ), steps
        assert [x.version for x in seen] == sorted(x.version for x in seen)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await c.set_safety_stock([apb.SafetyStock(sku="BAG", location_id="s1", units=1)])
    await srv.stop()
    srv = await make_server(clean_redis_url, database_url=sql_url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        shoe, bag = await c.get_availability(keys=[("SHOE", "s1"), ("BAG", "s1")])
        assert (shoe.safety_stock, shoe.available) == (3, 7)
        assert (bag.safety_stock, bag.available) == (1, 3)


def _fields(loc: apb.Location) -> dict[str, object]:
    return {f.name: v for f, v in loc.ListFields()}


@pytest.mark.parametrize(
    ("call", "request_", "field"),
    [
        ("upsert_locations", [apb.Location(location_id="x", type=apb.STORE, latitude=91, has_position=True)], "locations[0].latitude"),
        ("upsert_locations", [apb.Location(location_id="x")], "locations[0].type"),
        ("upsert_locations", [S1, apb.Location(location_id="bad id", type=apb.STORE)], "locations[1].location_id"),
        ("upsert_locations", [S1, S1], "locations[1]"),
        ("upsert_locations", [apb.Location(location_id="x", type=apb.STORE, default_safety_stock=-1)], "locations[0].default_safety_stock"),
        ("upsert_locations", [], "locations"),
        ("upsert_networks", [apb.Network(network_id="web", location_ids=["nowhere"])], "networks[0].location_ids[0]"),
        ("upsert_networks", [apb.Network(network_id="web", low_stock_threshold=-1)], "networks[0].low_stock_threshold"),
        ("upsert_networks", [apb.Network(network_id="a"), apb.Network(network_id="web", low_stock_threshold=MAX_QUANTITY + 1)], "networks[1].low_stock_threshold"),
        ("upsert_products", [apb.Product(sku="A", gtin="4006381333932")], "products[0].gtin"),
        ("upsert_products", [apb.Product(sku="A", gtin="4006381333931"), apb.Product(sku="B", gtin="4006381333931")], "products[1].gtin"),
        ("set_safety_stock", [apb.SafetyStock(sku="A", location_id="s1", units=-2)], "positions[0].units"),
        ("set_safety_stock", [apb.SafetyStock(sku="", location_id="s1", units=1)], "positions[0].sku"),
    ],
)  # fmt: skip
async def test_bad_master_data_is_refused_whole_naming_the_field(
    admin: UnistockClient, call: str, request_: list[object], field: str
) -> None:
    with pytest.raises(UnistockClientError) as err:
        await getattr(admin, call)(request_)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert field in str(err.value), err.value
    assert await admin.list_locations() == []  # nothing written, not even the good rows
    assert await admin.list_networks() == []


async def test_only_admin_may_change_master_data(
    server: UnistockServer, client: UnistockClient, backoffice: UnistockClient
) -> None:
    for c in (client, backoffice):
        with pytest.raises(UnistockClientError) as err:
            await c.upsert_locations([S1])
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(UnistockClientError) as err:
            await c.list_locations()
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    anonymous = UnistockClient(target(server), "not-a-token-at-all")
    try:
        with pytest.raises(UnistockClientError) as err:
            await anonymous.list_networks()
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await anonymous.close()


async def test_lists_are_paged_and_members_sorted(admin: UnistockClient) -> None:
    """A retailer's thousands of locations do not fit one gRPC message: pages of 1,000 by
    default; the client library reads them all. Network members are a set, listed sorted,
    the same before and after a restart (sorted in SQL too)."""
    locations = [apb.Location(location_id=f"loc-{i:05d}", type=apb.STORE) for i in range(2_500)]
    assert await admin.upsert_locations(locations) == 2_500
    first = await admin.admin.ListLocations(apb.ListLocationsRequest(), metadata=admin.metadata)
    assert (len(first.locations), first.next_page_token) == (1000, "loc-00999")
    got = await admin.list_locations()
    assert [loc.location_id for loc in got] == [loc.location_id for loc in locations]
    await admin.upsert_networks(
        [apb.Network(network_id="web", location_ids=["loc-00009", "loc-00001", "loc-00005"])]
    )
    [web] = await admin.list_networks()
    assert list(web.location_ids) == ["loc-00001", "loc-00005", "loc-00009"]
    with pytest.raises(grpc.aio.AioRpcError) as raw:
        await admin.admin.ListLocations(
            apb.ListLocationsRequest(page_size=10_001), metadata=admin.metadata
        )
    assert raw.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in (raw.value.details() or "")


async def test_coordinates_without_has_position_are_refused(admin: UnistockClient) -> None:
    with pytest.raises(UnistockClientError) as err:
        await admin.upsert_locations(
            [apb.Location(location_id="x", type=apb.STORE, latitude=48.1, longitude=11.5)]
        )
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "locations[0].has_position" in str(err.value)
