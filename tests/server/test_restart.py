"""A server stopped and started again on the same Redis serves identical levels and reservations."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import InsufficientStockError, UnistockClient, UnistockClientError
from unistock.v1 import inventory_pb2 as pb

Key = tuple[str, str]

STOCK: dict[Key, int] = {
    ("RS-A", "store-1"): 10,
    ("RS-A", "store-2"): 4,
    ("RS-B", "store-1"): 6,
    ("RS-C", "dc-1"): 100,
}
RESERVATIONS = ["r-active", "r-cart", "r-released", "r-fulfilled", "r-partial", "r-picked"]


async def populate(admin: UnistockClient) -> None:
    movements = [
        pb.Movement(seq=i, sku=s, location_id=loc, type=pb.RECEIPT, quantity=q)
        for i, ((s, loc), q) in enumerate(STOCK.items(), 1)
    ]
    movements += [
        pb.Movement(seq=10, sku="RS-C", location_id="dc-1", type=pb.SALE, quantity=3),
        pb.Movement(
            seq=11, sku="RS-B", location_id="store-1", type=pb.COUNT, quantity=5, count_id="cnt-1"
        ),
    ]
    acks = [
        a
        async for a in admin.apply_movements(
            [pb.MovementBatch(source_id="wms", movements=movements)]
        )
    ]
    assert acks[0].applied == len(movements)
    assert not acks[0].rejections

    await admin.reserve(
        "r-active",
        [("RS-A", "store-1", 2), ("RS-B", "store-1", 1)],
        kind="CLICK_AND_COLLECT",
        channel="web",
        customer_id="c-1",
    )
    await admin.reserve("r-cart", [("RS-A", "store-2", 1)], kind="CART", ttl_seconds=3600)
    await admin.reserve("r-released", [("RS-A", "store-1", 3)], kind="E_RESERVATION")
    await admin.release("r-released")
    await admin.reserve("r-fulfilled", [("RS-C", "dc-1", 10)], kind="SHIP_FROM_STORE")
    await admin.fulfil("r-fulfilled")
    await admin.reserve(
        "r-partial", [("RS-C", "dc-1", 5), ("RS-A", "store-2", 2)], kind="ORDER", channel="app"
    )
    await admin.fulfil("r-partial", [("RS-C", "dc-1", 2)])
    await admin.reserve("r-picked", [("RS-B", "store-1", 2)], kind="CLICK_AND_COLLECT")
    pickup = pb.Movement(
        seq=1,
        sku="RS-B",
        location_id="store-1",
        type=pb.SALE,
        quantity=1,
        reservation_id="r-picked",
    )
    acks = [
        a
        async for a in admin.apply_movements(
            [pb.MovementBatch(source_id="till", movements=[pickup])]
        )
    ]
    assert acks[0].applied == 1


async def snapshot(c: UnistockClient) -> tuple[list[pb.StockLevel], dict[str, pb.Reservation]]:
    levels = await c.get_availability(keys=list(STOCK))
    reservations = {rid: await c.get_reservation(rid) for rid in RESERVATIONS}
    return levels, reservations


async def test_restart_keeps_levels_and_reservations(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    first = await make_server(clean_redis_url)
    async with UnistockClient(target(first), TOKENS["admin"]) as admin:
        await populate(admin)
        levels, reservations = await snapshot(admin)
        by_sku = {lv.location_id: lv for lv in await admin.get_availability(sku="RS-A")}
    # The state is what the test meant to build (so that the comparison below means something).
    assert {rid: r.state for rid, r in reservations.items()} == {
        "r-active": pb.ACTIVE,
        "r-cart": pb.ACTIVE,
        "r-released": pb.RELEASED,
        "r-fulfilled": pb.FULFILLED,
        "r-partial": pb.ACTIVE,
        "r-picked": pb.ACTIVE,
    }
    assert reservations["r-cart"].HasField("expires_at")
    assert [(ln.sku, ln.quantity) for ln in reservations["r-partial"].fulfilled] == [("RS-C", 2)]
    # RS-C: 110 received, 3 sold, 10 + 2 shipped by fulfilments (on_hand fell with the holds).
    assert [(lv.on_hand, lv.reserved) for lv in levels] == [(10, 2), (4, 3), (4, 2), (85, 3)]
    await first.stop()

    second = await make_server(clean_redis_url)
    assert second.grpc_port != 0
    async with UnistockClient(target(second), TOKENS["admin"]) as admin:
        levels_after, reservations_after = await snapshot(admin)
        assert levels_after == levels  # every field, versions included
        for rid in RESERVATIONS:
            assert reservations_after[rid] == reservations[rid], rid
        assert {lv.location_id: lv for lv in await admin.get_availability(sku="RS-A")} == by_sku

        # Replays and conflicts still recognised after the restart.
        replay = await admin.reserve(
            "r-active",
            [("RS-B", "store-1", 1), ("RS-A", "store-1", 2)],
            kind="CLICK_AND_COLLECT",
        )
        assert replay.replayed
        with pytest.raises(UnistockClientError) as err:
            await admin.reserve("r-active", [("RS-A", "store-1", 1)])
        assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
        # Movements already applied are still duplicates.
        dup = pb.Movement(seq=10, sku="RS-C", location_id="dc-1", type=pb.SALE, quantity=3)
        acks = [
            a
            async for a in admin.apply_movements(
                [pb.MovementBatch(source_id="wms", movements=[dup])]
            )
        ]
        assert (acks[0].applied, acks[0].duplicates) == (0, 1)

        # A new Reserve still respects available (RS-A@store-1: 10 on hand, 2 reserved).
        [a1] = await admin.get_availability(keys=[("RS-A", "store-1")])
        assert a1.available == 8
        with pytest.raises(InsufficientStockError) as short:
            await admin.reserve("r-new-too-big", [("RS-A", "store-1", 9)])
        assert [(s.requested, s.available) for s in short.value.short_lines] == [(9, 8)]
        ok = await admin.reserve("r-new", [("RS-A", "store-1", 8)])
        assert ok.reservation.state == pb.ACTIVE
        with pytest.raises(InsufficientStockError):
            await admin.reserve("r-new-2", [("RS-A", "store-1", 1)])

        # Ending a reservation made before the restart frees its units.
        released = await admin.release("r-active")
        assert released.state == pb.RELEASED
        [a1, b1] = await admin.get_availability(keys=[("RS-A", "store-1"), ("RS-B", "store-1")])
        assert (a1.reserved, a1.available) == (8, 2)
        assert (b1.reserved, b1.available) == (1, 3)
        rest = await admin.fulfil("r-partial")
        assert rest.state == pb.FULFILLED
        assert sorted((ln.sku, ln.quantity) for ln in rest.fulfilled) == [
            ("RS-A", 2),
            ("RS-C", 5),
        ]


async def test_expiry_survives_a_restart(make_server: MakeServer, clean_redis_url: str) -> None:
    # The first server never sweeps (a long interval); the hold runs out while it is down.
    first = await make_server(clean_redis_url, expiry_interval_s=3600)
    async with UnistockClient(target(first), TOKENS["admin"]) as admin:
        receipt = pb.Movement(seq=1, sku="RS-E", location_id="s1", type=pb.RECEIPT, quantity=2)
        acks = [
            a
            async for a in admin.apply_movements(
                [pb.MovementBatch(source_id="wms", movements=[receipt])]
            )
        ]
        assert acks[0].applied == 1
        made = await admin.reserve("r-ttl", [("RS-E", "s1", 2)], kind="CART", ttl_seconds=1)
        assert made.reservation.state == pb.ACTIVE
    await first.stop()

    second = await make_server(clean_redis_url, expiry_interval_s=0.2)
    async with UnistockClient(target(second), TOKENS["admin"]) as admin:
        state = pb.ACTIVE
        async with asyncio.timeout(30):
            while state != pb.EXPIRED:
                state = (await admin.get_reservation("r-ttl")).state
                await asyncio.sleep(0.1)
        [lvl] = await admin.get_availability(keys=[("RS-E", "s1")])
        assert (lvl.on_hand, lvl.reserved, lvl.available) == (2, 0, 2)
