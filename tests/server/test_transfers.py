"""F17, transfers between locations through gRPC on a real server and Redis: a transfer
received twice, received short, received before it was shipped, shipped twice. Units are
conserved on every line of every record (shipped + unexpected = received + lost + in_transit),
every discrepancy is recorded once, the destination's in_transit is the sum of what its records
have on the road (never negative, never available), and it all survives restarts.

A TRANSFER_OUT is acknowledged once its origin position (and its shipment, in the outbox) is
durable; the shipment reaches the record at the destination shortly after, so the tests poll for
it (`shipped`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from tests.faults.helpers import eventually, sample
from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, level, mv, send
from unistock.client import InsufficientStockError, UnistockClient, UnistockClientError
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

SKU = "BOOT-42"
DC = "dc-1"
#: (kind, sku, quantity, source_id, seq) of a discrepancy
Found = tuple[int, str, int, str, int]


def out(
    seq: int, qty: int, tid: str, dest: str, *, sku: str = SKU, origin: str = DC
) -> pb.Movement:
    """A TRANSFER_OUT of qty units from origin to dest."""
    return mv(seq, "TRANSFER_OUT", sku, origin, qty, transfer_id=tid, counterpart_location_id=dest)


def into(
    seq: int, qty: int, tid: str, dest: str, *, sku: str = SKU, origin: str = DC
) -> pb.Movement:
    """A TRANSFER_IN of qty units at dest (naming its origin)."""
    return mv(seq, "TRANSFER_IN", sku, dest, qty, transfer_id=tid, counterpart_location_id=origin)


def conserved(t: pb.Transfer) -> None:
    """Every line of a record conserves its units and derives in_transit and unexpected."""
    for ln in t.lines:
        assert ln.shipped + ln.unexpected == ln.received + ln.lost + ln.in_transit, ln
        assert ln.in_transit == max(0, ln.shipped - ln.received - ln.lost), ln
        assert ln.unexpected == max(0, ln.received - ln.shipped), ln
        assert min(ln.shipped, ln.received, ln.lost, ln.in_transit, ln.unexpected) >= 0, ln


def found(t: pb.Transfer) -> list[Found]:
    return [(d.kind, d.sku, d.quantity, d.source_id, d.seq) for d in t.discrepancies]


def line(t: pb.Transfer, sku: str = SKU) -> tuple[int, int, int, int, int]:
    """(shipped, received, lost, in_transit, unexpected) of sku's line."""
    [ln] = [ln for ln in t.lines if ln.sku == sku]
    return (ln.shipped, ln.received, ln.lost, ln.in_transit, ln.unexpected)


async def record(c: UnistockClient, tid: str, dest: str = "") -> pb.Transfer:
    """The one record of tid (at dest), checked for conservation."""
    [t] = await c.get_transfer(tid, dest)
    assert t.transfer_id == tid
    if dest:
        assert t.destination_location_id == dest
    conserved(t)
    return t


async def shipped(c: UnistockClient, tid: str, units: int, dest: str = "") -> pb.Transfer:
    """Wait until the record of tid has units shipped (the shipment is applied after the ack)."""
    got: list[pb.Transfer] = []

    async def check() -> bool:
        t = await record(c, tid, dest)
        got[:] = [t]
        assert sum(ln.shipped for ln in t.lines) <= units, t
        return sum(ln.shipped for ln in t.lines) == units

    await eventually(check, within=10, interval=0.02)
    return got[0]


async def at(c: UnistockClient, loc: str, sku: str = SKU) -> tuple[int, int, int]:
    """(on_hand, in_transit, available) of sku at loc; available never counts in_transit."""
    lv = await level(c, sku, loc)
    assert lv.in_transit >= 0, lv
    assert lv.available == max(0, lv.on_hand - lv.reserved - lv.safety_stock), lv
    return lv.on_hand, lv.in_transit, lv.available


async def applied(c: UnistockClient, b: pb.MovementBatch) -> tuple[int, int]:
    """Send one batch: (applied, duplicates), no rejection."""
    [ack] = await send(c, b)
    assert not ack.rejections, ack
    return ack.applied, ack.duplicates


