"""Batched loading: every key asked for during one event-loop pass is fetched in one pipeline."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class BatchLoader(Generic[K]):
    """Coalesces concurrent loads: callers await one future per key, in the order they asked.

    One fetch runs at a time; keys asked for meanwhile form the next batch. So the number of
    Redis connections used by loads stays at one per loader however bursty the load, and
    batches grow when Redis is slow. `fetch(keys)` loads and installs a batch (or raises).
    """

    def __init__(self, fetch: Callable[[list[K]], Awaitable[None]]) -> None:
        self._fetch = fetch
        self._waiting: dict[K, asyncio.Future[None]] = {}
        self._queued: list[K] = []
        self._runner: asyncio.Task[None] | None = None

    def load(self, keys: Iterable[K]) -> list[asyncio.Future[None]]:
        """Futures that resolve once each key is loaded (one shared future per key)."""
        futures = []
        for key in keys:
            fut = self._waiting.get(key)
            if fut is None:
                fut = self._waiting[key] = asyncio.get_running_loop().create_future()
                self._queued.append(key)
            futures.append(fut)
        if self._queued and self._runner is None:
            self._runner = asyncio.get_running_loop().create_task(self._run())
        return futures

    async def wait(self, keys: Iterable[K]) -> None:
        """Load keys and wait for all of them.

        The futures are shared by every caller of a key: each is awaited through a shield, so a
        caller that is cancelled (a client's deadline, a disconnect) stops waiting without
        cancelling the load the others wait for.
        """
        futures = self.load(keys)
        if len(futures) == 1:
            await asyncio.shield(futures[0])
        elif futures:
            await asyncio.gather(*map(asyncio.shield, futures))

    async def _run(self) -> None:
        try:
            await asyncio.sleep(0)  # let the rest of this loop pass queue their keys
            while self._queued:
                batch, self._queued = self._queued, []
                await self._load_batch(batch)
        finally:
            self._runner = None

    async def _load_batch(self, batch: list[K]) -> None:
        try:
            await self._fetch(batch)
        except Exception as exc:
            for key in batch:
                fut = self._waiting.pop(key)
                if not fut.done():
                    fut.set_exception(exc)
                    fut.exception()  # retrieved: its waiters may have given up
            return
        except BaseException:
            for key in batch:
                self._waiting.pop(key).cancel()
            raise
        for key in batch:
            fut = self._waiting.pop(key)
            if not fut.done():
                fut.set_result(None)

    async def close(self) -> None:
        """Cancel loads in progress."""
        runner = self._runner
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)
        for fut in self._waiting.values():
            fut.cancel()
        self._waiting.clear()
        self._queued.clear()
