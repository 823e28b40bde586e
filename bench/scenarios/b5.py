"""B5 — cold start with 1M persisted positions: ready, and a full snapshot stream.

Baseline: a private redis-server (AOF, appendfsync always) with N fields over 64 hashes
``us:{p<i>}:pos`` (``populate_positions``); restart it (time to PING + AOF loaded), then a
pipelined full HSCAN (COUNT 1000) of all 64 hashes from redis-py asyncio + hiredis.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from bench.baselines import redis_positions
from bench.harness import Config, Result, prefixed, row, scenario, try_unistock

ID = "B5"
NAME = "cold start with 1M persisted positions: ready, and a full snapshot stream"
TARGET = "ready ≤ 2 s; snapshot ≤ 1.5 × baseline"


def n_positions(cfg: Config) -> int:
    return cfg.n(1_000_000, 100_000)


@dataclass
class B5Unistock:
    n: int
    ready_s: float  # server exec (Redis already holding n positions) -> ready (health SERVING)
    snapshot_s: float  # full snapshot stream of all n positions, first request -> last message
    snapshot_positions: int
    cpu_s: dict[str, float] = field(default_factory=dict)


async def baseline(cfg: Config) -> redis_positions.ColdStartBaseline:
    return await redis_positions.cold_start_baseline(n_positions(cfg))


async def unistock(cfg: Config) -> B5Unistock:
    """TODO(unistock): private redis (``RedisProc``) + ``populate_positions(url, n,
    value_fn=<real encoder>, partition_fn=<server partitioning>)``; start the server subprocess
    and time exec → ready; then time a full snapshot stream over gRPC."""
    raise NotImplementedError("pending server")


@scenario(ID, NAME, target=TARGET)
async def run(cfg: Config) -> list[Result]:
    base = await baseline(cfg)
    uni, status, note = await try_unistock(unistock, cfg)
    extra = {"baseline": asdict(base), "unistock": asdict(uni) if uni else None}
    cpu = prefixed("baseline", base.scan.cpu_s) | prefixed("unistock", uni.cpu_s if uni else None)
    return [
        row(ID, f"ready after restart (n={base.n:,}; base=redis)", "s",
            uni.ready_s if uni else None, base.redis_restart_ready_s,
            status=status, note=note, extra=extra, target="≤ 2 s"),
        row(ID, "full snapshot (base = pipelined HSCAN)", "s",
            uni.snapshot_s if uni else None, base.scan.seconds,
            status=status, note=note, cpu_s=cpu, target="≤ 1.5 × baseline",
            extra={"fields_per_s": {"baseline": base.scan.fields_per_s,
                   "unistock": uni.snapshot_positions / uni.snapshot_s if uni else None}}),
    ]  # fmt: skip