async def restart(
    make_server: MakeServer, srv: UnistockServer, url: str, **opts: Any
) -> UnistockServer:
    passivated(srv, opts)
    await srv.stop()
    return await make_server(url, **opts)


def passivated(srv: UnistockServer, opts: dict[str, Any]) -> None:
    """With max_resident=1, positions really were dropped and loaded again."""
    if opts:
        reg = srv.metrics.registry
        assert sample(reg, "unistock_actor_passivations_total") >= 2


# -- received short, closed, across restarts ---------------------------------------------------


@pytest.mark.parametrize("max_resident", [None, 1], ids=["resident", "passivated"])
async def test_received_short_then_closed_across_restarts(
    make_server: MakeServer, clean_redis_url: str, max_resident: int | None
) -> None:
    """Shipped 5, restart, received 4, closed: 1 lost, CLOSED_SHORT once; closing again and
    restarting change nothing. With max_resident=1 the positions are passivated and loaded
    from Redis again between the steps."""
    opts: dict[str, Any] = {} if max_resident is None else {"max_resident": max_resident}
    url = clean_redis_url
    srv = await make_server(url, **opts)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        assert await applied(c, batch("wms", mv(1, "RECEIPT", SKU, DC, 10))) == (1, 0)
        # other positions in between push the transfer's out of a one-position directory
        assert await applied(c, batch("wms", mv(2, "RECEIPT", "OTHER", "s2", 3))) == (1, 0)
        assert await applied(c, batch("wms", out(3, 5, "T-short", "s2"))) == (1, 0)
        assert await at(c, DC) == (5, 0, 5)
        t = await shipped(c, "T-short", 5)
        assert (t.origin_location_id, t.destination_location_id) == (DC, "s2")
        assert (t.state, line(t), found(t)) == (pb.IN_TRANSIT, (5, 0, 0, 5, 0), [])
        assert await at(c, "s2") == (0, 5, 0)
        assert await at(c, DC) == (5, 0, 5)

    srv = await restart(make_server, srv, url, **opts)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        assert await at(c, "s2") == (0, 5, 0)
        assert line(await record(c, "T-short")) == (5, 0, 0, 5, 0)
        assert await applied(c, batch("s2-till", into(1, 4, "T-short", "s2"))) == (1, 0)
        assert await at(c, "s2") == (4, 1, 4)
        t = await record(c, "T-short", "s2")
        assert (t.state, line(t), found(t)) == (pb.IN_TRANSIT, (5, 4, 0, 1, 0), [])
        await level(c, "OTHER", "s2")  # another position in between

        closed = await c.close_transfer("T-short", "s2")
        conserved(closed)
        assert (closed.state, line(closed)) == (pb.CLOSED, (5, 4, 1, 0, 0))
        assert found(closed) == [(pb.CLOSED_SHORT, SKU, 1, "", 0)]
        assert await at(c, "s2") == (4, 0, 4)
        before = await level(c, SKU, "s2")
        # Closed again: the same record, nothing moves.
        assert await c.close_transfer("T-short", "s2") == closed
        assert await level(c, SKU, "s2") == before
        assert await c.get_transfer("T-short") == [closed]
        assert await c.get_transfer("T-short", "s2") == [closed]
        # The receipt re-sent changes nothing either.
        assert await applied(c, batch("s2-till", into(1, 4, "T-short", "s2"))) == (0, 1)
        assert await c.get_transfer("T-short") == [closed]

    srv = await restart(make_server, srv, url, **opts)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        assert await c.get_transfer("T-short") == [closed]
        assert await level(c, SKU, "s2") == before
        assert await at(c, DC) == (5, 0, 5)
        assert await c.close_transfer("T-short", "s2") == closed
        assert await at(c, "s2") == (4, 0, 4)
        passivated(srv, opts)


# -- received twice ----------------------------------------------------------------------------


