"""Redis position data: ``populate_positions`` (shared by B4/B5 baselines and Unistock sides),
the B4 Redis-memory measurement and the B5 baseline (pipelined full HSCAN).

Layout: ``partitions`` hashes ``us:{p<i>}:pos``; field ``"store-<n>|SKU-<m>"``; value bytes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from bench._procs import RedisProc
from bench.harness import CpuMeter

ValueFn = Callable[[int, str, str], bytes]  # (index, location_id, sku) -> encoded value
PartitionFn = Callable[[int, str, str], int]  # (index, location_id, sku) -> partition
STORES = 100  # positions are store-<i % STORES> x SKU-<i // STORES>


def partition_key(p: int) -> str:
    return f"us:{{p{p}}}:pos"


def position_ids(i: int) -> tuple[str, str]:
    """(location_id, sku) of the i-th synthetic position."""
    return f"store-{i % STORES:04d}", f"SKU-{i // STORES:07d}"


def random_value(i: int, location_id: str, sku: str) -> bytes:
    return os.urandom(30)


@dataclass
class PopulateStats:
    n: int
    partitions: int
    seconds: float
    fields_per_s: float


async def populate_positions(
    redis_url: str,
    n: int,
    partitions: int = 64,
    value_fn: ValueFn | None = None,
    *,
    partition_fn: PartitionFn | None = None,
    batch: int = 2000,
) -> PopulateStats:
    """HSET ``n`` positions into ``partitions`` hashes ``us:{p<i>}:pos`` with pipelined large
    HSET mappings. ``value_fn(i, location_id, sku)`` gives the value (default: 30 random bytes);
    ``partition_fn(i, location_id, sku)`` the partition (default ``i % partitions``) — pass the
    server's own partitioning function when Unistock must find the positions where it expects.
    Field = ``"<location_id>|<sku>"``."""
    value_fn = value_fn or random_value
    t0 = time.perf_counter()
    client = aioredis.Redis.from_url(redis_url, socket_timeout=None)
    try:
        pending: dict[int, dict[bytes, bytes]] = {}
        buffered = 0
        for i in range(n):
            loc, sku = position_ids(i)
            p = partition_fn(i, loc, sku) if partition_fn else i % partitions
            pending.setdefault(p, {})[f"{loc}|{sku}".encode()] = value_fn(i, loc, sku)
            buffered += 1
            if buffered >= batch * partitions or i == n - 1:
                async with client.pipeline(transaction=False) as pipe:
                    for part, mapping in pending.items():
                        pipe.hset(partition_key(part), mapping=mapping)  # type: ignore[arg-type]
                    await pipe.execute()
                pending, buffered = {}, 0
    finally:
        await client.aclose()
    dt = time.perf_counter() - t0
    return PopulateStats(n, partitions, round(dt, 3), n / dt)


async def used_memory(redis_url: str) -> int:
    client = aioredis.Redis.from_url(redis_url)
    try:
        return int((await client.info("memory"))["used_memory"])
    finally:
        await client.aclose()


@dataclass
class RedisMemory:
    n: int
    bytes_per_position: float
    used_memory_delta_mb: float
    populate_s: float


async def redis_memory_per_position(
    n: int, value_fn: ValueFn | None = None, partitions: int = 64, **kw: object
) -> RedisMemory:
    """``INFO memory`` used_memory delta / n after ``populate_positions`` into a fresh private
    redis-server. Unistock side: pass its real encoder as ``value_fn`` (and partition_fn)."""
    with RedisProc() as r:
        before = await used_memory(r.url)
        st = await populate_positions(r.url, n, partitions, value_fn, **kw)  # type: ignore[arg-type]
        after = await used_memory(r.url)
    return RedisMemory(n, (after - before) / n, round((after - before) / 2**20, 2), st.seconds)


@dataclass
class ScanStats:
    fields: int
    seconds: float
    fields_per_s: float
    rounds: int
    cpu_s: dict[str, float] = field(default_factory=dict)


async def pipelined_hscan(
    redis_url: str, partitions: int = 64, count: int = 1000, cpu: CpuMeter | None = None
) -> ScanStats:
    """Full HSCAN of all ``partitions`` hashes: every round pipelines one HSCAN per unfinished
    hash (cursor-dependent within a hash, parallel across hashes). hiredis, no timeout."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=None)
    try:
        await client.ping()
        if cpu:
            cpu.start()
        t0 = time.perf_counter()
        cursors = {partition_key(p): 0 for p in range(partitions)}
        fields = rounds = 0
        while cursors:
            rounds += 1
            keys = list(cursors)
            async with client.pipeline(transaction=False) as pipe:
                for k in keys:
                    pipe.hscan(k, cursors[k], count=count)
                replies = await pipe.execute()
            for k, (cur, data) in zip(keys, replies, strict=True):
                fields += len(data)
                if cur == 0:
                    del cursors[k]
                else:
                    cursors[k] = cur
        dt = time.perf_counter() - t0
        cpu_s = cpu.stop() if cpu else {}
    finally:
        await client.aclose()
    return ScanStats(fields, round(dt, 3), fields / dt, rounds, cpu_s)


@dataclass
class ColdStartBaseline:
    n: int
    populate_s: float
    redis_restart_ready_s: float  # redis-server exec -> PING ok and AOF loaded
    scan: ScanStats
    aof_mb: float


async def cold_start_baseline(n: int, partitions: int = 64) -> ColdStartBaseline:
    """B5 baseline: populate, restart redis (AOF reload timed), then time a pipelined HSCAN."""
    r = RedisProc()
    r.start()
    try:
        st = await populate_positions(r.url, n, partitions)
        aof_mb = sum(f.stat().st_size for f in r.dir.rglob("*") if f.is_file()) / 2**20
        restart_s = r.restart()
        scan = await pipelined_hscan(r.url, partitions, cpu=CpuMeter(redis=r.pid))
    finally:
        r.stop()
    return ColdStartBaseline(n, st.seconds, round(restart_s, 3), scan, round(aof_mb, 1))
