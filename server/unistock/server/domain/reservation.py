"""Reservations: all-or-nothing promises of units, made by channels. Pure, no I/O.

A reservation's holds live on its positions (each position's `reserved` is the sum of its
holds); the reservation itself is the record that makes those holds count. The runtime writes
new holds before the record and ends records before removing holds, so after a crash a hold
without an ACTIVE record is an abandoned intent that `reconcile_holds` removes.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from unistock.server.domain.errors import (
    InsufficientStock,
    InvalidArgument,
    ReservationConflict,
    ReservationNotActive,
    Shortfall,
)
from unistock.server.domain.position import Position
from unistock.server.domain.values import Line, StockKey, check_id, validate_lines


class ReservationKind(enum.IntEnum):
    """Why units are held. Values equal the wire enum's numbers."""

    CART = 1
    E_RESERVATION = 2
    CLICK_AND_COLLECT = 3
    SHIP_FROM_STORE = 4
    ORDER = 5


class ReservationState(enum.IntEnum):
    """Life-cycle state. Values equal the wire enum's numbers."""

    ACTIVE = 1
    FULFILLED = 2
    RELEASED = 3
    EXPIRED = 4


#: Hold time when a request gives none (seconds); None means until fulfilled or released.
DEFAULT_TTL: dict[ReservationKind, int | None] = {
    ReservationKind.CART: 15 * 60,
    ReservationKind.E_RESERVATION: 48 * 3600,
    ReservationKind.CLICK_AND_COLLECT: None,
    ReservationKind.SHIP_FROM_STORE: None,
    ReservationKind.ORDER: None,
}