async def test_received_twice_is_over_received_once(admin: UnistockClient) -> None:
    c = admin
    await applied(c, batch("wms", mv(1, "RECEIPT", SKU, DC, 10), out(2, 3, "T-twice", "s3")))
    await shipped(c, "T-twice", 3)
    assert await at(c, "s3") == (0, 3, 0)

    first = batch("s3-till", into(1, 3, "T-twice", "s3"))
    second = batch("s3-till", into(2, 3, "T-twice", "s3"))
    assert await applied(c, first) == (1, 0)
    t = await record(c, "T-twice")
    assert (t.state, line(t), found(t)) == (pb.RECEIVED, (3, 3, 0, 0, 0), [])
    assert await at(c, "s3") == (3, 0, 3)

    # The same parcel scanned in again under a new seq: a fact, applied, and recorded once.
    assert await applied(c, second) == (1, 0)
    assert await at(c, "s3") == (6, 0, 6)  # on_hand counts both receipts; in_transit not < 0
    t = await record(c, "T-twice")
    assert line(t) == (3, 6, 0, 0, 3)
    assert found(t) == [(pb.OVER_RECEIVED, SKU, 3, "s3-till", 2)]
    assert t.state == pb.IN_TRANSIT  # units received that no shipment accounts for (yet)
    lv = await level(c, SKU, "s3")

    # Either batch re-sent (an outbox replay): duplicates, nothing changes.
    for b in (second, first, second):
        assert await applied(c, b) == (0, 1)
    assert await level(c, SKU, "s3") == lv
    assert await c.get_transfer("T-twice") == [t]
    assert await at(c, DC) == (7, 0, 7)


# -- received before shipped -------------------------------------------------------------------


async def test_received_before_shipped(admin: UnistockClient) -> None:
    c = admin
    assert await applied(c, batch("s4-till", into(1, 2, "T-early", "s4"))) == (1, 0)
    assert await at(c, "s4") == (2, 0, 2)  # in_transit never negative
    t = await record(c, "T-early")
    assert (t.origin_location_id, t.destination_location_id) == (DC, "s4")
    assert (t.state, line(t)) == (pb.IN_TRANSIT, (0, 2, 0, 0, 2))
    assert found(t) == [(pb.RECEIVED_BEFORE_SHIPPED, SKU, 2, "s4-till", 1)]

    # The shipment arrives at the record afterwards: received, nothing on the road.
    await applied(c, batch("wms", mv(1, "RECEIPT", SKU, DC, 10), out(2, 2, "T-early", "s4")))
    t = await shipped(c, "T-early", 2)
    assert (t.state, line(t)) == (pb.RECEIVED, (2, 2, 0, 0, 0))
    assert found(t) == [(pb.RECEIVED_BEFORE_SHIPPED, SKU, 2, "s4-till", 1)]
    assert await at(c, "s4") == (2, 0, 2)
    assert await at(c, DC) == (8, 0, 8)
    # and the level never showed a negative in_transit on the way: its version moved only with
    # the receipt (the shipment made no in_transit change)
    assert (await level(c, SKU, "s4")).version == 1


# -- movements after a close -------------------------------------------------------------------


