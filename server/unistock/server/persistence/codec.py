"""Byte formats of stored positions and reservation records.

A stored position is

    0x01 | version (8 bytes, big-endian) | varint len(level) | level | private

`version` lets the flush script refuse to overwrite a newer value with an older one (a flush
retried on a new connection after a timeout may race the old one). `level` is a serialised
`unistock.v1.StockLevel` without sku and location_id (they are the hash field), so a snapshot
builds wire messages from stored bytes without parsing them. `private` is a
`unistock.storage.v1.PositionPrivate`. The holds of reservations on a position are stored
apart from it (see hold_value and persistence.keys), so a position's stored form stays a few
dozen bytes however many carts hold it. A reservation record is `0x01 | revision (8 bytes) |
ReservationRecord`.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from unistock.server.domain import (
    Discrepancy,
    DiscrepancyKind,
    ItemCondition,
    Line,
    LineProgress,
    Move,
    Movement,
    MovementResult,
    MovementType,
    Outcome,
    Pickup,
    Position,
    Reservation,
    ReservationKind,
    ReservationState,
    StockKey,
    Transfer,
    TransferLine,
    Transition,
)
from unistock.storage.v1 import storage_pb2 as spb
from unistock.v1 import inventory_pb2 as pb

FORMAT = 1
_HEADER = struct.Struct(">BQ")


def _varint_slow(n: int) -> bytes:
    if 0x4000 <= n < 0x200000:  # three bytes: seqs and versions past 2**14 mostly
        return bytes(((n & 0x7F) | 0x80, ((n >> 7) & 0x7F) | 0x80, n >> 14))
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


#: Every varint below 2**14 (versions, seqs, levels and lengths mostly are): 0.5 MB once, and
#: then a list index instead of arithmetic for each of the dozen ints of every position write.
_VARINTS = [_varint_slow(i) for i in range(1 << 14)]
_SMALL = _VARINTS[:0x80]


def varint(n: int) -> bytes:
    """Protobuf base-128 varint of a non-negative int."""
    if n < 0x4000:
        return _VARINTS[n]
    return _varint_slow(n)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


# Positions are written on every change (bench B1 writes tens of thousands a second), so their
# two messages are serialised by hand: the same bytes as protobuf's own serialiser (fields in
# number order, proto3 zeros omitted, negative int64 as ten-byte two's complement), about four
# times faster than building the messages. tests/persistence/test_codec.py checks the bytes
# against SerializeToString for arbitrary positions.


def _int(tag: bytes, n: int) -> bytes:
    """An int64/uint64 field (tag byte + varint), empty for zero as proto3 does."""
    if 0 < n < 0x4000:
        return tag + _VARINTS[n]
    if n == 0:
        return b""
    return tag + _varint_slow(n if n > 0 else n + (1 << 64))


def _submessage(tag: bytes, body: bytes) -> bytes:
    return tag + varint(len(body)) + body


def _string_field(s: str) -> bytes:
    """Field 1 (a string) of a SourceMark or Hold."""
    b = s.encode()
    return b"\x0a" + varint(len(b)) + b


_SOURCES: dict[str, bytes] = {}


def _source_field(s: str) -> bytes:
    """_string_field of a source id, memoised (there are a few thousand sources at most)."""
    out = _SOURCES.get(s)
    if out is None:
        out = _string_field(s)
        if len(_SOURCES) >= 65536:
            _SOURCES.clear()
        _SOURCES[s] = out
    return out


def level_bytes(p: Position) -> bytes:
    """The StockLevel of p without sku and location_id, serialised."""
    on_hand, reserved, safety, version = p.on_hand, p.reserved, p.safety_stock, p.version
    free = on_hand - reserved - safety  # Position.available, inlined
    v = _VARINTS
    out = b"\x18" + v[on_hand] if 0 < on_hand < 0x4000 else _int(b"\x18", on_hand)
    if reserved:
        out += _int(b"\x20", reserved)
    if safety:
        out += _int(b"\x28", safety)
    if free > 0:
        out += b"\x30" + v[free] if free < 0x4000 else _int(b"\x30", free)
    out += b"\x38" + v[version] if 0 < version < 0x4000 else _int(b"\x38", version)
    damaged = p.non_sellable
    if damaged:
        out += _int(b"\x40", damaged)
    if reserved > 0 and on_hand < reserved:
        out += b"\x48\x01"  # at_risk
    if on_hand < 0 or damaged < 0:
        out += b"\x50\x01"  # negative
    if p.in_transit:
        out += _int(b"\x58", p.in_transit)
    return out


def private_bytes(p: Position) -> bytes:
    """The PositionPrivate of p, serialised."""
    out = b""
    m = p._marks
    if m is not None:
        v = _VARINTS
        for i in range(0, len(m), 2):
            seq: int = m[i + 1]  # type: ignore[assignment]
            body = _source_field(m[i]) + (  # type: ignore[arg-type]
                b"\x10" + v[seq] if 0 < seq < 0x4000 else _int(b"\x10", seq)
            )
            out += (
                b"\x0a" + v[len(body)] + body if len(body) < 0x4000 else _submessage(b"\x0a", body)
            )
    if p.counts is not None:
        for c in p.counts:
            b = c.encode()
            out += b"\x1a" + varint(len(b)) + b
    if p.spill is not None:
        out += b"\x28\x01"  # marks_spilled = true
    if p.holds is not None:
        out += b"\x30\x01"  # holds_apart = true: see hold_value
    return out


def hold_value(units: int, shipped: int) -> bytes:
    """A hold as stored in its position's holds hash: b"units" or b"units/shipped"; b"" when
    nothing is held (the field is deleted)."""
    if units <= 0:
        return b""
    return b"%d/%d" % (units, shipped) if shipped else b"%d" % units


def parse_hold(reservation_id: bytes | str, value: bytes) -> tuple[str, int, int]:
    """(reservation_id, units, shipped) of a stored hold field."""
    units, _, shipped = value.partition(b"/")
    rid = reservation_id.decode() if isinstance(reservation_id, bytes) else reservation_id
    return rid, int(units), int(shipped or 0)


def encode_position(p: Position) -> bytes:
    """The stored form of a position."""
    return encode_position_with_level(p)[1]


def encode_position_with_level(p: Position) -> tuple[bytes, bytes]:
    """(level, stored form) of a position: the level part is also what watchers receive."""
    level = level_bytes(p)
    return level, _HEADER.pack(FORMAT, p.version) + varint(len(level)) + level + private_bytes(p)


def split_position(data: bytes) -> tuple[bytes, bytes]:
    """(level, private) parts of a stored position, unparsed."""
    if data[0] != FORMAT:
        raise ValueError(f"unknown stored position format {data[0]}")
    n = data[_HEADER.size]
    if n < 0x80:  # the usual case: a level is a few bytes long
        start = _HEADER.size + 1
        return data[start : start + n], data[start + n :]
    n, start = _read_varint(data, _HEADER.size)
    return data[start : start + n], data[start + n :]


def decode_position(key: StockKey, data: bytes) -> Position:
    """A Position from its stored form, without the holds stored apart (see decode_stored)."""
    return decode_stored(key, data)[0]


def decode_stored(key: StockKey, data: bytes) -> tuple[Position, bool]:
    """(position, holds_apart) from a stored form: when holds_apart, the position's holds are
    in its holds hash and must be restored (Position.restore_holds) before it is used.

    Holds stored inside the position by earlier versions are taken and marked changed, so the
    next write moves them to the holds hash.
    """
    level_b, private_b = split_position(data)
    level = pb.StockLevel.FromString(level_b)
    private = spb.PositionPrivate.FromString(private_b)
    p = Position(
        key,
        on_hand=level.on_hand,
        non_sellable=level.non_sellable,
        in_transit=level.in_transit,
        safety_stock=level.safety_stock,
        version=level.version,
        marks=tuple((sys.intern(m.source_id), m.seq) for m in private.marks),
        holds=tuple((h.reservation_id, h.quantity) for h in private.holds),
        counts=tuple(private.recent_count_ids),
        shipped=tuple((h.reservation_id, h.shipped) for h in private.holds if h.shipped),
        spilled=private.marks_spilled,
    )
    if private.holds:
        p.holds_changed(h.reservation_id for h in private.holds)
    p.durable_available = level.available
    return p, private.holds_apart


def stock_level_entry(sku: bytes, location_id: bytes, level: bytes) -> bytes:
    """A `levels` entry (field 1) of WatchAvailabilityResponse / GetAvailabilityResponse.

    Concatenating entries yields a valid message with several levels: protobuf merges
    repeated fields by concatenation, so snapshots and fan-out serialise each level once.
    """
    inner = b"\x0a" + varint(len(sku)) + sku + b"\x12" + varint(len(location_id)) + location_id
    inner += level
    return b"\x0a" + varint(len(inner)) + inner


def stored_entry(field: bytes, value: bytes) -> bytes:
    """stock_level_entry of a stored (hash field, value), without parsing either.

    The hot loop of a snapshot (a million positions): one bytes formatting when every length
    fits in one varint byte, the general path otherwise.
    """
    location_id, _, sku = field.partition(b"|")
    n = value[_HEADER.size]
    ls, ll = len(sku), len(location_id)
    if n < 0x80 and ls + ll + n + 4 < 0x80:
        start = _HEADER.size + 1
        return b"\n%c\n%c%s\x12%c%s%s" % (
            ls + ll + n + 4,
            ls,
            sku,
            ll,
            location_id,
            value[start : start + n],
        )
    return stock_level_entry(sku, location_id, split_position(value)[0])


def position_entry(p: Position) -> bytes:
    """stock_level_entry of a live position."""
    return stock_level_entry(p.key[0].encode(), p.key[1].encode(), level_bytes(p))


# -- reservations ------------------------------------------------------------------------------


def _ts(seconds: float) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(round(seconds * 1000))  # the domain keeps times to the millisecond
    return ts


def _lines(lines: tuple[Line, ...]) -> list[pb.ReservationLine]:
    return [
        pb.ReservationLine(
            sku=ln.sku, location_id=ln.location_id, quantity=ln.quantity, network=ln.network
        )
        for ln in lines
    ]


def reservation_message(r: Reservation) -> pb.Reservation:
    """The wire form of a reservation."""
    msg = pb.Reservation(
        reservation_id=r.reservation_id,
        state=int(r.state),  # type: ignore[arg-type]
        lines=_lines(r.lines),
        kind=int(r.kind),  # type: ignore[arg-type]
        channel=r.channel,
        customer_id=r.customer_id,
        fulfilled=_lines(r.fulfilled),
        resourced=[
            pb.ReservationMove(
                sku=m.sku, from_location_id=m.origin, to_location_id=m.destination,
                quantity=m.quantity,
            )
            for m in r.resourced
        ],
    )  # fmt: skip
    if r.expires_at is not None:
        msg.expires_at.CopyFrom(_ts(r.expires_at))
    msg.created_at.CopyFrom(_ts(r.created_at))
    return msg


def encode_reservation(r: Reservation) -> bytes:
    """The stored form of a reservation record."""
    record = spb.ReservationRecord(
        reservation=reservation_message(r),
        request_fingerprint=r.fingerprint,
        pickup_records=[
            spb.Pickup(source_id=p.source_id, seq=p.seq, covered=p.covered) for p in r.pickups
        ],
        progress=[
            spb.LineProgress(
                sku=lp.sku,
                location_id=lp.location_id,
                shipped=lp.shipped,
                shipped_open=lp.shipped_open,
                sold_open=lp.sold_open,
            )
            for lp in r.progress
        ],
        requests=[spb.FulfilRequest(request_id=rid, fingerprint=fp) for rid, fp in r.requests],
        warned_expires_at_ms=(
            0 if r.warned_expires_at is None else round(r.warned_expires_at * 1000)
        ),
    )
    return _HEADER.pack(FORMAT, r.revision) + record.SerializeToString()


_M = TypeVar("_M", spb.ReservationRecord, spb.TransferRecord)


def _record(data: bytes, kind: type[_M]) -> tuple[int, _M]:
    """(revision, message) of a stored record: 0x01 | revision (8 bytes) | message."""
    fmt, revision = _HEADER.unpack_from(data)
    if fmt != FORMAT:
        raise ValueError(f"unknown stored {kind.__name__} format {fmt}")
    return revision, kind.FromString(data[_HEADER.size :])


def decode_reservation(data: bytes) -> Reservation:
    """A Reservation from its stored form."""
    revision, record = _record(data, spb.ReservationRecord)
    m = record.reservation

    def lines(src: object) -> tuple[Line, ...]:
        return tuple(Line(ln.sku, ln.location_id, ln.quantity, ln.network) for ln in src)  # type: ignore[attr-defined]

    return Reservation(
        reservation_id=m.reservation_id,
        state=ReservationState(m.state),
        kind=ReservationKind(m.kind),
        lines=lines(m.lines),
        created_at=m.created_at.ToMilliseconds() / 1000,
        expires_at=m.expires_at.ToMilliseconds() / 1000 if m.HasField("expires_at") else None,
        fingerprint=record.request_fingerprint,
        channel=m.channel,
        customer_id=m.customer_id,
        fulfilled=lines(m.fulfilled),
        revision=revision,
        pickups=(
            *(Pickup(p.source_id, p.seq) for p in record.pickups),
            *(Pickup(p.source_id, p.seq, p.covered) for p in record.pickup_records),
        ),
        progress=tuple(
            LineProgress(lp.sku, lp.location_id, lp.shipped, lp.shipped_open, lp.sold_open)
            for lp in record.progress
        ),
        requests=tuple((q.request_id, q.fingerprint) for q in record.requests),
        resourced=tuple(
            Move(x.sku, x.from_location_id, x.to_location_id, x.quantity, keep_network=True)
            for x in m.resourced
        ),
        warned_expires_at=(
            record.warned_expires_at_ms / 1000 if record.warned_expires_at_ms else None
        ),
    )


# -- transfers ---------------------------------------------------------------------------------


def transfer_message(t: Transfer) -> pb.Transfer:
    """The wire form of a transfer record."""
    return pb.Transfer(
        transfer_id=t.transfer_id,
        origin_location_id=t.origin,
        destination_location_id=t.destination,
        state=int(t.state),  # type: ignore[arg-type]
        lines=[
            pb.TransferLine(
                sku=ln.sku,
                shipped=ln.shipped,
                received=ln.received,
                in_transit=ln.in_transit,
                lost=ln.lost,
                unexpected=ln.unexpected,
            )
            for ln in t.lines
        ],
        discrepancies=_discrepancies(t.discrepancies),
    )


def _discrepancies(found: Iterable[Discrepancy]) -> list[pb.TransferDiscrepancy]:
    return [
        pb.TransferDiscrepancy(
            kind=int(d.kind),  # type: ignore[arg-type]
            sku=d.sku,
            quantity=d.quantity,
            source_id=d.source_id,
            seq=d.seq,
        )
        for d in found
    ]


def encode_transfer(t: Transfer) -> bytes:
    """The stored form of a transfer record: 0x01 | revision (8 bytes) | TransferRecord."""
    record = spb.TransferRecord(
        transfer=transfer_message(t),
        applied=[spb.SourceMark(source_id=s, seq=q) for s, q in t.applied],
    )
    return _HEADER.pack(FORMAT, t.revision) + record.SerializeToString()


def decode_transfer(data: bytes) -> Transfer:
    """A transfer record from its stored form."""
    revision, record = _record(data, spb.TransferRecord)
    m = record.transfer
    return Transfer(
        transfer_id=m.transfer_id,
        destination=m.destination_location_id,
        origin=m.origin_location_id,
        lines=tuple(TransferLine(ln.sku, ln.shipped, ln.received, ln.lost) for ln in m.lines),
        closed=m.state == pb.CLOSED,
        discrepancies=tuple(
            Discrepancy(DiscrepancyKind(d.kind), d.sku, d.quantity, d.source_id, d.seq)
            for d in m.discrepancies
        ),
        applied=tuple((a.source_id, a.seq) for a in record.applied),
        revision=revision,
    )


def shipment_field(m: Movement) -> str:
    """The outbox field of a TRANSFER_OUT's shipment: "<source_id>|<seq>" (unique)."""
    return f"{m.source_id}|{m.seq}"


