"""End to end through gRPC: movements, levels, reservations."""

from __future__ import annotations

import pytest

from unistock.client import InsufficientStockError, UnistockClient
from unistock.v1 import inventory_pb2 as pb


def batch(source: str, *movements: tuple[int, str, str, str, int]) -> pb.MovementBatch:
    return pb.MovementBatch(
        source_id=source,
        movements=[
            pb.Movement(
                seq=seq, sku=sku, location_id=loc, type=pb.MovementType.Value(t), quantity=q
            )
            for seq, t, sku, loc, q in movements
        ],
    )


async def test_receipt_then_reserve_release(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    acks = [
        a
        async for a in backoffice.apply_movements(
            [
                batch(
                    "wms", (1, "RECEIPT", "SKU-1", "store-1", 5), (2, "SALE", "SKU-1", "store-1", 1)
                )
            ]
        )
    ]
    assert acks[0].sources[0].seq == 2
    assert acks[0].applied == 2
    [level] = await client.get_availability(keys=[("SKU-1", "store-1")])
    assert (level.on_hand, level.available, level.version) == (4, 4, 2)

    held = await client.reserve("r1", [("SKU-1", "store-1", 3)])
    assert held.reservation.state == pb.ACTIVE
    [level] = await client.get_availability(sku="SKU-1")
    assert (level.reserved, level.available) == (3, 1)

    with pytest.raises(InsufficientStockError) as err:
        await client.reserve("r2", [("SKU-1", "store-1", 2)])
    assert err.value.short_lines[0].shortfall == 1

    released = await client.release("r1")
    assert released.state == pb.RELEASED
    [level] = await client.get_availability(keys=[("SKU-1", "store-1")])
    assert level.available == 4
