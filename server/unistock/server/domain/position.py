"""A stock position: one SKU at one location, the unit of state and of concurrency.

Every method is a plain synchronous state change. The object is slotted and keeps rare state
(reservation holds, source marks, count ids) in small tuples or None, because a server keeps a
million of them resident (see bench B4).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from unistock.server.domain.values import ItemCondition, Movement, MovementType, StockKey

#: How many recent count ids a position remembers to recognise movements that preceded them.
RECENT_COUNTS = 4
#: Source marks a position keeps in itself (most recently used). The marks of further sources
#: are spilled: stored beside the position (by the runtime, in the same atomic write) and read
#: back when their source sends to it again, so a position's stored value stays small however
#: many sources send to it, and no movement of any source is applied twice.
MAX_MARKS = 16


class Outcome(enum.Enum):
    """What applying a movement did."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    #: A movement that happened before a count already applied here: the count superseded it,
    #: so it only corrects the count's variance.
    COUNT_CORRECTION = "count_correction"

    # Members are singletons compared by identity: hash them by identity too (C), not by name
    # (Enum's default, Python code run for every movement).
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class MovementResult:
    """The outcome of one movement on one position, with what callers must report."""

    outcome: Outcome
    #: count - on_hand_before for a COUNT; for a COUNT_CORRECTION, the change to that variance.
    variance: int = 0
    #: Units of a reservation consumed by a SALE that named it.
    picked_up: int = 0
    #: on_hand fell below reserved: some reservations on this position are at risk.
    at_risk: bool = False


#: The common results, shared (a result is immutable; building one per movement costs ~1 us).
_DUPLICATE = MovementResult(Outcome.DUPLICATE)
_APPLIED = MovementResult(Outcome.APPLIED)