def encode_shipment(m: Movement) -> bytes:
    """The stored form of a TRANSFER_OUT's shipment (see storage.proto Shipment)."""
    return spb.Shipment(
        transfer_id=m.transfer_id,
        sku=m.sku,
        quantity=m.quantity,
        origin_location_id=m.location_id,
        destination_location_id=m.counterpart_location_id,
        source_id=m.source_id,
        seq=m.seq,
    ).SerializeToString()


def decode_shipment(data: bytes) -> Movement:
    """The TRANSFER_OUT a stored shipment came from."""
    s = spb.Shipment.FromString(data)
    return Movement(
        s.source_id,
        s.seq,
        s.sku,
        s.origin_location_id,
        MovementType.TRANSFER_OUT,
        s.quantity,
        transfer_id=s.transfer_id,
        counterpart_location_id=s.destination_location_id,
    )


# The change feed's stream entries (see storage.proto FeedExtra and the flush script): groups,
# each a kind byte, a key (varint length first) and the number of its changes (varint), then
# the changes. Kind 1: a position written, key its stored field "<location_id>|<sku>", each
# change
#
#     version (u64) | at_ms (u64) | seq (u64) | quantity (i64) | on_hand_delta (i64) |
#     on_hand after (i64) | available after (i64) | type (u8) | flags (u8) |
#     u8 len(source_id) | source_id | [varint len | FeedExtra]   (big-endian)
#
# flags: 1 = a FeedExtra follows. Type 0 (FULFILMENT): units shipped by a reservation's
# fulfilment (source "", seq 0, quantity the units, the reservation in the FeedExtra).
# Kind 2: a reservation record written, key its id, each change its revision (u64) then a
# ReservationChange (varint length first); kinds 3 and 4 alike: a transfer record (key
# "<destination>|<transfer_id>", TransferChange), a store's status (key its id,
# StoreStatusChange, see store_status_change) and kind 5 a network level's stock class (key
# "<network>|<sku>", NetworkLevelChange, see network_level_change). Every change starts with the version (revision) of
# the state it leads to: the script skips those the stored state already has. The version comes first: the script compares it with the
# stored position's to skip a change already in the feed. A fixed binary part instead of a
# protobuf message because every applied movement is one (bench B1/B11: ~0.5 us instead of
# ~1.8 us a movement); decode_feed reads it back.
_FEED_FIXED = struct.Struct(">QQQqqqqBB")
#: on_hand_delta, on_hand after, type and flags of a change, skipping the rest
#: (decode_feed(notable=True)).
_FEED_PEEK = struct.Struct(">32xqq8xBB")
FEED_EXTRA = 1
#: The type of a change that is a fulfilment's shipment, not a movement.
FULFILMENT = 0
#: The type of a change that records a position's stock level class or reservations at risk,
#: not a movement (see level_change).
LEVEL = 255
#: Stock level classes of a position's available (see level_class).
OUT, LOW, OK = 0, 1, 2


