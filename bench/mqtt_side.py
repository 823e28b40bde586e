"""MQTT helpers shared by B1/B2: a private mosquitto and simulated store agents.

Every MQTT client here sets ``TCP_NODELAY`` and the broker runs with ``set_tcp_nodelay true``:
without them each small QoS 1 exchange waits for Nagle + delayed ACK (~40 ms).

A ``StoreAgent`` is one store's edge agent as the contract in
``unistock.server.mqtt.ingest`` wants it: its own aiomqtt client, source ``agent-<store>``,
contiguous seqs from 1, movements only at its own location (the store id), batches of
``batch_size`` movements published QoS 1 on ``unistock/v1/stores/<store>/movements``, at most
``window`` batches not yet covered by the server's cumulative ``MovementAck`` (on
``.../acks``). No faults, so nothing is ever resent. Like the real edge agent, every movement
carries its ``source_id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Protocol

import aiomqtt

from unistock.devtools.services import MosquittoBroker
from unistock.v1 import inventory_pb2 as pb

TOPIC_ROOT = "unistock/v1/stores"
MOVEMENTS_TOPIC = f"{TOPIC_ROOT}/+/movements"
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
TEMPLATES = 8  # distinct random batches per store, cycled (only the seqs change)


@contextlib.contextmanager
def mosquitto() -> Iterator[MosquittoBroker]:
    """A private mosquitto (``set_tcp_nodelay true``, no persistence) on a free port."""
    d = tempfile.mkdtemp(prefix="unistock-bench-mqtt-")
    broker = MosquittoBroker(d)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
        import shutil

        shutil.rmtree(d, ignore_errors=True)


def broker_pid(broker: MosquittoBroker) -> int:
    pid = broker.pid
    assert pid is not None
    return pid


def mqtt_client(port: int, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=NODELAY,
        max_inflight_messages=1000,
    )


class RawGate(Protocol):
    sent: int

    async def may_publish(self) -> None: ...


class StoreAgent:
    """One simulated store edge agent (see the module docstring)."""

    def __init__(
        self,
        store: str,
        port: int,
        *,
        skus: int = 300,
        batch_size: int = 100,
        window: int = 8,
        rng_seed: int = 0,
    ) -> None:
        self.store = store
        self.source = f"agent-{store}"
        self.topic = f"{TOPIC_ROOT}/{store}/movements"
        self.ack_topic = f"{TOPIC_ROOT}/{store}/acks"
        self.client = mqtt_client(port, f"bench-{store}-{os.getpid()}")
        self.batch_size = batch_size
        self.window = window
        self._slots = asyncio.Semaphore(window)
        rng = random.Random(rng_seed)
        self._templates = [
            pb.MovementBatch(
                source_id=self.source,
                movements=[
                    pb.Movement(
                        source_id=self.source,
                        sku=f"SKU-{rng.randrange(skus):05d}",
                        location_id=store,
                        type=pb.SALE if rng.random() < 0.5 else pb.RECEIPT,
                        quantity=rng.randint(1, 3),
                    )
                    for _ in range(batch_size)
                ],
            )
            for _ in range(TEMPLATES)
        ]
        self._n_built = 0
        self.running = True  # the send loops run while True (cancelling them is unreliable:
        # on Python 3.11 ``asyncio.wait_for`` inside aiomqtt's publish can swallow a cancel)
        self.next_seq = 1
        self.acked = 0  # highest seq covered by a server ack
        self.inflight: deque[tuple[int, int, int]] = deque()  # (last seq, sent ns, movements)
        self.measuring = False
        self.done = 0  # movements acked while measuring
        self.sent = 0  # messages published while measuring
        self.lat: list[int] = []  # ns from publish to the ack covering the batch's last seq
        self.rejections = 0
        self._acked_event = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    # -- connection ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def connected(self, *, acks: bool = True) -> AsyncIterator[StoreAgent]:
        async with self.client:
            if acks:
                await self.client.subscribe(self.ack_topic, qos=1)
                self._reader = asyncio.create_task(self._read_acks())
            try:
                yield self
            finally:
                if self._reader is not None:
                    self._reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                        await self._reader

    async def _read_acks(self) -> None:
        async for msg in self.client.messages:
            payload = msg.payload
            assert isinstance(payload, bytes)
            self.on_ack(pb.MovementAck.FromString(payload))

    def on_ack(self, ack: pb.MovementAck) -> None:
        if ack.rejections:
            self.rejections += len(ack.rejections)
        top = max((s.seq for s in ack.sources if s.source_id == self.source), default=0)
        if top <= self.acked:
            return
        self.acked = top
        self._acked_event.set()
        now = time.perf_counter_ns()
        q = self.inflight
        while q and q[0][0] <= top:
            _, t0, n = q.popleft()
            if self.measuring:
                self.done += n
                self.lat.append(now - t0)
            self._slots.release()

    # -- batches -----------------------------------------------------------------------------

    def payload(self, first: int) -> bytes:
        """The next batch (a template with seqs ``first``…) serialised."""
        t = self._templates[self._n_built % TEMPLATES]
        self._n_built += 1
        for i, m in enumerate(t.movements):
            m.seq = first + i
        return t.SerializeToString()

    async def prime(self, limit_s: float = 30.0) -> None:
        """Send the first batch until the server acks it (the server's MQTT subscription may not
        exist yet, so early messages are lost; resending is harmless: duplicates change
        nothing). Afterwards the server knows this source and its positions are resident."""
        assert self.next_seq == 1
        data = self.payload(1)
        deadline = time.perf_counter() + limit_s
        while self.acked < self.batch_size:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"store {self.store}: no ack from the server")
            self._acked_event.clear()
            await self.client.publish(self.topic, data, qos=1)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._acked_event.wait(), 0.5)
        self.next_seq = self.batch_size + 1

    async def send_one(self) -> None:
        """Wait for a window slot, then publish the next batch (QoS 1, awaits the PUBACK)."""
        await self._slots.acquire()
        if not self.running:
            return
        first = self.next_seq
        data = self.payload(first)
        self.next_seq = first + self.batch_size
        self.inflight.append((self.next_seq - 1, time.perf_counter_ns(), self.batch_size))
        await self.client.publish(self.topic, data, qos=1)
        if self.measuring:
            self.sent += 1

    async def closed_loop(self) -> None:
        """Keep ``window`` batches unacked until ``running`` is cleared."""
        while self.running:
            await self.send_one()

    async def paced(self, batches_per_s: float) -> None:
        """One batch every 1/``batches_per_s`` s (a late one is sent at once; a full window
        holds the sender back) until ``running`` is cleared."""
        interval = 1.0 / batches_per_s
        nxt = time.perf_counter() + random.random() * interval
        while self.running:
            delay = nxt - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            nxt += interval
            await self.send_one()

    async def raw_publisher(self, gate: RawGate) -> None:
        """Baseline publishing: back to back, QoS 1, only the broker's PUBACK awaited (and the
        ``gate``: at most so many messages ahead of the sink)."""
        while self.running:
            await gate.may_publish()
            gate.sent += 1
            first = self.next_seq
            self.next_seq = first + self.batch_size
            await self.client.publish(self.topic, self.payload(first), qos=1)
            if self.measuring:
                self.sent += 1
                self.done += self.batch_size


async def stop_all(agents: Iterable[StoreAgent], tasks: Iterable[asyncio.Task[None]]) -> None:
    """Stop the agents' send loops and wait for their tasks (cancelling any still blocked)."""
    for a in agents:
        a.running = False
        for _ in range(a.window):
            a._slots.release()  # wake senders waiting for a window slot
    pending = set(tasks)
    while pending:
        _, pending = await asyncio.wait(pending, timeout=2)
        for t in pending:
            t.cancel()
    for t in tasks:
        if not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]


def store_ids(n: int, prefix: str = "store") -> list[str]:
    return [f"{prefix}-{i:04d}" for i in range(1, n + 1)]
