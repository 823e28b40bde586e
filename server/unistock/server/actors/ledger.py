"""The ledger writer (issue 11 item 4): a durable consumer of the change feed that writes every
change to SQL, off the hot path. It runs as its own process (`unistock-ledger`, see
app/ledger.py; `make run` starts one) or, for small deployments and tests, inside the server
(`--ledger-in-process 1`).

Each round reads every partition's feed after the writer's cursor there (persistence.feed:
FeedReader), writes the rows in one SQL transaction (idempotent on each row's entry_key), then
saves the cursors in Redis and trims the feeds behind the slowest consumer. A crash between the
SQL commit and the cursors' save only makes the next round write the same rows again, which
adds nothing: every change is in the ledger exactly once. A SQL or Redis outage delays it; no
reply ever waits for it. Entries the feed's cap trimmed before the writer read them are
reported (log and `unistock_feed_entries_lost_total`): the one way the ledger can miss changes,
when it stays behind for longer than the cap allows (see README, "The change feed").
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from unistock.server.metrics import LedgerMetrics
from unistock.server.persistence.feed import FeedId, FeedReader, format_feed_id
from unistock.server.persistence.ledger import COLUMNS, LedgerStore, ledger_rows, position_rows

log = logging.getLogger(__name__)

#: The writer's name among the feed's durable consumers (its cursor: us:{p}:feedcur).
CONSUMER = "ledger"


class LedgerWriter:
    """Moves the change feed into the SQL ledger, at most `batch` feed entries per partition
    per round."""

    def __init__(
        self, feed: FeedReader, ledger: LedgerStore, metrics: LedgerMetrics, *, batch: int = 200
    ) -> None:
        self._feed = feed
        self._ledger = ledger
        self._metrics = metrics
        self.batch = batch
        self._loaded = False

    async def drain_once(self) -> int:
        """One round: returns the feed entries consumed (0: caught up). Raises Unavailable or
        SQLAlchemyError (nothing consumed then)."""
        if not self._loaded:
            await self._feed.register()  # (the server registers it too, at its start)
            await self._feed.load()
            self._loaded = True
        got = await self._feed.read(self.batch)
        values: list[tuple[Any, ...]] = []
        last: dict[int, FeedId] = {}
        # In the feed's order across partitions (ids are given in flush order): the ledger's
        # ids follow what happened.
        for p, at, entry in sorted(got.entries, key=lambda e: e[1]):
            feed_id = format_feed_id(at)
            positions, others = position_rows(feed_id, entry)
            values += positions
            if others:
                values += [tuple(r.get(c) for c in COLUMNS) for r in ledger_rows(feed_id, others)]
            last[p] = max(at, last.get(p, at))
        new = await asyncio.to_thread(self._ledger.write_values, values)
        await self._feed.commit(got)
        self._report_lost(got.lost)
        if not got.entries:
            self._metrics.ledger_lag.set(0)
            return 0
        now = time.time()
        for _, at, _ in got.entries:
            self._metrics.ledger_delay.observe(max(0.0, now - at[0] / 1000))
        self._metrics.ledger_entries.inc(new)
        # Behind: the oldest change still unread is younger than the last read of a partition
        # that had more; caught up everywhere else.
        behind = [last[p][0] for p in got.more]
        self._metrics.ledger_lag.set(max(0.0, now - min(behind) / 1000) if behind else 0.0)
        return len(got.entries)

    def _report_lost(self, lost: dict[int, tuple[int, int]]) -> None:
        for p, (first, last) in lost.items():
            self._metrics.feed_lost.labels(CONSUMER).inc(last - first + 1)
            log.error(
                "feed partition %d: %d entries (the %d-th to the %d-th) were trimmed by the "
                "feed's cap before the ledger read them (it was behind by more than "
                "--feed-max-entries): their changes are missing from the ledger",
                p,
                last - first + 1,
                first,
                last,
            )

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