def level_class(available: int, low_stock_threshold: int) -> int:
    """OUT (available 0), LOW (1 to low_stock_threshold units) or OK (above it)."""
    if available <= 0:
        return OUT
    return LOW if available <= low_stock_threshold else OK


def level_change(
    at_ms: int,
    version: int,
    before: int,
    after: int,
    on_hand: int,
    available: int,
    at_risk: dict[str, int] | None = None,
) -> bytes:
    """The stored form of a LEVEL change: a position's level class went from `before` to
    `after` (OUT, LOW, OK; equal when only at_risk is news) with the write of `version`;
    at_risk: the reservations holding units there that a movement has just left at risk (id ->
    units held). Same fixed part as feed_change: seq holds before * 4 + after, quantity and
    on_hand_delta are 0, no source."""
    fixed = _FEED_FIXED.pack(
        version, at_ms, before * 4 + after, 0, 0, on_hand, available, LEVEL,
        FEED_EXTRA if at_risk else 0,
    )  # fmt: skip
    if not at_risk:
        return fixed + b"\x00"
    extra = spb.FeedExtra(
        at_risk=[spb.Hold(reservation_id=rid, quantity=q) for rid, q in at_risk.items()]
    ).SerializeToString()
    return fixed + b"\x00" + varint(len(extra)) + extra


