"""Round-robin between stores: one store's backlog does not delay the others' sales.

A store that comes back after hours offline sends its whole outbox at once (tens of thousands
of movements). Ingested first come, first served, every other store's next sale would wait
behind it, and so would the watch streams of every channel. The ingestor instead takes one
message per store in turn; within a store, messages keep their order (the per-source sequence
checks depend on it).
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class FairQueue(Generic[T]):
    """Items queued per key, handed out one key at a time in rotation, FIFO within a key.

    Unbounded: it holds what the MQTT client has already taken from the broker (and acked to
    it), which the client would otherwise hold itself. Nothing is kept per key beyond its
    queued items (a key leaves the rotation with its last item), so made-up keys leave no
    state behind; the ingestor gives every topic without a valid store id one shared key.
    """

    def __init__(self) -> None:
        # Keys with queued items, in rotation order: the next item comes from the first key,
        # which then moves to the back if it has more.
        self._queues: dict[str, deque[T]] = {}
        self._ready = asyncio.Event()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def put(self, key: str, item: T) -> None:
        """Queue item behind key's earlier items."""
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = deque()
        q.append(item)
        self._size += 1
        self._ready.set()

    def get_nowait(self) -> tuple[str, T] | None:
        """The next (key, item) in rotation, or None when empty."""
        if not self._queues:
            return None
        key = next(iter(self._queues))
        q = self._queues.pop(key)
        item = q.popleft()
        if q:
            self._queues[key] = q  # re-inserted: now last in the rotation
        self._size -= 1
        if not self._queues:
            self._ready.clear()
        return key, item

    async def get(self) -> tuple[str, T]:
        """The next (key, item) in rotation, waiting for one."""
        while True:
            got = self.get_nowait()
            if got is not None:
                return got
            await self._ready.wait()
