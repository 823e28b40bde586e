"""Batched loading: every key asked for during one event-loop pass is fetched in one pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class BatchLoader(Generic[K]):
    """Coalesces concurrent loads: callers await one future per key, in the order they asked.

    `fetch(keys)` loads and installs a batch (it must make every key resident or raise).
    """

    def __init__(self, fetch: Callable[[list[K]], Awaitable[None]]) -> None:
        self._fetch = fetch
        self._waiting: dict[K, asyncio.Future[None]] = {}
        self._queued: list[K] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def load(self, keys: Iterable[K]) -> list[asyncio.Future[None]]:
        """Futures that resolve once each key is loaded (one shared future per key)."""
        futures = []
        for key in keys:
            fut = self._waiting.get(key)
            if fut is None:
                fut = self._waiting[key] = asyncio.get_running_loop().create_future()
                self._queued.append(key)
                if len(self._queued) == 1:
                    task = asyncio.get_running_loop().create_task(self._run())
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            futures.append(fut)
        return futures

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let the rest of this loop pass queue their keys
        batch, self._queued = self._queued, []
        try:
            await self._fetch(batch)
        except BaseException as exc:
            for key in batch:
                fut = self._waiting.pop(key)
                if not fut.done():
                    fut.set_exception(
                        exc if isinstance(exc, Exception) else asyncio.CancelledError()
                    )
                    fut.exception()
            if not isinstance(exc, Exception):
                raise
            return
        for key in batch:
            fut = self._waiting.pop(key)
            if not fut.done():
                fut.set_result(None)

    async def close(self) -> None:
        """Cancel loads in progress."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
