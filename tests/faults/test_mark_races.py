"""Races at await points around bounded marks and seq jumps, against a real redis-server
(Inventory + GroupCommit + RedisStore directly): a spilled-mark read overtaken by a newer write,
a source let go by the highest-seq cache while its turn waits, and seqs near 2**53 compared in
the flush script (Lua numbers are doubles). Each failed before its fix."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from unistock.server.actors import Inventory
from unistock.server.domain import Movement, MovementType, Outcome
from unistock.server.domain.position import MAX_MARKS
from unistock.server.metrics import Metrics
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.store import PartitionWrite, Phase, RedisStore

KS = Keyspace("review", 8)
KEY = ("SKU-1", "L1")


class Rig:
    def __init__(self, store: RedisStore, commit: GroupCommit, inv: Inventory) -> None:
        self.store, self.commit, self.inv = store, commit, inv
        self.task = asyncio.create_task(commit.run())

    async def close(self) -> None:
        await self.commit.close()
        await self.task
        await self.inv.close()
        await self.store.close()


async def rig(url: str, **kw: Any) -> Rig:
    store = RedisStore.from_url(url, KS, command_timeout=10)
    await store.open()
    metrics = Metrics()
    commit = GroupCommit(store, metrics)
    inv = Inventory(store, commit, metrics, **kw)
    await inv.start()
    return Rig(store, commit, inv)


def receipt(source: str, seq: int, key: tuple[str, str] = KEY) -> Movement:
    return Movement(source, seq, key[0], key[1], MovementType.RECEIPT, 1)


def gate_first(
    target: Any, name: str, when: Callable[..., bool] = lambda *a: True
) -> tuple[asyncio.Event, asyncio.Event]:
    """Wrap target.name: its first call matching `when` runs for real (Redis answers), then
    waits for `release` before returning to its caller (a slow reply). `entered` is set once it
    has read."""
    real: Callable[..., Awaitable[Any]] = getattr(target, name)
    entered, release = asyncio.Event(), asyncio.Event()
    armed = [True]

    async def wrapped(*args: Any) -> Any:
        result = await real(*args)
        if armed[0] and when(*args):
            armed[0] = False
            entered.set()
            await release.wait()
        return result

    setattr(target, name, wrapped)
    return entered, release


async def test_a_stale_spilled_mark_read_does_not_regress_a_newer_mark(
    clean_redis_url: str,
) -> None:
    """Claim (d). Two deliveries of S's seq 11 (a redelivery) reach a crowded position whose S
    mark (10) is spilled. Delivery A reads the spilled mark from Redis and its reply is slow.
    Before the fix, delivery B read it too, applied 11 and 12, S was spilled again (12), and A's
    late reply set the mark back to 10: seq 11 applied twice. Now B's read joins A's (one read
    per mark at a time, turns resume in arrival order): B waits, and 11 applies once."""
    first = await rig(clean_redis_url)
    try:
        await first.inv.apply_movements([receipt("S", 10)])
        # 16 other sources push S out of the position's own marks: spilled (10) and written.
        await first.inv.apply_movements([receipt(f"O{i}", 1) for i in range(MAX_MARKS)])
    finally:
        await first.close()
    # A restart: the spilled-mark cache is empty, so reads go to Redis.
    x = await rig(clean_redis_url)
    try:
        entered, release = gate_first(
            x.store, "_hget_ints", lambda fields: any(k.endswith(":marks") for k, _ in fields)
        )
        slow = asyncio.create_task(x.inv.apply_movements([receipt("S", 11)]))
        await asyncio.wait_for(entered.wait(), 10)
        fast = asyncio.create_task(x.inv.apply_movements([receipt("S", 11), receipt("S", 12)]))
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not fast.done()  # it did not read on its own: it waits for the read in flight
        release.set()
        late, early = await asyncio.wait_for(asyncio.gather(slow, fast), 10)
        await x.inv.apply_movements([receipt(f"N{i}", 1) for i in range(MAX_MARKS)])
        [p] = await x.inv.levels([KEY])
        # 1 (S 10) + 16 (O) + 2 (S 11, 12) + 16 (N): seq 11 of S applied once.
        assert (late.applied, early.applied, early.duplicates) == (1, 1, 1)
        assert p.on_hand == 1 + MAX_MARKS + 2 + MAX_MARKS
    finally:
        await x.close()


async def test_a_spilled_mark_read_while_a_higher_one_is_written_returns_the_higher(
    clean_redis_url: str,
) -> None:
    """A read of a spilled mark that a flush raises meanwhile is merged into the written value
    (a mark only grows): what the store returns and caches is never older than what it wrote."""
    store = RedisStore.from_url(clean_redis_url, KS, command_timeout=10)
    await store.open()
    try:
        name = "L1|SKU-1|S"
        part = KS.location_partition("L1")
        low: Phase = {part: PartitionWrite(marks=[name, 10])}
        await store.flush([low])
        store._marks.clear()  # as after a restart
        entered, release = gate_first(store, "_hget_ints")
        read = asyncio.create_task(store.load_marks([(KEY, "S")]))
        await asyncio.wait_for(entered.wait(), 10)  # it read 10; its reply is late
        high: Phase = {part: PartitionWrite(marks=[name, 12])}
        await store.flush([high])
        release.set()
        assert await read == [12]
        assert store.cached_marks([(KEY, "S")]) == [12]
    finally:
        await store.close()


async def test_a_source_evicted_from_the_high_cache_mid_turn_is_not_refused(
    clean_redis_url: str,
) -> None:
    """Commit d69d86c says a source goes on. Source A is at seq 2,000,000 (durable). A's next
    movement (2,000,001) waits for its cold position; meanwhile two other sources' first
    batches fill the highest-seq cache (max_sources=2 here, 65,536 by default) and evict A.
    A's turn then reads high 0 and refuses 2,000,001 as a jump (final: never applied)."""
    x = await rig(clean_redis_url, max_sources=2)
    try:
        await x.inv.apply_movements([receipt("A", 1_000_000, ("SKU-0", "L1"))])
        await x.inv.apply_movements([receipt("A", 2_000_000, ("SKU-0", "L1"))])
        cold = ("SKU-cold", "L1")
        entered, release = gate_first(x.store, "load_positions", lambda keys: cold in keys)
        t_a = asyncio.create_task(x.inv.apply_movements([receipt("A", 2_000_001, cold)]))
        await asyncio.wait_for(entered.wait(), 10)
        t_b = asyncio.create_task(x.inv.apply_movements([receipt("B", 1, ("SKU-2", "L1"))]))
        t_c = asyncio.create_task(x.inv.apply_movements([receipt("C", 1, ("SKU-3", "L1"))]))
        for _ in range(50):  # B and C read their highs (the activation queue waits on A's)
            await asyncio.sleep(0.01)
        release.set()
        result = await asyncio.wait_for(t_a, 10)
        await asyncio.gather(t_b, t_c)
        assert [str(e) for _, e in result.refused] == []
        assert result.applied == 1
    finally:
        await x.close()