async def test_movements_after_a_close_are_applied_and_recorded_once(admin: UnistockClient) -> None:
    """Received before shipped, closed (nothing in transit: nothing lost), then the shipment:
    open again with its remaining units in transit; closed short again; then the missing units
    turn up: they are received, no longer lost. Every step re-sent changes nothing."""
    c = admin
    early = batch("s9-till", into(1, 2, "T-late", "s9"))
    ship = batch("wms", mv(1, "RECEIPT", SKU, DC, 10), out(2, 5, "T-late", "s9"))
    late = batch("s9-till", into(2, 3, "T-late", "s9"))
    assert await applied(c, early) == (1, 0)
    t = await c.close_transfer("T-late", "s9")
    conserved(t)
    assert (t.state, line(t)) == (pb.CLOSED, (0, 2, 0, 0, 2))
    assert await at(c, "s9") == (2, 0, 2)

    assert await applied(c, ship) == (2, 0)
    t = await shipped(c, "T-late", 5)
    assert (t.state, line(t)) == (pb.IN_TRANSIT, (5, 2, 0, 3, 0))
    assert await at(c, "s9") == (2, 3, 2)

    t = await c.close_transfer("T-late", "s9")
    conserved(t)
    assert (t.state, line(t)) == (pb.CLOSED, (5, 2, 3, 0, 0))
    assert await at(c, "s9") == (2, 0, 2)

    assert await applied(c, late) == (1, 0)
    t = await record(c, "T-late", "s9")
    assert (t.state, line(t)) == (pb.CLOSED, (5, 5, 0, 0, 0))
    assert await at(c, "s9") == (5, 0, 5)
    assert found(t) == [
        (pb.RECEIVED_BEFORE_SHIPPED, SKU, 2, "s9-till", 1),
        (pb.SHIPPED_AFTER_CLOSE, SKU, 5, "wms", 2),
        (pb.CLOSED_SHORT, SKU, 3, "", 0),
        (pb.RECEIVED_AFTER_CLOSE, SKU, 3, "s9-till", 2),
    ]
    acks = await send(c, early, ship, late, batch("wms", out(3, 1, "T-late-marker", "s9")))
    assert [(a.applied, a.duplicates) for a in acks] == [(0, 1), (0, 2), (0, 1), (1, 0)]
    assert await c.close_transfer("T-late", "s9") == t
    await shipped(c, "T-late-marker", 1)  # shipments are applied in order: none came again
    assert await c.get_transfer("T-late") == [t]
    assert await at(c, "s9") == (5, 1, 5)
    assert await at(c, DC) == (4, 0, 4)


# -- shipped twice -----------------------------------------------------------------------------


@pytest.mark.parametrize("max_resident", [None, 1], ids=["resident", "passivated"])
async def test_shipped_twice_counts_each_parcel_once(
    make_server: MakeServer, clean_redis_url: str, max_resident: int | None
) -> None:
    opts: dict[str, Any] = {} if max_resident is None else {"max_resident": max_resident}
    srv = await make_server(clean_redis_url, **opts)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await applied(c, batch("wms", mv(1, "RECEIPT", SKU, DC, 20)))
        parcel1 = batch("wms", out(2, 4, "T-two", "s5"))
        parcel2 = batch("wms", out(3, 3, "T-two", "s5"))
        assert await applied(c, parcel1) == (1, 0)
        assert await applied(c, parcel1) == (0, 1)  # the same TRANSFER_OUT re-sent
        assert await applied(c, parcel2) == (1, 0)  # a second parcel of the same transfer
        # both re-sent on one stream, then a marker shipment of another transfer: shipments are
        # applied in order, so once the marker is on its record, any double would be too
        acks = await send(c, parcel1, parcel2, batch("wms", out(4, 1, "T-marker", "s5")))
        assert [(a.applied, a.duplicates) for a in acks] == [(0, 1), (0, 1), (1, 0)]
        await shipped(c, "T-marker", 1)
        t = await record(c, "T-two")
        assert (t.state, line(t), found(t)) == (pb.IN_TRANSIT, (7, 0, 0, 7, 0), [])
        assert await at(c, "s5") == (0, 8, 0)
        assert await at(c, DC) == (12, 0, 12)

        # Both parcels received in one go: RECEIVED, nothing left on the road for T-two.
        assert await applied(c, batch("s5-till", into(1, 7, "T-two", "s5"))) == (1, 0)
        t = await record(c, "T-two", "s5")
        assert (t.state, line(t), found(t)) == (pb.RECEIVED, (7, 7, 0, 0, 0), [])
        assert await at(c, "s5") == (7, 1, 7)
        passivated(srv, opts)


# -- in_transit on levels and watch streams ----------------------------------------------------