def fingerprint(lines: Sequence[Line]) -> bytes:
    """A digest of the lines, independent of their order: equal lines, equal fingerprint."""
    canon = "\n".join(sorted(f"{ln.sku}|{ln.location_id}|{ln.quantity}" for ln in lines))
    return hashlib.blake2b(canon.encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class ReserveRequest:
    """A validated request to hold lines."""

    reservation_id: str
    lines: tuple[Line, ...]
    kind: ReservationKind
    ttl_seconds: int | None
    channel: str = ""
    customer_id: str = ""

    @classmethod
    def build(
        cls,
        reservation_id: str,
        lines: list[Line],
        kind: int,
        ttl_seconds: int = 0,
        channel: str = "",
        customer_id: str = "",
    ) -> ReserveRequest:
        """Validate a request, naming the first bad field."""
        check_id("reservation_id", reservation_id)
        try:
            k = ReservationKind(kind)
        except ValueError:
            raise InvalidArgument("kind", f"unknown reservation kind {kind}") from None
        ttl = ttl_seconds if ttl_seconds > 0 else DEFAULT_TTL[k]
        return cls(reservation_id, validate_lines(lines), k, ttl, channel, customer_id)


@dataclass(frozen=True, slots=True)
class Reservation:
    """A reservation's record. Immutable: each transition returns a new value.

    Times are seconds since the epoch, kept to the millisecond (as stored).
    """

    reservation_id: str
    state: ReservationState
    kind: ReservationKind
    lines: tuple[Line, ...]
    created_at: float
    expires_at: float | None
    fingerprint: bytes
    channel: str = ""
    customer_id: str = ""
    #: Units fulfilled so far, per position.
    fulfilled: tuple[Line, ...] = field(default=())
    #: Increases with every transition; storage refuses to overwrite a newer revision.
    revision: int = 1
    #: (source_id, seq) of the SALE movements that picked units up, so that a pickup resent
    #: after a crash (record written, position not) is not taken from the reservation twice.
    pickups: tuple[tuple[str, int], ...] = field(default=())

    def picked_up_by(self, source_id: str, seq: int) -> bool:
        """Whether the movement (source_id, seq) already picked units up from this reservation."""
        return (source_id, seq) in self.pickups

    def _next(self, **changes: object) -> Reservation:
        return replace(self, revision=self.revision + 1, **changes)  # type: ignore[arg-type]

    @property
    def active(self) -> bool:
        """Whether it still holds units."""
        return self.state is ReservationState.ACTIVE

    def held(self, key: StockKey) -> int:
        """Units this record says are held at a position (0 unless ACTIVE)."""
        if not self.active:
            return 0
        for ln in self.lines:
            if ln.key == key:
                return ln.quantity
        return 0

    def _require_active(self, operation: str) -> None:
        if not self.active:
            raise ReservationNotActive(self.reservation_id, self.state.name, operation)

    def ended(self, state: ReservationState) -> Reservation:
        """This reservation in a terminal state."""
        return self._next(state=state)

    def release(self) -> Reservation:
        """Cancel it. Releasing a released reservation is a no-op (retries are safe)."""
        if self.state is ReservationState.RELEASED:
            return self
        self._require_active("release")
        return self.ended(ReservationState.RELEASED)

    def extend(self, expires_at: float, now: float) -> Reservation:
        """Move its expiry to a time in the future."""
        self._require_active("extend")
        if expires_at <= now:
            raise InvalidArgument("expires_at", "must be in the future")
        return self._next(expires_at=round(expires_at, 3))

    def expire(self, now: float) -> Reservation | None:
        """The expired reservation if its hold ran out by now, else None."""
        if self.active and self.expires_at is not None and self.expires_at <= now:
            return self.ended(ReservationState.EXPIRED)
        return None

    def fulfil(self, lines: Sequence[Line] = ()) -> Reservation:
        """Units left physically: every held line (lines empty) or the given quantities."""
        if self.state is ReservationState.FULFILLED and not lines:
            return self
        self._require_active("fulfil")
        if lines:
            validate_lines(list(lines))
        if not lines:
            return self._next(
                state=ReservationState.FULFILLED, fulfilled=_add(self.fulfilled, self.lines)
            )
        remaining = {ln.key: ln for ln in self.lines}
        for i, ln in enumerate(lines):
            have = remaining.get(ln.key)
            if have is None:
                raise InvalidArgument(
                    f"lines[{i}]", f"{ln.sku}@{ln.location_id} is not a line of this reservation"
                )
            if ln.quantity > have.quantity:
                raise InvalidArgument(
                    f"lines[{i}].quantity",
                    f"{ln.quantity} exceeds the {have.quantity} units still held",
                )
        return self.take(lines)

    def take(self, lines: Sequence[Line], pickup: tuple[str, int] | None = None) -> Reservation:
        """Remove fulfilled units from the held lines; FULFILLED once nothing is held.

        pickup: the (source_id, seq) of the SALE that took them, remembered for idempotency.
        """
        if pickup is not None:
            return replace(self, pickups=(*self.pickups, pickup)).take(lines)
        taken = {ln.key: ln.quantity for ln in lines}
        left = tuple(
            replace(ln, quantity=ln.quantity - taken.get(ln.key, 0))
            for ln in self.lines
            if ln.quantity - taken.get(ln.key, 0) > 0
        )
        done = _add(self.fulfilled, lines)
        if left:
            return self._next(lines=left, fulfilled=done)
        return self._next(state=ReservationState.FULFILLED, fulfilled=done)


def _add(acc: tuple[Line, ...], more: Sequence[Line]) -> tuple[Line, ...]:
    totals = {ln.key: ln.quantity for ln in acc}
    for ln in more:
        totals[ln.key] = totals.get(ln.key, 0) + ln.quantity
    return tuple(Line(sku, loc, q) for (sku, loc), q in totals.items() if q > 0)


def check_replay(existing: Reservation, request: ReserveRequest) -> Reservation:
    """The existing reservation when request repeats it; ReservationConflict otherwise."""
    if existing.fingerprint != fingerprint(request.lines):
        raise ReservationConflict(request.reservation_id)
    return existing


def reserve(
    request: ReserveRequest, positions: Mapping[StockKey, Position], now: float
) -> Reservation:
    """Hold every line of request on its position, or nothing: raises InsufficientStock.

    positions must hold every line's position. One synchronous step: no other turn can run
    between the check and the holds, so two channels can never both get the last unit.
    """
    short = [
        Shortfall(ln.sku, ln.location_id, ln.quantity, positions[ln.key].available)
        for ln in request.lines
        if not positions[ln.key].fits(ln.quantity)
    ]
    if short:
        raise InsufficientStock(short)
    for ln in request.lines:
        positions[ln.key].hold(request.reservation_id, ln.quantity)
    return Reservation(
        reservation_id=request.reservation_id,
        state=ReservationState.ACTIVE,
        kind=request.kind,
        lines=request.lines,
        created_at=round(now, 3),
        expires_at=None if request.ttl_seconds is None else round(now + request.ttl_seconds, 3),
        fingerprint=fingerprint(request.lines),
        channel=request.channel,
        customer_id=request.customer_id,
    )


def reconcile_holds(position: Position, records: Mapping[str, Reservation | None]) -> int:
    """Drop holds not backed by an ACTIVE record (crash between hold and record); returns units freed.

    records maps each reservation_id held on the position to its record, or None if none exists.
    A hold larger than its record's line is cut down to it (a partial fulfilment whose record
    was written before the position).
    """
    freed = 0
    for rid, units in position.hold_items():
        record = records.get(rid)
        backed = 0 if record is None else record.held(position.key)
        if units > backed:
            freed += position.release(rid, units - backed)
    return freed


def check_reservation_id(value: str) -> str:
    """Validate a reservation_id field."""
    return check_id("reservation_id", value)
