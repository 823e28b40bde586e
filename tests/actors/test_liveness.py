"""Store liveness decides when a network leaves a store's units out (issue 10 item 1)."""

from __future__ import annotations

from unistock.server.actors.liveness import StoreLiveness
from unistock.server.metrics import OTHER_STORES, StoreLivenessCollector


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_store_is_stale_after_the_limit_of_silence_and_fresh_when_heard_again() -> None:
    clock = Clock()
    live = StoreLiveness(clock)
    clock.now += 100  # a store added to a running server ...
    assert not live.stale("s1", 60)  # ... is heard of when first asked about, not stale
    clock.now += 61
    assert live.stale("s1", 60)
    assert not live.stale("s1", 0)  # a limit of 0: never stale
    live.heard("s1")  # a batch
    assert not live.stale("s1", 60)
    clock.now += 30
    live.status("s1", online=False, backlog_age=0)  # OFFLINE does not refresh
    clock.now += 31
    assert live.stale("s1", 60)
    live.status("s1", online=True, backlog_age=0)
    assert not live.stale("s1", 60)


def test_a_store_whose_agent_cannot_deliver_is_stale() -> None:
    live = StoreLiveness(Clock())
    live.status("s1", online=True, backlog_age=300)  # online, but 5 minutes of unacked sales
    assert live.stale("s1", 60)
    live.status("s1", online=True, backlog_age=2)  # caught up
    assert not live.stale("s1", 60)


def test_last_heard_times_survive_a_restart() -> None:
    """What `changed` gives is what a new StoreLiveness `restore`s: a store long silent, or
    never heard from at all, is as silent after a restart as before (not fresh again)."""
    clock, wall = Clock(), Clock()
    wall.now = 1_700_000_000.0
    live = StoreLiveness(clock, lambda: wall.now)
    live.heard("s1")
    assert not live.stale("never", 60)  # never heard from: assumed heard of now
    saved = live.changed()
    assert saved == {"s1": wall.now, "never": wall.now}
    assert live.changed() == {}  # only what changed since
    clock.now += 100
    wall.now += 100  # 100 s later the server restarts
    again = StoreLiveness(clock, lambda: wall.now)
    assert not again.stale("never", 60)  # asked before the restore: an assumption ...
    again.restore(saved)
    assert again.stale("s1", 60)
    assert again.stale("never", 60)
    assert not again.stale("s1", 120)
    again.heard("s1")
    again.restore({"s1": wall.now - 500})  # never older than what was heard since
    assert not again.stale("s1", 60)


def test_a_retained_status_counts_from_when_the_agent_made_it() -> None:
    clock, wall = Clock(), Clock()
    wall.now = 1_700_000_000.0
    live = StoreLiveness(clock, lambda: wall.now)
    # A dead agent's last ONLINE status, retained by the broker 10 minutes ago.
    live.status("s1", online=True, backlog_age=0, at=wall.now - 600)
    assert live.stale("s1", 60)
    live.status("s1", online=True, backlog_age=0, at=wall.now + 30)  # a clock ahead: now
    assert not live.stale("s1", 1)
    clock.now += 2
    assert live.stale("s1", 1)
    failed = live.changed()
    live.unsaved(failed)  # could not be stored: given again
    assert live.changed() == failed


def _samples(collector: StoreLivenessCollector) -> dict[str, dict[str, float]]:
    """metric -> store -> value, as scraped."""
    return {
        family.name: {s.labels["store"]: s.value for s in family.samples}
        for family in collector.collect()
    }


def test_the_store_metrics_say_how_long_each_store_has_been_silent_and_its_backlog() -> None:
    clock = Clock()
    collector = StoreLivenessCollector()
    assert _samples(collector) == {  # no MQTT ingestion: the families, no series
        "unistock_store_silent_seconds": {},
        "unistock_store_reported_backlog_seconds": {},
    }
    live = collector.liveness = StoreLiveness(clock)
    live.heard("s1")
    live.know("s2")  # a store of master data never heard from: counts from now
    clock.now += 30
    live.status("s2", online=True, backlog_age=400)
    assert _samples(collector) == {
        "unistock_store_silent_seconds": {"s1": 30.0, "s2": 0.0},
        "unistock_store_reported_backlog_seconds": {"s1": 0.0, "s2": 400.0},
    }
    live.status("s2", online=False, backlog_age=0)  # stopped: OFFLINE does not refresh
    clock.now += 20
    assert _samples(collector)["unistock_store_silent_seconds"] == {"s1": 50.0, "s2": 20.0}


def test_stores_beyond_the_series_limit_share_one_series_with_the_largest_values() -> None:
    clock = Clock()
    collector = StoreLivenessCollector(limit=2)
    live = collector.liveness = StoreLiveness(clock)
    for store in ("a", "b", "c", "d"):
        live.status(store, online=True, backlog_age={"c": 7.0}.get(store, 1.0))
        clock.now += 10
    assert _samples(collector) == {
        "unistock_store_silent_seconds": {"a": 40.0, "b": 30.0, OTHER_STORES: 20.0},
        "unistock_store_reported_backlog_seconds": {"a": 1.0, "b": 1.0, OTHER_STORES: 7.0},
    }
