"""Transfers: stock on the road between two locations (domain.md "Transfers").

A transfer is identified by its `transfer_id` and its destination: the record lives with the
destination's positions, because the destination is where its units are shown in transit
(`Position.in_transit`) and received. What a record holds per SKU:

    shipped    units TRANSFER_OUT movements sent towards the destination
    received   units TRANSFER_IN movements received at the destination
    lost       units recorded lost in transit when the receiving side closed it short
    in_transit max(0, shipped - received - lost): on the road, never available
    unexpected max(0, received - shipped): received beyond what was shipped (a discrepancy)

so units are conserved: shipped + unexpected = received + lost + in_transit, for every SKU at
every moment. Movements are facts: a receipt is applied whatever the record says (received
twice, more than shipped, before the shipment arrived, after the close), and what does not fit
is recorded once, as a discrepancy naming the movement that caused it.

Every change returns the new record and the change of in_transit it makes at the destination
position (the runtime writes both in one atomic write). Records are immutable values.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace

from unistock.server.domain.errors import UnistockError

#: Movements a record remembers having applied (a shipment is applied to it once, although
#: the runtime may deliver it again after a crash). A transfer has a few movements; beyond this
#: many, the oldest are forgotten.
MAX_APPLIED = 1024


class TransferState(enum.IntEnum):
    """Where a transfer stands (the wire enum's numbers)."""

    #: Units shipped and not all received yet, or received units waiting for their shipment.
    IN_TRANSIT = 1
    #: Every unit shipped was received; nothing outstanding.
    RECEIVED = 2
    #: Closed by the receiving side: units not received are lost in transit.
    CLOSED = 3


class DiscrepancyKind(enum.IntEnum):
    """What did not fit (the wire enum's numbers)."""

    #: A TRANSFER_IN of a SKU nothing was shipped of yet (its shipment may still arrive).
    RECEIVED_BEFORE_SHIPPED = 1
    #: A TRANSFER_IN taking received beyond shipped (a transfer received twice, a wrong parcel).
    OVER_RECEIVED = 2
    #: Closed with units not received: they are recorded lost in transit.
    CLOSED_SHORT = 3
    #: A TRANSFER_OUT to a closed transfer: it is open again, the units in transit.
    SHIPPED_AFTER_CLOSE = 4
    #: A TRANSFER_IN while units are recorded lost (closed short): they turned up (lost falls).
    RECEIVED_AFTER_CLOSE = 5


class TransferNotFound(UnistockError):
    """No record of this transfer (at that destination)."""

    def __init__(self, transfer_id: str, location_id: str = "") -> None:
        where = f" to {location_id}" if location_id else ""
        super().__init__(f"transfer {transfer_id!r}{where} not found")
        self.transfer_id = transfer_id
        self.location_id = location_id


@dataclass(frozen=True, slots=True)
class TransferLine:
    """One SKU of a transfer; see the module docstring."""

    sku: str
    shipped: int = 0
    received: int = 0
    lost: int = 0

    @property
    def in_transit(self) -> int:
        """Units on the road towards the destination."""
        return max(0, self.shipped - self.received - self.lost)

    @property
    def unexpected(self) -> int:
        """Units received beyond what was shipped."""
        return max(0, self.received - self.shipped)


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """Something that did not fit, recorded once with the movement (or close) that caused it."""

    kind: DiscrepancyKind
    sku: str
    quantity: int
    #: The movement's (source_id, seq); for CLOSED_SHORT, the close's request (source "", 0).
    source_id: str = ""
    seq: int = 0


@dataclass(frozen=True, slots=True)
class Transfer:
    """The record of one transfer at one destination (immutable; changes return a new one)."""

    transfer_id: str
    destination: str
    origin: str = ""
    lines: tuple[TransferLine, ...] = ()
    closed: bool = False
    discrepancies: tuple[Discrepancy, ...] = ()
    #: The (source_id, seq) of the movements applied to it, oldest first (bounded).
    applied: tuple[tuple[str, int], ...] = ()
    #: Increases with every change (the store refuses to replace a newer record by an older).
    revision: int = 0

    @property
    def key(self) -> tuple[str, str]:
        """(destination, transfer_id): a record's identity."""
        return (self.destination, self.transfer_id)

    @property
    def state(self) -> TransferState:
        """IN_TRANSIT, RECEIVED or CLOSED (see TransferState)."""
        if self.closed:
            return TransferState.CLOSED
        if self.lines and all(ln.in_transit == 0 and ln.unexpected == 0 for ln in self.lines):
            return TransferState.RECEIVED
        return TransferState.IN_TRANSIT

    def line(self, sku: str) -> TransferLine:
        """The line of sku (an empty one when none)."""
        for ln in self.lines:
            if ln.sku == sku:
                return ln
        return TransferLine(sku)

    def in_transit(self, sku: str) -> int:
        """Units of sku on the road."""
        return self.line(sku).in_transit

    def has_applied(self, source_id: str, seq: int) -> bool:
        """Whether the movement (source_id, seq) was applied to this record."""
        return (source_id, seq) in self.applied

    # -- changes -------------------------------------------------------------------------------

    def ship(
        self, sku: str, quantity: int, origin: str, source_id: str, seq: int
    ) -> tuple[Transfer, int]:
        """A TRANSFER_OUT of quantity units of sku from origin, applied once per (source_id,
        seq). Returns (record, change of in_transit at the destination); the same record and 0
        when it was applied before."""
        if self.has_applied(source_id, seq):
            return self, 0
        before = self.line(sku)
        after = replace(before, shipped=before.shipped + quantity)
        found: list[Discrepancy] = []
        closed = self.closed
        if closed:
            found.append(
                Discrepancy(DiscrepancyKind.SHIPPED_AFTER_CLOSE, sku, quantity, source_id, seq)
            )
            closed = False  # open again: the units are on the road
        return self._with(after, before, found, source_id, seq, origin=origin, closed=closed)

    def receive(
        self, sku: str, quantity: int, origin: str, source_id: str, seq: int
    ) -> tuple[Transfer, int]:
        """A TRANSFER_IN of quantity units of sku at the destination (a fact: always applied),
        once per (source_id, seq). Returns (record, change of in_transit)."""
        if self.has_applied(source_id, seq):
            return self, 0
        before = self.line(sku)
        found: list[Discrepancy] = []
        lost = before.lost
        if lost:
            # Units recorded lost (at a close, even if a later shipment opened the transfer
            # again) turned up: they are received, no longer lost.
            back = min(lost, quantity)
            lost -= back
            found.append(
                Discrepancy(DiscrepancyKind.RECEIVED_AFTER_CLOSE, sku, quantity, source_id, seq)
            )
        after = replace(before, received=before.received + quantity, lost=lost)
        excess = after.unexpected - before.unexpected
        if excess > 0:
            kind = (
                DiscrepancyKind.RECEIVED_BEFORE_SHIPPED
                if before.shipped == 0
                else DiscrepancyKind.OVER_RECEIVED
            )
            found.append(Discrepancy(kind, sku, excess, source_id, seq))
        return self._with(after, before, found, source_id, seq, origin=origin)

    def close(self) -> tuple[Transfer, dict[str, int]]:
        """Closed by the receiving side: every unit still in transit is lost in transit
        (recorded once per SKU as CLOSED_SHORT). Returns (record, change of in_transit per SKU);
        closing a closed transfer changes nothing."""
        if self.closed:
            return self, {}
        deltas: dict[str, int] = {}
        found: list[Discrepancy] = []
        lines = []
        for ln in self.lines:
            short = ln.in_transit
            if short:
                deltas[ln.sku] = -short
                found.append(Discrepancy(DiscrepancyKind.CLOSED_SHORT, ln.sku, short))
                ln = replace(ln, lost=ln.lost + short)
            lines.append(ln)
        closed = replace(
            self,
            lines=tuple(lines),
            closed=True,
            discrepancies=self.discrepancies + tuple(found),
            revision=self.revision + 1,
        )
        return closed, deltas

    def _with(
        self,
        after: TransferLine,
        before: TransferLine,
        found: Iterable[Discrepancy],
        source_id: str,
        seq: int,
        *,
        origin: str,
        closed: bool | None = None,
    ) -> tuple[Transfer, int]:
        lines = tuple(after if ln.sku == after.sku else ln for ln in self.lines)
        if after.sku not in {ln.sku for ln in self.lines}:
            lines += (after,)
        record = replace(
            self,
            origin=self.origin or origin,
            lines=lines,
            closed=self.closed if closed is None else closed,
            discrepancies=self.discrepancies + tuple(found),
            applied=(*self.applied, (source_id, seq))[-MAX_APPLIED:],
            revision=self.revision + 1,
        )
        return record, after.in_transit - before.in_transit


def new_transfer(transfer_id: str, destination: str) -> Transfer:
    """A record with nothing applied yet (what a first movement of a transfer starts from)."""
    return Transfer(transfer_id=transfer_id, destination=destination)
