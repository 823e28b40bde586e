"""B1/B2 baselines: raw aiomqtt on the same (private, ``set_tcp_nodelay true``) mosquitto.

* ``python -m bench.baselines.mqtt_raw --port P`` (a subprocess, like the server): the sink — one
  aiomqtt client subscribed QoS 1 to ``unistock/v1/stores/+/movements`` that discards every
  message (``async for message in client.messages: count += 1``). It answers a message on
  ``bench/sink/ctl`` with ``(count, monotonic_ns)`` on ``bench/sink/stat``, so the client can read
  the messages received over a window (``SinkProbe.count``), and every ``REPORT_EVERY`` messages
  it publishes its count (QoS 0) so that the publishers can stay at most ``SinkProbe.ahead``
  messages ahead of it (else the broker's queue for the sink grows without bound and a window's
  count arrives late).
* ``pubsub_latency``: raw pub→sub latency, two clients in this process, one QoS 1 message
  (``perf_counter_ns`` of the publish in the payload) every ``interval_ms``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiomqtt

from bench.harness import percentiles_ms
from bench.mqtt_side import MOVEMENTS_TOPIC, mqtt_client

CTL = "bench/sink/ctl"
STAT = "bench/sink/stat"
_STAT = struct.Struct("<qqB")  # count, monotonic_ns, 1 = answer to a ctl message
REPORT_EVERY = 64
LATENCY_TOPIC = "bench/latency"


async def serve(port: int) -> None:
    count = 0
    async with mqtt_client(port, "bench-sink") as client:
        await client.subscribe(MOVEMENTS_TOPIC, qos=1)
        await client.subscribe(CTL, qos=1)
        print("READY", flush=True)
        async for message in client.messages:
            if message.topic.value == CTL:
                await client.publish(STAT, _STAT.pack(count, time.monotonic_ns(), 1), qos=1)
            else:
                count += 1
                if count % REPORT_EVERY == 0:
                    await client.publish(STAT, _STAT.pack(count, time.monotonic_ns(), 0), qos=0)


class SinkProbe:
    """The client side of the sink's ctl/stat exchange."""

    def __init__(self, port: int, ahead: int = 1024) -> None:
        self.client = mqtt_client(port, "bench-sink-probe")
        self._stats: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.ahead = ahead
        self.received = 0  # the sink's latest reported count
        self.sent = 0  # messages the publishers have published (they add to it)
        self._progress = asyncio.Event()

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[SinkProbe]:
        async with self.client:
            await self.client.subscribe(STAT, qos=1)
            self._task = asyncio.create_task(self._read())
            try:
                yield self
            finally:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await self._task

    async def _read(self) -> None:
        async for m in self.client.messages:
            assert isinstance(m.payload, bytes)
            c, t, answer = _STAT.unpack(m.payload)
            self.received = max(self.received, c)
            self._progress.set()
            if answer:
                await self._stats.put((c, t))

    async def may_publish(self) -> None:
        """Wait until the publishers are less than ``ahead`` messages ahead of the sink."""
        while self.sent - self.received >= self.ahead:
            self._progress.clear()
            await self._progress.wait()

    async def count(self, limit_s: float = 30.0) -> tuple[int, int]:
        """(messages the sink has received, its monotonic_ns) — behind everything queued."""
        await self.client.publish(CTL, b"", qos=1)
        return await asyncio.wait_for(self._stats.get(), limit_s)


@dataclass
class PubSubLatency:
    samples: int
    interval_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float


async def pubsub_latency(port: int, *, samples: int, interval_ms: float) -> PubSubLatency:
    """Isolated QoS 1 pub→sub latency through the broker (publish to delivery)."""
    lat: list[int] = []
    got = asyncio.Event()
    async with mqtt_client(port, "bench-lat-sub") as sub, mqtt_client(port, "bench-lat-pub") as pub:
        await sub.subscribe(LATENCY_TOPIC, qos=1)

        async def read() -> None:
            async for m in sub.messages:
                now = time.perf_counter_ns()
                assert isinstance(m.payload, bytes)
                lat.append(now - struct.unpack("<q", m.payload)[0])
                got.set()

        reader = asyncio.create_task(read())
        try:
            for i in range(samples + 20):  # the first 20 are warm-up
                if i == 20:
                    lat.clear()
                got.clear()
                await pub.publish(LATENCY_TOPIC, struct.pack("<q", time.perf_counter_ns()), qos=1)
                await asyncio.wait_for(got.wait(), 10)
                await asyncio.sleep(interval_ms / 1000 * (0.5 + random.random()))
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await reader
    pct = percentiles_ms(lat, (50, 99, 100))
    return PubSubLatency(len(lat), interval_ms, pct["p50_ms"], pct["p99_ms"], pct["p100_ms"])


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    asyncio.run(serve(ap.parse_args().port))


if __name__ == "__main__":
    _main()