class FeedRecord(NamedTuple):
    """A movement applied to a position, as read back from the change feed."""

    sku: str
    location_id: str
    version: int
    at_ms: int
    source_id: str
    seq: int
    #: None: units shipped by the fulfilment of extra.reservation_id (no movement)
    type: MovementType | None
    quantity: int
    #: on_hand after minus before (a COUNT: its variance)
    on_hand_delta: int
    on_hand: int
    available: int
    #: the rare fields (condition, reservation, count, transfer, reason, non_sellable...)
    extra: spb.FeedExtra | None


class LevelFeedRecord(NamedTuple):
    """A position's level class change or reservations left at risk there, as read back from
    the change feed (see level_change)."""

    sku: str
    location_id: str
    version: int
    at_ms: int
    #: level classes (OUT, LOW, OK) before and after the write
    before: int
    after: int
    on_hand: int
    available: int
    #: (reservation_id, units held) left at risk by a movement
    at_risk: tuple[tuple[str, int], ...]


class ReservationFeedRecord(NamedTuple):
    """A reservation's transitions, as read back from the change feed."""

    reservation_id: str
    revision: int
    at_ms: int
    transitions: tuple[int, ...]
    #: the record after them (wire form)
    reservation: pb.Reservation


class TransferFeedRecord(NamedTuple):
    """A transfer record's new discrepancies, as read back from the change feed."""

    destination: str
    transfer_id: str
    revision: int
    at_ms: int
    #: the discrepancies this change recorded (wire form)
    discrepancies: tuple[pb.TransferDiscrepancy, ...]
    #: the record after them (wire form)
    transfer: pb.Transfer


