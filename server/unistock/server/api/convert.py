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


def movement_from_wire(m: pb.Movement, prefix: str) -> Movement:
    """A validated domain Movement; raises InvalidArgument naming e.g. `movements[3].sku`."""
    try:
        mtype = MovementType(m.type)
    except ValueError:
        raise InvalidArgument(
            prefix + "type", f"unknown or missing movement type {m.type}"
        ) from None
    sign: AdjustmentSign | None = None
    if m.adjustment_sign:
        try:
            sign = AdjustmentSign(m.adjustment_sign)
        except ValueError:
            raise InvalidArgument(
                prefix + "adjustment_sign", f"unknown adjustment sign {m.adjustment_sign}"
            ) from None
    return Movement(
        source_id=m.source_id,
        seq=m.seq,
        sku=m.sku,
        location_id=m.location_id,
        type=mtype,
        quantity=m.quantity,
        reservation_id=m.reservation_id,
        count_id=m.count_id,
        transfer_id=m.transfer_id,
        reason=m.reason,
        adjustment_sign=sign,
        epcs=tuple(m.epc),
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
    for i, wm in enumerate(batch.movements):
        prefix = f"movements[{i}]."
        try:
            if wm.source_id and wm.source_id != batch.source_id:
                raise InvalidArgument(prefix + "source_id", "differs from the batch's source_id")
            if wm.seq <= last:
                raise InvalidArgument(prefix + "seq", "must increase within a batch")
            if not wm.source_id:
                copy = pb.Movement()
                copy.CopyFrom(wm)
                copy.source_id = batch.source_id
                wm = copy
            out.append(movement_from_wire(wm, prefix))
            last = wm.seq
        except InvalidArgument as exc:
            rejected.append(rejection(batch.source_id, wm.seq, exc))
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
