"""Store liveness: when the server last heard from each store's edge agent (a movement batch,
or an ONLINE status on `unistock/v1/stores/{store}/status`) and how old the agent's oldest
unacknowledged movement was in its last status. A network leaves a store's units out of what it
may promise (or discounts them) once the store has been silent longer than the network's
staleness limit, or its agent reports a backlog older than that (its stock is news the server
has not had).

Last-heard times are kept in Redis (`changed` / `restore`, saved every second by the network
index), so a restart does not make a store that was long silent fresh again. A store nobody
has heard of counts as heard of when the server first knew of it (`know`: every store of master
data at start-up, a new one when it is added), so a new store is not stale at once; that time is
kept too, so a store that never had an agent is not fresh again after a
restart either. A retained status the broker sends as the server subscribes counts from the
time the agent made it (`at`): a dead agent's last ONLINE status does not revive its store.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StoreLiveness:
    """Last-heard times (monotonic seconds) and reported backlog ages per store."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._wall = wall
        self._heard: dict[str, float] = {}
        #: stores whose last-heard time is only the server's assumption (first asked about)
        self._assumed: set[str] = set()
        #: stores whose last-heard time changed since `changed` was last called
        self._dirty: set[str] = set()
        self._backlog: dict[str, float] = {}

    def heard(self, store_id: str) -> None:
        """A movement batch (or anything proving the agent is there) arrived now."""
        self._set(store_id, self._clock())

    def status(
        self, store_id: str, online: bool, backlog_age: float, at: float | None = None
    ) -> None:
        """The agent's status: ONLINE refreshes it (as of `at`, Unix seconds, when given: a
        retained status; never later than now); the backlog age is kept either way."""
        if online:
            now = self._clock()
            when = now if at is None else now - max(0.0, self._wall() - at)
            if store_id in self._assumed or when > self._heard.get(store_id, when - 1):
                self._set(store_id, when)
        self._backlog[store_id] = max(0.0, backlog_age)

    def _set(self, store_id: str, when: float) -> None:
        self._heard[store_id] = when
        self._assumed.discard(store_id)
        self._dirty.add(store_id)

    def know(self, store_id: str) -> float:
        """When the store was last heard of (monotonic seconds); a store not known yet (new in
        master data) counts as heard of now, and that is remembered (and saved)."""
        heard = self._heard.get(store_id)
        if heard is None:
            heard = self._heard[store_id] = self._clock()
            self._assumed.add(store_id)
            self._dirty.add(store_id)
        return heard

    def stores(self) -> list[str]:
        """Every store heard from or known (see know), in no particular order."""
        return list(self._heard)

    def silent_for(self, store_id: str) -> float:
        """Seconds since the store was last heard of (see know)."""
        return self._clock() - self.know(store_id)

    def heard_at(self, store_id: str) -> float:
        """When the store was last heard of (Unix seconds; see know)."""
        return self._wall() - self.silent_for(store_id)

    def last_heard(self, store_id: str) -> tuple[float, bool] | None:
        """(When the store was last heard of, Unix seconds; whether that is the server's
        assumption, see know), or None for a store not known yet. Changes nothing."""
        heard = self._heard.get(store_id)
        if heard is None:
            return None
        return self._wall() - (self._clock() - heard), store_id in self._assumed

    def backlog(self, store_id: str) -> float:
        """The age (seconds) of the oldest unacknowledged movement in the agent's last
        status (0: none reported)."""
        return self._backlog.get(store_id, 0.0)

    def stale(self, store_id: str, limit: float) -> bool:
        """Whether the store's stock is older news than limit seconds (0: never stale)."""
        if limit <= 0:
            return False
        return self.silent_for(store_id) > limit or self._backlog.get(store_id, 0.0) > limit

    # -- persistence ---------------------------------------------------------------------------

    def changed(self) -> dict[str, float]:
        """store id -> last heard (Unix seconds) of the stores changed since the last call
        (give them back with `unsaved` when they could not be stored)."""
        now, wall = self._clock(), self._wall()
        out = {s: wall - (now - self._heard[s]) for s in self._dirty}
        self._dirty.clear()
        return out

    def unsaved(self, stores: dict[str, float]) -> None:
        """What `changed` returned could not be stored: keep it for the next call."""
        self._dirty.update(s for s in stores if s in self._heard)

    def restore(self, heard: dict[str, float]) -> None:
        """Last-heard times (Unix seconds) kept from before: each counts unless the store was
        heard from since (an assumed time is replaced)."""
        now, wall = self._clock(), self._wall()
        for store_id, at in heard.items():
            when = now - max(0.0, wall - at)
            if store_id not in self._heard or store_id in self._assumed:
                self._heard[store_id] = when
                self._assumed.discard(store_id)
            elif when > self._heard[store_id]:
                self._heard[store_id] = when
