"""Wire messages to domain values and back; validation errors name the wire field."""

from __future__ import annotations

from collections.abc import Sequence

from unistock.server.domain import (
    AdjustmentSign,
    InvalidArgument,
    Line,
    Movement,
    MovementType,
    Position,
    ReserveRequest,
    StockKey,
    check_id,
)
from unistock.server.persistence.codec import position_entry
from unistock.v1 import inventory_pb2 as pb

#: Most movements accepted in one batch, and lines in one reservation.
MAX_BATCH = 10_000
MAX_LINES = 500
MAX_KEYS = 10_000


_TYPES = {t.value: t for t in MovementType}
_SIGNS = {s.value: s for s in AdjustmentSign}


def movement_from_wire(m: pb.Movement, prefix: str, source_id: str = "") -> Movement:
    """A validated domain Movement; raises InvalidArgument naming e.g. `movements[3].sku`.

    source_id, when given, stands in for the movement's own (a batch's movements usually leave
    it empty and inherit the batch's).
    """
    mtype = _TYPES.get(m.type)
    if mtype is None:
        raise InvalidArgument(prefix + "type", f"unknown or missing movement type {m.type}")
    sign: AdjustmentSign | None = None
    if m.adjustment_sign:
        sign = _SIGNS.get(m.adjustment_sign)
        if sign is None:
            raise InvalidArgument(
                prefix + "adjustment_sign", f"unknown adjustment sign {m.adjustment_sign}"
            )
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
                raise InvalidArgument(f"movements[{i}].seq", "must increase within a batch")
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


def lines_from_wire(lines: Sequence[pb.ReservationLine]) -> list[Line]:
    """Domain lines (validated later by the domain, which names `lines[i]`)."""
    if len(lines) > MAX_LINES:
        raise InvalidArgument("lines", f"at most {MAX_LINES} lines per reservation")
    return [Line(ln.sku, ln.location_id, ln.quantity) for ln in lines]


def reserve_from_wire(req: pb.ReserveRequest) -> ReserveRequest:
    """A validated ReserveRequest."""
    return ReserveRequest.build(
        req.reservation_id,
        lines_from_wire(req.lines),
        req.kind,
        req.ttl_seconds,
        req.channel,
        req.customer_id,
    )


def keys_from_wire(keys: Sequence[pb.StockKey]) -> list[StockKey]:
    """Validated stock keys."""
    if len(keys) > MAX_KEYS:
        raise InvalidArgument("keys", f"at most {MAX_KEYS} keys per request")
    return [
        (check_id(f"keys[{i}].sku", k.sku), check_id(f"keys[{i}].location_id", k.location_id))
        for i, k in enumerate(keys)
    ]


def levels_message(positions: Sequence[Position]) -> bytes:
    """A serialised GetAvailabilityResponse / WatchAvailabilityResponse with these levels."""
    return b"".join(position_entry(p) for p in positions)
