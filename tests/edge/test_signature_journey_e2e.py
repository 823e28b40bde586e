"""Issue 10's signature journey, end to end with real store agents, mosquitto, the server,
Redis and SQLite master data: a shopper in store-1 finds her size gone -> FindStock -> store-2,
1.2 km away, has it -> an E_RESERVATION there -> picked up at store-2's till (a sale through
store-2's agent naming the reservation) -> FULFILLED, store-2's on_hand - 1. And a web cart
held at network level is re-sourced when a till sells the last unit under it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.edge.harness import drained, intake, start_agent, stop_agent
from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient
from unistock.devtools.services import MosquittoBroker
from unistock.edge.agent import StoreAgent
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

SITES = {"store-1": (48.1372, 11.5756), "store-2": (48.1480, 11.5756)}


async def stores(c: UnistockClient) -> None:
    await c.upsert_locations(
        [
            apb.Location(
                location_id=s, type=apb.STORE, store_id=s, latitude=lat, longitude=lon,
                has_position=True, e_reservation=True, click_and_collect=True,
                ship_from_store=True,
            )
            for s, (lat, lon) in SITES.items()
        ]
    )  # fmt: skip
    await c.upsert_networks([apb.Network(network_id="web", location_ids=list(SITES))])


async def goods_in(till: object, sku: str, qty: int, request_id: str) -> None:
    await till.RecordMovement(  # type: ignore[attr-defined]
        ipb.RecordMovementRequest(
            movement=pb.Movement(sku=sku, type=pb.RECEIPT, quantity=qty), request_id=request_id
        )
    )


@contextlib.asynccontextmanager
async def two_stores(
    tmp_path: Path,
    broker: MosquittoBroker,
    srv: UnistockServer,
    stock: dict[str, tuple[str, int]],
) -> AsyncIterator[tuple[UnistockClient, Any, Any, StoreAgent, StoreAgent]]:
    """Master data (store-1, store-2 in network web), an agent per store, and each store's
    goods received through its agent (stock: store -> (sku, units)), durable and counted in
    web; yields (admin client, store-1's till, store-2's till, agent 1, agent 2)."""
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await stores(c)
        one, t1 = await start_agent(tmp_path, broker, "store-1")
        two, t2 = await start_agent(tmp_path, broker, "store-2")
        try:
            async with intake(one) as till1, intake(two) as till2:
                for i, (store, till) in enumerate((("store-1", till1), ("store-2", till2))):
                    sku, units = stock[store]
                    await goods_in(till, sku, units, f"gi-{i}")
                await drained(one)
                await drained(two)
                totals: dict[str, int] = {}
                for sku, units in stock.values():
                    totals[sku] = totals.get(sku, 0) + units
                for sku, units in totals.items():
                    for _ in range(50):  # web counts units once they are durable
                        [lv] = await c.get_network_availability("web", [sku])
                        if lv.available == units:
                            break
                        await asyncio.sleep(0.05)
                yield c, till1, till2, one, two
        finally:
            await stop_agent(one, t1)
            await stop_agent(two, t2)


async def test_her_size_found_nearby_held_and_picked_up_at_the_other_store(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, mqtt_server: UnistockServer
) -> None:
    stock = {"store-1": ("SHOE-41", 3), "store-2": ("SHOE-42", 2)}  # store-1: not her size
    async with two_stores(tmp_path, mosquitto_broker, mqtt_server, stock) as (c, _, till2, _, two):
        found = await c.find_stock(
            "web", [("SHOE-42", 1)], "E_RESERVATION", near_location_id="store-1", limit=3
        )
        best = found.options[0]
        assert (best.location_id, round(best.distance_km, 1)) == ("store-2", 1.2)
        held = await c.reserve("her-42", [("SHOE-42", best.location_id, 1)], kind="E_RESERVATION")
        assert held.reservation.state == pb.ACTIVE
        await till2.RecordSale(
            ipb.SaleRequest(
                till_id="till-2", sku="SHOE-42", quantity=1, reservation_id="her-42",
                request_id="receipt-77/1",
            )
        )  # fmt: skip
        await drained(two)
        assert (await c.get_reservation("her-42")).state == pb.FULFILLED
        [lvl] = await c.get_availability(keys=[("SHOE-42", "store-2")])
        assert (lvl.on_hand, lvl.reserved, lvl.available) == (1, 0, 1)


async def test_a_web_cart_is_re_sourced_when_a_till_sells_the_last_unit(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, mqtt_server: UnistockServer
) -> None:
    stock = {"store-1": ("BAG", 3), "store-2": ("BAG", 1)}
    async with two_stores(tmp_path, mosquitto_broker, mqtt_server, stock) as (c, till1, _, one, _):
        cart = await c.reserve("web-cart", [], kind="CART", network_lines=[("BAG", "web", 1)])
        [line] = cart.reservation.lines
        assert (line.location_id, line.network) == ("store-1", "web")  # the deepest
        # store-1's tills sell all three: the unit held for the web cart is gone there.
        await till1.RecordSale(
            ipb.SaleRequest(till_id="t1", sku="BAG", quantity=3, request_id="r-1/1")
        )
        await drained(one)
        for _ in range(100):
            got = await c.get_reservation("web-cart")
            if [ln.location_id for ln in got.lines] == ["store-2"]:
                break
            await asyncio.sleep(0.05)
        assert [(ln.location_id, ln.network) for ln in got.lines] == [("store-2", "web")]
        assert [(m.from_location_id, m.to_location_id) for m in got.resourced] == [
            ("store-1", "store-2")
        ]
        s1, s2 = await c.get_availability(keys=[("BAG", "store-1"), ("BAG", "store-2")])
        assert (s1.reserved, s1.at_risk, s2.reserved) == (0, False, 1)
