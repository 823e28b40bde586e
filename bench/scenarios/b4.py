"""B4 — memory per resident stock position.

Baseline: naive actor per position (dict + asyncio.Queue + asyncio.Task), RSS and tracemalloc
delta / N in fresh subprocesses; Redis side: ``INFO memory`` used_memory delta / N after
``populate_positions`` with ~30-byte random values (64 hashes ``us:{p<i>}:pos``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import psutil  # type: ignore[import-untyped,unused-ignore]

from bench import unistock_memory
from bench._procs import RedisProc
from bench.baselines import actor_memory, redis_positions
from bench.harness import Config, Result, row, scenario, try_unistock
from bench.unistock_side import (
    channel,
    levels,
    partition_of,
    stored_value,
    unistock_server,
    write_layout,
)

ID = "B4"
NAME = "memory per resident stock position"
TARGET = "≤ 0.1 × baseline; ≤ 400 B in server and ≤ 150 B in Redis per position (1M)"


def n_actors(cfg: Config) -> int:
    return cfg.n(100_000, 20_000)


def n_redis(cfg: Config) -> int:
    return cfg.n(1_000_000, 100_000)


@dataclass
class B4Baseline:
    actors: actor_memory.ActorMemory
    redis: redis_positions.RedisMemory


@dataclass
class B4Unistock:
    n: int
    server_rss_bytes_per_position: float  # server process RSS delta / n
    redis_bytes_per_position: float  # used_memory delta / n with real encoded values
    server_tracemalloc_bytes_per_position: float | None = None
    own_strings_rss_bytes_per_position: float | None = None
    own_strings_tracemalloc_bytes_per_position: float | None = None
    stored_value_bytes: int = 0
    redis_populate_s: float = 0.0
    real_server_rss_bytes_per_position: float | None = None


async def baseline(cfg: Config) -> B4Baseline:
    return B4Baseline(
        actors=actor_memory.measure(n_actors(cfg)),
        redis=await redis_positions.redis_memory_per_position(n_redis(cfg)),
    )


async def unistock(cfg: Config) -> B4Unistock:
    """Server side — in fresh interpreters (``bench.unistock_memory``), ``n_redis(cfg)`` real
    ``Position`` objects, each changed once by a RECEIPT from a store agent (source mark +
    version), in a ``dict[StockKey, Position]`` as the server's ``Directory`` keeps them, with
    sku/location strings shared between positions: RSS delta / n and tracemalloc delta / n. For
    information, the same with every key owning its strings (``extra``: what the server pays when
    keys come from request bytes without interning). Redis side —
    ``redis_positions.redis_memory_per_position(n_redis(cfg), value_fn=<encode_position>,
    partition_fn=<crc32(location_id) % 64>)``."""
    n = n_redis(cfg)
    shared = unistock_memory.measure(n, "shared")
    own = unistock_memory.measure(n, "own")
    real = await server_resident_rss(n)
    redis = await redis_positions.redis_memory_per_position(
        n, value_fn=stored_value, partition_fn=partition_of
    )
    return B4Unistock(
        n=n,
        server_rss_bytes_per_position=shared.rss_bytes_per_position,
        redis_bytes_per_position=redis.bytes_per_position,
        server_tracemalloc_bytes_per_position=shared.tracemalloc_bytes_per_position,
        own_strings_rss_bytes_per_position=own.rss_bytes_per_position,
        own_strings_tracemalloc_bytes_per_position=own.tracemalloc_bytes_per_position,
        stored_value_bytes=len(stored_value(0, "store-0000", "SKU-0000000")),
        redis_populate_s=redis.populate_s,
        real_server_rss_bytes_per_position=real,
    )


async def server_resident_rss(n: int, chunk: int = 10_000) -> float:
    """The real server process: Redis pre-filled with n encoded positions; GetAvailability of
    every key in chunks (lazy activation makes each one resident); server RSS delta / positions
    after the first (warm-up) chunk. Keys come from the wire, so each owns its strings."""
    r = RedisProc().start()
    try:
        await redis_positions.populate_positions(
            r.url, n, value_fn=stored_value, partition_fn=partition_of
        )
        await write_layout(r.url, [f"store-{i:04d}" for i in range(redis_positions.STORES)])
        async with unistock_server(redis=r) as (srv, _), channel(srv.target) as stub:
            server = psutil.Process(srv.pid)
            rss0 = 0
            for start in range(0, n, chunk):
                ids = [redis_positions.position_ids(i) for i in range(start, min(n, start + chunk))]
                got = await levels(stub, [(sku, loc) for loc, sku in ids])
                assert all(lvl.version > 0 for lvl in got), "a position was not found"
                if start == 0:
                    rss0 = server.memory_info().rss
            rss1 = server.memory_info().rss
    finally:
        r.stop()
    return float(rss1 - rss0) / (n - chunk)


@scenario(ID, NAME, target=TARGET)
async def run(cfg: Config) -> list[Result]:
    base = await baseline(cfg)
    uni, status, note = await try_unistock(unistock, cfg)
    extra = {"baseline": asdict(base), "unistock": asdict(uni) if uni else None}
    a = base.actors
    return [
        row(ID, "server RSS per position", "B",
            uni.server_rss_bytes_per_position if uni else None, a.rss_bytes_per_actor,
            status=status, note=note, extra=extra, target="≤ 0.1 × baseline and ≤ 400 B"),
        row(ID, "server tracemalloc per position", "B",
            uni.server_tracemalloc_bytes_per_position if uni else None,
            a.tracemalloc_bytes_per_actor, status=status, note=note, target="(info)"),
        row(ID, f"Redis used_memory per position (n={n_redis(cfg):,})", "B",
            uni.redis_bytes_per_position if uni else None, base.redis.bytes_per_position,
            status=status, note=note,
            target="≤ 150 B (baseline = 30 B random values)"),
        row(ID, "real server RSS per position (GetAvailability)", "B",
            uni.real_server_rss_bytes_per_position if uni else None, a.rss_bytes_per_actor,
            status=status, note=note, target="(info) ≤ 400 B"),
    ]  # fmt: skip
