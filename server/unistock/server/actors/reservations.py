"""The reservation book: records loaded from Redis on demand, cached, written by group commit."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

from unistock.server.actors.loader import BatchLoader
from unistock.server.domain import Position, Reservation, reconcile_holds, transitions
from unistock.server.metrics import Metrics
from unistock.server.persistence.codec import decode_reservation, reservation_change
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.store import RedisStore

_ABSENT = None


class ReservationBook:
    """Reservation records by id; None marks an id known not to exist."""

    def __init__(
        self,
        store: RedisStore,
        commit: GroupCommit,
        metrics: Metrics,
        *,
        max_cached: int = 200_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._commit = commit
        self._metrics = metrics
        self.max_cached = max_cached
        #: The clock of the records' times (seconds), also the feed changes' at_ms.
        self._clock = clock
        self._cache: dict[str, Reservation | None] = {}
        #: The earliest expiry (seconds) of an ACTIVE record not warned for it that put() stored
        #: since the expiry warnings last took it (take_unwarned); inf: none.
        self._unwarned = float("inf")
        self._loader: BatchLoader[str] = BatchLoader(self._fetch)

    def loaded(self, reservation_id: str) -> bool:
        """Whether the record (or its absence) is known."""
        return reservation_id in self._cache

    def get(self, reservation_id: str) -> Reservation | None:
        """The cached record; call only once loaded()."""
        return self._cache[reservation_id]

    def put(self, reservation: Reservation, *, created: bool = False) -> None:
        """Store a new state of a record (durable after the group commit's barrier).

        created: a new reservation (its record is written after its holds; every later state
        before the positions).
        """
        rid = reservation.reservation_id
        before = self._cache.get(rid)
        kinds = transitions(before, reservation)
        at_ms = int(self._clock() * 1000)
        change = reservation_change(at_ms, kinds, reservation) if kinds else b""
        self._cache[rid] = reservation
        exp = reservation.expires_at
        if reservation.active and exp is not None and reservation.warned_expires_at != exp:
            self._unwarned = min(self._unwarned, exp)
        self._commit.reservation_changed(reservation, created=created, change=change, before=before)

    def take_unwarned(self) -> float:
        """The earliest expiry (seconds; inf: none) of an ACTIVE, not yet warned record stored
        since the last call: where the expiry warnings must look again."""
        out, self._unwarned = self._unwarned, float("inf")
        return out

    async def load(self, ids: Iterable[str]) -> None:
        """Make ids known (loading them from Redis); raises Unavailable.

        Loops until every id is cached at once: another batch may trim what an earlier one
        loaded. The caller must use them without awaiting anything else.
        """
        ids = list(ids)
        while missing := [i for i in ids if i not in self._cache]:
            await self._loader.wait(missing)

    async def _fetch(self, ids: list[str]) -> None:
        ids = [i for i in ids if i not in self._cache]
        if not ids:
            return
        stored = await self._store.load_reservations(ids)
        for rid, data in zip(ids, stored, strict=True):
            self._cache.setdefault(rid, _ABSENT if data is None else decode_reservation(data))
        self._trim()

    def _trim(self) -> None:
        excess = len(self._cache) - self.max_cached
        if excess <= 0:
            return
        victims = []
        for rid in self._cache:  # oldest first; a record with unwritten changes stays
            if not self._commit.reservation_dirty(rid):
                victims.append(rid)
                if len(victims) >= excess:
                    break
        for rid in victims:
            del self._cache[rid]

    def reconcile(self, positions: list[Position]) -> asyncio.Future[None]:
        """Free holds of freshly loaded positions that no ACTIVE record backs (see domain)."""
        return asyncio.ensure_future(self._reconcile(positions))

    async def _reconcile(self, positions: list[Position]) -> None:
        ids = {rid for p in positions for rid, _ in p.hold_items()}
        await self.load(ids)
        for p in positions:
            records = {rid: self._cache.get(rid) for rid, _ in p.hold_items()}
            freed, shipped = reconcile_holds(p, records)
            if freed:
                self._metrics.holds_reconciled.inc(freed)
            if shipped:
                self._metrics.fulfilments_reconciled.inc(shipped)
            if freed or shipped:
                self._commit.position_changed(p)

    async def close(self) -> None:
        """Stop loads in progress."""
        await self._loader.close()