class StoreStatusFeedRecord(NamedTuple):
    """A store's status change (stale <-> fresh), as read back from the change feed."""

    store_id: str
    revision: int
    at_ms: int
    #: True: fresh again; False: stale
    online: bool
    #: when the server last heard from its agent (ms since the Unix epoch)
    last_heard_ms: int
    #: why, for people
    reason: str


class NetworkLevelFeedRecord(NamedTuple):
    """A network level's stock class change, as read back from the change feed."""

    network: str
    sku: str
    revision: int
    at_ms: int
    #: stock classes (OUT, LOW, OK) before (as last published by this server) and after
    before: int
    after: int
    #: the network level then (NetworkLevel's available, locations, stale_locations)
    available: int
    locations: int
    stale_locations: int
    #: the network's low_stock_threshold then (units)
    low_stock_threshold: int


FEED_POSITION, FEED_RESERVATION, FEED_TRANSFER, FEED_STORE, FEED_NETWORK = 1, 2, 3, 4, 5
_REVISION = struct.Struct(">Q")


def network_level_change(
    revision: int, at_ms: int, level: pb.NetworkLevel, before: int, after: int, threshold: int
) -> bytes:
    """The stored form of a network level's stock class change (a group of kind FEED_NETWORK,
    key "<network>|<sku>"): its revision (8 bytes; the flush script keeps it with the class)
    then a NetworkLevelChange (varint length first)."""
    msg = spb.NetworkLevelChange(
        at_ms=at_ms,
        network=level.network,
        sku=level.sku,
        before=before,
        after=after,
        available=level.available,
        locations=level.locations,
        stale_locations=level.stale_locations,
        low_stock_threshold=threshold,
    ).SerializeToString()
    return _REVISION.pack(revision) + varint(len(msg)) + msg


