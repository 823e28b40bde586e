"""The ledger writer (issue 11 item 4): a durable consumer of the change feed that writes every
change to SQL, off the hot path.

Each round reads the feed after the writer's cursor (in the feed's global order, never past a
flush still in progress), writes the rows in one SQL transaction (idempotent on each row's
entry_key), then saves the cursor in Redis and trims the feed behind it. A crash between the
SQL commit and the cursor's save only makes the next round write the same rows again, which
adds nothing: every change is in the ledger exactly once. A SQL or Redis outage delays it; no
reply ever waits for it.
"""

from __future__ import annotations

import asyncio
import logging
import time

from unistock.server.metrics import Metrics
from unistock.server.persistence.codec import decode_feed
from unistock.server.persistence.ledger import LedgerStore, ledger_rows
from unistock.server.persistence.store import RedisStore

log = logging.getLogger(__name__)

#: The writer's name among the feed's durable consumers (its cursor: us:{p}:feedcur).
CONSUMER = "ledger"


class LedgerWriter:
    """Moves the change feed into the SQL ledger, `batch` feed entries per round."""

    def __init__(
        self, store: RedisStore, ledger: LedgerStore, metrics: Metrics, *, batch: int = 500
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._metrics = metrics
        self.batch = batch
        self._cursor: tuple[int, int] | None = None

    async def drain_once(self) -> int:
        """One round: returns the feed entries consumed (0: caught up). Raises Unavailable or
        SQLAlchemyError (nothing consumed then)."""
        if self._cursor is None:
            self._cursor = await self._store.load_feed_cursor(CONSUMER)
        entries = await self._store.read_feed_from(self._cursor, self.batch)
        if not entries:
            self._metrics.ledger_lag.set(0)
            return 0
        rows = []
        for (ms, n), _, entry in entries:
            rows += ledger_rows(f"{ms}-{n}", decode_feed(entry))
        new = await asyncio.to_thread(self._ledger.write, rows)
        last = entries[-1][0]
        await self._store.save_feed_cursor(CONSUMER, last)
        self._cursor = last
        await self._store.trim_feed([CONSUMER])
        self._metrics.ledger_entries.inc(new)
        behind = len(entries) == self.batch
        self._metrics.ledger_lag.set(max(0.0, time.time() - last[0] / 1000) if behind else 0)
        return len(entries)

    async def run(self, idle: float = 0.2, retry: float = 1.0) -> None:
        """Drain forever: at once while there is more, every `idle` s when caught up, every
        `retry` s (doubling to 30 s) while SQL or Redis fail."""
        backoff = retry
        while True:
            try:
                consumed = await self.drain_once()
                backoff = retry
            except Exception as exc:  # an outage: nothing lost, retried
                self._metrics.ledger_errors.inc()
                log.warning("ledger not written yet (will retry in %.0f s): %r", backoff, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            if not consumed:
                await asyncio.sleep(idle)
