"""The events deriver and the feed's cap (real redis-server): entries the cap trimmed before
they were derived are reported (log, unistock_feed_entries_lost_total{consumer="events"}),
never silently skipped; a deriver keeping up reports nothing."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import CollectorRegistry

from tests.persistence import test_store
from tests.persistence.test_store import KS
from tests.persistence.test_store_status import level, write_levels
from unistock.server.actors.events import EventDeriver
from unistock.server.metrics import EventMetrics
from unistock.server.persistence.codec import LOW, OK
from unistock.server.persistence.events import EventLog
from unistock.server.persistence.store import RedisStore

store = test_store.store  # the fixture: an opened RedisStore on an empty Redis


def lost(metrics: EventMetrics) -> float:
    return metrics.feed_lost.labels("events")._value.get()


async def changes(store: RedisStore, first: int, n: int) -> None:
    """n feed entries in web/A's partition (a class change each: each makes an event)."""
    for r in range(first, first + n):
        await write_levels(store, level(r, OK if r % 2 else LOW, LOW if r % 2 else OK, r))


async def drain(deriver: EventDeriver) -> int:
    total = 0
    while n := await deriver.drain_once():
        total += n
    return total


async def test_entries_trimmed_before_they_were_derived_are_reported(
    store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.feed_max_entries = 10  # XADD MAXLEN ~ 10: whole nodes of 100 entries go
    metrics = EventMetrics(CollectorRegistry())
    deriver = EventDeriver(store, EventLog(store), metrics, batch=50)
    await changes(store, 1, 5)
    assert await drain(deriver) == 5  # keeping up: numbered, nothing lost
    await changes(store, 6, 5)
    assert await drain(deriver) == 5
    assert lost(metrics) == 0
    await changes(store, 11, 250)  # the deriver idle meanwhile: the cap trims unread ones
    feed = KS.feed(KS.network_level_partition("web", "A"))
    info = await store.client.xinfo_stream(feed)
    held, added = info["length"], info["entries-added"]
    assert added == 260
    assert held < 250  # some unread entries are gone
    with caplog.at_level(logging.ERROR):
        assert await drain(deriver) == held
    assert lost(metrics) == 250 - held  # exactly the unread entries the cap trimmed
    assert "trimmed by the feed's cap before their events were derived" in caplog.text
    await changes(store, 261, 3)  # caught up again: nothing more reported
    assert await drain(deriver) == 3
    assert lost(metrics) == 250 - held
