"""Reservations: all-or-nothing promises of units, made by channels. Pure, no I/O.

A reservation's holds live on its positions (each position's `reserved` is the sum of its
holds); the reservation itself is the record that makes those holds count. The runtime writes
new holds before the record and ends or shrinks records before removing holds, so after a crash
a hold without an ACTIVE record is an abandoned intent that `reconcile_holds` removes, and a
hold whose record says units were fulfilled is a fulfilment the position has not seen yet,
which `reconcile_holds` completes (on_hand falls with the hold).

Fulfilment is a physical fact: units leave through FulfilReservation (the order manager says
"shipped") or through a SALE naming the reservation (the pickup at the till). Whichever reports a
unit first consumes it; the other, reporting the same units, changes nothing. Each line's
`LineProgress` keeps the units one side reported that the other has not yet.
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
from unistock.server.domain.position import MovementResult, Outcome, Position
from unistock.server.domain.values import (
    Line,
    Movement,
    StockKey,
    check_id,
    check_quantity,
    validate_lines,
)


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


#: Fulfilment request_ids a reservation remembers (oldest forgotten first).
MAX_FULFIL_REQUESTS = 64
#: Self-healing moves a record remembers.
MAX_RESOURCED = 32


@dataclass(frozen=True, slots=True)
class LineProgress:
    """How the units of one line (one position) left so far."""

    sku: str
    location_id: str
    #: Units FulfilReservation took off the position, in all (compared with the position's
    #: own count after a crash that wrote the record but not the position).
    shipped: int = 0
    #: Units FulfilReservation reported that no SALE naming the reservation reported yet.
    shipped_open: int = 0
    #: Units a SALE naming the reservation picked up that no FulfilReservation reported yet.
    sold_open: int = 0

    @property
    def key(self) -> StockKey:
        """The position of the line."""
        return (self.sku, self.location_id)


@dataclass(frozen=True, slots=True)
class Pickup:
    """A SALE that picked units up from a reservation, remembered so that the sale resent after
    a crash (record written, position not) takes nothing from the reservation twice."""

    source_id: str
    seq: int
    #: Units of the sale a fulfilment had already taken off on_hand (not taken again).
    covered: int = 0


def fingerprint(lines: Sequence[Line]) -> bytes:
    """A digest of the lines, independent of their order: equal lines, equal fingerprint."""
    canon = "\n".join(
        sorted(
            f"{ln.sku}|{ln.location_id}|{ln.quantity}" + (f"|@{ln.network}" if ln.network else "")
            for ln in lines
        )
    )
    return hashlib.blake2b(canon.encode(), digest_size=16).digest()


@dataclass(frozen=True, slots=True)
class Move:
    """Held units of a reservation to move from one location to another (TransferReservation)."""

    sku: str
    origin: str
    destination: str
    quantity: int
    #: The moved line stays a network line (the server's own re-sourcing).
    keep_network: bool = False


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
    #: The SALE movements that picked units up.
    pickups: tuple[Pickup, ...] = field(default=())
    #: Per line, the units fulfilments and pickups reported (see LineProgress).
    progress: tuple[LineProgress, ...] = field(default=())
    #: (request_id, fingerprint of its lines) of the last fulfilments, for idempotency.
    requests: tuple[tuple[str, bytes], ...] = field(default=())
    #: Moves the server made itself (self-healing), the latest MAX_RESOURCED.
    resourced: tuple[Move, ...] = field(default=())
    #: The expiry the last "expiring soon" warning was for (None: never warned). A warning is
    #: given once per expiry: an extension makes the reservation eligible again.
    warned_expires_at: float | None = None

    def pickup_by(self, source_id: str, seq: int) -> Pickup | None:
        """The pickup made by the movement (source_id, seq), if it made one."""
        for p in self.pickups:
            if p.seq == seq and p.source_id == source_id:
                return p
        return None

    def progress_of(self, key: StockKey) -> LineProgress:
        """The progress of the line at key (zeros when nothing left yet)."""
        for lp in self.progress:
            if lp.key == key:
                return lp
        return LineProgress(*key)

    def _progressed(self, changes: Mapping[StockKey, LineProgress]) -> tuple[LineProgress, ...]:
        kept = tuple(lp for lp in self.progress if lp.key not in changes)
        return kept + tuple(changes.values())

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

    def warn(self, now: float, within: float) -> Reservation | None:
        """This reservation warned as expiring soon (warned_expires_at = expires_at) if it is
        ACTIVE, its expiry is after now and at most `within` seconds away, and no warning was
        given for that expiry yet; else None."""
        if (
            self.active
            and self.expires_at is not None
            and now < self.expires_at <= now + within
            and self.warned_expires_at != self.expires_at
        ):
            return self._next(warned_expires_at=self.expires_at)
        return None

    def transfer(self, moves: Sequence[Move], request_id: str) -> Reservation:
        """Move held units between locations: every move or none (InvalidArgument naming
        moves[i]). Idempotent on request_id (repeated: this record; reused with other moves:
        ReservationConflict). A moved line names its new location only (no network: it was
        chosen, not left to the server), unless keep_network (the server's own re-sourcing).
        Raises ReservationNotActive.
        """
        digest = hashlib.blake2b(
            "\n".join(
                sorted(f"{m.sku}|{m.origin}|{m.destination}|{m.quantity}" for m in moves)
            ).encode(),
            digest_size=16,
        ).digest()
        for rid, fp in self.requests:
            if rid == request_id:
                if fp != digest:
                    raise ReservationConflict(self.reservation_id, request_id, "transfer")
                return self
        self._require_active("transfer")
        if not moves:
            raise InvalidArgument("moves", "at least one move is required")
        held = {ln.key: ln for ln in self.lines}
        left = {key: ln.quantity for key, ln in held.items()}
        added: dict[StockKey, int] = {}
        networks: dict[StockKey, str] = {}
        for i, m in enumerate(moves):
            f = f"moves[{i}]"
            check_id(f + ".sku", m.sku)
            check_id(f + ".from_location_id", m.origin)
            check_id(f + ".to_location_id", m.destination)
            check_quantity(f + ".quantity", m.quantity, minimum=1)
            if m.origin == m.destination:
                raise InvalidArgument(f + ".to_location_id", "a move goes to another location")
            origin = (m.sku, m.origin)
            if left.get(origin, 0) < m.quantity:
                raise InvalidArgument(
                    f + ".quantity",
                    f"the reservation holds {left.get(origin, 0)} of {m.sku} at {m.origin}, "
                    f"not {m.quantity}",
                )
            p = self.progress_of(origin)
            if p.shipped_open or p.sold_open:
                raise InvalidArgument(
                    f, f"units of {m.sku} at {m.origin} were partly reported left; fulfil first"
                )
            left[origin] -= m.quantity
            dest = (m.sku, m.destination)
            added[dest] = added.get(dest, 0) + m.quantity
            if m.keep_network and held[origin].network:
                networks[dest] = held[origin].network
        lines = [replace(ln, quantity=left[ln.key]) for ln in self.lines if left[ln.key] > 0]
        at = {ln.key: i for i, ln in enumerate(lines)}
        for key, q in added.items():
            if key in at:
                ln = lines[at[key]]
                lines[at[key]] = replace(ln, quantity=ln.quantity + q)
            else:
                lines.append(Line(key[0], key[1], q, networks.get(key, "")))
        healed = tuple(m for m in moves if m.keep_network)
        return self._next(
            lines=tuple(lines),
            requests=(*self.requests, (request_id, digest))[-MAX_FULFIL_REQUESTS:],
            resourced=(*self.resourced, *healed)[-MAX_RESOURCED:] if healed else self.resourced,
        )

    def fulfil(self, lines: Sequence[Line] = (), request_id: str = "") -> Reservation:
        """Units left physically: every held line (lines empty) or the given quantities.

        Returns the new record; the units to ship from each position (reserved and on_hand fall
        together there) are the growth of its lines' LineProgress.shipped. Units a SALE naming
        this reservation already picked up and that no fulfilment reported yet are matched first
        and ship nothing (the same units, reported twice). request_id makes a partial fulfilment idempotent: repeated, it returns this
        record and ships nothing; reused with other lines it raises ReservationConflict.
        Raises InvalidArgument (a line not of this reservation, more units than held) and
        ReservationNotActive.
        """
        digest = fingerprint(lines) if request_id else b""
        for rid, fp in self.requests:
            if rid == request_id:
                if fp != digest:
                    raise ReservationConflict(self.reservation_id, request_id)
                return self
        everything = not lines
        if everything:
            if self.state is ReservationState.FULFILLED:
                return self
            self._require_active("fulfil")
            lines = self.lines
        else:
            validate_lines(list(lines))
        held = {ln.key: ln.quantity for ln in self.lines} if self.active else {}
        known = {ln.key for ln in (*self.lines, *self.fulfilled)}
        changes: dict[StockKey, LineProgress] = {}
        ships: list[Line] = []
        for i, ln in enumerate(lines):
            if ln.key not in known:
                raise InvalidArgument(
                    f"lines[{i}]", f"{ln.sku}@{ln.location_id} is not a line of this reservation"
                )
            lp = self.progress_of(ln.key)
            # "Everything still held" names the held units themselves: nothing to match.
            matched = 0 if everything else min(ln.quantity, lp.sold_open)
            rest = ln.quantity - matched
            if rest > held.get(ln.key, 0):
                self._require_active("fulfil")
                raise InvalidArgument(
                    f"lines[{i}].quantity",
                    f"{ln.quantity} exceeds the {held.get(ln.key, 0) + lp.sold_open} units "
                    "still held or picked up unreported",
                )
            changes[ln.key] = replace(
                lp,
                shipped=lp.shipped + rest,
                shipped_open=lp.shipped_open + rest,
                sold_open=lp.sold_open - matched,
            )
            if rest:
                ships.append(Line(ln.sku, ln.location_id, rest))
        after = replace(self, progress=self._progressed(changes))
        if request_id:
            after = replace(
                after,
                requests=(*self.requests, (request_id, digest))[-MAX_FULFIL_REQUESTS:],
            )
        if ships:
            after = after.take(ships)
        elif after != self:
            after = after._next()
        return after

    def pickup(self, key: StockKey, picked: int, covered: int, by: Pickup) -> Reservation:
        """A SALE naming this reservation took `picked` units from its hold at key, and
        `covered` units a fulfilment had already reported (matched, not taken again)."""
        lp = self.progress_of(key)
        after = replace(
            self,
            pickups=(*self.pickups, by),
            progress=self._progressed(
                {
                    key: replace(
                        lp, sold_open=lp.sold_open + picked, shipped_open=lp.shipped_open - covered
                    )
                }
            ),
        )
        if picked:
            return after.take([Line(key[0], key[1], picked)])
        return after._next()

    def take(self, lines: Sequence[Line]) -> Reservation:
        """Remove fulfilled units from the held lines; FULFILLED once nothing is held."""
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
    request: ReserveRequest,
    positions: Mapping[StockKey, Position],
    now: float,
    lines: tuple[Line, ...] | None = None,
) -> Reservation:
    """Hold every line of request on its position, or nothing: raises InsufficientStock.

    positions must hold every line's position. One synchronous step: no other turn can run
    between the check and the holds, so two channels can never both get the last unit.
    lines: the request's lines with a location chosen for each network line (see
    choose_locations); the record keeps the request's fingerprint, so a replay of the request
    finds it.
    """
    asked = request.lines
    if lines is not None:
        request = ReserveRequest(
            request.reservation_id, lines, request.kind, request.ttl_seconds,
            request.channel, request.customer_id,
        )  # fmt: skip
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
        fingerprint=fingerprint(asked),
        channel=request.channel,
        customer_id=request.customer_id,
    )


def choose_locations(
    request: ReserveRequest,
    positions: Mapping[StockKey, Position],
    candidates: Mapping[int, Sequence[str]],
) -> tuple[Line, ...]:
    """The request's lines with a location for each network line: the first of its candidates
    (ranked by the sourcing rules) whose position can promise the line's units now, never a
    position another line of the request holds. Raises InsufficientStock when one has none
    (location_id of its shortfall: the network)."""
    taken = {ln.key for ln in request.lines if not ln.network}
    out = []
    short = []
    for i, ln in enumerate(request.lines):
        if not ln.network:
            out.append(ln)
            continue
        for loc in candidates.get(i, ()):
            key = (ln.sku, loc)
            if key not in taken and positions[key].fits(ln.quantity):
                taken.add(key)
                out.append(Line(ln.sku, loc, ln.quantity, ln.network))
                break
        else:
            best = max(
                (positions[ln.sku, loc].available for loc in candidates.get(i, ())), default=0
            )
            short.append(Shortfall(ln.sku, ln.network, ln.quantity, best))
    if short:
        raise InsufficientStock(short)
    return tuple(out)


def fulfil(
    record: Reservation,
    positions: Mapping[StockKey, Position],
    lines: Sequence[Line] = (),
    request_id: str = "",
) -> Reservation:
    """Fulfil record (see Reservation.fulfil) and ship its units from positions in one step:
    reserved and on_hand fall together, so available never rises when goods leave.

    positions must hold the position of every line still held. Returns the new record (the
    same object when nothing changed).
    """
    after = record.fulfil(lines, request_id)
    if after is not record:
        for lp in after.progress:
            units = lp.shipped - record.progress_of(lp.key).shipped
            if units:
                positions[lp.key].ship(record.reservation_id, units)
    return after


def apply_movement(
    position: Position, m: Movement, record: Reservation | None
) -> tuple[MovementResult, Reservation | None, str]:
    """Apply m to position; a SALE naming a reservation (record: its record, None when there
    is none) is also its pickup.

    Returns (result, the record's new state or None when it did not change, mismatch): for a
    SALE naming a reservation that holds nothing of its SKU at its location, mismatch says why
    (the sale is applied as a plain sale all the same: a till's fact).
    Units the reservation's fulfilment already took off on_hand are not taken again, and a sale
    resent after a crash that wrote its pickup but not the position takes nothing from the
    reservation again.
    """
    if not m.reservation_id:
        return position.apply(m), None, ""
    covered = 0
    if record is not None:
        done = record.pickup_by(m.source_id, m.seq)
        if done is not None:
            return position.apply(m._replace(reservation_id=""), done.covered), None, ""
        covered = min(m.quantity, record.progress_of(m.key).shipped_open)
    result = position.apply(m, covered)
    if result.outcome is Outcome.DUPLICATE:
        return result, None, ""
    if record is not None and (result.picked_up or covered):
        by = Pickup(m.source_id, m.seq, covered)
        return result, record.pickup(m.key, result.picked_up, covered, by), ""
    rid = m.reservation_id
    if record is None:
        why = f"reservation {rid!r} does not exist"
    elif not record.active:
        why = f"reservation {rid!r} is {record.state.name}"
    else:
        why = f"reservation {rid!r} holds no {m.sku} at {m.location_id}"
    return result, None, why


def reconcile_holds(
    position: Position, records: Mapping[str, Reservation | None]
) -> tuple[int, int]:
    """Bring a freshly loaded position's holds in line with their records, after a crash that
    wrote one and not the other; returns (units freed, units shipped).

    records maps each reservation_id held on the position to its record, or None if none exists.
    - A fulfilment the record has and the position has not (the record is written first) is
      completed: its units leave the hold and on_hand together.
    - A hold not backed by an ACTIVE record's line (crash between hold and record, or a release,
      expiry or pickup whose record was written before the position) is cut down to the line.
      A pickup's units come off on_hand with its SALE, which its source sends again (it was not
      acknowledged) and which the record recognises (Reservation.pickup_by).
    """
    freed = shipped = 0
    for rid, _ in position.hold_items():
        record = records.get(rid)
        if record is not None:
            unseen = record.progress_of(position.key).shipped - position.shipped_for(rid)
            if unseen > 0:
                shipped += position.ship(rid, unseen)
        units = position.held(rid)
        backed = 0 if record is None else record.held(position.key)
        if units > backed:
            freed += position.release(rid, units - backed)
    return freed, shipped


def check_reservation_id(value: str) -> str:
    """Validate a reservation_id field."""
    return check_id("reservation_id", value)


class Transition(enum.IntEnum):
    """What happened to a reservation (the change feed's reservation changes). Values are the
    storage enum's numbers (storage.proto ReservationChange)."""

    CREATED = 1
    EXTENDED = 2
    #: Some units left (a fulfilment or a pickup), others still held.
    PARTLY_FULFILLED = 3
    FULFILLED = 4
    RELEASED = 5
    EXPIRED = 6
    #: Held units moved between locations (TransferReservation).
    MOVED = 7
    #: Held units at risk moved by the server itself (self-healing).
    HEALED = 8
    #: Its expiry came within the server's warning window (Reservation.warn), once per expiry.
    EXPIRING_SOON = 9


_ENDED = {
    ReservationState.FULFILLED: Transition.FULFILLED,
    ReservationState.RELEASED: Transition.RELEASED,
    ReservationState.EXPIRED: Transition.EXPIRED,
}


def transitions(before: Reservation | None, after: Reservation) -> list[Transition]:
    """What turned record `before` (None: there was none) into `after`, in the order a reader
    should see them; empty when nothing a reader cares about changed."""
    if before is None:
        return [Transition.CREATED]
    out = []
    if after.fulfilled != before.fulfilled and after.active:
        out.append(Transition.PARTLY_FULFILLED)
    if after.resourced != before.resourced:
        out.append(Transition.HEALED)
    elif after.lines != before.lines and after.fulfilled == before.fulfilled and after.active:
        out.append(Transition.MOVED)
    if after.expires_at != before.expires_at and after.active:
        out.append(Transition.EXTENDED)
    if (
        after.active
        and after.warned_expires_at != before.warned_expires_at
        and after.warned_expires_at == after.expires_at
    ):
        out.append(Transition.EXPIRING_SOON)
    if after.state is not before.state and not after.active:
        out.append(_ENDED[after.state])
    return out
