"""Store liveness: when the server last heard from each store's edge agent (a movement batch,
or an ONLINE status on `unistock/v1/stores/{store}/status`) and how old the agent's oldest
unacknowledged movement was in its last status. A network leaves a store's units out of what it
may promise once the store has been silent longer than the network's staleness limit, or its
agent reports a backlog older than that (its stock is news the server has not had).

Stores never heard of since the server started count as heard of at the start: a restart does
not make every store stale at once (their retained statuses arrive within moments).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StoreLiveness:
    """Last-heard times (monotonic seconds) and reported backlog ages per store."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.started = clock()
        self._heard: dict[str, float] = {}
        self._backlog: dict[str, float] = {}

    def heard(self, store_id: str) -> None:
        """A movement batch (or anything proving the agent is there) arrived now."""
        self._heard[store_id] = self._clock()

    def status(self, store_id: str, online: bool, backlog_age: float) -> None:
        """The agent's status: ONLINE refreshes it; the backlog age is kept either way."""
        if online:
            self._heard[store_id] = self._clock()
        self._backlog[store_id] = max(0.0, backlog_age)

    def silent_for(self, store_id: str) -> float:
        """Seconds since the store was last heard of."""
        return self._clock() - self._heard.get(store_id, self.started)

    def stale(self, store_id: str, limit: float) -> bool:
        """Whether the store's stock is older news than limit seconds (0: never stale)."""
        if limit <= 0:
            return False
        return self.silent_for(store_id) > limit or self._backlog.get(store_id, 0.0) > limit
