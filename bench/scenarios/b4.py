"""B4 — memory per resident stock position.

Baseline: naive actor per position (dict + asyncio.Queue + asyncio.Task), RSS and tracemalloc
delta / N in fresh subprocesses; Redis side: ``INFO memory`` used_memory delta / N after
``populate_positions`` with ~30-byte random values (64 hashes ``us:{p<i>}:pos``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.baselines import actor_memory, redis_positions
from bench.harness import Config, Result, row, scenario, try_unistock

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


async def baseline(cfg: Config) -> B4Baseline:
    return B4Baseline(
        actors=actor_memory.measure(n_actors(cfg)),
        redis=await redis_positions.redis_memory_per_position(n_redis(cfg)),
    )


async def unistock(cfg: Config) -> B4Unistock:
    """TODO(unistock): server side — start a fresh server subprocess, note its RSS
    (``psutil.Process(pid).memory_info().rss``), make ``n_redis(cfg)`` positions resident (load
    them through the API or from a Redis pre-filled with ``populate_positions``), RSS delta / n.
    Redis side — ``redis_positions.redis_memory_per_position(n_redis(cfg),
    value_fn=<real encoder>, partition_fn=<server partitioning>)``."""
    raise NotImplementedError("pending server")


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
    ]  # fmt: skip