def network_level_value(revision: int, stock_class: int) -> bytes:
    """A network level's last published stock class as kept in us:{p}:netstat: revision (8
    bytes, big-endian) then b"0" (OUT), b"1" (LOW) or b"2" (OK)."""
    return _REVISION.pack(revision) + str(stock_class).encode()


def parse_network_level_value(value: bytes) -> tuple[int, int]:
    """(revision, class) of a network_level_value."""
    return _REVISION.unpack_from(value)[0], int(value[8:])


def store_status_change(
    revision: int, at_ms: int, store_id: str, online: bool, last_heard_ms: int, reason: str
) -> bytes:
    """The stored form of a store's status change (a group of kind FEED_STORE, key the store
    id): its revision (8 bytes; the flush script keeps it with the store's status) then a
    StoreStatusChange (varint length first)."""
    msg = spb.StoreStatusChange(
        at_ms=at_ms, store_id=store_id, online=online, last_heard_ms=last_heard_ms, reason=reason
    ).SerializeToString()
    return _REVISION.pack(revision) + varint(len(msg)) + msg


def store_status_value(revision: int, online: bool) -> bytes:
    """A store's last published status as kept in us:{p}:storestat: revision (8 bytes,
    big-endian) then b"1" (online) or b"0" (offline)."""
    return _REVISION.pack(revision) + (b"1" if online else b"0")


def transfer_change(at_ms: int, found: Sequence[Discrepancy], record: Transfer) -> bytes:
    """The stored form of a transfer record's feed change: the discrepancies a change of it
    recorded, with the record after it (a group of kind FEED_TRANSFER, key
    "<destination>|<transfer_id>")."""
    msg = spb.TransferChange(
        at_ms=at_ms, discrepancies=_discrepancies(found), transfer=transfer_message(record)
    ).SerializeToString()
    return _REVISION.pack(record.revision) + varint(len(msg)) + msg


