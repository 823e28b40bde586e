"""B3 — reservations/s (unary Reserve + ReleaseReservation), 64 concurrent callers.

Baseline: an empty grpc.aio unary call (bytes in/out) against a server subprocess, one channel,
64 looping tasks. Compared per RPC: Unistock's Reserve and ReleaseReservation each count as one
op (``LoadStats.ops``), so its reservations/s = ops/s / 2 (reported in extra).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from bench.baselines import grpc_unary
from bench.harness import Config, CpuMeter, Result, prefixed, row, scenario, try_unistock
from bench.load import LoadStats
from bench.unistock_side import channel, oversell_check, reservation_load, unistock_server

ID = "B3"
NAME = "reservations/s (unary Reserve + ReleaseReservation), 64 concurrent callers"
TARGET = "≥ 0.7 × baseline, p99 ≤ 2 × baseline p99"
CONCURRENCY = 64
POSITIONS = 10_000  # well-stocked positions the reserves pick from at random
OVERSELL_ATTEMPTS = 1000


def duration(cfg: Config) -> float:
    return cfg.n(5.0, 1.5)


async def baseline(cfg: Config) -> LoadStats:
    return await grpc_unary.baseline(concurrency=CONCURRENCY, duration_s=duration(cfg))


async def unistock(cfg: Config) -> LoadStats:
    """The Unistock server in a subprocess (with its own private redis-server, AOF
    ``appendfsync always``), ``POSITIONS`` positions seeded by ApplyMovements RECEIPT, then
    ``bench.load.closed_loop`` with ``CONCURRENCY`` workers over one channel, each op = one RPC
    alternating Reserve(1 unit, unique id) → ReleaseReservation, for ``duration(cfg)`` s;
    ``cpu_s`` covers client, server and redis. Then the zero-oversell check: ``OVERSELL_ATTEMPTS``
    concurrent Reserve(1) on a position holding 1 unit (in ``extra``)."""
    async with unistock_server() as (srv, redis), channel(srv.target) as stub:
        stats = await reservation_load(
            stub,
            positions=POSITIONS,
            concurrency=CONCURRENCY,
            duration_s=duration(cfg),
            cpu=CpuMeter(server=srv.pid, redis=redis.pid),
        )
        over = await oversell_check(stub, OVERSELL_ATTEMPTS, 1, "b3")
    stats.extra.update({f"oversell_{k}": float(v) for k, v in asdict(over).items()})
    return stats


@scenario(ID, NAME, target=TARGET)
async def run(cfg: Config) -> list[Result]:
    base = await baseline(cfg)
    uni, status, note = await try_unistock(unistock, cfg)
    cpu = prefixed("baseline", base.cpu_s) | prefixed("unistock", uni.cpu_s if uni else None)
    extra: dict[str, Any] = {"baseline": asdict(base), "unistock": asdict(uni) if uni else None}
    if uni:
        extra["unistock_reservations_per_s"] = uni.ops_per_s / 2
    return [
        row(ID, "RPCs/s (Reserve|Release vs empty unary)", "ops/s",
            uni.ops_per_s if uni else None, base.ops_per_s,
            status=status, note=note, extra=extra, cpu_s=cpu, target="≥ 0.7 × baseline"),
        row(ID, "p99 latency per RPC", "ms", uni.p99_ms if uni else None, base.p99_ms,
            status=status, note=note, target="≤ 2 × baseline p99",
            extra={"p50_ms": {"baseline": base.p50_ms, "unistock": uni.p50_ms if uni else None}}),
        row(ID, f"oversold units ({OVERSELL_ATTEMPTS:,} × reserve 1 of 1)", "units",
            uni.extra.get("oversell_oversold") if uni else None, None,
            status=status, note=note, target="0 (exactly 1 succeeds)",
            extra={k: v for k, v in (uni.extra if uni else {}).items()
                   if k.startswith("oversell_")}),
    ]  # fmt: skip