class Position:
    """The authoritative levels of one stock position and its idempotency marks."""

    __slots__ = (
        "_marks",
        "counts",
        "durable_available",
        "feed",
        "hold_changes",
        "holds",
        "in_transit",
        "key",
        "non_sellable",
        "on_hand",
        "reserved",
        "safety_stock",
        "shipped",
        "spill",
        "version",
    )

    def __init__(
        self,
        key: StockKey,
        *,
        on_hand: int = 0,
        non_sellable: int = 0,
        in_transit: int = 0,
        safety_stock: int = 0,
        version: int = 0,
        marks: tuple[tuple[str, int], ...] = (),
        holds: tuple[tuple[str, int], ...] = (),
        counts: tuple[str, ...] = (),
        shipped: tuple[tuple[str, int], ...] = (),
        spilled: bool = False,
    ) -> None:
        self.key = key
        self.on_hand = on_hand
        #: Units physically here that cannot be sold as they are: never available or reserved.
        self.non_sellable = non_sellable
        #: Units on the road towards this location (transfers shipped, not yet received): shown,
        #: never available. Kept equal to the sum of its transfer records' in_transit.
        self.in_transit = in_transit
        self.safety_stock = safety_stock
        self.version = version
        # Flat (source, seq, source, seq, ...): one tuple instead of one per source.
        self._marks: tuple[str | int, ...] | None = (
            tuple(x for pair in marks for x in pair) if marks else None
        )
        self.holds: dict[str, int] | None = dict(holds) if holds else None
        self.reserved = sum(q for _, q in holds)
        #: Reservations whose hold (units or shipped) changed since it was last written: the
        #: runtime stores each hold apart from the position and writes only these, so writing a
        #: position costs the same with ten thousand carts on it as with none (bench B10).
        self.hold_changes: set[str] | None = None
        #: `available` as last written durably (the runtime keeps it, to tell what each write
        #: changed: network availability is summed from these changes).
        self.durable_available = 0
        #: The changes made here since the last durable write, for the change feed, as the
        #: runtime encoded them (persistence.codec.feed_change): written with the position,
        #: then forgotten.
        self.feed: list[bytes] | None = None

        self.counts: tuple[str, ...] | None = counts or None
        #: Per reservation still holding units here: the units its fulfilments (FulfilReservation)
        #: took off this position so far. Compared with the record's own total after a crash
        #: that wrote the record but not the position (see reservation.reconcile_holds).
        self.shipped: dict[str, int] | None = dict(shipped) if shipped else None
        #: None while every source's mark is in `marks`. Once marks were spilled: the spilled
        #: marks not yet written (source -> seq), empty when all are written.
        self.spill: dict[str, int] | None = {} if spilled else None

    def feed_add(self, change: bytes) -> None:
        """Record a change for the change feed (the runtime writes and forgets it)."""
        if self.feed is None:
            self.feed = [change]
        else:
            self.feed.append(change)

    # -- reads ---------------------------------------------------------------------------------

    @property
    def sku(self) -> str:
        """The SKU."""
        return self.key[0]

    @property
    def location_id(self) -> str:
        """The location."""
        return self.key[1]

    @property
    def available(self) -> int:
        """What a channel may still promise: max(0, on_hand - reserved - safety_stock)."""
        free = self.on_hand - self.reserved - self.safety_stock
        return free if free > 0 else 0

    @property
    def negative(self) -> bool:
        """on_hand or non_sellable went below zero through facts the server must not refuse:
        investigate."""
        return self.on_hand < 0 or self.non_sellable < 0

    @property
    def at_risk(self) -> bool:
        """Reservations promise more than is physically here."""
        return self.reserved > 0 and self.on_hand < self.reserved

    @property
    def marks(self) -> tuple[tuple[str, int], ...]:
        """(source_id, highest seq applied) of the sources kept here, least recently used first
        (at most MAX_MARKS; see spill)."""
        m = self._marks or ()
        return tuple((m[i], m[i + 1]) for i in range(0, len(m), 2))  # type: ignore[misc]

    def _resident(self, source_id: str) -> int | None:
        m = self._marks
        if m is not None:
            for i in range(0, len(m), 2):
                if m[i] == source_id:
                    return m[i + 1]  # type: ignore[return-value]
        return None

    def mark(self, source_id: str) -> int:
        """Highest seq applied here from source_id (0 when none). For a source whose mark was
        spilled and written, call only after restore_mark (see needs_mark)."""
        seq = self._resident(source_id)
        if seq is not None:
            return seq
        if self.spill:
            return self.spill.get(source_id, 0)
        return 0

    def needs_mark(self, source_id: str) -> bool:
        """Whether source_id's mark may be stored outside this position: the runtime must read
        it (restore_mark) before a movement of that source is applied here."""
        spill = self.spill
        return spill is not None and source_id not in spill and self._resident(source_id) is None

    def restore_mark(self, source_id: str, seq: int) -> None:
        """Take back a spilled mark read from storage (0: the source never sent here)."""
        if self.needs_mark(source_id):
            self._set_mark(source_id, seq)

    def snapshot(self) -> Position:
        """A copy of the levels as they are now (no marks, holds or counts): what a reader is
        answered while the position itself goes on changing."""
        copy = Position(
            self.key,
            on_hand=self.on_hand,
            non_sellable=self.non_sellable,
            in_transit=self.in_transit,
            safety_stock=self.safety_stock,
            version=self.version,
        )
        copy.reserved = self.reserved
        return copy

    def spilled_written(self, written: dict[str, int]) -> None:
        """The spilled marks `written` are stored: forget those not changed since."""
        spill = self.spill
        if spill:
            for source_id, seq in written.items():
                if spill.get(source_id) == seq:
                    del spill[source_id]

    def held(self, reservation_id: str) -> int:
        """Units held here by reservation_id."""
        return 0 if self.holds is None else self.holds.get(reservation_id, 0)

    def hold_items(self) -> tuple[tuple[str, int], ...]:
        """Every (reservation_id, units) held here."""
        return () if self.holds is None else tuple(self.holds.items())

    def restore_holds(self, holds: Iterable[tuple[str, int, int]]) -> None:
        """Take back holds stored apart from the position: (reservation_id, units, shipped)."""
        for rid, units, shipped in holds:
            if units <= 0:
                continue
            if self.holds is None:
                self.holds = {}
            self.reserved += units - self.holds.get(rid, 0)
            self.holds[rid] = units
            if shipped:
                if self.shipped is None:
                    self.shipped = {}
                self.shipped[rid] = shipped

    def hold_state(self, reservation_id: str) -> tuple[int, int]:
        """(units held, units shipped) of a reservation here; (0, 0) when it holds nothing."""
        return self.held(reservation_id), self.shipped_for(reservation_id)

    def holds_changed(self, reservation_ids: Iterable[str]) -> None:
        """Mark holds as changed since last written (e.g. loaded from an older stored form
        that must be rewritten)."""
        changes = self.hold_changes
        if changes is None:
            changes = self.hold_changes = set()
        changes.update(reservation_ids)
        if not changes:
            self.hold_changes = None

    def holds_written(self, written: dict[str, tuple[int, int]]) -> None:
        """The holds `written` (reservation_id -> (units, shipped)) are stored: forget the
        changes of those not changed again since."""
        changes = self.hold_changes
        if changes:
            for rid, state in written.items():
                if rid in changes and self.hold_state(rid) == state:
                    changes.discard(rid)
            if not changes:
                self.hold_changes = None

    # -- movements -----------------------------------------------------------------------------

    def apply(self, m: Movement, covered: int = 0) -> MovementResult:
        """Apply a validated movement once; a (source_id, seq) seen before changes nothing.

        covered: units of a SALE naming a reservation that a fulfilment of that reservation
        already took off on_hand (whichever reports a unit first consumes it): on_hand falls by
        quantity - covered, and the pickup takes at most the rest from the hold.
        """
        assert not self.needs_mark(m.source_id), "spilled mark not restored before apply"
        if m.seq <= self.mark(m.source_id):
            return _DUPLICATE
        self._set_mark(m.source_id, m.seq)
        if m.type is MovementType.COUNT:
            if self.counts is not None and m.count_id in self.counts:
                # The same count sent again under another seq: its levels change nothing, only
                # the source's mark moved (written with the position's next change).
                return _DUPLICATE
            variance = m.quantity - self.on_hand
            self.on_hand = m.quantity
            self.counts = ((self.counts or ()) + (m.count_id,))[-RECENT_COUNTS:]
            self.version += 1
            return MovementResult(Outcome.APPLIED, variance=variance, at_risk=self.at_risk)
        if m.condition is ItemCondition.NON_SELLABLE:
            # Damaged or awaiting inspection: never on the shelf a count counts, never for sale.
            self.non_sellable += m.signed_quantity
            self.version += 1
            return MovementResult(Outcome.APPLIED, at_risk=True) if self.at_risk else _APPLIED
        if m.type is MovementType.RESTOCK:
            self.non_sellable -= m.quantity
        delta = m.signed_quantity + covered
        picked = 0
        if m.reservation_id:
            # A pickup consumes its hold whether or not a count already saw the unit gone.
            picked = min(self.held(m.reservation_id), m.quantity - covered)
            if picked:
                self._take_hold(m.reservation_id, picked)
        if m.count_id and self.counts is not None and m.count_id in self.counts:
            # It happened before a count that already set on_hand: the count saw its effect on
            # the shelf, so only the count's variance was misstated by it. The version still
            # moves: the position's state (its mark) changed and must be written.
            self.version += 1
            return MovementResult(
                Outcome.COUNT_CORRECTION, variance=-delta, picked_up=picked, at_risk=self.at_risk
            )
        self.on_hand += delta
        self.version += 1
        if not picked and (not self.reserved or self.on_hand >= self.reserved):
            return _APPLIED
        return MovementResult(Outcome.APPLIED, picked_up=picked, at_risk=self.at_risk)

    def _set_mark(self, source_id: str, seq: int) -> None:
        # The mark set last goes last: the first pair is the least recently used.
        m = self._marks
        if m is None:
            self._marks = (source_id, seq)
            return
        if m[-2] == source_id:  # the usual case: the same source again
            self._marks = (*m[:-1], seq)
            return
        for i in range(0, len(m), 2):
            if m[i] == source_id:
                self._marks = (*m[:i], *m[i + 2 :], source_id, seq)
                return
        spill = self.spill
        if spill:
            spill.pop(source_id, None)  # resident again: its pending spill is moot
        if len(m) < 2 * MAX_MARKS:
            self._marks = (*m, source_id, seq)
            return
        if spill is None:
            spill = self.spill = {}
        spill[m[0]] = m[1]  # type: ignore[index,assignment]
        self._marks = (*m[2:], source_id, seq)

    # -- reservation holds ---------------------------------------------------------------------

    def fits(self, quantity: int) -> bool:
        """Whether quantity more units can be promised now."""
        return quantity <= self.available

    def hold(self, reservation_id: str, quantity: int) -> None:
        """Hold units for a reservation; the caller checked fits() for every line first."""
        if self.holds is None:
            self.holds = {}
        self.holds[reservation_id] = self.holds.get(reservation_id, 0) + quantity
        self.reserved += quantity
        self.version += 1
        self._hold_changed(reservation_id)

    def release(self, reservation_id: str, quantity: int | None = None) -> int:
        """Stop holding units of a reservation (all when quantity is None); returns units freed."""
        if quantity is not None and quantity < 0:
            raise ValueError(f"cannot release {quantity} units")
        held = self.held(reservation_id)
        freed = held if quantity is None else min(held, quantity)
        if freed:
            self._take_hold(reservation_id, freed)
            self.version += 1
        return freed

    def ship(self, reservation_id: str, quantity: int) -> int:
        """A fulfilment: held units left physically. reserved and on_hand fall together (so
        available never rises when goods leave); returns the units shipped (at most those held).
        """
        if quantity < 0:
            raise ValueError(f"cannot ship {quantity} units")
        units = min(self.held(reservation_id), quantity)
        if units:
            if self.held(reservation_id) > units:  # still holding: remember what left
                if self.shipped is None:
                    self.shipped = {}
                self.shipped[reservation_id] = self.shipped.get(reservation_id, 0) + units
            self._take_hold(reservation_id, units)  # marks the hold changed
            self.on_hand -= units
            self.version += 1
        return units

    def shipped_for(self, reservation_id: str) -> int:
        """Units fulfilments of a reservation still holding here took off this position."""
        return 0 if self.shipped is None else self.shipped.get(reservation_id, 0)

    def _hold_changed(self, reservation_id: str) -> None:
        changes = self.hold_changes
        if changes is None:
            self.hold_changes = {reservation_id}
        else:
            changes.add(reservation_id)

    def _take_hold(self, reservation_id: str, quantity: int) -> None:
        assert self.holds is not None
        self._hold_changed(reservation_id)
        left = self.holds[reservation_id] - quantity
        if left > 0:
            self.holds[reservation_id] = left
        else:
            del self.holds[reservation_id]
            if not self.holds:
                self.holds = None
            if self.shipped is not None:
                self.shipped.pop(reservation_id, None)
                if not self.shipped:
                    self.shipped = None
        self.reserved -= quantity

    def transit(self, delta: int) -> None:
        """Units on the road towards this location changed by delta (a transfer record's
        in_transit change, applied in the same turn as the record's)."""
        if delta:
            self.in_transit += delta
            self.version += 1

    def set_safety_stock(self, units: int) -> None:
        """Keep units back from remote channels."""
        if units < 0:
            raise ValueError(f"safety stock cannot be negative ({units})")
        if units != self.safety_stock:
            self.safety_stock = units
            self.version += 1

    def __repr__(self) -> str:
        return (
            f"Position({self.key[0]!r}@{self.key[1]!r} on_hand={self.on_hand} "
            f"reserved={self.reserved} safety={self.safety_stock} v{self.version})"
        )
