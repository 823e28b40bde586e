"""B5 — cold start with 1M persisted positions: ready, and a full snapshot stream.

Baseline: a private redis-server (AOF, appendfsync always) with N fields over 64 hashes
``us:{p<i>}:pos`` (``populate_positions``); restart it (time to PING + AOF loaded), then a
pipelined full HSCAN (COUNT 1000) of all 64 hashes from redis-py asyncio + hiredis.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from bench._procs import RedisProc
from bench.baselines import redis_positions
from bench.harness import Config, CpuMeter, Result, log, prefixed, row, scenario, try_unistock
from bench.unistock_side import (
    METADATA,
    ServerProc,
    channel,
    partition_of,
    stored_value,
    write_layout,
)
from unistock.v1 import inventory_pb2 as pb

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
    """Private redis (``RedisProc``) + ``populate_positions(url, n, value_fn=<encode_position>,
    partition_fn=<crc32 partitioning>)`` + ``us:meta`` and the ``us:{p}:locs`` sets; restart
    redis (as the baseline does), then spawn the server subprocess and time exec → its gRPC port
    answering a GetAvailability; then time a full ``WatchAvailability`` snapshot (empty filter)
    from the request to the message with ``snapshot_complete``, counting the levels."""
    n = n_positions(cfg)
    r = RedisProc().start()
    srv: ServerProc | None = None
    try:
        st = await redis_positions.populate_positions(
            r.url, n, value_fn=stored_value, partition_fn=partition_of
        )
        await write_layout(r.url, [f"store-{i:04d}" for i in range(redis_positions.STORES)])
        r.restart()
        srv = ServerProc(r.url, r.dir)
        srv.spawn()
        ready_s = await srv.wait_ready()
        async with channel(srv.target) as stub:
            cpu = CpuMeter(server=srv.pid, redis=r.pid).start()
            t0 = time.perf_counter()
            count = 0
            call = stub.WatchAvailability(pb.WatchAvailabilityRequest(), metadata=METADATA)
            async for msg in call:
                count += len(msg.levels)
                if msg.snapshot_complete:
                    break
            snapshot_s = time.perf_counter() - t0
            cpu_s = cpu.stop()
            call.cancel()
    finally:
        if srv is not None:
            srv.stop()
        r.stop()
    log(f"B5 unistock: populated {n:,} in {st.seconds:.1f}s; snapshot {count:,} levels")
    return B5Unistock(n, round(ready_s, 3), round(snapshot_s, 3), count, cpu_s)


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
