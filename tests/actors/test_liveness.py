"""Store liveness decides when a network leaves a store's units out (issue 10 item 1)."""

from __future__ import annotations

from unistock.server.actors.liveness import StoreLiveness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_store_is_stale_after_the_limit_of_silence_and_fresh_when_heard_again() -> None:
    clock = Clock()
    live = StoreLiveness(clock)
    assert not live.stale("s1", 60)  # never heard of: as heard of at the start
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