def reservation_change(at_ms: int, kinds: list[Transition], record: Reservation) -> bytes:
    """The stored form of a reservation's feed change (see above)."""
    msg = spb.ReservationChange(
        at_ms=at_ms,
        transitions=[int(k) for k in kinds],  # type: ignore[misc]
        reservation=reservation_message(record),
    ).SerializeToString()
    return _REVISION.pack(record.revision) + varint(len(msg)) + msg


_SOURCE_BYTES: dict[str, bytes] = {}


def feed_change(
    at_ms: int,
    m: Movement | None,
    r: MovementResult | None,
    on_hand_delta: int,
    non_sellable_delta: int,
    on_hand: int,
    non_sellable: int,
    available: int,
    version: int,
    reservation_id: str = "",
) -> bytes:
    """The stored form of one feed change (see above): a movement m applied with result r, or
    (m and r None) units shipped by reservation_id's fulfilment; what it did to on_hand and
    non_sellable, and the position after it. A fulfilment's shipment (no movement) has type 0, no source,
    seq 0, the units shipped as quantity and its reservation in the FeedExtra. Called once per
    movement applied: positional arguments, no intermediate object."""
    if m is None or r is None:
        extra = spb.FeedExtra(reservation_id=reservation_id).SerializeToString()
        fixed = _FEED_FIXED.pack(
            version, at_ms, 0, -on_hand_delta, on_hand_delta, on_hand,
            available, FULFILMENT, FEED_EXTRA,
        )  # fmt: skip
        return fixed + b"\x00" + varint(len(extra)) + extra
    source = _SOURCE_BYTES.get(m.source_id)
    if source is None:
        raw = m.source_id.encode()
        source = bytes((len(raw),)) + raw
        if len(_SOURCE_BYTES) >= 65536:
            _SOURCE_BYTES.clear()
        _SOURCE_BYTES[m.source_id] = source
    rare = (
        m.reservation_id
        or m.count_id
        or m.transfer_id
        or m.counterpart_location_id
        or m.reason
        or m.adjustment_sign
        or m.condition is not ItemCondition.SELLABLE
        or r.outcome is not Outcome.APPLIED
        or r.variance
        or non_sellable_delta
        or non_sellable
    )
    fixed = _FEED_FIXED.pack(
        version,
        at_ms,
        m.seq,
        m.quantity,
        on_hand_delta,
        on_hand,
        available,
        m.type,
        FEED_EXTRA if rare else 0,
    )
    if not rare:
        return fixed + source
    extra = spb.FeedExtra(
        condition=int(m.condition),  # type: ignore[arg-type]
        adjustment_sign=int(m.adjustment_sign or 0),  # type: ignore[arg-type]
        reservation_id=m.reservation_id,
        count_id=m.count_id,
        transfer_id=m.transfer_id,
        counterpart_location_id=m.counterpart_location_id,
        reason=m.reason,
        count_correction=r.outcome is Outcome.COUNT_CORRECTION,
        non_sellable_delta=non_sellable_delta,
        non_sellable=non_sellable,
        variance=r.variance,
        picked_up=r.picked_up,
    ).SerializeToString()
    return fixed + source + varint(len(extra)) + extra


#: A change read back from the feed.
AnyFeedRecord = (
    FeedRecord
    | LevelFeedRecord
    | ReservationFeedRecord
    | TransferFeedRecord
    | StoreStatusFeedRecord
    | NetworkLevelFeedRecord
)


_C = TypeVar("_C", spb.TransferChange, spb.StoreStatusChange, spb.NetworkLevelChange)


def _revised(entry: bytes, pos: int, count: int, message: type[_C]) -> list[tuple[int, _C]]:
    """`count` changes from pos that each are a revision then a message (varint length first)."""
    out = []
    for _ in range(count):
        (revision,) = _REVISION.unpack_from(entry, pos)
        n, pos = _read_varint(entry, pos + 8)
        out.append((revision, message.FromString(entry[pos : pos + n])))
        pos += n
    return out


def _transfer_records(key: str, entry: bytes, pos: int, count: int) -> list[TransferFeedRecord]:
    destination, _, transfer_id = key.partition("|")
    return [
        TransferFeedRecord(
            destination,
            transfer_id,
            revision,
            change.at_ms,
            tuple(change.discrepancies),
            change.transfer,
        )
        for revision, change in _revised(entry, pos, count, spb.TransferChange)
    ]


