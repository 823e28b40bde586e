"""Group commit against a real redis-server: coalescing, chunking, failure and retry."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest

from unistock.devtools.services import RedisServer
from unistock.server.domain import Line, Position, ReserveRequest, Unavailable, reserve
from unistock.server.metrics import Metrics
from unistock.server.persistence.codec import decode_position
from unistock.server.persistence.group_commit import DurableLevel, GroupCommit
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.store import RedisStore

KS = Keyspace("gc", 4)


async def committer(url: str, **kw: float) -> tuple[RedisStore, GroupCommit, asyncio.Task[None]]:
    store = RedisStore.from_url(url, KS, command_timeout=1.0)
    await store.open()
    commit = GroupCommit(store, Metrics(), retry_backoff=0.01, **kw)  # type: ignore[arg-type]
    return store, commit, asyncio.create_task(commit.run())


@pytest.fixture
async def gc(clean_redis_url: str) -> AsyncIterator[tuple[RedisStore, GroupCommit]]:
    store, commit, task = await committer(clean_redis_url)
    yield store, commit
    await commit.close()
    await task
    await store.close()


def samples(commit: GroupCommit, name: str) -> float:
    value = commit._metrics.registry.get_sample_value(name)
    return 0.0 if value is None else value


async def test_changes_in_one_window_become_one_write(gc: tuple[RedisStore, GroupCommit]) -> None:
    store, commit = gc
    seen: list[list[DurableLevel]] = []
    commit.listeners.append(seen.append)
    p = Position(("SKU", "store-1"))
    for i in range(100):
        p.on_hand += 1
        p.version = i + 1
        commit.position_changed(p)
    await commit.barrier()
    assert samples(commit, "unistock_flush_batch_positions_count") == 1
    assert samples(commit, "unistock_flush_batch_positions_sum") == 1
    [[level]] = seen
    assert level.version == 100
    [data] = await store.load_positions([p.key])
    assert decode_position(p.key, data).on_hand == 100  # type: ignore[arg-type]


async def test_a_burst_is_written_in_chunks_under_one_window(clean_redis_url: str) -> None:
    store, commit, task = await committer(clean_redis_url, max_positions=10)
    try:
        positions = [
            Position((f"SKU-{i}", f"store-{i % 3}"), on_hand=i, version=1) for i in range(35)
        ]
        for p in positions:
            commit.position_changed(p)
        await commit.barrier()
        assert samples(commit, "unistock_flush_batch_positions_count") == 4
        stored = await store.load_positions([p.key for p in positions])
        assert [
            decode_position(p.key, d).on_hand for p, d in zip(positions, stored, strict=True)
        ] == [  # type: ignore[arg-type]
            p.on_hand for p in positions
        ]
    finally:
        await commit.close()
        await task
        await store.close()


@pytest.mark.slow
async def test_a_failed_flush_fails_its_window_and_is_retried(redis_server: RedisServer) -> None:
    store, commit, task = await committer(redis_server.url)
    try:
        p = Position(("SKU", "store-1"), on_hand=5, version=1)
        p.hold("r-kept", 1)
        p.hold("r-ended", 1)
        commit.position_changed(p)
        await commit.barrier()
        assert p.hold_changes is None  # written: nothing left to write
        redis_server.kill()
        p.on_hand, p.version = 6, 2
        p.release("r-ended")
        p.hold("r-new", 2)
        commit.position_changed(p)
        with pytest.raises(Unavailable):
            await commit.barrier()
        assert commit.is_dirty(p.key)  # kept for the next attempt, never dropped
        assert p.hold_changes == {"r-ended", "r-new"}  # and so are its changed holds
        written = asyncio.Event()
        commit.listeners.append(lambda levels: written.set())
        redis_server.restart()
        async with asyncio.timeout(30):
            await written.wait()
        assert not commit.is_dirty(p.key)
        assert p.hold_changes is None
        [q] = await store.read_positions([p.key])
        assert q is not None
        assert (q.on_hand, dict(q.hold_items())) == (6, {"r-kept": 1, "r-new": 2})
    finally:
        await commit.close()
        await task
        await store.close()


async def test_a_caller_giving_up_does_not_cancel_the_window(
    gc: tuple[RedisStore, GroupCommit],
) -> None:
    _, commit = gc
    p = Position(("SKU", "store-1"), on_hand=1, version=1)
    commit.position_changed(p)
    impatient = asyncio.ensure_future(commit.barrier())
    patient = asyncio.ensure_future(commit.barrier())
    impatient.cancel()
    await patient  # the flush went on and the other waiter saw it durable
    assert not commit.is_dirty(p.key)
    p.version = 2
    commit.position_changed(p)
    await commit.barrier()  # the flusher survived


async def test_a_change_that_cannot_be_stored_fails_its_window_and_the_flusher_goes_on(
    gc: tuple[RedisStore, GroupCommit],
) -> None:
    """Issue 8 item 2.1: a record no validation should have let in (an expiry in year 10000)
    fails its own window's waiters with UNAVAILABLE and is dropped; the same window's other
    changes and every later window are written, and the flusher task lives on."""
    store, commit = gc
    ps = {("SKU", "store-1"): Position(("SKU", "store-1"), on_hand=5)}
    good = reserve(ReserveRequest.build("r-ok", [Line("SKU", "store-1", 1)], 5), ps, 1e9)
    bad = dataclasses.replace(good, reservation_id="r-bad", expires_at=253402300800.0)  # 10000
    commit.reservation_changed(bad, created=True)
    commit.reservation_changed(good, created=True)
    commit.position_changed(ps[("SKU", "store-1")])
    with pytest.raises(Unavailable, match="could not be stored"):
        await commit.barrier()
    await commit.barrier()  # the rest is written on the next flush
    assert await store.load_reservations(["r-bad"]) == [None]
    [stored] = await store.load_reservations(["r-ok"])
    assert stored is not None
    [pos] = await store.read_positions([("SKU", "store-1")])
    assert pos is not None
    assert (pos.reserved, pos.hold_items()) == (1, (("r-ok", 1),))
    later = Position(("SKU-2", "store-1"), on_hand=1, version=1)
    commit.position_changed(later)
    await commit.barrier()
    assert (await store.load_positions([later.key]))[0] is not None
    registry = commit._metrics.registry
    assert registry.get_sample_value("unistock_redis_errors_total", {"operation": "encode"}) == 1
