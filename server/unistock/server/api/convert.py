"""Wire messages to domain values and back; validation errors name the wire field."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.timestamp_pb2 import Timestamp

from unistock.server.domain import (
    AdjustmentSign,
    InvalidArgument,
    ItemCondition,
    Line,
    Movement,
    MovementType,
    Position,
    ReserveRequest,
    StockKey,
    check_id,
)
from unistock.server.domain.values import (
    MAX_CHANNEL,
    MAX_CUSTOMER_ID,
    MAX_TTL_SECONDS,
    check_seconds,
    check_text,
    id_ok,
)
from unistock.server.persistence.codec import position_entry
from unistock.v1 import inventory_pb2 as pb

if TYPE_CHECKING:
    from unistock.server.actors.inventory import PickupMismatch

#: Most movements accepted in one batch, and lines in one reservation.
MAX_BATCH = 10_000
MAX_LINES = 500
MAX_KEYS = 10_000
#: Bounds of one watch filter (see WatchAvailabilityRequest): one watcher cannot stall others.
MAX_WATCH_SKUS = 10_000
MAX_WATCH_LOCATIONS = 1_000
MAX_KNOWN_VERSIONS = 100_000
MAX_WATCH_POSITIONS = 1_000_000

#: The range of a google.protobuf.Timestamp: 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z.
TIMESTAMP_MIN_SECONDS = -62_135_596_800
TIMESTAMP_MAX_SECONDS = 253_402_300_799


@dataclass(frozen=True, slots=True)
class Undecodable:
    """What a request deserializer returns for bytes that are not its message (it never raises:
    an exception there would reach the client as UNKNOWN and end a whole stream)."""

    message: str
    error: str

    def problem(self) -> InvalidArgument:
        """The refusal naming the request message."""
        return InvalidArgument(self.message, f"undecodable {self.message}: {self.error}")


def lenient_deserializer(cls: Any) -> Any:
    """A deserializer for cls returning an Undecodable instead of raising."""
    name = cls.DESCRIPTOR.name

    def parse(data: bytes) -> Any:
        try:
            return cls.FromString(data)
        except Exception as exc:  # DecodeError, RecursionError on absurd nesting, ...
            return Undecodable(name, str(exc) or type(exc).__name__)

    return parse


def timestamp_from_wire(field_name: str, ts: Timestamp) -> float:
    """Seconds since the epoch of a valid Timestamp; raises InvalidArgument naming the field."""
    if not 0 <= ts.nanos <= 999_999_999:
        raise InvalidArgument(field_name, f"nanos must be 0 to 999,999,999, got {ts.nanos:,}")
    if not TIMESTAMP_MIN_SECONDS <= ts.seconds <= TIMESTAMP_MAX_SECONDS:
        raise InvalidArgument(
            field_name,
            "must lie within 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, "
            f"got seconds={ts.seconds:,}",
        )
    return ts.seconds + ts.nanos / 1e9


def expiry_from_wire(req: pb.ExtendReservationRequest, now: float) -> float:
    """The new expiry of an ExtendReservationRequest: exactly one of expires_at (in the future,
    at most 366 days ahead) and ttl_seconds (1 to 31,622,400)."""
    has_at = req.HasField("expires_at")
    if has_at == bool(req.ttl_seconds):
        raise InvalidArgument(
            "expires_at",
            "give exactly one of expires_at and ttl_seconds" + (", not both" if has_at else ""),
        )
    if not has_at:
        return now + check_seconds("ttl_seconds", req.ttl_seconds, minimum=1)
    at = timestamp_from_wire("expires_at", req.expires_at)
    if at <= now:
        raise InvalidArgument("expires_at", "must be in the future")
    if at > now + MAX_TTL_SECONDS:
        raise InvalidArgument(
            "expires_at", f"must be at most 366 days ({MAX_TTL_SECONDS:,} s) from now"
        )
    return at


_TYPES = {t.value: t for t in MovementType}
_SIGNS = {s.value: s for s in AdjustmentSign}
_CONDITIONS = {c.value: c for c in ItemCondition}


def movement_from_wire(m: pb.Movement, prefix: str, source_id: str = "") -> Movement:
    """A validated domain Movement; raises InvalidArgument naming e.g. `movements[3].sku`.

    source_id, when given, stands in for the movement's own (a batch's movements usually leave
    it empty and inherit the batch's).
    """
    mtype = _TYPES.get(m.type)
    if mtype is None:
        raise InvalidArgument(prefix + "type", f"unknown or missing movement type {m.type}")
    if m.HasField("occurred_at"):
        timestamp_from_wire(prefix + "occurred_at", m.occurred_at)
    sign: AdjustmentSign | None = None
    if m.adjustment_sign:
        sign = _SIGNS.get(m.adjustment_sign)
        if sign is None:
            raise InvalidArgument(
                prefix + "adjustment_sign", f"unknown adjustment sign {m.adjustment_sign}"
            )
    condition = ItemCondition.SELLABLE
    if m.condition:
        found = _CONDITIONS.get(m.condition)
        if found is None:
            raise InvalidArgument(prefix + "condition", f"unknown item condition {m.condition}")
        condition = found
    return Movement(
        source_id or m.source_id,
        m.seq,
        m.sku,
        m.location_id,
        mtype,
        m.quantity,
        m.reservation_id,
        m.count_id,
        m.transfer_id,
        m.reason,
        sign,
        tuple(m.epc) if m.epc else (),
        condition,
        m.counterpart_location_id,
    ).validate(prefix)


def rejection(source_id: str, seq: int, exc: InvalidArgument) -> pb.Rejection:
    """The wire rejection of a movement that failed validation."""
    if exc.field.endswith("quantity"):
        reason = pb.BAD_QUANTITY
    elif exc.field.endswith("source_id") and "differs" in exc.problem:
        reason = pb.WRONG_SOURCE
    else:
        reason = pb.INVALID_FIELD
    return pb.Rejection(source_id=source_id, seq=seq, reason=reason, detail=str(exc))


def batch_from_wire(batch: pb.MovementBatch) -> tuple[list[Movement], list[pb.Rejection]]:
    """The valid movements of a batch, and a rejection naming the field for each invalid one.

    Rejections are per movement: one bad line from a till does not hold back the others.
    """
    try:
        check_id("source_id", batch.source_id)
        if not batch.movements:
            raise InvalidArgument("movements", "a batch needs at least one movement")
        if len(batch.movements) > MAX_BATCH:
            raise InvalidArgument("movements", f"at most {MAX_BATCH} movements per batch")
    except InvalidArgument as exc:
        return [], [rejection(batch.source_id, m.seq, exc) for m in batch.movements] or [
            rejection(batch.source_id, 0, exc)
        ]
    out: list[Movement] = []
    rejected: list[pb.Rejection] = []
    last = 0
    source_id = batch.source_id
    for i, wm in enumerate(batch.movements):
        try:
            if wm.source_id and wm.source_id != source_id:
                raise InvalidArgument(
                    f"movements[{i}].source_id", "differs from the batch's source_id"
                )
            if wm.seq <= last:
                # 0 is invalid in itself (seqs start at 1), not out of order.
                problem = "must be >= 1, got 0" if not wm.seq else "must increase within a batch"
                raise InvalidArgument(f"movements[{i}].seq", problem)
            # The field prefix is only needed for an error: validate without it, and name the
            # field again on the (rare) failure.
            try:
                out.append(movement_from_wire(wm, "", source_id))
            except InvalidArgument as exc:
                raise InvalidArgument(f"movements[{i}].{exc.field}", exc.problem) from None
            last = wm.seq
        except InvalidArgument as exc:
            rejected.append(rejection(source_id, wm.seq, exc))
    return out, rejected


def too_large(batch: pb.MovementBatch, detail: str, max_payload_bytes: int) -> pb.MovementAck:
    """The ack of a batch refused whole for its size: one BATCH_TOO_LARGE rejection (seq 0: it
    settles no movement), the server's limits, and no SourceAck (no progress)."""
    source = batch.source_id if id_ok(batch.source_id) else ""
    return pb.MovementAck(
        rejections=[pb.Rejection(source_id=source, reason=pb.BATCH_TOO_LARGE, detail=detail)],
        batch_id=batch.batch_id,
        limits=pb.BatchLimits(max_movements=MAX_BATCH, max_payload_bytes=max_payload_bytes),
    )