async def test_in_transit_is_shown_never_available(
    admin: UnistockClient, client: UnistockClient
) -> None:
    await applied(
        admin, batch("wms", mv(1, "RECEIPT", SKU, DC, 10), mv(2, "RECEIPT", SKU, "s6", 2))
    )
    seen: list[pb.StockLevel] = []
    snapshot = asyncio.Event()

    async def watch() -> None:
        async for msg in client.watch(location_ids=["s6"]):  # a channel's watch
            seen.extend(lv for lv in msg.levels if lv.sku == SKU)
            snapshot.set()
            if any(lv.on_hand == 5 for lv in msg.levels if lv.sku == SKU):
                return

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(snapshot.wait(), 10)
        await applied(admin, batch("wms", out(3, 3, "T-watch", "s6")))
        await shipped(client, "T-watch", 3)  # GetTransfer: a channel may read it
        lv = await level(client, SKU, "s6")
        assert (lv.on_hand, lv.in_transit, lv.available) == (2, 3, 2)
        # the units on the road cannot be promised
        with pytest.raises(InsufficientStockError) as err:
            await client.reserve("r-transit", [(SKU, "s6", 3)], kind="ORDER")
        assert [(s.requested, s.available) for s in err.value.short_lines] == [(3, 2)]

        async def streamed() -> bool:
            return any((lv.on_hand, lv.in_transit, lv.available) == (2, 3, 2) for lv in seen)

        await eventually(streamed, within=10, interval=0.02)

        await applied(admin, batch("s6-till", into(1, 3, "T-watch", "s6")))
        await asyncio.wait_for(watcher, 10)
    finally:
        watcher.cancel()
    states = [(lv.on_hand, lv.in_transit, lv.available) for lv in seen]
    assert states[0] == (2, 0, 2)
    assert (2, 3, 2) in states
    assert states[-1] == (5, 0, 5)
    assert all(a == max(0, o) for o, _, a in states), states
    assert [lv.version for lv in seen] == sorted(lv.version for lv in seen)
    assert await at(client, "s6") == (5, 0, 5)


async def test_a_destination_known_only_from_shipments_is_listed_by_sku(
    admin: UnistockClient, client: UnistockClient
) -> None:
    await applied(admin, batch("wms", mv(1, "RECEIPT", SKU, DC, 10), out(2, 5, "T-new", "s-new")))
    await shipped(client, "T-new", 5)
    assert await at(client, "s-new") == (0, 5, 0)  # by key: there
    by_sku = await client.get_availability(sku=SKU)
    snapshot: list[pb.StockLevel] = []
    async for msg in client.watch(skus=[SKU]):
        snapshot.extend(msg.levels)
        break
    assert sorted((lv.location_id, lv.in_transit) for lv in snapshot) == [
        (DC, 0),
        ("s-new", 5),
    ]
    assert sorted((lv.location_id, lv.on_hand, lv.in_transit) for lv in by_sku) == [
        (DC, 5, 0),
        ("s-new", 0, 5),
    ]


async def test_received_at_another_location_makes_two_records(admin: UnistockClient) -> None:
    """The TRANSFER_IN names another destination than the TRANSFER_OUT: one record each."""
    c = admin
    await applied(c, batch("wms", mv(1, "RECEIPT", SKU, DC, 10), out(2, 4, "T-lost", "s7")))
    await shipped(c, "T-lost", 4)
    await applied(c, batch("s8-till", into(1, 4, "T-lost", "s8")))
    records = {t.destination_location_id: t for t in await c.get_transfer("T-lost")}
    for t in records.values():
        conserved(t)
    assert sorted(records) == ["s7", "s8"]
    assert line(records["s7"]) == (4, 0, 0, 4, 0)
    assert line(records["s8"]) == (0, 4, 0, 0, 4)
    assert found(records["s8"]) == [(pb.RECEIVED_BEFORE_SHIPPED, SKU, 4, "s8-till", 1)]
    assert await at(c, "s7") == (0, 4, 0)
    assert await at(c, "s8") == (4, 0, 4)
    assert await c.get_transfer("T-lost", "s8") == [records["s8"]]


# -- bad input and roles -----------------------------------------------------------------------


async def error(coro: Any, code: grpc.StatusCode) -> UnistockClientError:
    with pytest.raises(UnistockClientError) as err:
        await coro
    assert err.value.code == code, err.value
    return err.value


