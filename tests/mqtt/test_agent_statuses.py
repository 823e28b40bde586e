"""AgentStatuses: the last AgentStatus of each store, bounded, never replaced by an older one."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from unistock.server.mqtt.bounded import AgentStatuses
from unistock.v1 import inventory_pb2 as pb


def status(depth: int, at: int | None = None) -> pb.AgentStatus:
    s = pb.AgentStatus(state=pb.AgentStatus.ONLINE, outbox_depth=depth)
    if at is not None:
        s.at.CopyFrom(Timestamp(seconds=at))
    return s


def test_the_latest_status_of_each_store_is_kept() -> None:
    kept = AgentStatuses()
    kept.keep("s1", status(3, at=100))
    kept.keep("s2", status(1, at=100))
    kept.keep("s1", status(0, at=110))
    assert [kept.get(s).outbox_depth for s in ("s1", "s2")] == [0, 1]  # type: ignore[union-attr]
    assert kept.get("s3") is None
    assert len(kept) == 2


def test_an_older_status_does_not_replace_a_newer_one() -> None:
    """A retained status the broker sends again (a reconnection) is older than the live one."""
    kept = AgentStatuses()
    kept.keep("s1", status(0, at=110))
    kept.keep("s1", status(5, at=100))
    assert kept.get("s1") == status(0, at=110)
    kept.keep("s1", status(7))  # without `at`: it is the latest heard
    assert kept.get("s1") == status(7)


def test_past_the_limit_the_store_heard_from_least_recently_is_forgotten() -> None:
    kept = AgentStatuses(limit=2)
    kept.keep("s1", status(1))
    kept.keep("s2", status(2))
    kept.keep("s1", status(3))  # s1 heard again: s2 is now the least recent
    kept.keep("s3", status(4))
    assert sorted(kept) == ["s1", "s3"]
    assert len(kept) == 2
