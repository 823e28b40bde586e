"""B6 — fan-out of one hot position to 1,000 watch subscribers.

Baseline: raw grpc.aio server-streaming (server subprocess, bounded per-stream queues), one
pre-serialised 60-byte message pushed to all 1,000 streams. Two runs:
* burst — M pushes as fast as back-pressure allows → deliveries/s at the clients;
* isolated — pushes every 250 ms (each push drains before the next) → p50/p99 delivery
  latency (``time.time_ns()`` embedded at push vs receipt).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from bench.baselines import grpc_fanout
from bench.baselines.grpc_fanout import FanoutStats
from bench.harness import Config, Result, prefixed, row, scenario, try_unistock

ID = "B6"
NAME = "fan-out of one hot position to 1,000 watch subscribers"
TARGET = "≥ 0.8 × baseline deliveries/s; p99 ≤ 20 ms"
STREAMS = 1000
ISOLATED_INTERVAL_MS = 250.0


def burst_pushes(cfg: Config) -> int:
    return cfg.n(300, 50)


def isolated_pushes(cfg: Config) -> int:
    return cfg.n(40, 8)


@dataclass
class Fanout:
    burst: FanoutStats
    isolated: FanoutStats


async def baseline(cfg: Config) -> Fanout:
    return Fanout(
        burst=await grpc_fanout.baseline(streams=STREAMS, messages=burst_pushes(cfg)),
        isolated=await grpc_fanout.baseline(
            streams=STREAMS, messages=isolated_pushes(cfg), interval_ms=ISOLATED_INTERVAL_MS
        ),
    )


async def unistock(cfg: Config) -> Fanout:
    """TODO(unistock): server subprocess + private redis; ``STREAMS`` Watch subscriptions to one
    hot position (over a few channels), wait until all are subscribed, then change the position
    ``burst_pushes(cfg)`` times back to back (burst) and ``isolated_pushes(cfg)`` times every
    ``ISOLATED_INTERVAL_MS`` (isolated); measure deliveries/s and latency (change time vs
    receipt) into two ``FanoutStats``."""
    raise NotImplementedError("pending server")


@scenario(ID, NAME, target=TARGET)
async def run(cfg: Config) -> list[Result]:
    base = await baseline(cfg)
    uni, status, note = await try_unistock(unistock, cfg)
    extra = {"baseline": asdict(base), "unistock": asdict(uni) if uni else None}
    cpu = prefixed("baseline", base.burst.cpu_s) | prefixed(
        "unistock", uni.burst.cpu_s if uni else None
    )
    return [
        row(ID, "deliveries/s (burst, 1,000 streams)", "msg/s",
            uni.burst.deliveries_per_s if uni else None, base.burst.deliveries_per_s,
            status=status, note=note, extra=extra, cpu_s=cpu, target="≥ 0.8 × baseline"),
        row(ID, "p99 delivery latency (isolated pushes)", "ms",
            uni.isolated.p99_ms if uni else None, base.isolated.p99_ms,
            status=status, note=note, target="≤ 20 ms",
            extra={"p50_ms": {"baseline": base.isolated.p50_ms,
                              "unistock": uni.isolated.p50_ms if uni else None},
                   "burst_p99_ms": {"baseline": base.burst.p99_ms,
                                    "unistock": uni.burst.p99_ms if uni else None}}),
    ]  # fmt: skip
