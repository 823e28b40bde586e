"""The actor runtime against a real redis-server: activation, ordering, passivation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from unistock.devtools.services import RedisServer
from unistock.server.actors import Inventory
from unistock.server.domain import Movement, MovementType
from unistock.server.metrics import Metrics
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.store import RedisStore


class Rig:
    def __init__(
        self, store: RedisStore, commit: GroupCommit, inv: Inventory, task: asyncio.Task[None]
    ) -> None:
        self.store, self.commit, self.inv, self.task = store, commit, inv, task

    def sample(self, name: str) -> float:
        return self.inv.metrics.registry.get_sample_value(name) or 0.0

    async def close(self) -> None:
        await self.commit.close()
        await self.task
        await self.inv.close()
        await self.store.close()


async def rig(url: str, max_resident: int = 1000) -> Rig:
    store = RedisStore.from_url(url, Keyspace("act", 8), command_timeout=10)
    await store.open()
    metrics = Metrics()
    commit = GroupCommit(store, metrics)
    inv = Inventory(store, commit, metrics, max_resident=max_resident)
    await inv.start()
    return Rig(store, commit, inv, asyncio.create_task(commit.run()))


@pytest.fixture
async def r(clean_redis_url: str) -> AsyncIterator[Rig]:
    x = await rig(clean_redis_url, max_resident=10)
    yield x
    await x.close()


def receipt(source: str, seq: int, sku: str, loc: str = "store-1", qty: int = 1) -> Movement:
    return Movement(source, seq, sku, loc, MovementType.RECEIPT, qty)


async def test_concurrent_activations_are_loaded_in_one_batch(clean_redis_url: str) -> None:
    x = await rig(clean_redis_url)
    try:
        client = aioredis.Redis.from_url(clean_redis_url)
        await client.config_resetstat()
        keys = [(f"SKU-{i}", f"store-{i % 5}") for i in range(200)]
        await asyncio.gather(*(x.inv.levels([k]) for k in keys))
        stats = await client.info("commandstats")
        await client.aclose()
        assert x.sample("unistock_actor_activations_total") == 200
        # One pipeline: at most one HMGET per partition, not one per key.
        assert stats["cmdstat_hmget"]["calls"] <= 8
    finally:
        await x.close()


async def test_turns_waiting_for_an_activation_run_in_arrival_order(r: Rig) -> None:
    tasks = [
        asyncio.create_task(r.inv.apply_movements([receipt(f"src-{i}", 1, "SKU-cold")]))
        for i in range(5)
    ]
    await asyncio.gather(*tasks)
    p = r.inv.positions.peek(("SKU-cold", "store-1"))
    assert p is not None
    assert [src for src, _ in p.marks] == [f"src-{i}" for i in range(5)]
    assert (p.on_hand, p.version) == (5, 5)


async def test_lru_cap_passivates_clean_positions_and_they_come_back(r: Rig) -> None:
    for i in range(30):
        await r.inv.apply_movements([receipt("wms", i + 1, f"SKU-{i}", qty=i)])
    await r.commit.barrier()
    await r.inv.levels([("SKU-x", "store-9")])  # an activation enforces the cap
    assert len(r.inv.positions) <= 10
    assert r.sample("unistock_actor_passivations_total") >= 20
    # Passivated positions are reloaded from Redis with everything they had.
    levels = await r.inv.levels([(f"SKU-{i}", "store-1") for i in range(30)])
    assert [p.on_hand for p in levels] == list(range(30))
    dup = await r.inv.apply_movements([receipt("wms", 1, "SKU-0")])
    assert dup.duplicates == 1


@pytest.mark.slow
async def test_dirty_positions_are_never_passivated(redis_server: RedisServer) -> None:
    x = await rig(redis_server.url, max_resident=20)
    try:
        keys = [(f"SKU-{i}", "store-1") for i in range(12)]
        await x.inv.levels(keys)
        # The source is known before the pause (its highest seq is read once, on first sight).
        await x.inv.apply_movements([receipt("wms", 100, "SKU-11")])
        redis_server.pause()  # flushes cannot complete: what changes now stays dirty
        submitted = []
        for i in range(5):
            _, durable = await x.inv.submit_movements([receipt("wms", i + 1, f"SKU-{i}")])
            submitted.append(durable)
        assert all(x.commit.is_dirty(k) for k in keys[:5])
        x.inv.positions.max_resident = 2
        assert x.inv.positions.enforce_cap() == 7  # only the clean ones go
        assert {p.key for p in x.inv.positions.resident()} == set(keys[:5])
        redis_server.resume()
        await asyncio.gather(*submitted, return_exceptions=True)
        await x.commit.barrier()
        assert x.inv.positions.enforce_cap() == 3
        assert len(x.inv.positions) == 2
    finally:
        redis_server.resume()
        await x.close()


async def test_idle_positions_are_passivated_and_used_ones_kept(clean_redis_url: str) -> None:
    x = await rig(clean_redis_url)
    try:
        await x.inv.levels([(f"SKU-{i}", "store-1") for i in range(10)])
        assert x.inv.positions.passivate_idle() == 0  # first call only marks
        await x.inv.apply_movements([receipt("wms", 1, "SKU-3")])  # a turn uses SKU-3
        await x.inv.levels([("SKU-5", "store-1")])  # reads do not count as use
        assert x.inv.positions.passivate_idle() == 9
        assert x.inv.positions.peek(("SKU-3", "store-1")) is not None
        assert len(x.inv.positions) == 1
    finally:
        await x.close()