async def test_a_spilled_mark_near_2_53_is_raised_in_redis(clean_redis_url: str) -> None:
    """Claim (d) at the top of the seq range: FLUSH_SCRIPT compares spilled marks as Lua
    doubles, so 2**53 + 1 is not 'greater' than a stored 2**53 and the mark stays 2**53; after a
    restart the redelivered 2**53 + 1 applies again. (The source's highest seq is seeded near
    2**53, as a source that got there would have it.)"""
    top = 2**53
    client = aioredis.Redis.from_url(clean_redis_url)
    await client.hset(KS.source_highs(KS.source_partition("S")), "S", top - 100)
    await client.aclose()
    first = await rig(clean_redis_url)
    try:
        await first.inv.apply_movements([receipt("S", top)])
        await first.inv.apply_movements([receipt(f"O{i}", 1) for i in range(MAX_MARKS)])
        assert (await first.inv.apply_movements([receipt("S", top + 1)])).applied == 1
        await first.inv.apply_movements([receipt(f"O{i}", 2) for i in range(MAX_MARKS)])
    finally:
        await first.close()
    client = aioredis.Redis.from_url(clean_redis_url)
    stored = await client.hget(KS.spilled_marks(KS.location_partition("L1")), "L1|SKU-1|S")
    await client.aclose()
    second = await rig(clean_redis_url)
    try:
        again = await second.inv.apply_movements([receipt("S", top + 1)])
        [p] = await second.inv.levels([KEY])
        assert (stored, again.results[0].outcome, p.on_hand) == (
            str(top + 1).encode(),
            Outcome.DUPLICATE,
            2 + 2 * MAX_MARKS,
        )
    finally:
        await second.close()