def lines_from_wire(lines: Sequence[pb.ReservationLine]) -> list[Line]:
    """Domain lines (validated later by the domain, which names `lines[i]`)."""
    if len(lines) > MAX_LINES:
        raise InvalidArgument("lines", f"at most {MAX_LINES} lines per reservation")
    return [Line(ln.sku, ln.location_id, ln.quantity, ln.network) for ln in lines]


def reserve_from_wire(req: pb.ReserveRequest) -> ReserveRequest:
    """A validated ReserveRequest."""
    return ReserveRequest.build(
        req.reservation_id,
        lines_from_wire(req.lines),
        req.kind,
        check_seconds("ttl_seconds", req.ttl_seconds),
        check_text("channel", req.channel, MAX_CHANNEL),
        check_text("customer_id", req.customer_id, MAX_CUSTOMER_ID),
    )


def keys_from_wire(keys: Sequence[pb.StockKey]) -> list[StockKey]:
    """Validated stock keys."""
    if len(keys) > MAX_KEYS:
        raise InvalidArgument("keys", f"at most {MAX_KEYS} keys per request")
    return [
        (check_id(f"keys[{i}].sku", k.sku), check_id(f"keys[{i}].location_id", k.location_id))
        for i, k in enumerate(keys)
    ]


def watch_filter_from_wire(
    req: pb.WatchAvailabilityRequest, known_locations: int
) -> tuple[frozenset[str], frozenset[str], dict[StockKey, int]]:
    """The (skus, locations, known versions) of a watch filter, within the filter limits.

    known_locations is how many locations the server knows (a filter of SKUs without
    locations selects each SKU at every one of them).
    """
    for name, values, most in (
        ("skus", req.skus, MAX_WATCH_SKUS),
        ("location_ids", req.location_ids, MAX_WATCH_LOCATIONS),
        ("known_versions", req.known_versions, MAX_KNOWN_VERSIONS),
    ):
        if len(values) > most:
            raise InvalidArgument(
                name,
                f"at most {most:,} per watch, got {len(values):,}; watch by location or split "
                "the filter over several streams",
            )
    skus = frozenset(check_id(f"skus[{i}]", s) for i, s in enumerate(req.skus))
    locations = frozenset(check_id(f"location_ids[{i}]", s) for i, s in enumerate(req.location_ids))
    positions = len(skus) * (len(locations) or known_locations)
    if positions > MAX_WATCH_POSITIONS:
        across = "location_ids" if locations else f"the {known_locations:,} locations known"
        raise InvalidArgument(
            "skus",
            f"skus x {across} selects {positions:,} positions, at most "
            f"{MAX_WATCH_POSITIONS:,} per watch; watch by location or split the filter over "
            "several streams",
        )
    known = {
        (
            check_id(f"known_versions[{i}].sku", k.sku),
            check_id(f"known_versions[{i}].location_id", k.location_id),
        ): k.version
        for i, k in enumerate(req.known_versions)
    }
    return skus, locations, known


def ack_feedback(
    notices: Sequence[PickupMismatch], refused: Sequence[tuple[Movement, InvalidArgument]]
) -> tuple[list[pb.Notice], list[pb.Rejection]]:
    """The wire notices (PICKUP_MISMATCH) and rejections (INVALID_FIELD) of a BatchResult's
    notices and refused movements."""
    return [
        pb.Notice(
            source_id=n.source_id,
            seq=n.seq,
            kind=pb.PICKUP_MISMATCH,
            reservation_id=n.reservation_id,
            detail=n.detail,
        )
        for n in notices
    ], [rejection(m.source_id, m.seq, exc) for m, exc in refused]


def levels_message(positions: Sequence[Position]) -> bytes:
    """A serialised GetAvailabilityResponse / WatchAvailabilityResponse with these levels."""
    return b"".join(position_entry(p) for p in positions)
