"""B6 — fan-out of one hot position to 1,000 watch subscribers.

Baseline: raw grpc.aio server-streaming (server subprocess, bounded per-stream queues), one
pre-serialised 60-byte message pushed to all 1,000 streams. Two runs:
* burst — M pushes as fast as back-pressure allows → deliveries/s at the clients;
* isolated — pushes every 250 ms (each push drains before the next) → p50/p99 delivery
  latency (``time.time_ns()`` embedded at push vs receipt).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass
from typing import Any

import grpc
import psutil  # type: ignore[import-untyped,unused-ignore]

from bench.baselines import grpc_fanout
from bench.baselines.grpc_fanout import FanoutStats
from bench.harness import (
    Config,
    CpuMeter,
    Result,
    log,
    percentiles_ms,
    prefixed,
    row,
    scenario,
    try_unistock,
)
from bench.unistock_side import METADATA, Stub, channel, levels, receipt, seed, unistock_server
from unistock.v1 import inventory_pb2 as pb

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
    stall: dict[str, Any] | None = None  # Unistock only: the stalled-subscriber check


async def baseline(cfg: Config) -> Fanout:
    return Fanout(
        burst=await grpc_fanout.baseline(streams=STREAMS, messages=burst_pushes(cfg)),
        isolated=await grpc_fanout.baseline(
            streams=STREAMS, messages=isolated_pushes(cfg), interval_ms=ISOLATED_INTERVAL_MS
        ),
    )


HOT = ("HOT-SKU-0001", "store-0001")
HOT_SOURCE = "bench-hot-agent"
CHANNELS = 4  # as the baseline


class HotWatchers:
    """``streams`` WatchAvailability(skus=[hot sku]) streams; counts deliveries after the
    snapshot and matches each received version with the time its movement was sent."""

    def __init__(self, streams: int) -> None:
        self.streams = streams
        self.subscribed = 0
        self.all_subscribed = asyncio.Event()
        self.sent: dict[int, int] = {}  # version -> perf_counter_ns just before the write
        self.lat: list[int] = []
        self.deliveries = 0
        self.last_rx = 0
        self.target = 1 << 62  # the version every stream must reach to end a phase
        self.reached = 0
        self.all_reached = asyncio.Event()

    def phase(self, target: int) -> None:
        self.sent, self.lat, self.deliveries, self.last_rx = {}, [], 0, 0
        self.reached = 0
        self.all_reached.clear()
        self.target = target

    async def stream(self, stub: Stub) -> None:
        req = pb.WatchAvailabilityRequest(skus=[HOT[0]])
        call = stub.WatchAvailability(req, metadata=METADATA)
        pc = time.perf_counter_ns
        live = False
        mine = 0
        try:
            async for msg in call:
                if not live:
                    if msg.snapshot_complete:
                        live = True
                        self.subscribed += 1
                        if self.subscribed == self.streams:
                            self.all_subscribed.set()
                    continue
                now = pc()
                for lvl in msg.levels:
                    v = lvl.version
                    t = self.sent.get(v)
                    if t is not None:
                        self.lat.append(now - t)
                    self.deliveries += 1
                    if mine < self.target <= v:
                        self.reached += 1
                        if self.reached == self.streams:
                            self.all_reached.set()
                    mine = v
                self.last_rx = now
        finally:
            call.cancel()


async def _push_phase(
    w: HotWatchers,
    mover: Any,
    v0: int,
    seq0: int,
    pushes: int,
    interval_ms: float,
    cpu: CpuMeter,
) -> FanoutStats:
    """``pushes`` RECEIPTs of 1 unit on the hot position, one movement per ApplyMovements batch,
    back to back (interval 0) or every ``interval_ms``; until every stream has the last one."""
    w.phase(v0 + pushes)
    cpu.start()
    pc = time.perf_counter_ns
    t0 = pc()
    for k in range(1, pushes + 1):
        batch = pb.MovementBatch(
            source_id=HOT_SOURCE, movements=[receipt(*HOT, 1, seq0 + k, HOT_SOURCE)]
        )
        w.sent[v0 + k] = pc()
        await mover.write(batch)
        if interval_ms:
            await asyncio.sleep(interval_ms / 1000)
    await asyncio.wait_for(w.all_reached.wait(), 120)
    cpu_s = cpu.stop()
    secs = (w.last_rx - t0) / 1e9
    pct = percentiles_ms(w.lat, (50, 99, 100))
    return FanoutStats(
        streams=w.streams,
        messages=pushes,
        interval_ms=interval_ms,
        deliveries=w.deliveries,
        seconds=round(secs, 3),
        deliveries_per_s=w.deliveries / secs,
        p50_ms=pct["p50_ms"],
        p99_ms=pct["p99_ms"],
        max_ms=pct["p100_ms"],
        cpu_s=cpu_s,
    )


async def unistock(cfg: Config) -> Fanout:
    """Server subprocess + private redis; the hot position is seeded, then ``STREAMS``
    WatchAvailability(skus=[hot sku]) streams over ``CHANNELS`` channels (subscribed = got
    ``snapshot_complete``), plus one stalled stream that is never read. Pushes = one RECEIPT per
    ApplyMovements batch on one stream; ``burst_pushes(cfg)`` back to back (burst), then
    ``isolated_pushes(cfg)`` every ``ISOLATED_INTERVAL_MS`` (isolated). Latency = receipt −
    perf_counter just before the batch's write, matched by version (each push = version + 1).
    The watch hub coalesces: in a burst a stream may skip versions (it always gets the last), so
    ``deliveries`` can be below streams × pushes. Server RSS growth over the burst (with the
    stalled stream) is logged. Stall check: a second never-read stream with an empty filter while
    ``STALL_CHANGES`` distinct positions change (server runs with ``--watch-max-pending
    STALL_MAX_PENDING``): it must be cut (RESOURCE_EXHAUSTED) instead of buffering them all."""
    async with contextlib.AsyncExitStack() as stack:
        srv, redis = await stack.enter_async_context(
            unistock_server("--watch-max-pending", str(STALL_MAX_PENDING))
        )
        stubs = [
            await stack.enter_async_context(channel(srv.target, use_local_subchannel_pool=1))
            for _ in range(CHANNELS)
        ]
        await seed(stubs[0], [HOT], 1000)
        (lvl,) = await levels(stubs[0], [HOT])
        v0 = int(lvl.version)
        w = HotWatchers(STREAMS)
        tasks = [asyncio.create_task(w.stream(stubs[i % CHANNELS])) for i in range(STREAMS)]
        stalled = stubs[0].WatchAvailability(
            pb.WatchAvailabilityRequest(skus=[HOT[0]]), metadata=METADATA
        )
        stalled_all = stubs[2].WatchAvailability(pb.WatchAvailabilityRequest(), metadata=METADATA)
        try:
            await asyncio.wait_for(w.all_subscribed.wait(), 60)
            mover = stubs[1].ApplyMovements(metadata=METADATA)
            acks = asyncio.create_task(_drain(mover))
            server = psutil.Process(srv.pid)
            rss0 = server.memory_info().rss
            cpu = CpuMeter(server=srv.pid, redis=redis.pid)
            n = burst_pushes(cfg)
            burst = await _push_phase(w, mover, v0, 0, n, 0.0, cpu)
            rss1 = server.memory_info().rss
            log(f"B6 unistock: server RSS {rss0 / 2**20:.1f} → {rss1 / 2**20:.1f} MiB over the "
                f"burst with one stalled stream")  # fmt: skip
            isolated = await _push_phase(
                w, mover, v0 + n, n, isolated_pushes(cfg), ISOLATED_INTERVAL_MS, cpu
            )
            await mover.done_writing()
            await asyncio.wait_for(acks, 30)
            stall = await _stall_check(stubs[3], stalled_all, server)
            log(f"B6 unistock stall check: {stall}")
        finally:
            stalled.cancel()
            stalled_all.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return Fanout(burst=burst, isolated=isolated, stall=stall)


STALL_CHANGES = 60_000
STALL_MAX_PENDING = 20_000


async def _stall_check(stub: Stub, stalled: Any, server: psutil.Process) -> dict[str, Any]:
    """Change ``STALL_CHANGES`` distinct positions while ``stalled`` (empty filter) is not read,
    then read it: it should end RESOURCE_EXHAUSTED after what fit in the transport window."""
    rss0 = server.memory_info().rss
    keys = [(f"STALL-{i:07d}", "store-0002") for i in range(STALL_CHANGES)]
    await seed(stub, keys, 5)
    await asyncio.sleep(0.5)
    rss1 = server.memory_info().rss
    got = 0
    code = "still open"
    try:
        async with asyncio.timeout(10):
            async for msg in stalled:
                got += len(msg.levels)
    except TimeoutError:
        pass
    except grpc.aio.AioRpcError as e:
        code = e.code().name
    return {
        "changes": STALL_CHANGES,
        "max_pending": STALL_MAX_PENDING,
        "levels_received_before_end": got,
        "end": code,
        "server_rss_growth_mib": round((rss1 - rss0) / 2**20, 1),
        "rss_note": f"includes {STALL_CHANGES:,} newly resident positions",
    }


async def _drain(call: Any) -> int:
    n = 0
    async for _ in call:
        n += 1
    return n


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
