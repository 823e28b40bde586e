"""Sentences of proto/unistock/v1/inventory.proto held literally, through gRPC on a real server
and Redis (issue 8 item 1.6). Each test quotes the promise it holds."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, level, mv, receipt, send
from unistock.client import UnistockClient, UnistockClientError
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb


async def test_seq_0_is_rejected_as_invalid_not_as_out_of_order(
    backoffice: UnistockClient,
) -> None:
    # Movement.seq: "starting at 1 (0 is rejected, naming the field)".
    [ack] = await send(
        backoffice, batch("s0", mv(0, "RECEIPT", "A", "l", 5), mv(1, "RECEIPT", "A", "l", 1))
    )
    [r] = ack.rejections
    assert (r.seq, r.reason) == (0, pb.INVALID_FIELD)
    assert r.detail == "movements[0].seq: must be >= 1, got 0"
    assert ack.applied == 1
    assert (await level(backoffice, "A", "l")).on_hand == 1


async def test_a_batch_over_10000_movements_is_refused_whole_over_grpc(
    backoffice: UnistockClient,
) -> None:
    # MovementBatch.movements: "at most 10,000 (a larger batch is refused whole with
    # BATCH_TOO_LARGE: nothing applied, no progress; split it and send it again)".
    # SourceAck.seq: "A batch refused whole (BATCH_TOO_LARGE ...) advances nothing".
    # BatchLimits.max_payload_bytes: "0 in an ack sent over gRPC".
    movements = [mv(i, "RECEIPT", "B", "l", 1) for i in range(1, 10_002)]
    big = batch("big", *movements, batch_id="b-1")
    [ack] = await send(backoffice, big)
    [r] = ack.rejections
    assert (r.source_id, r.seq, r.reason) == ("big", 0, pb.BATCH_TOO_LARGE)
    assert (list(ack.sources), ack.applied, ack.duplicates, ack.batch_id) == ([], 0, 0, "b-1")
    assert ack.limits == pb.BatchLimits(max_movements=10_000, max_payload_bytes=0)
    assert (await level(backoffice, "B", "l")).version == 0
    # Split and sent again under the same seqs: everything applies (none is a duplicate).
    acks = await send(backoffice, batch("big", *movements[:10_000]), batch("big", movements[-1]))
    assert [(a.applied, a.duplicates, list(a.rejections)) for a in acks] == [
        (10_000, 0, []),
        (1, 0, []),
    ]
    assert (await level(backoffice, "B", "l")).on_hand == 10_001


async def test_quantity_0_outside_a_count_is_bad_quantity(backoffice: UnistockClient) -> None:
    # RejectReason.BAD_QUANTITY: "below 1 (below 0 for a COUNT) or above 1,000,000,000".
    [ack] = await send(
        backoffice,
        batch(
            "q",
            mv(1, "SALE", "Q", "l", 0),
            mv(2, "COUNT", "Q", "l", -1, count_id="c1"),
            mv(3, "COUNT", "Q", "l", 0, count_id="c2"),
        ),
    )
    assert [(r.seq, r.reason) for r in ack.rejections] == [
        (1, pb.BAD_QUANTITY),
        (2, pb.BAD_QUANTITY),
    ]
    assert ack.applied == 1


async def test_sku_outside_printable_ascii_is_invalid(client: UnistockClient) -> None:
    # StockLevel.sku: "1-128 printable ASCII characters, no whitespace, no '|'".
    with pytest.raises(UnistockClientError) as err:
        await client.get_availability(keys=[("SCHUH-GRÜN", "l")])
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "keys[0].sku" in err.value.details


async def test_levels_come_one_per_key_in_key_order_unseen_ones_zero(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    # GetAvailabilityResponse.levels: "One level per requested key, in the order of the keys
    # (a position never seen has zeros and version 0)".
    await receipt(backoffice, "wms", ("K", "b", 2), ("K", "a", 1))
    keys = [("K", "b"), ("NEVER", "z"), ("K", "a"), ("K", "b")]
    levels = await client.get_availability(keys=keys)
    assert [(lv.sku, lv.location_id) for lv in levels] == keys
    assert [lv.on_hand for lv in levels] == [2, 0, 1, 2]
    never = levels[1]
    assert (never.on_hand, never.reserved, never.safety_stock, never.available) == (0, 0, 0, 0)
    assert never.version == 0


async def test_on_hand_is_the_count_plus_movements_minus_fulfilments(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    # StockLevel.on_hand: "the last count plus every movement since, minus the units
    # FulfilReservation reported shipped since".
    await send(
        backoffice,
        batch("wms", mv(1, "COUNT", "F", "l", 10, count_id="c"), mv(2, "RECEIPT", "F", "l", 5)),
    )
    await client.reserve("r-f", [("F", "l", 4)], kind="ORDER")
    await client.fulfil("r-f", [("F", "l", 3)], request_id="ship-1")
    lvl = await level(client, "F", "l")
    assert (lvl.on_hand, lvl.reserved) == (10 + 5 - 3, 1)
    # StockLevel.available: "max(0, on_hand - reserved - safety_stock)".
    assert lvl.available == max(0, lvl.on_hand - lvl.reserved - lvl.safety_stock)


async def test_lines_of_an_ended_reservation_are_those_held_just_before(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    # Reservation.lines: "The lines still held (ACTIVE), or those held just before it ended";
    # Reservation.fulfilled: "Units that left so far, per line, by FulfilReservation or a SALE
    # naming the reservation".
    await receipt(backoffice, "wms", ("L", "s", 10), ("M", "s", 10))
    await client.reserve("r-l", [("L", "s", 5), ("M", "s", 2)], kind="CLICK_AND_COLLECT")
    [ack] = await send(backoffice, batch("till", mv(1, "SALE", "L", "s", 2, reservation_id="r-l")))
    assert ack.applied == 1
    part = await client.get_reservation("r-l")
    assert sorted((ln.sku, ln.quantity) for ln in part.lines) == [("L", 3), ("M", 2)]
    assert [(ln.sku, ln.quantity) for ln in part.fulfilled] == [("L", 2)]
    done = await client.fulfil("r-l")
    assert done.state == pb.FULFILLED
    assert sorted((ln.sku, ln.quantity) for ln in done.lines) == [("L", 3), ("M", 2)]
    assert sorted((ln.sku, ln.quantity) for ln in done.fulfilled) == [("L", 5), ("M", 2)]
    assert await client.get_reservation("r-l") == done


async def test_release_frees_what_is_held_and_refuses_a_fulfilled_one(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    # ReleaseReservationRequest: "the units it still holds are freed (units already fulfilled
    # stay fulfilled). Releasing a RELEASED reservation returns it unchanged; releasing a
    # FULFILLED or EXPIRED one is FAILED_PRECONDITION and changes nothing."
    await receipt(backoffice, "wms", ("R", "s", 10))
    await client.reserve("r-part", [("R", "s", 4)], kind="ORDER")
    await client.fulfil("r-part", [("R", "s", 1)], request_id="p1")
    released = await client.release("r-part")
    assert released.state == pb.RELEASED
    assert [(ln.sku, ln.quantity) for ln in released.fulfilled] == [("R", 1)]
    assert await client.release("r-part") == released
    lvl = await level(client, "R", "s")
    assert (lvl.on_hand, lvl.reserved, lvl.available) == (9, 0, 9)

    await client.reserve("r-done", [("R", "s", 2)], kind="ORDER")
    done = await client.fulfil("r-done")
    before = await level(client, "R", "s")
    with pytest.raises(UnistockClientError) as err:
        await client.release("r-done")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert await client.get_reservation("r-done") == done
    assert await level(client, "R", "s") == before


async def test_an_expired_reservation_keeps_its_expiry_and_cannot_be_released(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    # Reservation.expires_at: "an ended one keeps the expiry it had. Unset when it has no
    # expiry"; ReserveRequest.ttl_seconds: "0 means the kind's default (CART 15 min,
    # E_RESERVATION 48 h, others: no expiry)"; ReleaseReservationRequest: "releasing a ...
    # EXPIRED one is FAILED_PRECONDITION"; ReserveRequest.reservation_id: "The same request sent
    # twice returns the same reservation, whatever its state now".
    srv: UnistockServer = await make_server(clean_redis_url, expiry_interval_s=0.2)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await receipt(c, "wms", ("X", "s", 10))
        made = {}
        for kind in ("CART", "E_RESERVATION", "CLICK_AND_COLLECT", "SHIP_FROM_STORE", "ORDER"):
            r = (await c.reserve(f"r-{kind}", [("X", "s", 1)], kind=kind)).reservation
            made[kind] = r
        ttl = {
            k: (r.expires_at.ToMilliseconds() - r.created_at.ToMilliseconds()) / 1000
            if r.HasField("expires_at")
            else None
            for k, r in made.items()
        }
        assert ttl == {
            "CART": 900,
            "E_RESERVATION": 48 * 3600,
            "CLICK_AND_COLLECT": None,
            "SHIP_FROM_STORE": None,
            "ORDER": None,
        }
        short = (await c.reserve("r-exp", [("X", "s", 1)], kind="CART", ttl_seconds=1)).reservation
        got = short
        async with asyncio.timeout(30):
            while got.state != pb.EXPIRED:
                await asyncio.sleep(0.1)
                got = await c.get_reservation("r-exp")
        assert got.expires_at == short.expires_at
        with pytest.raises(UnistockClientError) as err:
            await c.release("r-exp")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        again = await c.reserve("r-exp", [("X", "s", 1)], kind="CART", ttl_seconds=1)
        assert (again.replayed, again.reservation) == (True, got)
