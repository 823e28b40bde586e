"""Fan-out of durable level changes to watch subscribers, with bounded, coalescing buffers.

The hub listens to the group commit: a change reaches subscribers once it is durable. Each
change is serialised once (as a `levels` entry) for all subscribers. A subscriber buffers at most
the latest entry per position, in first-changed order; when more than `max_pending` distinct
positions are waiting, it is cut (its buffer freed) and must resume with its known versions.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any, Protocol

import grpc
from grpc import aio

from unistock.server.domain import StockKey
from unistock.server.metrics import Metrics
from unistock.server.persistence.codec import stock_level_entry
from unistock.server.persistence.group_commit import DurableLevel


class Subscription:
    """One subscriber's filter and its coalescing buffer of pending entries."""

    __slots__ = ("_hub", "event", "locations", "max_pending", "overflowed", "pending", "skus")

    def __init__(
        self, hub: WatchHub, skus: frozenset[str], locations: frozenset[str], max_pending: int
    ) -> None:
        self._hub = hub
        self.skus = skus
        self.locations = locations
        self.max_pending = max_pending
        #: key -> (version, entry): the latest durable level per position not yet sent.
        self.pending: dict[StockKey, tuple[int, bytes]] = {}
        self.event = asyncio.Event()
        self.overflowed = False

    def matches(self, key: StockKey) -> bool:
        """Whether the filter selects a position."""
        return (not self.skus or key[0] in self.skus) and (
            not self.locations or key[1] in self.locations
        )

    def offer(self, key: StockKey, version: int, entry: bytes) -> None:
        """Buffer an entry, replacing an older pending one of the same position."""
        pending = self.pending
        old = pending.get(key)
        if old is not None:
            if old[0] < version:
                pending[key] = (version, entry)
            self._hub.n_coalesced += 1
            return
        if len(pending) >= self.max_pending:
            self.cut()
            return
        pending[key] = (version, entry)
        self._hub.n_queued += 1
        self.event.set()

    def take(self, limit: int) -> list[bytes]:
        """Up to limit pending entries, oldest change first."""
        pending = self.pending
        if len(pending) <= limit:
            out = [e for _, e in pending.values()]
            pending.clear()
        else:
            keys = list(pending)[:limit]  # dict order: first changed first
            out = [pending.pop(k)[1] for k in keys]
        if not pending and not self.overflowed:
            self.event.clear()
        return out

    def cut(self) -> None:
        """The subscriber fell too far behind: free its buffer and end its stream."""
        if not self.overflowed:
            self.overflowed = True
            self.pending.clear()
            self._hub.unsubscribe(self)
            self._hub.metrics.watch_dropped.inc()
            self.event.set()

    def close(self) -> None:
        """Stop receiving updates."""
        self._hub.unsubscribe(self)


class Buffered(Protocol):
    """A subscriber's buffer of serialised updates (Subscription, ReservationSubscription)."""

    event: asyncio.Event
    overflowed: bool

    def take(self, limit: int) -> list[bytes]: ...


async def send_changes(
    sub: Buffered, closing: Any, context: aio.ServicerContext[Any, Any], resume: str, batch: int
) -> None:
    """Write a subscriber's updates as they come, `batch` per message, until it is cut (too far
    behind: RESOURCE_EXHAUSTED; closing.closing, the server stopping: UNAVAILABLE; both say
    `resume`, how to go on) or the call ends."""
    while True:
        await sub.event.wait()
        if sub.overflowed:
            if closing.closing:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"server shutting down; {resume}")
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, f"watcher fell too far behind; {resume}"
            )
        entries = sub.take(batch)
        if entries:
            await context.write(b"".join(entries))


class WatchHub:
    """Routes durable changes to the subscriptions whose filter matches."""

    def __init__(self, metrics: Metrics, *, max_pending: int = 100_000) -> None:
        self.metrics = metrics
        self.max_pending = max_pending
        self._queued = metrics.watch_updates.labels("queued")
        self._coalesced = metrics.watch_updates.labels("coalesced")
        # Counted in plain ints per publish, added to the (locked) counters once per publish.
        self.n_queued = 0
        self.n_coalesced = 0
        self._all: set[Subscription] = set()
        self._by_sku: dict[str, set[Subscription]] = {}
        self._by_location: dict[str, set[Subscription]] = {}
        self._count = 0
        self.closing = False

    def subscribe(self, skus: Iterable[str] = (), locations: Iterable[str] = ()) -> Subscription:
        """A new subscription; it buffers every matching durable change from now on."""
        sub = Subscription(self, frozenset(skus), frozenset(locations), self.max_pending)
        for index, values in self._indexes(sub):
            for v in values:
                index.setdefault(v, set()).add(sub)
        if not sub.skus and not sub.locations:
            self._all.add(sub)
        self._count += 1
        self.metrics.watch_subscribers.inc()  # a gauge shared with the network levels' hub
        return sub

    def _indexes(
        self, sub: Subscription
    ) -> list[tuple[dict[str, set[Subscription]], frozenset[str]]]:
        # Index by SKU when the filter names SKUs (locations are then checked per change),
        # else by location.
        if sub.skus:
            return [(self._by_sku, sub.skus)]
        if sub.locations:
            return [(self._by_location, sub.locations)]
        return []

    @property
    def subscribers(self) -> int:
        """Open subscriptions."""
        return self._count

    def unsubscribe(self, sub: Subscription) -> None:
        """Remove a subscription (idempotent)."""
        found = sub in self._all
        self._all.discard(sub)
        for index, values in self._indexes(sub):
            for v in values:
                subs = index.get(v)
                if subs is not None and sub in subs:
                    found = True
                    subs.discard(sub)
                    if not subs:
                        del index[v]
        if found:
            self._count -= 1
            self.metrics.watch_subscribers.dec()

    def shutdown(self) -> None:
        """End every stream (the server is stopping; clients resume elsewhere)."""
        self.closing = True
        for sub in [
            *self._all,
            *(s for subs in self._by_sku.values() for s in subs),
            *(s for subs in self._by_location.values() for s in subs),
        ]:
            sub.cut()

    def publish(self, levels: list[DurableLevel]) -> None:
        """Offer durable levels to matching subscribers (a GroupCommit listener)."""
        if not self._count:
            return
        for d in levels:
            targets = self._targets(d.key)
            if targets:
                entry = stock_level_entry(d.key[0].encode(), d.key[1].encode(), d.level)
                for sub in targets:
                    sub.offer(d.key, d.version, entry)
        self._count_offers()

    def publish_entries(self, changes: Iterable[tuple[StockKey, int, bytes]]) -> None:
        """Offer (key, version, serialised entry) changes to matching subscribers."""
        if not self._count:
            return
        for key, version, entry in changes:
            for sub in self._targets(key):
                sub.offer(key, version, entry)
        self._count_offers()

    def _targets(self, key: StockKey) -> list[Subscription]:
        """The subscriptions whose filter selects key (its second part is the location, or
        the network in a hub of network levels)."""
        sku, loc = key
        targets: list[Subscription] = list(self._all)
        by_sku = self._by_sku.get(sku)
        if by_sku:
            targets.extend(s for s in by_sku if not s.locations or loc in s.locations)
        by_loc = self._by_location.get(loc)
        if by_loc:
            targets.extend(by_loc)
        return targets

    def _count_offers(self) -> None:
        if self.n_queued:
            self._queued.inc(self.n_queued)
            self.n_queued = 0
        if self.n_coalesced:
            self._coalesced.inc(self.n_coalesced)
            self.n_coalesced = 0
