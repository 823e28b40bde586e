"""The ledger writer (issue 11 item 4): a durable consumer of the change feed that writes every
change to SQL, off the hot path. It runs as its own process (`unistock-ledger`, see
app/ledger.py; `make run` starts one) or, for small deployments and tests, inside the server
(`--ledger-in-process 1`).

Each round reads every partition's feed after the writer's cursor there (persistence.feed:
FeedReader), writes their rows in one SQL transaction with the entries' ids (partition, feed
id: persistence.ledger), then saves the cursors in Redis and trims the feeds behind the slowest
consumer. A crash between the SQL commit and the cursors' save only makes the next round read
the same entries again, which it skips: every change (in exactly one feed entry) is in the
ledger exactly once. A SQL or Redis outage delays it; no reply ever waits for it. Entries the
feed's cap trimmed before the writer read them are reported (log and
`unistock_feed_entries_lost_total`): the one way the ledger can miss changes, when it stays
behind for longer than the cap allows (see docs/design.md, "The change feed").
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable

import redis.asyncio as aioredis

from unistock.server.metrics import LedgerMetrics
from unistock.server.persistence.feed import FeedReader, Lease, format_feed_id, rounds
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.ledger import (
    COLUMNS,
    FeedEntry,
    LedgerStore,
    ledger_rows,
    position_rows,
)

log = logging.getLogger(__name__)

#: The writer's name among the feed's durable consumers (its cursor: us:{p}:feedcur).
CONSUMER = "ledger"


#: How long a writer's lease lasts without renewal (a killed writer's standby takes over then).
LEASE_TTL = 15.0


def writer_lease(client: aioredis.Redis, keyspace: Keyspace) -> Lease:
    """The ledger writers' lease, held as "<host>:<pid>" (named in a standby's log)."""
    return Lease(client, keyspace, CONSUMER, f"{socket.gethostname()}:{os.getpid()}", LEASE_TTL)


class LedgerWriter:
    """Moves the change feed into the SQL ledger, at most `batch` feed entries per partition
    per round."""

    def __init__(
        self,
        feed: FeedReader,
        ledger: LedgerStore,
        metrics: LedgerMetrics,
        *,
        batch: int = 200,
        lease: Lease | None = None,
        on_lease: Callable[[str | None], None] | None = None,
    ) -> None:
        self._feed = feed
        self._ledger = ledger
        self._metrics = metrics
        self.batch = batch
        self._loaded = False
        #: One writer at a time (None: no lease, e.g. tests driving drain_once).
        self.lease = lease
        self._held_until = 0.0
        #: None until the lease was first tried; then whether another writer holds it.
        self._standby: bool | None = None
        #: Called when the writer starts writing (None) or standing by (the lease's holder),
        #: the first time it tries the lease and whenever that changes (unistock-ledger's
        #: "ready" / "standing by" lines).
        self._on_lease = on_lease
        #: every prune_every s, the ledger_feed rows behind the saved cursors are forgotten
        #: (see _prune)
        self.prune_every = 60.0
        self._pruned_at = time.monotonic()

    async def drain_once(self) -> int:
        """One round: returns the feed entries consumed (0: caught up). Raises Unavailable or
        SQLAlchemyError (nothing consumed then)."""
        if not self._loaded:
            await self._feed.register()  # (the server registers it too, at its start)
            await self._feed.load()
            self._loaded = True
        got = await self._feed.read(self.batch)
        entries: list[FeedEntry] = []
        # In the feed's order across partitions (ids are given in flush order): the ledger's
        # ids follow what happened.
        for p, at, entry in sorted(got.entries, key=lambda e: e[1]):
            feed_id = format_feed_id(at)
            values, others = position_rows(feed_id, entry)
            if others:
                values += [tuple(r.get(c) for c in COLUMNS) for r in ledger_rows(feed_id, others)]
            entries.append((p, feed_id, values))
        try:
            new = await asyncio.to_thread(self._ledger.write_entries, entries)
            await self._feed.commit(got)
        except Exception:
            if got.entries:  # behind by the oldest change it could not write
                oldest = min(at for _, at, _ in got.entries)[0]
                self._metrics.ledger_lag.set(max(0.0, time.time() - oldest / 1000))
            raise
        self._report_lost(got.lost)
        await self._prune()
        if not got.entries:
            self._metrics.ledger_lag.set(0)
            return 0
        now = time.time()
        for _, at, _ in got.entries:
            self._metrics.ledger_delay.observe(max(0.0, now - at[0] / 1000))
        self._metrics.ledger_entries.inc(new)
        # Behind: the oldest change still unread is younger than the last read of a partition
        # that had more; caught up everywhere else.
        last = got.last()
        behind = [last[p][0] for p in got.more]
        self._metrics.ledger_lag.set(max(0.0, now - min(behind) / 1000) if behind else 0.0)
        return len(got.entries)

    async def _prune(self) -> None:
        """Every `prune_every` s: forget the ledger_feed rows of entries no writer reads again
        (LedgerStore.prune_feed: before each partition's saved cursor; a restart, or a standby
        taking over, resumes after those), so that the table stays bounded. A failure is only
        logged (the next round tries again)."""
        now = time.monotonic()
        if now - self._pruned_at < self.prune_every:
            return
        self._pruned_at = now
        cursors = {p: at[0] for p, at in self._feed.cursors.items() if at[0]}
        try:
            n = await asyncio.to_thread(self._ledger.prune_feed, cursors)
        except Exception as exc:
            log.warning("ledger_feed not pruned yet: %r", exc)
            return
        if n:
            log.info("ledger_feed: %d written feed entries behind the cursors forgotten", n)

    def _report_lost(self, lost: dict[int, tuple[int, int]]) -> None:
        for p, (first, last) in lost.items():
            self._metrics.feed_lost.labels(CONSUMER).inc(last - first + 1)
            log.error(
                "feed partition %d: %d entries (numbers %d to %d of its stream) were trimmed by "
                "the feed's cap before the ledger read them (it was behind by more than "
                "--feed-max-entries): their changes are missing from the ledger",
                p,
                last - first + 1,
                first,
                last,
            )

    async def run(self, idle: float = 0.2, retry: float = 1.0) -> None:
        """Drain forever: at once while there is more, every `idle` s when caught up, every
        `retry` s (doubling to 30 s) while SQL or Redis fail. With a lease, only while it
        holds it: another writer on the same feed makes this one stand by."""
        async for consumed in rounds(self._round, self._failed, retry):
            if consumed is None:  # standing by
                assert self.lease is not None
                await asyncio.sleep(self.lease.ttl_ms / 3000)
            elif not consumed:
                await asyncio.sleep(idle)

    async def _round(self) -> int | None:
        """One round if this writer may write (None: another one holds the lease)."""
        if self.lease is not None and not await self._hold():
            return None
        return await self.drain_once()

    def _failed(self, exc: Exception, wait: float) -> None:
        self._metrics.ledger_errors.inc()
        log.warning("ledger not written yet (will retry in %.0f s): %r", wait, exc)

    async def _hold(self) -> bool:
        """Whether this writer holds the lease (renewed every third of its TTL)."""
        assert self.lease is not None
        now = time.monotonic()
        if self._held_until - now > self.lease.ttl_ms / 1500:
            return True
        other = await self.lease.acquire()
        if other is None:
            if self._standby:
                log.info("ledger writer lease taken: writing")
            if self._standby is not False and self._on_lease is not None:
                self._on_lease(None)
            self._standby = False
            self._held_until = now + self.lease.ttl_ms / 1000
            return True
        if not self._standby:
            log.warning(
                "another ledger writer holds the lease (%s): standing by until it stops", other
            )
            self._loaded = False  # its cursors will have moved: read them again
            if self._on_lease is not None:
                self._on_lease(other)
        self._standby = True
        self._held_until = 0.0
        return False
