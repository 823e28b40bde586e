"""B3 baseline: an empty grpc.aio unary call (bytes in, bytes out, no protobuf).

Server: ``python -m bench.baselines.grpc_unary`` (prints ``PORT <n>``), run as a subprocess so its
CPU is measured separately. Client: one channel, ``concurrency`` tasks looping for ``duration_s``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc

from bench._procs import python_child
from bench.harness import CpuMeter
from bench.load import LoadStats, closed_loop

SERVICE = "bench.Echo"
METHOD = f"/{SERVICE}/Call"


async def serve(port: int = 0) -> None:
    async def call(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return b""

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE, {"Call": grpc.unary_unary_rpc_method_handler(call)}
            ),
        )
    )
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"PORT {bound}", flush=True)
    await server.wait_for_termination()


async def baseline(
    *, concurrency: int = 64, duration_s: float = 5.0, warmup_s: float = 0.5
) -> LoadStats:
    """Empty unary calls/s, p50/p99 latency (ms), CPU seconds of client and server."""
    with python_child("bench.baselines.grpc_unary") as (proc, port):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await channel.channel_ready()
            stub = channel.unary_unary(METHOD, None, None)  # no serializers: bytes in/out

            async def op(_: int) -> None:
                await stub(b"")

            return await closed_loop(
                op,
                concurrency=concurrency,
                duration_s=duration_s,
                warmup_s=warmup_s,
                cpu=CpuMeter(server=proc.pid),
            )


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--client", action="store_true", help="run the client load and print stats")
    ap.add_argument("--duration", type=float, default=5.0)
    args = ap.parse_args()
    if args.client:
        print(asyncio.run(baseline(duration_s=args.duration)), file=sys.stderr)
    else:
        asyncio.run(serve(args.port))


if __name__ == "__main__":
    _main()
