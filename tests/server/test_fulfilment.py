"""Fulfilment is a physical fact (domain.md, invariant 6; reliability F15), through gRPC on a real
server and Redis: FulfilReservation and a till SALE naming the reservation each consume the
units once in all, in either order and each sent twice; a partial fulfilment is idempotent on
its request_id; a sale naming a reservation it does not match is applied and reported."""

from __future__ import annotations

import grpc
import pytest

from tests.server.test_api import batch, invalid, level, mv, receipt, send
from unistock.client import UnistockClient, UnistockClientError
from unistock.v1 import inventory_pb2 as pb


async def levels(c: UnistockClient, sku: str, loc: str) -> tuple[int, int, int]:
    lvl = await level(c, sku, loc)
    return lvl.on_hand, lvl.reserved, lvl.available


async def test_fulfil_takes_shipped_units_off_on_hand(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    """The case from the issue: receive 3, reserve 1 SHIP_FROM_STORE, fulfil -> 2 left."""
    await receipt(backoffice, "wms", ("TEE", "s1", 3))
    await client.reserve("sfs-1", [("TEE", "s1", 1)], kind="SHIP_FROM_STORE")
    assert await levels(client, "TEE", "s1") == (3, 1, 2)
    done = await client.fulfil("sfs-1")
    assert done.state == pb.FULFILLED
    assert await levels(client, "TEE", "s1") == (2, 0, 2)  # available did not rise
    again = await client.fulfil("sfs-1")  # the order manager retries
    assert again.state == pb.FULFILLED
    assert await levels(client, "TEE", "s1") == (2, 0, 2)


@pytest.mark.parametrize("fulfil_first", [True, False])
async def test_fulfil_and_till_sale_consume_units_once(
    backoffice: UnistockClient, client: UnistockClient, fulfil_first: bool
) -> None:
    """F15: FulfilReservation and the till's SALE naming the reservation, in either order, each
    sent twice: on_hand and reserved fall by the units exactly once."""
    await receipt(backoffice, "wms", ("CAP", "s1", 5))
    await client.reserve("cc-1", [("CAP", "s1", 2)], kind="CLICK_AND_COLLECT")
    sale = batch("till-1", mv(1, "SALE", "CAP", "s1", 2, reservation_id="cc-1"))

    async def fulfil_twice() -> None:
        for _ in range(2):
            r = await client.fulfil("cc-1")
            assert r.state == pb.FULFILLED

    async def sell_twice() -> None:
        [first] = await send(backoffice, sale)
        assert first.applied == 1
        assert not first.notices
        [second] = await send(backoffice, sale)
        assert second.duplicates == 1

    if fulfil_first:
        await fulfil_twice()
        assert await levels(client, "CAP", "s1") == (3, 0, 3)
        await sell_twice()
    else:
        await sell_twice()
        assert await levels(client, "CAP", "s1") == (3, 0, 3)
        await fulfil_twice()
    assert await levels(client, "CAP", "s1") == (3, 0, 3)
    got = await client.get_reservation("cc-1")
    assert got.state == pb.FULFILLED
    assert [(ln.sku, ln.quantity) for ln in got.fulfilled] == [("CAP", 2)]


async def test_partial_fulfilment_is_idempotent_on_request_id(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    await receipt(backoffice, "wms", ("BAG", "s1", 10))
    await client.reserve("ord-1", [("BAG", "s1", 4)], kind="ORDER")
    for _ in range(3):  # the answer was lost twice
        part = await client.fulfil("ord-1", [("BAG", "s1", 1)], request_id="ship-1")
        assert [(ln.sku, ln.quantity) for ln in part.lines] == [("BAG", 3)]
    assert await levels(client, "BAG", "s1") == (9, 3, 6)
    # the same request_id with other lines is a conflict, and changes nothing
    with pytest.raises(UnistockClientError) as err:
        await client.fulfil("ord-1", [("BAG", "s1", 2)], request_id="ship-1")
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
    assert "ship-1" in err.value.details
    # a new request_id ships more
    part = await client.fulfil("ord-1", [("BAG", "s1", 2)], request_id="ship-2")
    assert await levels(client, "BAG", "s1") == (7, 1, 6)
    # a bad request_id is named
    err2 = await invalid(client.fulfil("ord-1", [("BAG", "s1", 1)], request_id="has space"))
    assert "request_id" in err2.details


async def test_partial_fulfilment_then_pickup_of_the_rest(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    """Two of three units shipped by the order manager; the till then reports all three picked
    up: only the third unit leaves the shelf with the sale."""
    await receipt(backoffice, "wms", ("SOCK", "s1", 10))
    await client.reserve("cc-2", [("SOCK", "s1", 3)], kind="CLICK_AND_COLLECT")
    await client.fulfil("cc-2", [("SOCK", "s1", 2)], request_id="f-1")
    assert await levels(client, "SOCK", "s1") == (8, 1, 7)
    [ack] = await send(
        backoffice, batch("till-2", mv(1, "SALE", "SOCK", "s1", 3, reservation_id="cc-2"))
    )
    assert ack.applied == 1
    assert not ack.notices
    assert await levels(client, "SOCK", "s1") == (7, 0, 7)
    assert (await client.get_reservation("cc-2")).state == pb.FULFILLED


async def test_sale_naming_a_reservation_it_does_not_match_is_applied_and_reported(
    backoffice: UnistockClient, client: UnistockClient, server: object
) -> None:
    """1.4: picked up in another store, another SKU, an unknown or ended reservation: a plain
    sale, with a PICKUP_MISMATCH notice naming source, seq and reservation, and a metric."""
    await receipt(backoffice, "wms", ("SHOE", "s1", 5), ("SHOE", "s2", 5), ("BOOT", "s1", 5))
    await client.reserve("cc-3", [("SHOE", "s1", 1)], kind="CLICK_AND_COLLECT")
    [ack] = await send(
        backoffice,
        batch(
            "till-3",
            mv(1, "SALE", "SHOE", "s2", 1, reservation_id="cc-3"),  # another store
            mv(2, "SALE", "BOOT", "s1", 1, reservation_id="cc-3"),  # another SKU
            mv(3, "SALE", "SHOE", "s1", 1, reservation_id="nope"),  # unknown
        ),
    )
    assert ack.applied == 3
    assert [(n.source_id, n.seq, n.reservation_id, n.kind) for n in ack.notices] == [
        ("till-3", 1, "cc-3", pb.PICKUP_MISMATCH),
        ("till-3", 2, "cc-3", pb.PICKUP_MISMATCH),
        ("till-3", 3, "nope", pb.PICKUP_MISMATCH),
    ]
    assert "SHOE at s2" in ack.notices[0].detail
    assert "does not exist" in ack.notices[2].detail
    # applied as plain sales; the reservation still holds its unit
    assert await levels(client, "SHOE", "s2") == (4, 0, 4)
    assert await levels(client, "BOOT", "s1") == (4, 0, 4)
    assert await levels(client, "SHOE", "s1") == (4, 1, 3)
    assert (await client.get_reservation("cc-3")).state == pb.ACTIVE
    metrics = server.metrics.registry  # type: ignore[attr-defined]
    assert metrics.get_sample_value("unistock_pickup_mismatches_total") == 3
