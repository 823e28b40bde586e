"""The ingestion's per-source and per-store state, bounded whatever the topics and sources.

A store id comes from a topic and a source id from a payload: neither is under the server's
control, so nothing kept per store or per source may grow with them. `SourceTable` keeps the
most recently used sources (the others are read again from Redis when they come back);
`StoreSeries` gives the first stores their own metric series and the rest one shared series;
`AgentStatuses` keeps each store's last AgentStatus, for the most recently heard stores.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

from prometheus_client import Gauge

# Stores with their own unistock_mqtt_store_last_seen (and unistock_store_*) series; the label
# of the series shared by the stores beyond them.
from unistock.server.metrics import MAX_STORE_SERIES, OTHER_STORES
from unistock.v1 import inventory_pb2 as pb

__all__ = [
    "MAX_SOURCES",
    "MAX_STATUSES",
    "MAX_STORE_SERIES",
    "OTHER_STORES",
    "AgentStatuses",
    "SourceState",
    "SourceTable",
    "StoreSeries",
]

#: Sources whose state is kept in memory (a store's agent uses one per outbox file).
MAX_SOURCES = 65_536
#: Stores whose last AgentStatus is kept (~150 bytes each).
MAX_STATUSES = 100_000


class SourceState(NamedTuple):
    """What the ingestor knows of one source."""

    #: The store the source belongs to (the first store that sent it; durable in Redis).
    owner: str
    #: Highest seq applied without gaps (durable in Redis, or about to be).
    progress: int


class SourceTable:
    """source_id -> SourceState for at most `limit` sources, least recently used evicted.

    An evicted source is read again from Redis (its claim is written there before it is
    used, its progress by the flush). Progress written after its eviction and not yet
    durable would read back lower: the next batch then looks like a gap and the agent resends
    from there, whose movements the positions recognise as duplicates. Never less correct,
    only slower, and it takes `limit` other sources within one flush.
    """

    def __init__(self, limit: int = MAX_SOURCES) -> None:
        self.limit = limit
        self._entries: OrderedDict[str, SourceState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, source_id: str) -> SourceState | None:
        """The source's state, now the most recently used; None when not held."""
        state = self._entries.get(source_id)
        if state is not None:
            self._entries.move_to_end(source_id)
        return state

    def put(self, source_id: str, state: SourceState) -> None:
        """Record a source's state, evicting the least recently used beyond the limit."""
        self._entries[source_id] = state
        self._entries.move_to_end(source_id)
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)


class StoreSeries:
    """unistock_mqtt_store_last_seen{store}: one series per store for the first `limit` stores
    seen, then one shared series (OTHER_STORES) for every later one.

    Series are never removed: a silent store's series is what a staleness alert watches.
    """

    def __init__(self, gauge: Gauge, limit: int = MAX_STORE_SERIES) -> None:
        self.limit = limit
        self._gauge = gauge
        self._series: dict[str, Gauge] = {}

    def __len__(self) -> int:
        return len(self._series)

    def seen(self, store_id: str, when: float) -> None:
        """Record that store_id's agent sent movements at when (Unix time)."""
        series = self._series.get(store_id)
        if series is None:
            label = store_id if len(self._series) < self.limit else OTHER_STORES
            series = self._gauge.labels(label)
            if label == store_id:
                self._series[store_id] = series
        series.set(when)


class AgentStatuses:
    """store id -> the last AgentStatus its agent published, for at most `limit` stores (past
    it, the store heard from least recently is forgotten). A status older than the one kept
    (both with an `at`: a retained one the broker sends again) does not replace it."""

    def __init__(self, limit: int = MAX_STATUSES) -> None:
        self.limit = limit
        self._by_store: dict[str, pb.AgentStatus] = {}

    def __len__(self) -> int:
        return len(self._by_store)

    def __iter__(self) -> Iterator[str]:
        return iter(self._by_store)

    def get(self, store_id: str) -> pb.AgentStatus | None:
        """The store's last status, or None."""
        return self._by_store.get(store_id)

    def keep(self, store_id: str, status: pb.AgentStatus) -> None:
        """Record a status just received from the store's agent."""
        by_store = self._by_store
        kept = by_store.pop(store_id, None)
        if (
            kept is not None
            and kept.HasField("at")
            and status.HasField("at")
            and status.at.ToNanoseconds() < kept.at.ToNanoseconds()
        ):
            status = kept
        by_store[store_id] = status
        while len(by_store) > self.limit:
            del by_store[next(iter(by_store))]
