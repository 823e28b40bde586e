"""Self-healing reservations (issue 10 item 3, F21 in part) on a real server and Redis: a till
sale that leaves units of a network line at risk makes the server move them to another
location of the network that can promise them, record the move on the reservation and count
it; a line that names its location is never moved; with nowhere to go the position stays at
risk and is counted."""

from __future__ import annotations

import asyncio

from tests.server.test_api import batch, level, mv, send
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb


async def setup(c: UnistockClient) -> None:
    await c.upsert_locations(
        [
            apb.Location(location_id=loc, type=apb.STORE, ship_from_store=True)
            for loc in ("s1", "s2", "s3")
        ]
    )
    await c.upsert_networks([apb.Network(network_id="web", location_ids=["s1", "s2", "s3"])])


async def settled(c: UnistockClient, rid: str, *locations: str) -> pb.Reservation:
    for _ in range(100):
        r = await c.get_reservation(rid)
        if sorted(ln.location_id for ln in r.lines) == list(locations):
            return r
        await asyncio.sleep(0.05)
    raise AssertionError(f"{rid} still at {[ln.location_id for ln in r.lines]}")


def counted(srv: UnistockServer, name: str) -> float:
    return srv.metrics.registry.get_sample_value(name) or 0.0


async def test_a_web_cart_at_risk_is_moved_to_another_store_of_the_network(
    server: UnistockServer, admin: UnistockClient
) -> None:
    await setup(admin)
    await send(admin, batch("wms", mv(1, "RECEIPT", "A", "s1", 3), mv(2, "RECEIPT", "A", "s2", 2)))
    req = pb.ReserveRequest(
        reservation_id="cart-1",
        lines=[pb.ReservationLine(sku="A", network="web", quantity=2)],
        kind=pb.CART,
    )
    made = await admin.stub.Reserve(req, metadata=admin.metadata)
    assert made.reservation.lines[0].location_id == "s1"  # the deepest
    # The store sells 2 at its till: 1 left on the shelf, 2 promised to the web cart.
    await send(admin, batch("till-s1", mv(1, "SALE", "A", "s1", 2)))
    # Only the unit at risk moves: one stays on s1's shelf for the cart.
    healed = await settled(admin, "cart-1", "s1", "s2")
    assert sorted((ln.location_id, ln.quantity, ln.network) for ln in healed.lines) == [
        ("s1", 1, "web"),
        ("s2", 1, "web"),
    ]
    moves = [(m.sku, m.from_location_id, m.to_location_id, m.quantity) for m in healed.resourced]
    assert moves == [("A", "s1", "s2", 1)]
    s1, s2 = await admin.get_availability(keys=[("A", "s1"), ("A", "s2")])
    assert (s1.on_hand, s1.reserved, s1.at_risk) == (1, 1, False)
    assert (s2.reserved, s2.available) == (1, 1)
    assert counted(server, "unistock_reservation_units_resourced_total") == 1


async def test_a_store_named_line_is_never_moved_and_nowhere_to_go_stays_at_risk(
    server: UnistockServer, admin: UnistockClient
) -> None:
    await setup(admin)
    await send(admin, batch("wms", mv(1, "RECEIPT", "A", "s1", 2), mv(2, "RECEIPT", "B", "s1", 1)))
    await admin.reserve("hold-s1", [("A", "s1", 2)], kind="E_RESERVATION")  # she chose s1
    req = pb.ReserveRequest(
        reservation_id="cart-b",
        lines=[pb.ReservationLine(sku="B", network="web", quantity=1)],
        kind=pb.CART,
    )
    await admin.stub.Reserve(req, metadata=admin.metadata)
    await send(admin, batch("till-s1", mv(1, "SALE", "A", "s1", 1), mv(2, "SALE", "B", "s1", 1)))
    for _ in range(50):
        if counted(server, "unistock_reservations_left_at_risk_total") >= 2:
            break
        await asyncio.sleep(0.05)
    assert counted(server, "unistock_reservations_left_at_risk_total") >= 2
    assert [ln.location_id for ln in (await admin.get_reservation("hold-s1")).lines] == ["s1"]
    assert [ln.location_id for ln in (await admin.get_reservation("cart-b")).lines] == ["s1"]
    assert (await level(admin, "A", "s1")).at_risk
    assert counted(server, "unistock_reservation_units_resourced_total") == 0