def _store_records(entry: bytes, pos: int, count: int) -> list[StoreStatusFeedRecord]:
    return [
        StoreStatusFeedRecord(m.store_id, revision, m.at_ms, m.online, m.last_heard_ms, m.reason)
        for revision, m in _revised(entry, pos, count, spb.StoreStatusChange)
    ]


def _network_records(entry: bytes, pos: int, count: int) -> list[NetworkLevelFeedRecord]:
    return [
        NetworkLevelFeedRecord(
            m.network,
            m.sku,
            revision,
            m.at_ms,
            m.before,
            m.after,
            m.available,
            m.locations,
            m.stale_locations,
            m.low_stock_threshold,
        )
        for revision, m in _revised(entry, pos, count, spb.NetworkLevelChange)
    ]


def _skip_changes(entry: bytes, pos: int, count: int) -> int:
    """Past `count` changes that each start with a revision and a length (reservation,
    transfer, store status and network level groups)."""
    for _ in range(count):
        n, pos = _read_varint(entry, pos + 8)
        pos += n
    return pos


def decode_feed(entry: bytes, *, notable: bool = False) -> list[AnyFeedRecord]:
    """The changes of one feed stream entry, in order. notable: only those that can make an
    event (actors.events): a plain movement (no FeedExtra) that did not take on_hand below 0 is
    skipped without being decoded, which is most of them."""
    out: list[AnyFeedRecord] = []
    pos, end = 0, len(entry)
    unpack, peek = _FEED_FIXED.unpack_from, _FEED_PEEK.unpack_from
    size = _FEED_FIXED.size
    while pos < end:
        kind = entry[pos]
        n, pos = _read_varint(entry, pos + 1)
        raw = entry[pos : pos + n]
        pos += n
        count, pos = _read_varint(entry, pos)
        if kind == FEED_RESERVATION:
            key = raw.decode()
            for _ in range(count):
                (revision,) = _REVISION.unpack_from(entry, pos)
                n, pos = _read_varint(entry, pos + 8)
                change = spb.ReservationChange.FromString(entry[pos : pos + n])
                pos += n
                out.append(
                    ReservationFeedRecord(
                        key, revision, change.at_ms, tuple(change.transitions), change.reservation
                    )
                )
            continue
        if kind == FEED_TRANSFER:
            out += _transfer_records(raw.decode(), entry, pos, count)
            pos = _skip_changes(entry, pos, count)
            continue
        if kind == FEED_STORE:
            out += _store_records(entry, pos, count)
            pos = _skip_changes(entry, pos, count)
            continue
        if kind == FEED_NETWORK:
            out += _network_records(entry, pos, count)
            pos = _skip_changes(entry, pos, count)
            continue
        sku = ""  # decoded with the group's first change kept
        for _ in range(count):
            if notable:  # a look at on_hand, type and flags first: most changes stop here
                delta, on_hand, mtype, flags = peek(entry, pos)
                if not flags and mtype != LEVEL and not on_hand < 0 <= on_hand - delta:
                    pos += size + 1 + entry[pos + size]
                    continue
            version, at_ms, seq, qty, delta, on_hand, available, mtype, flags = unpack(entry, pos)
            if not sku:
                location_id, _, sku = raw.decode().partition("|")
            pos += size
            n = entry[pos]
            source_id = entry[pos + 1 : pos + 1 + n].decode()
            pos += 1 + n
            extra = None
            if flags & FEED_EXTRA:
                n, pos = _read_varint(entry, pos)
                extra = spb.FeedExtra.FromString(entry[pos : pos + n])
                pos += n
            if mtype == LEVEL:
                held = tuple((h.reservation_id, h.quantity) for h in extra.at_risk) if extra else ()
                out.append(
                    LevelFeedRecord(
                        sku, location_id, version, at_ms, seq >> 2, seq & 3, on_hand,
                        available, held,
                    )
                )  # fmt: skip
                continue
            out.append(
                FeedRecord(
                    sku, location_id, version, at_ms, source_id, seq,
                    MovementType(mtype) if mtype != FULFILMENT else None, qty,
                    delta, on_hand, available, extra,
                )
            )  # fmt: skip
    return out
