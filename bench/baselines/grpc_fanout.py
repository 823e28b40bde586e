"""B6 baseline: raw grpc.aio server-streaming fan-out of one hot item to many subscribers.

Server (``python -m bench.baselines.grpc_fanout``, a subprocess): ``Watch`` streams (first message
``b"H"`` = subscribed, then updates; each stream has a bounded queue, the publisher awaits
``put`` so nothing is dropped) and ``Publish(count, interval_us)`` which pushes one pre-serialised
60-byte message (``time.time_ns()`` of the push + sequence + padding) to every stream ``count``
times, then ends the streams. Client: ``streams`` subscriptions over a few channels; deliveries/s
at the clients and p50/p99 of receive ``time.time_ns()`` − embedded push time.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from bench._procs import python_child
from bench.harness import CpuMeter, percentiles_ms

SERVICE = "bench.Fanout"
MSG_SIZE = 60
_HDR = struct.Struct("<qQ")  # push time_ns, sequence
_CTL = struct.Struct("<II")  # count, interval_us
QUEUE_MAX = 64


async def serve(port: int = 0) -> None:
    subscribers: set[asyncio.Queue[bytes | None]] = set()
    pad = b"x" * (MSG_SIZE - _HDR.size)

    async def watch(
        request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]
    ) -> AsyncIterator[bytes]:
        q: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_MAX)
        subscribers.add(q)
        try:
            yield b"H"
            while (msg := await q.get()) is not None:
                yield msg
        finally:
            subscribers.discard(q)

    async def publish(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        count, interval_us = _CTL.unpack(request)
        subs = list(subscribers)
        t0 = time.perf_counter()
        for seq in range(count):
            msg = _HDR.pack(time.time_ns(), seq) + pad
            for q in subs:
                if q.full():
                    await q.put(msg)
                else:
                    q.put_nowait(msg)
            if interval_us:
                await asyncio.sleep(interval_us / 1e6)
        for q in subs:
            await q.put(None)
        return struct.pack("<dI", time.perf_counter() - t0, len(subs))

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Watch": grpc.unary_stream_rpc_method_handler(watch),
                    "Publish": grpc.unary_unary_rpc_method_handler(publish),
                },
            ),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    await server.wait_for_termination()


@dataclass
class FanoutStats:
    streams: int
    messages: int  # pushes of the hot item
    interval_ms: float
    deliveries: int
    seconds: float  # first push -> last delivery
    deliveries_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu_s: dict[str, float] = field(default_factory=dict)


async def _run_client(
    port: str, server_pid: int, streams: int, messages: int, interval_ms: float, channels: int
) -> FanoutStats:
    opts = [("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=opts) for _ in range(channels)]
    try:
        for c in chans:
            await c.channel_ready()
        subscribed = 0
        all_subscribed = asyncio.Event()
        lat: list[int] = []
        last_rx = 0

        async def sub(i: int) -> None:
            nonlocal subscribed, last_rx
            call = chans[i % channels].unary_stream(f"/{SERVICE}/Watch", None, None)(b"")
            now = time.time_ns
            unpack = _HDR.unpack_from
            async for msg in call:
                if msg == b"H":
                    subscribed += 1
                    if subscribed == streams:
                        all_subscribed.set()
                    continue
                t = now()
                lat.append(t - unpack(msg)[0])
                last_rx = t

        tasks = [asyncio.create_task(sub(i)) for i in range(streams)]
        await asyncio.wait_for(all_subscribed.wait(), 60)
        publish = chans[0].unary_unary(f"/{SERVICE}/Publish", None, None)
        cpu = CpuMeter(server=server_pid).start()
        t0 = time.time_ns()
        await publish(_CTL.pack(messages, int(interval_ms * 1000)))
        await asyncio.wait_for(asyncio.gather(*tasks), 600)
        cpu_s = cpu.stop()
        secs = (last_rx - t0) / 1e9
        pct = percentiles_ms(lat, (50, 99, 100))
        return FanoutStats(
            streams=streams,
            messages=messages,
            interval_ms=interval_ms,
            deliveries=len(lat),
            seconds=round(secs, 3),
            deliveries_per_s=len(lat) / secs,
            p50_ms=pct["p50_ms"],
            p99_ms=pct["p99_ms"],
            max_ms=pct["p100_ms"],
            cpu_s=cpu_s,
        )
    finally:
        for c in chans:
            await c.close(None)


async def baseline(
    *, streams: int = 1000, messages: int = 200, interval_ms: float = 0.0, channels: int = 4
) -> FanoutStats:
    """Fan-out ``messages`` pushes to ``streams`` subscribers; interval 0 = as fast as possible
    (throughput, bounded queues give back-pressure), >0 = paced (latency at a steady rate).
    A fresh server subprocess per call."""
    with python_child("bench.baselines.grpc_fanout") as (proc, port):
        return await _run_client(port, proc.pid, streams, messages, interval_ms, channels)


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--client", action="store_true")
    ap.add_argument("--messages", type=int, default=200)
    ap.add_argument("--interval-ms", type=float, default=0.0)
    ap.add_argument("--streams", type=int, default=1000)
    ap.add_argument("--channels", type=int, default=4)
    a = ap.parse_args()
    if a.client:
        print(
            asyncio.run(
                baseline(
                    streams=a.streams,
                    messages=a.messages,
                    interval_ms=a.interval_ms,
                    channels=a.channels,
                )
            )
        )
    else:
        asyncio.run(serve(a.port))


if __name__ == "__main__":
    _main()
