"""Inventory: the turns that transports call. Each turn waits until the positions and records it
needs are resident, then changes them in one synchronous step (the event loop serialises turns),
then waits for its changes to be durable before answering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from unistock.server.actors.directory import Directory
from unistock.server.actors.reservations import ReservationBook
from unistock.server.domain import (
    InvalidArgument,
    Line,
    Movement,
    MovementResult,
    MovementType,
    Outcome,
    Position,
    Reservation,
    ReservationNotFound,
    ReserveRequest,
    StockKey,
    Unavailable,
    check_replay,
    reserve,
)
from unistock.server.metrics import Metrics
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.store import RedisStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PickupMismatch:
    """A SALE named a reservation that holds nothing of its SKU at its location (unknown,
    ended, picked up in another store, another size): applied as a plain sale, reported."""

    source_id: str
    seq: int
    reservation_id: str
    detail: str


@dataclass(slots=True)
class BatchResult:
    """What a batch of movements did, movement by movement."""

    #: One result per movement that was applied or found a duplicate (not the refused ones).
    results: list[MovementResult] = field(default_factory=list)
    #: Movements recognised as already applied.
    duplicates: int = 0
    #: Applied movements their sender should hear about (transports put them in the ack).
    notices: list[PickupMismatch] = field(default_factory=list)
    #: Movements refused by the inventory itself, with why (e.g. a seq jumping too far beyond
    #: its source's highest): final, like a validation rejection; never applied.
    refused: list[tuple[Movement, InvalidArgument]] = field(default_factory=list)

    @property
    def applied(self) -> int:
        """Movements applied for the first time (counts and corrections included)."""
        return len(self.results) - self.duplicates


class Inventory:
    """The authoritative stock positions and reservations of the partitions this process owns."""

    def __init__(
        self,
        store: RedisStore,
        commit: GroupCommit,
        metrics: Metrics,
        *,
        max_resident: int = 2_000_000,
        max_cached_reservations: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.commit = commit
        self.metrics = metrics
        self.clock = clock
        self.positions = Directory(store, commit, metrics, max_resident=max_resident)
        self.reservations = ReservationBook(
            store, commit, metrics, max_cached=max_cached_reservations
        )
        self.positions.reconcile = self.reservations.reconcile
        self.locations: set[str] = set()

    async def start(self) -> None:
        """Load what must be known before serving (the set of locations)."""
        self.locations = await self.store.locations()

    async def close(self) -> None:
        """Stop loads in progress."""
        await self.positions.close()
        await self.reservations.close()

    async def _ready(self, keys: Iterable[StockKey], ids: Iterable[str] = ()) -> None:
        # Every position and record of the turn resident at once; the turn runs right after.
        keys, ids = list(keys), list(ids)
        missing = self.positions.missing(keys)
        unknown = not all(map(self.reservations.loaded, ids))
        if not missing and not unknown:
            return
        with self.positions.pinned(keys):
            while missing or unknown:
                if missing and unknown:
                    await asyncio.gather(self.positions.activate(keys), self.reservations.load(ids))
                elif missing:
                    await self.positions.activate(keys)
                else:
                    await self.reservations.load(ids)
                missing = self.positions.missing(keys)
                unknown = not all(map(self.reservations.loaded, ids))

    def _position(self, key: StockKey) -> Position:
        p = self.positions.get(key)
        assert p is not None, "turn ran before its position was resident"
        return p

    # -- movements -----------------------------------------------------------------------------

    async def apply_movements(self, movements: Sequence[Movement]) -> BatchResult:
        """Apply validated movements in order; returns once every effect is durable."""
        result, durable = await self.submit_movements(movements)
        await durable
        return result

    async def submit_movements(
        self, movements: Sequence[Movement]
    ) -> tuple[BatchResult, asyncio.Future[None]]:
        """Apply validated movements in order; the future resolves once every effect is durable.

        Callers that pipeline batches (a stream) submit the next batch while this one is being
        written; their acks follow the futures in order.
        """
        await self._ready(
            {m.key for m in movements}, {m.reservation_id for m in movements if m.reservation_id}
        )
        out = BatchResult()
        results = out.results
        outcomes: Counter[tuple[MovementType, Outcome]] = Counter()
        get = self.positions.get
        changed = self.commit.position_changed
        locations = self.locations
        for m in movements:
            p = get(m.key)
            assert p is not None, "turn ran before its position was resident"
            if m.reservation_id:
                record = self.reservations.get(m.reservation_id)
                if record is not None and record.picked_up_by(m.source_id, m.seq):
                    # Resent after a crash that kept the record but not the position: the
                    # reservation already gave these units; apply it as a plain sale.
                    m = m._replace(reservation_id="")
            was_at_risk = p.at_risk
            r = p.apply(m)
            results.append(r)
            outcomes[m.type, r.outcome] += 1
            if r.outcome is Outcome.DUPLICATE:
                out.duplicates += 1
                continue
            if m.location_id not in locations:
                locations.add(m.location_id)
            if r.picked_up:
                self._picked_up(m, r.picked_up)
            if r.at_risk and not was_at_risk:
                self.metrics.at_risk.inc()
                log.warning("reservations at risk (on_hand below reserved): %r", p)
            if m.type is MovementType.COUNT or r.outcome is Outcome.COUNT_CORRECTION:
                direction = "gain" if r.variance > 0 else "loss"
                self.metrics.count_variance.labels(direction).inc(abs(r.variance))
            changed(p)
        for (mtype, outcome), n in outcomes.items():
            self.metrics.movements.labels(mtype.name, outcome.value).inc(n)
        # Duplicates too: the original may still be on its way to Redis.
        return out, self.commit.barrier()

    def _picked_up(self, m: Movement, units: int) -> None:
        record = self.reservations.get(m.reservation_id)
        if record is not None and record.active:
            taken = record.take([Line(m.sku, m.location_id, units)], pickup=(m.source_id, m.seq))
            self.reservations.put(taken, shrinks=True)

    # -- reads ---------------------------------------------------------------------------------

    async def levels(self, keys: Sequence[StockKey]) -> list[Position]:
        """The positions of keys (never-seen positions have version 0).

        Reads do not refresh the LRU order (only turns that change a position do): moving an
        entry leaves a hole in the directory's dict until it is resized, and reads are many.
        """
        await self._ready(keys)
        found = list(map(self.positions.peek, keys))
        assert None not in found, "read ran before its positions were resident"
        return cast(list[Position], found)

    async def levels_of_sku(self, sku: str) -> list[Position]:
        """Every position of sku that exists, one per location."""
        found = await self.levels([(sku, loc) for loc in sorted(self.locations)])
        return [p for p in found if p.version > 0]

    # -- reservations --------------------------------------------------------------------------

    async def reserve(self, request: ReserveRequest) -> tuple[Reservation, bool]:
        """Hold every line or none; returns (reservation, replayed). Idempotent on its id."""
        rid = request.reservation_id
        kind = request.kind.name
        await self._ready([ln.key for ln in request.lines], [rid])
        existing = self.reservations.get(rid)
        if existing is not None:
            try:
                found = check_replay(existing, request)
            except Exception:
                self.metrics.reservations.labels("reserve", kind, "conflict").inc()
                raise
            await self._durable(rid)
            self.metrics.reservations.labels("reserve", kind, "replayed").inc()
            return found, True
        positions = {ln.key: self._position(ln.key) for ln in request.lines}
        try:
            made = reserve(request, positions, self.clock())
        except Exception:
            self.metrics.reservations.labels("reserve", kind, "insufficient").inc()
            raise
        for p in positions.values():
            self.commit.position_changed(p)
        self.reservations.put(made, shrinks=False)
        await self.commit.barrier()
        self.metrics.reservations.labels("reserve", kind, "held").inc()
        return made, False

    async def _durable(self, reservation_id: str) -> None:
        if self.commit.reservation_dirty(reservation_id):
            await self.commit.barrier()

    async def _record(self, reservation_id: str, keys_of: bool = True) -> Reservation:
        await self._ready((), [reservation_id])
        record = self.reservations.get(reservation_id)
        if record is None:
            raise ReservationNotFound(reservation_id)
        if keys_of and record.active:
            await self._ready([ln.key for ln in record.lines], [reservation_id])
            record = self.reservations.get(reservation_id)
            assert record is not None
        return record

    async def get_reservation(self, reservation_id: str) -> Reservation:
        """The current record (durable)."""
        record = await self._record(reservation_id, keys_of=False)
        await self._durable(reservation_id)
        return record

    async def release(self, reservation_id: str) -> Reservation:
        """Cancel an ACTIVE reservation (a released one is returned as it is)."""
        return await self._end(reservation_id, "release", lambda r: r.release(), None)

    async def fulfil(self, reservation_id: str, lines: Sequence[Line] = ()) -> Reservation:
        """The units left physically: all held lines, or the given quantities.

        Only the holds end here: on_hand changes through the movement that reports the units
        leaving (a SALE naming the reservation does both at once).
        """
        return await self._end(
            reservation_id, "fulfil", lambda r: r.fulfil(lines), list(lines) or None
        )

    async def _end(
        self,
        reservation_id: str,
        operation: str,
        transition: Callable[[Reservation], Reservation],
        lines: list[Line] | None,
    ) -> Reservation:
        while True:
            record = await self._record(reservation_id)
            if not record.active or not self.positions.missing(ln.key for ln in record.lines):
                break
        kind = record.kind.name
        try:
            after = transition(record)
        except Exception:
            self.metrics.reservations.labels(operation, kind, "refused").inc()
            raise
        if after is record:
            await self._durable(reservation_id)
            return record
        freed = lines if lines is not None else record.lines
        for ln in freed:
            p = self._position(ln.key)
            if p.release(reservation_id, ln.quantity):
                self.commit.position_changed(p)
        self.reservations.put(after, shrinks=True)
        await self.commit.barrier()
        self.metrics.reservations.labels(operation, kind, "ok").inc()
        return after

    async def extend(self, reservation_id: str, expires_at: float) -> Reservation:
        """Move an ACTIVE reservation's expiry."""
        record = await self._record(reservation_id, keys_of=False)
        after = record.extend(expires_at, self.clock())
        self.reservations.put(after, shrinks=False)
        await self.commit.barrier()
        self.metrics.reservations.labels("extend", record.kind.name, "ok").inc()
        return after

    async def expire_due(self, limit: int = 1000) -> int:
        """Expire the reservations whose hold ran out (also those due while the server was down)."""
        now = self.clock()
        expired = 0
        for rid in await self.store.due_reservations(now, limit):
            try:
                record = await self._record(rid)
            except ReservationNotFound:
                continue
            if record.expire(now) is None:
                continue
            after = await self._end(rid, "expire", lambda r: r.expire(now) or r, None)
            if after.state.name == "EXPIRED":
                expired += 1
        if expired:
            self.metrics.reservations_expired.inc(expired)
        return expired

    async def run_expiry(self, interval: float = 1.0) -> None:
        """Expire due reservations every interval seconds, until cancelled."""
        while True:
            try:
                await self.expire_due()
            except Unavailable as exc:
                self.metrics.redis_errors.labels("expiry").inc()
                log.warning("reservation expiry sweep failed: %s", exc)
            await asyncio.sleep(interval)

    async def run_idle_passivation(self, idle: float) -> None:
        """Passivate positions unused for about idle seconds, until cancelled."""
        while True:
            await asyncio.sleep(idle)
            n = self.positions.passivate_idle()
            if n:
                log.info("passivated %d idle positions", n)
