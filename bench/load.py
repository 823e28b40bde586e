"""Closed-loop load generator shared by the baselines and the Unistock sides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bench.harness import CpuMeter, percentiles_ms


@dataclass
class LoadStats:
    ops: int
    errors: int
    duration_s: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_s: dict[str, float] = field(default_factory=dict)
    extra: dict[str, float] = field(default_factory=dict)


async def closed_loop(
    op: Callable[[int], Awaitable[object]],
    *,
    concurrency: int,
    duration_s: float,
    warmup_s: float = 0.5,
    cpu: CpuMeter | None = None,
) -> LoadStats:
    """``concurrency`` asyncio tasks each call ``await op(worker_index)`` back to back.

    Ops completing during the first ``warmup_s`` are not counted. Latency is per ``op`` call;
    an op raising an exception counts as an error (not in latencies). ``cpu`` (if given) is
    started after warm-up and stopped at the end of the measured window."""
    lat: list[int] = []
    errors = 0
    measuring = False
    stop = False

    async def worker(i: int) -> None:
        nonlocal errors
        pc = time.perf_counter_ns
        while not stop:
            t0 = pc()
            try:
                await op(i)
            except asyncio.CancelledError:
                raise
            except Exception:
                if measuring:
                    errors += 1
                continue
            if measuring:
                lat.append(pc() - t0)

    tasks = [asyncio.create_task(worker(i)) for i in range(concurrency)]
    try:
        await asyncio.sleep(warmup_s)
        measuring = True
        if cpu is not None:
            cpu.start()
        t0 = time.perf_counter()
        await asyncio.sleep(duration_s)
        measuring = False
        elapsed = time.perf_counter() - t0
        cpu_s = cpu.stop() if cpu is not None else {}
        stop = True
        await asyncio.wait(tasks, timeout=5)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for t in tasks:
            t.cancel()
    pct = percentiles_ms(lat)
    return LoadStats(
        ops=len(lat),
        errors=errors,
        duration_s=round(elapsed, 3),
        ops_per_s=len(lat) / elapsed,
        p50_ms=pct["p50_ms"],
        p99_ms=pct["p99_ms"],
        cpu_s=cpu_s,
    )