async def test_counterpart_is_checked_and_nothing_is_applied_for_a_bad_one(
    admin: UnistockClient,
) -> None:
    c = admin
    [ack] = await send(
        c,
        batch(
            "wms",
            mv(1, "RECEIPT", SKU, DC, 10),
            mv(2, "TRANSFER_OUT", SKU, DC, 1, transfer_id="T-bad1"),  # no destination
            out(3, 1, "T-bad2", DC),  # to itself
            mv(4, "SALE", SKU, DC, 1, counterpart_location_id="s2"),  # not a transfer
            out(5, 1, "T-bad3", "no such place"),  # not an id
            into(6, 1, "T-bad4", DC, origin=DC),  # from itself
            mv(7, "TRANSFER_OUT", SKU, DC, 1, counterpart_location_id="s2"),  # no transfer_id
            out(8, 2, "T-good", "s2"),
        ),
    )
    assert ack.applied == 2
    assert [(r.seq, r.reason) for r in ack.rejections] == [
        (s, pb.INVALID_FIELD) for s in (2, 3, 4, 5, 6, 7)
    ]
    fields = {r.seq: r.detail for r in ack.rejections}
    for i, seq in enumerate((2, 3, 4, 5, 6), start=1):
        assert f"movements[{i}].counterpart_location_id" in fields[seq], fields[seq]
    assert "movements[6].transfer_id" in fields[7], fields[7]
    assert await at(c, DC) == (8, 0, 8)
    assert (await level(c, SKU, DC)).version == 2  # the receipt and T-good only
    await shipped(c, "T-good", 2)
    assert await at(c, "s2") == (0, 2, 0)
    for tid in ("T-bad1", "T-bad2", "T-bad3", "T-bad4"):
        await error(c.get_transfer(tid), grpc.StatusCode.NOT_FOUND)
    # Rejections are final (the proto: do not resend them); the corrected movement is a new one
    assert await applied(c, batch("wms", out(9, 1, "T-bad2", "s3"))) == (1, 0)
    await shipped(c, "T-bad2", 1)
    assert await at(c, DC) == (7, 0, 7)


async def test_get_and_close_transfer_arguments_and_roles(
    admin: UnistockClient, backoffice: UnistockClient, client: UnistockClient
) -> None:
    await applied(admin, batch("wms", mv(1, "RECEIPT", SKU, DC, 10), out(2, 5, "T-1", "s2")))
    t = await shipped(admin, "T-1", 5)

    invalid = grpc.StatusCode.INVALID_ARGUMENT
    for bad in ("", "has space", "a|b", "x" * 129):
        err = await error(admin.get_transfer(bad), invalid)
        assert "transfer_id" in err.details, err
        err = await error(admin.close_transfer(bad, "s2"), invalid)
        assert "transfer_id" in err.details, err
    for bad in ("has space", "a|b"):
        err = await error(admin.get_transfer("T-1", bad), invalid)
        assert "location_id" in err.details, err
    for bad in ("", "has space"):
        err = await error(admin.close_transfer("T-1", bad), invalid)
        assert "location_id" in err.details, err

    not_found = grpc.StatusCode.NOT_FOUND
    await error(admin.get_transfer("T-never"), not_found)
    await error(admin.get_transfer("T-1", "s9"), not_found)  # no record at that location
    await error(admin.close_transfer("T-never", "s2"), not_found)
    await error(admin.close_transfer("T-1", DC), not_found)  # the origin does not close it

    # Roles: a channel reads transfers, cannot close one; the back office can.
    assert await client.get_transfer("T-1") == [t]
    assert await backoffice.get_transfer("T-1", "s2") == [t]
    await error(client.close_transfer("T-1", "s2"), grpc.StatusCode.PERMISSION_DENIED)
    await error(client.close_transfer("T-never", ""), grpc.StatusCode.PERMISSION_DENIED)
    assert await admin.get_transfer("T-1") == [t]
    assert await at(admin, "s2") == (0, 5, 0)
    closed = await backoffice.close_transfer("T-1", "s2")
    assert (closed.state, line(closed)) == (pb.CLOSED, (5, 0, 5, 0, 0))
    assert found(closed) == [(pb.CLOSED_SHORT, SKU, 5, "", 0)]
    assert await at(admin, "s2") == (0, 0, 0)
