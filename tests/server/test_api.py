"""Every RPC of unistock.v1.InventoryService through gRPC, on a real in-process server and Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import InsufficientStockError, UnistockClient, UnistockClientError
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

Key = tuple[str, str]


def mv(
    seq: int,
    type_: str | int,
    sku: str,
    loc: str,
    qty: int,
    **extra: Any,
) -> pb.Movement:
    mtype = pb.MovementType.Value(type_) if isinstance(type_, str) else type_
    return pb.Movement(seq=seq, sku=sku, location_id=loc, type=mtype, quantity=qty, **extra)  # type: ignore[arg-type]


def batch(source: str, *movements: pb.Movement, batch_id: str = "") -> pb.MovementBatch:
    return pb.MovementBatch(source_id=source, movements=movements, batch_id=batch_id)


async def send(c: UnistockClient, *batches: pb.MovementBatch) -> list[pb.MovementAck]:
    """All batches on one ApplyMovements stream; one ack per batch."""
    return [a async for a in c.apply_movements(list(batches))]


async def level(c: UnistockClient, sku: str, loc: str) -> pb.StockLevel:
    [lvl] = await c.get_availability(keys=[(sku, loc)])
    return lvl


def fields(lvl: pb.StockLevel) -> tuple[int, int, int, int, int]:
    return (lvl.on_hand, lvl.reserved, lvl.safety_stock, lvl.available, lvl.version)


async def receipt(c: UnistockClient, source: str, *stock: tuple[str, str, int]) -> None:
    """RECEIPTs from a fresh source, seq 1..n."""
    acks = await send(
        c, batch(source, *(mv(i, "RECEIPT", s, loc, q) for i, (s, loc, q) in enumerate(stock, 1)))
    )
    assert acks[0].applied == len(stock), acks


async def invalid(coro: Any) -> UnistockClientError:
    with pytest.raises(UnistockClientError) as err:
        await coro
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT, err.value
    return err.value


# -- GetAvailability ---------------------------------------------------------------------------


async def test_get_availability_by_keys_and_by_sku(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    await receipt(
        backoffice,
        "wms",
        ("SKU-A", "store-1", 5),
        ("SKU-A", "store-2", 7),
        ("SKU-A", "dc-1", 100),
        ("SKU-B", "store-1", 3),
    )
    by_sku = await client.get_availability(sku="SKU-A")
    assert sorted((lv.location_id, lv.on_hand, lv.available, lv.version) for lv in by_sku) == [
        ("dc-1", 100, 100, 1),
        ("store-1", 5, 5, 1),
        ("store-2", 7, 7, 1),
    ]
    assert all(lv.sku == "SKU-A" for lv in by_sku)

    keys = [("SKU-B", "store-1"), ("SKU-A", "store-2"), ("NEVER-SEEN", "store-9")]
    levels = await client.get_availability(keys=keys)
    assert [(lv.sku, lv.location_id) for lv in levels] == keys  # one per key, in order
    assert (levels[0].on_hand, levels[0].available, levels[0].version) == (3, 3, 1)
    assert (levels[1].on_hand, levels[1].available, levels[1].version) == (7, 7, 1)
    assert fields(levels[2]) == (0, 0, 0, 0, 0)

    # A sku never seen anywhere: no levels at all (and no error).
    assert await client.get_availability(sku="NOTHING-HERE") == []


# -- ApplyMovements ----------------------------------------------------------------------------


async def test_apply_movements_acks_in_order_and_replays_are_duplicates(
    backoffice: UnistockClient,
) -> None:
    batches = [
        batch(
            "wms-1", mv(1, "RECEIPT", "S", "dc", 10), mv(2, "RECEIPT", "T", "dc", 4), batch_id="a"
        ),
        batch("wms-1", mv(3, "SALE", "S", "dc", 1), batch_id="b"),
        batch(
            "wms-1",
            mv(4, "SALE", "S", "dc", 2),
            mv(5, "RETURN", "T", "dc", 1),
            mv(9, "RECEIPT", "U", "dc", 6),
            batch_id="c",
        ),
    ]
    acks = await send(backoffice, *batches)
    assert [a.batch_id for a in acks] == ["a", "b", "c"]
    assert [(a.sources[0].source_id, a.sources[0].seq) for a in acks] == [
        ("wms-1", 2),
        ("wms-1", 3),
        ("wms-1", 9),
    ]
    assert [(a.applied, a.duplicates) for a in acks] == [(2, 0), (1, 0), (3, 0)]
    assert all(not a.rejections for a in acks)
    before = await backoffice.get_availability(keys=[("S", "dc"), ("T", "dc"), ("U", "dc")])
    assert [(lv.on_hand, lv.version) for lv in before] == [(7, 3), (5, 2), (6, 1)]

    # The same batches again (an outbox replay), on a new stream: all duplicates, nothing moves.
    again = await send(backoffice, *batches)
    assert [(a.applied, a.duplicates) for a in again] == [(0, 2), (0, 1), (0, 3)]
    assert [a.sources[0].seq for a in again] == [2, 3, 9]
    after = await backoffice.get_availability(keys=[("S", "dc"), ("T", "dc"), ("U", "dc")])
    assert after == before

    # A batch mixing an old and a new movement: one duplicate, one applied.
    [mixed] = await send(
        backoffice, batch("wms-1", mv(4, "SALE", "S", "dc", 2), mv(10, "SALE", "S", "dc", 1))
    )
    assert (mixed.applied, mixed.duplicates, mixed.sources[0].seq) == (1, 1, 10)
    assert (await level(backoffice, "S", "dc")).on_hand == 6


async def test_every_movement_type(backoffice: UnistockClient) -> None:
    loc = "store-7"
    steps: list[tuple[pb.Movement, int]] = [
        (mv(1, "RECEIPT", "M", loc, 20), 20),
        (mv(2, "SALE", "M", loc, 3), 17),
        (mv(3, "RETURN", "M", loc, 1), 18),
        (mv(4, "ADJUSTMENT", "M", loc, 2, adjustment_sign=pb.INCREASE, reason="found"), 20),
        (mv(5, "ADJUSTMENT", "M", loc, 5, adjustment_sign=pb.DECREASE, reason="damage"), 15),
        (mv(6, "TRANSFER_OUT", "M", loc, 4, transfer_id="tr-1", counterpart_location_id="s9"), 11),
        (mv(7, "TRANSFER_IN", "M", loc, 6, transfer_id="tr-2"), 17),
        (mv(8, "COUNT", "M", loc, 12, count_id="count-1"), 12),
        (mv(9, "SALE", "M", loc, 1), 11),
        # A sale that happened before count-1 (the count already saw it): on_hand unchanged.
        (mv(10, "SALE", "M", loc, 2, count_id="count-1"), 11),
        # The same count again under a new seq: changes nothing.
        (mv(11, "COUNT", "M", loc, 12, count_id="count-1"), 11),
        # A new count sets on_hand whatever it was.
        (mv(12, "COUNT", "M", loc, 30, count_id="count-2"), 30),
    ]
    for m, expected in steps:
        [ack] = await send(backoffice, batch("edge-7", m))
        assert not ack.rejections, (m, ack.rejections)
        lvl = await level(backoffice, "M", loc)
        assert lvl.on_hand == expected, (pb.MovementType.Name(m.type), m.seq, lvl)
        assert lvl.available == max(0, expected)
    # Versions: one per applied change; the repeated count is a duplicate (no version).
    assert (await level(backoffice, "M", loc)).version == 11

    # Transfer halves at two locations conserve the units.
    [ack] = await send(
        backoffice,
        batch(
            "wms-t",
            mv(1, "RECEIPT", "T", "dc-1", 10),
            mv(
                2,
                "TRANSFER_OUT",
                "T",
                "dc-1",
                4,
                transfer_id="tr-9",
                counterpart_location_id="store-7",
            ),
            mv(3, "TRANSFER_IN", "T", "store-7", 4, transfer_id="tr-9"),
        ),
    )
    assert ack.applied == 3
    got = await backoffice.get_availability(keys=[("T", "dc-1"), ("T", "store-7")])
    assert [lv.on_hand for lv in got] == [6, 4]


async def test_sale_with_reservation_id_picks_it_up(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    await receipt(backoffice, "wms", ("P", "store-1", 5), ("Q", "store-1", 5))
    await client.reserve(
        "cc-1", [("P", "store-1", 2), ("Q", "store-1", 1)], kind="CLICK_AND_COLLECT"
    )
    lvl = await level(client, "P", "store-1")
    assert (lvl.on_hand, lvl.reserved, lvl.available) == (5, 2, 3)

    # Pickup of the P line at the till.
    [ack] = await send(
        backoffice, batch("till-1", mv(1, "SALE", "P", "store-1", 2, reservation_id="cc-1"))
    )
    assert ack.applied == 1
    assert not ack.rejections
    lvl = await level(client, "P", "store-1")
    assert (lvl.on_hand, lvl.reserved, lvl.available) == (3, 0, 3)
    r = await client.get_reservation("cc-1")
    assert r.state == pb.ACTIVE  # the Q line is still held
    assert [(ln.sku, ln.quantity) for ln in r.lines] == [("Q", 1)]

    [ack] = await send(
        backoffice, batch("till-1", mv(2, "SALE", "Q", "store-1", 1, reservation_id="cc-1"))
    )
    lvl = await level(client, "Q", "store-1")
    assert (lvl.on_hand, lvl.reserved, lvl.available) == (4, 0, 4)
    r = await client.get_reservation("cc-1")
    assert r.state == pb.FULFILLED
    assert sorted((ln.sku, ln.quantity) for ln in r.fulfilled) == [("P", 2), ("Q", 1)]


# -- Reserve -----------------------------------------------------------------------------------


async def test_reserve_is_all_or_nothing(
    backoffice: UnistockClient, client: UnistockClient
) -> None:
    await receipt(backoffice, "wms", ("A", "s1", 5), ("B", "s1", 1), ("C", "s2", 3))
    with pytest.raises(InsufficientStockError) as err:
        await client.reserve("r-short", [("A", "s1", 2), ("B", "s1", 3), ("C", "s2", 4)])
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    short = sorted(
        (s.sku, s.location_id, s.requested, s.available, s.shortfall) for s in err.value.short_lines
    )
    assert short == [("B", "s1", 3, 1, 2), ("C", "s2", 4, 3, 1)]
    # Nothing held anywhere, not even on the line that fitted.
    levels = await client.get_availability(keys=[("A", "s1"), ("B", "s1"), ("C", "s2")])
    assert [(lv.reserved, lv.available) for lv in levels] == [(0, 5), (0, 1), (0, 3)]
    with pytest.raises(UnistockClientError) as nf:
        await client.get_reservation("r-short")
    assert nf.value.code == grpc.StatusCode.NOT_FOUND

    # The same id may be used once the stock is there.
    ok = await client.reserve("r-short", [("A", "s1", 2), ("B", "s1", 1)])
    assert ok.reservation.state == pb.ACTIVE
    assert not ok.replayed
    levels = await client.get_availability(keys=[("A", "s1"), ("B", "s1")])
    assert [(lv.reserved, lv.available) for lv in levels] == [(2, 3), (1, 0)]


async def test_reserve_is_idempotent(backoffice: UnistockClient, client: UnistockClient) -> None:
    await receipt(backoffice, "wms", ("A", "s1", 5), ("B", "s1", 5))
    lines = [("A", "s1", 2), ("B", "s1", 1)]
    first = await client.reserve("r-1", lines, kind="CART", channel="web", customer_id="cust-9")
    assert not first.replayed
    assert first.reservation.channel == "web"
    assert first.reservation.customer_id == "cust-9"
    assert first.reservation.kind == pb.CART
    # Same lines in another order: a replay.
    second = await client.reserve("r-1", list(reversed(lines)), kind="CART", channel="web")
    assert second.replayed
    assert second.reservation.reservation_id == "r-1"
    assert second.reservation.created_at == first.reservation.created_at
    levels = await client.get_availability(keys=[("A", "s1"), ("B", "s1")])
    assert [lv.reserved for lv in levels] == [2, 1]  # held once

    with pytest.raises(UnistockClientError) as err:
        await client.reserve("r-1", [("A", "s1", 3)])
    assert err.value.code == grpc.StatusCode.ALREADY_EXISTS
    levels = await client.get_availability(keys=[("A", "s1"), ("B", "s1")])
    assert [lv.reserved for lv in levels] == [2, 1]


async def test_release_twice(backoffice: UnistockClient, client: UnistockClient) -> None:
    await receipt(backoffice, "wms", ("A", "s1", 5))
    await client.reserve("r-rel", [("A", "s1", 4)])
    assert (await level(client, "A", "s1")).available == 1
    first = await client.release("r-rel")
    assert first.state == pb.RELEASED
    second = await client.release("r-rel")
    assert second.state == pb.RELEASED
    lvl = await level(client, "A", "s1")
    assert (lvl.reserved, lvl.available) == (0, 5)
    assert (await client.get_reservation("r-rel")).state == pb.RELEASED


async def test_fulfil_full_and_partial(backoffice: UnistockClient, client: UnistockClient) -> None:
    await receipt(backoffice, "wms", ("A", "s1", 10), ("B", "s1", 10))

    await client.reserve("r-full", [("A", "s1", 2), ("B", "s1", 3)], kind="SHIP_FROM_STORE")
    done = await client.fulfil("r-full")
    assert done.state == pb.FULFILLED
    assert sorted((ln.sku, ln.quantity) for ln in done.fulfilled) == [("A", 2), ("B", 3)]
    levels = await client.get_availability(keys=[("A", "s1"), ("B", "s1")])
    # The units left: reserved and on_hand fall together, available does not rise.
    assert [(lv.on_hand, lv.reserved, lv.available) for lv in levels] == [(8, 0, 8), (7, 0, 7)]

    await client.reserve("r-part", [("A", "s1", 4), ("B", "s1", 2)], kind="ORDER")
    part = await client.fulfil("r-part", [("A", "s1", 1)])
    assert part.state == pb.ACTIVE
    assert sorted((ln.sku, ln.quantity) for ln in part.lines) == [("A", 3), ("B", 2)]
    assert [(ln.sku, ln.quantity) for ln in part.fulfilled] == [("A", 1)]
    levels = await client.get_availability(keys=[("A", "s1"), ("B", "s1")])
    assert [lv.reserved for lv in levels] == [3, 2]

    rest = await client.fulfil("r-part", [("A", "s1", 3), ("B", "s1", 2)])
    assert rest.state == pb.FULFILLED
    assert sorted((ln.sku, ln.quantity) for ln in rest.fulfilled) == [("A", 4), ("B", 2)]
    levels = await client.get_availability(keys=[("A", "s1"), ("B", "s1")])
    assert [lv.reserved for lv in levels] == [0, 0]
    got = await client.get_reservation("r-part")
    assert got.state == pb.FULFILLED

    # Fulfilling more than is held is refused, naming the line.
    await client.reserve("r-over", [("A", "s1", 1)], kind="ORDER")
    err = await invalid(client.fulfil("r-over", [("A", "s1", 2)]))
    assert "lines[0].quantity" in err.details
    assert (await level(client, "A", "s1")).reserved == 1


async def test_extend_reservation(backoffice: UnistockClient, client: UnistockClient) -> None:
    await receipt(backoffice, "wms", ("A", "s1", 5))
    made = await client.reserve("r-ext", [("A", "s1", 1)], kind="CART", ttl_seconds=60)
    assert made.reservation.HasField("expires_at")
    old = made.reservation.expires_at.ToMilliseconds()
    before = time.time()
    longer = await client.extend("r-ext", 3600)
    assert longer.state == pb.ACTIVE
    new = longer.expires_at.ToMilliseconds()
    assert new > old
    assert new >= int(before * 1000) + 3600 * 1000 - 1000
    assert (await client.get_reservation("r-ext")).expires_at == longer.expires_at

    # An absolute expiry in the past is INVALID_ARGUMENT naming expires_at; nothing changes.
    past = Timestamp()
    past.FromSeconds(int(time.time()) - 60)
    err = await invalid(
        client._unary(
            client.stub.ExtendReservation,
            pb.ExtendReservationRequest(reservation_id="r-ext", expires_at=past),
        )
    )
    assert "expires_at" in err.details
    assert (await client.get_reservation("r-ext")).expires_at == longer.expires_at

    # An absolute expiry in the future is accepted.
    future = Timestamp()
    future.FromSeconds(int(time.time()) + 7200)
    moved = await client._unary(
        client.stub.ExtendReservation,
        pb.ExtendReservationRequest(reservation_id="r-ext", expires_at=future),
    )
    assert moved.expires_at.seconds == future.seconds


async def test_get_reservation_unknown_is_not_found(client: UnistockClient) -> None:
    with pytest.raises(UnistockClientError) as err:
        await client.get_reservation("no-such-reservation")
    assert err.value.code == grpc.StatusCode.NOT_FOUND
    for op in (client.release, client.fulfil):
        with pytest.raises(UnistockClientError) as err:
            await op("no-such-reservation")
        assert err.value.code == grpc.StatusCode.NOT_FOUND


async def test_reservation_expires(make_server: MakeServer, clean_redis_url: str) -> None:
    srv: UnistockServer = await make_server(clean_redis_url, expiry_interval_s=0.2)
    async with (
        UnistockClient(target(srv), TOKENS["admin"]) as admin,
    ):
        await receipt(admin, "wms", ("E", "s1", 3))
        made = await admin.reserve("r-exp", [("E", "s1", 3)], kind="CART", ttl_seconds=1)
        assert made.reservation.state == pb.ACTIVE
        assert (await level(admin, "E", "s1")).available == 0

        state = made.reservation.state
        async with asyncio.timeout(30):
            while state != pb.EXPIRED:
                await asyncio.sleep(0.1)
                state = (await admin.get_reservation("r-exp")).state
        lvl = await level(admin, "E", "s1")
        assert (lvl.on_hand, lvl.reserved, lvl.available) == (3, 0, 3)
        # The units can be promised again.
        again = await admin.reserve("r-exp-2", [("E", "s1", 3)])
        assert again.reservation.state == pb.ACTIVE
        # An expired reservation cannot be extended.
        with pytest.raises(UnistockClientError) as err:
            await admin.extend("r-exp", 60)
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION


# -- bad input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "field"),
    [
        ([("", "s1")], "keys[0].sku"),
        ([("OK", "s1"), ("HAS SPACE", "s1")], "keys[1].sku"),
        ([("OK", "store|1")], "keys[0].location_id"),
        ([("OK", "")], "keys[0].location_id"),
        ([("x" * 129, "s1")], "keys[0].sku"),
    ],
)
async def test_get_availability_bad_keys(
    client: UnistockClient, keys: list[Key], field: str
) -> None:
    err = await invalid(client.get_availability(keys=keys))
    assert field in err.details


async def test_get_availability_keys_and_sku_or_neither(client: UnistockClient) -> None:
    err = await invalid(client.get_availability(keys=[("A", "s1")], sku="A"))
    assert "sku" in err.details
    err = await invalid(client.get_availability())
    assert "keys" in err.details
    err = await invalid(client.get_availability(sku="BAD SKU"))
    assert "sku" in err.details


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        ([], "lines"),
        ([("A", "s1", 0)], "lines[0].quantity"),
        ([("A", "s1", 1), ("B", "s1", -3)], "lines[1].quantity"),
        ([("A", "s1", 1_000_000_001)], "lines[0].quantity"),
        ([("A", "s1", 1), ("A", "s1", 2)], "lines[1]"),
        ([("", "s1", 1)], "lines[0].sku"),
        ([("A B", "s1", 1)], "lines[0].sku"),
        ([("A", "s|1", 1)], "lines[0].location_id"),
    ],
)
async def test_reserve_bad_lines(
    backoffice: UnistockClient,
    client: UnistockClient,
    lines: list[tuple[str, str, int]],
    field: str,
) -> None:
    await receipt(backoffice, "wms", ("A", "s1", 5), ("B", "s1", 5))
    err = await invalid(client.reserve("r-bad", lines))
    assert field in err.details, err.details
    # Nothing held, no reservation recorded.
    levels = await client.get_availability(keys=[("A", "s1"), ("B", "s1")])
    assert [lv.reserved for lv in levels] == [0, 0]
    with pytest.raises(UnistockClientError) as nf:
        await client.get_reservation("r-bad")
    assert nf.value.code == grpc.StatusCode.NOT_FOUND


async def test_reserve_bad_kind_and_id(client: UnistockClient) -> None:
    err = await invalid(client.reserve("r-k", [("A", "s1", 1)], kind=99))
    assert "kind" in err.details
    err = await invalid(client.reserve("r-k", [("A", "s1", 1)], kind=0))
    assert "kind" in err.details
    err = await invalid(client.reserve("", [("A", "s1", 1)]))
    assert "reservation_id" in err.details
    for call in (client.release(""), client.fulfil(""), client.get_reservation("")):
        err = await invalid(call)
        assert "reservation_id" in err.details
    err = await invalid(client.get_reservation("has space"))
    assert "reservation_id" in err.details


def _rejections(ack: pb.MovementAck) -> dict[int, tuple[int, str]]:
    return {r.seq: (r.reason, r.detail) for r in ack.rejections}


async def test_apply_movements_rejects_invalid_movements_one_by_one(
    backoffice: UnistockClient,
) -> None:
    src = "wms-bad"
    movements = [
        mv(1, "RECEIPT", "OK", "dc", 10),  # 0: fine
        mv(2, 99, "OK", "dc", 1),  # 1: unknown type
        mv(3, "RECEIPT", "OK", "dc", -1),  # 2: negative quantity
        mv(4, "RECEIPT", "", "dc", 1),  # 3: empty sku
        mv(5, "COUNT", "OK", "dc", 1),  # 4: COUNT without count_id
        mv(6, "RECEIPT", "OK", "dc", 2),  # 5: fine
        mv(6, "RECEIPT", "OK", "dc", 100),  # 6: seq not increasing
        mv(7, "RECEIPT", "OK", "dc", 100, source_id="other"),  # 7: another source
        mv(8, "RECEIPT", "OK", "dc", 1_000_000_001),  # 8: too large
        mv(9, "ADJUSTMENT", "OK", "dc", 1),  # 9: adjustment without a sign
        mv(10, "TRANSFER_OUT", "OK", "dc", 1),  # 10: transfer without transfer_id
        mv(11, "RECEIPT", "OK", "d c", 1),  # 11: location with a space
        mv(12, "RECEIPT", "OK", "dc", 3),  # 12: fine
    ]
    [ack] = await send(backoffice, batch(src, *movements))
    assert (ack.applied, ack.duplicates) == (3, 0)
    assert ack.sources[0].seq == 12
    assert len(ack.rejections) == 10
    assert all(r.source_id == src for r in ack.rejections)
    details = [(r.reason, r.detail) for r in ack.rejections]
    expected = [
        (pb.INVALID_FIELD, "movements[1].type"),
        (pb.BAD_QUANTITY, "movements[2].quantity"),
        (pb.INVALID_FIELD, "movements[3].sku"),
        (pb.INVALID_FIELD, "movements[4].count_id"),
        (pb.INVALID_FIELD, "movements[6].seq"),
        (pb.WRONG_SOURCE, "movements[7].source_id"),
        (pb.BAD_QUANTITY, "movements[8].quantity"),
        (pb.INVALID_FIELD, "movements[9].adjustment_sign"),
        (pb.INVALID_FIELD, "movements[10].transfer_id"),
        (pb.INVALID_FIELD, "movements[11].location_id"),
    ]
    assert len(details) == len(expected)
    for (reason, detail), (want_reason, want_field) in zip(details, expected, strict=True):
        assert want_field in detail, (detail, want_field)
        assert reason == want_reason, (pb.RejectReason.Name(reason), detail)
    assert [r.seq for r in ack.rejections] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    # Only the valid ones moved stock.
    lvl = await level(backoffice, "OK", "dc")
    assert (lvl.on_hand, lvl.version) == (15, 3)
    assert (await level(backoffice, "OK", "d-c")).version == 0


async def test_apply_movements_bad_batch_source(backoffice: UnistockClient) -> None:
    acks = await send(
        backoffice,
        batch("", mv(1, "RECEIPT", "OK", "dc", 1)),
        batch("bad source", mv(1, "RECEIPT", "OK", "dc", 1)),
        pb.MovementBatch(source_id="empty-batch", batch_id="e"),
        batch("good", mv(1, "RECEIPT", "OK", "dc", 1)),
    )
    assert len(acks) == 4
    for ack in acks[:2]:
        assert ack.applied == 0
        assert [r.reason for r in ack.rejections] == [pb.INVALID_FIELD]
        assert "source_id" in ack.rejections[0].detail
    assert acks[2].batch_id == "e"
    assert acks[2].applied == 0
    assert [r.detail.split(":")[0] for r in acks[2].rejections] == ["movements"]
    assert acks[3].applied == 1
    lvl = await level(backoffice, "OK", "dc")
    assert (lvl.on_hand, lvl.version) == (1, 1)
