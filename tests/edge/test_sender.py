"""The edge sender against a real mosquitto, with a test peer standing in for the server.

:class:`AckingTestPeer` plays the server's part, so that a test can lose, hold back and reject
batches at will (the real server is in tests/edge/test_agent_e2e.py): it
subscribes to every store's movements topic, records each batch it receives, and answers on the
store's acks topic with a ``MovementAck`` carrying the highest seq up to which it has received
*every* seq (the server's durable high-water mark), plus any rejections it was told to make.
Acking the contiguous high-water rather than the highest seq seen matters: after a reconnect,
paho retransmits the one publish still waiting for its PUBACK *before* the sender resends the
window, so a peer acking "highest seen" would acknowledge movements it never received.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from unistock.devtools.services import MosquittoBroker
from unistock.edge.outbox import Outbox
from unistock.edge.sender import (
    CONTENT_TYPE,
    MAX_BATCH_MOVEMENTS,
    ConnackLimits,
    Sender,
    ServerLimits,
    publish_overhead,
)
from unistock.v1 import inventory_pb2 as pb

STORE = "store-042"
SOURCE = "edge-store-042"
MOVEMENTS_WILDCARD = "unistock/v1/stores/+/movements"


def sales(count: int, *, prefix: str = "SKU") -> list[pb.Movement]:
    """``count`` till sales at the store."""
    return [
        pb.Movement(sku=f"{prefix}-{i % 50}", location_id=STORE, type=pb.SALE, quantity=1)
        for i in range(count)
    ]


def as_bytes(payload: object) -> bytes:
    """An MQTT payload as bytes (aiomqtt types it as a union of scalars)."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    raise TypeError(f"unexpected payload type {type(payload).__name__}")


async def wait_until(predicate: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``predicate`` (test-side only) until it holds, or fail after ``within`` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.02)


def mqtt_client(broker: MosquittoBroker, identifier: str, **kwargs: object) -> aiomqtt.Client:
    """An MQTT 5 client for the broker (must be created inside the running loop).

    TCP_NODELAY because neither aiomqtt nor paho sets it: small QoS 1 exchanges otherwise stall
    ~40 ms each on Nagle / delayed ACK.
    """
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        timeout=5,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        **kwargs,  # type: ignore[arg-type]
    )


def reraise_if_cancelling() -> None:
    """Re-raise a cancellation that an aiomqtt call swallowed or turned into ``MqttError``.

    aiomqtt awaits through ``asyncio.wait_for``, which on Python 3.11 drops a cancellation
    that coincides with the call completing (CPython gh-86296), and its ``__aexit__`` may raise
    ``MqttError`` while a cancellation is pending: a loop that carries on would never stop.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


# --------------------------------------------------------------------------- the test peer


@dataclass
class AckingTestPeer:
    """TEST PEER playing the Unistock server's MQTT ingestion, with faults on demand.

    Records every batch (duplicates included) and acks the contiguous high-water per source.
    ``auto_ack = False`` holds acks back (the test then calls :meth:`send_ack`); ``reject`` lists
    seqs it answers with an ``INVALID_FIELD`` rejection (still covered by the acked seq, as the
    protocol says).
    """

    broker: MosquittoBroker
    reject: frozenset[int] = frozenset()
    auto_ack: bool = True
    persistent_session: bool = False
    drop_first: int = 0
    """Batches to swallow unrecorded and unacked, as if lost on the way to the server."""
    echo_batch_id: bool = True
    """Echo each batch's id in its ack, as the server does (it lets the sender see gaps)."""
    max_payload: int | None = None
    """Refuse a larger payload whole, unparsed, like the server: BATCH_TOO_LARGE with limits,
    no batch_id, no source."""
    max_movements: int | None = None
    """Refuse a batch of more movements whole: BATCH_TOO_LARGE with limits and its batch_id."""
    too_large_seqs: frozenset[int] = frozenset()
    """Refuse any batch holding one of these seqs (with a SKU) as too large, whatever its size."""
    too_large: int = 0
    """Batches refused with BATCH_TOO_LARGE."""
    batches: list[list[int]] = field(default_factory=list)
    seen: set[int] = field(default_factory=set)
    high_water: int = 0
    gaps: int = 0
    """Batches that started beyond ``high_water + 1`` (delivery out of seq order)."""
    content_types: set[str | None] = field(default_factory=set)
    payload_sizes: list[int] = field(default_factory=list)
    """Size in bytes of every batch payload received."""
    last_received: dict[int, pb.Movement] = field(default_factory=dict)
    """The movement last received under each seq."""
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    _client: aiomqtt.Client | None = None

    @property
    def received(self) -> int:
        """Movements received, duplicates included."""
        return sum(len(batch) for batch in self.batches)

    async def run(self) -> None:
        """Subscribe and ack until cancelled, reconnecting whenever the broker goes away."""
        kwargs: dict[str, object] = {}
        if self.persistent_session:
            # The broker then queues QoS 1 messages for the peer while it is away: the
            # messages a broker crash loses although the broker PUBACKed them.
            connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            connect_properties.SessionExpiryInterval = 3600
            kwargs = {"clean_start": False, "properties": connect_properties}
        client = mqtt_client(self.broker, "acking-test-peer", **kwargs)
        self._client = client
        while True:
            try:
                async with client:
                    await client.subscribe(MOVEMENTS_WILDCARD, qos=1)
                    self.connected.set()
                    async for message in client.messages:
                        reraise_if_cancelling()
                        await self._on_batch(client, message)
                        reraise_if_cancelling()
            except aiomqtt.MqttError:
                reraise_if_cancelling()
            finally:
                self.connected.clear()
            await asyncio.sleep(0.05)

    async def _on_batch(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        props = message.properties
        self.content_types.add(getattr(props, "ContentType", None) if props else None)
        payload = as_bytes(message.payload)
        store_id = str(message.topic).split("/")[3]
        if self.max_payload is not None and len(payload) > self.max_payload:
            await self._refuse_too_large(client, store_id, pb.MovementBatch())
            return
        batch = pb.MovementBatch.FromString(payload)
        if self.drop_first > 0:
            self.drop_first -= 1
            return
        if (self.max_movements is not None and len(batch.movements) > self.max_movements) or any(
            m.seq in self.too_large_seqs and m.sku for m in batch.movements
        ):
            await self._refuse_too_large(client, store_id, batch)
            return
        seqs = [m.seq for m in batch.movements]
        assert all(m.source_id == batch.source_id for m in batch.movements)
        assert seqs == sorted(seqs), "a batch must be in seq order"
        assert batch.batch_id.startswith(f"{seqs[0]}-{seqs[-1]}#")
        self.batches.append(seqs)
        self.payload_sizes.append(len(payload))
        self.last_received.update((m.seq, m) for m in batch.movements)
        if seqs[0] > self.high_water + 1:
            self.gaps += 1
        self.seen.update(seqs)
        while self.high_water + 1 in self.seen:
            self.high_water += 1
        if self.auto_ack:
            rejected = [s for s in seqs if s in self.reject]
            await self.send_ack(
                store_id,
                batch.source_id,
                rejected,
                client=client,
                batch_id=batch.batch_id if self.echo_batch_id else "",
            )

    async def _refuse_too_large(
        self, client: aiomqtt.Client, store_id: str, batch: pb.MovementBatch
    ) -> None:
        """The server's answer to a batch over its limits (batch_id and source if parsed)."""
        self.too_large += 1
        ack = pb.MovementAck(
            batch_id=batch.batch_id,
            rejections=[
                pb.Rejection(
                    source_id=batch.source_id, reason=pb.BATCH_TOO_LARGE, detail="test peer"
                )
            ],
            limits=pb.BatchLimits(
                max_movements=self.max_movements or 10_000,
                max_payload_bytes=self.max_payload or 1024 * 1024,
            ),
        )
        await client.publish(f"unistock/v1/stores/{store_id}/acks", ack.SerializeToString(), qos=1)

    async def send_ack(
        self,
        store_id: str,
        source_id: str,
        rejected: list[int] | None = None,
        *,
        up_to: int | None = None,
        client: aiomqtt.Client | None = None,
        batch_id: str = "",
    ) -> None:
        """Publish a ``MovementAck`` for the high-water (or ``up_to``) and ``rejected`` seqs,
        echoing ``batch_id`` as the server does."""
        ack = pb.MovementAck(
            sources=[pb.SourceAck(source_id=source_id, seq=up_to or self.high_water)],
            batch_id=batch_id,
        )
        for seq in rejected or []:
            ack.rejections.add(
                source_id=source_id,
                seq=seq,
                reason=pb.INVALID_FIELD,
                detail=f"test peer rejects seq {seq}",
            )
        target = client or self._client
        assert target is not None
        await target.publish(f"unistock/v1/stores/{store_id}/acks", ack.SerializeToString(), qos=1)


# --------------------------------------------------------------------------- the agent harness


async def run_agent(sender: Sender, server_ready: asyncio.Event | None = None) -> None:
    """What the edge agent does: own the connection, run the sender next to the dispatcher.

    ``server_ready``, when given, is awaited after each connect: in production the server is
    subscribed long before a store comes back, while in a test both race to the fresh broker.
    """
    while True:
        try:
            async with sender.client, asyncio.TaskGroup() as tg:
                if server_ready is not None:
                    await server_ready.wait()
                tg.create_task(sender.run())
                async for message in sender.client.messages:
                    reraise_if_cancelling()
                    if message.topic.matches(sender.acks_topic):
                        await sender.handle_ack(as_bytes(message.payload))
        except* aiomqtt.MqttError:
            reraise_if_cancelling()  # else: connection refused or lost, reconnect
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(
    *coroutines: Coroutine[object, object, None],
) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Run background tasks for the duration of the block, then cancel them."""
    tasks = [asyncio.create_task(c) for c in coroutines]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.db", SOURCE)


def first_receipts(peer: AckingTestPeer) -> list[int]:
    """Seqs in the order the peer saw each for the first time."""
    seen: set[int] = set()
    order: list[int] = []
    for batch in peer.batches:
        for seq in batch:
            if seq not in seen:
                seen.add(seq)
                order.append(seq)
    return order


# --------------------------------------------------------------------------- tests


async def test_offline_then_online_delivers_everything_in_order(
    mosquitto_broker: MosquittoBroker, outbox: Outbox
) -> None:
    await asyncio.to_thread(mosquitto_broker.stop)
    sender = Sender(outbox, mqtt_client(mosquitto_broker, "edge-agent"), STORE, ack_timeout=1.0)
    peer = AckingTestPeer(mosquitto_broker)
    async with running(run_agent(sender, peer.connected), peer.run()):
        # The store works offline: tills keep appending while the agent cannot connect.
        for _ in range(50):
            await sender.submit(sales(100))
        await asyncio.sleep(0.3)
        assert outbox.depth() == 5_000
        assert sender.stats.batches_published == 0

        await asyncio.to_thread(mosquitto_broker.start)
        await wait_until(lambda: outbox.depth() == 0, 60, "the outbox to drain")

    assert peer.seen == set(range(1, 5_001))
    assert first_receipts(peer) == list(range(1, 5_001)), "delivered in seq order"
    assert all(len(batch) <= 100 for batch in peer.batches)
    assert peer.content_types == {CONTENT_TYPE}
    assert outbox.last_acked == 5_000
    assert sender.stats.max_in_flight <= 8


async def test_the_window_bounds_unacked_batches_and_puback_empties_nothing(
    mosquitto_broker: MosquittoBroker, outbox: Outbox
) -> None:
    window = 4
    sender = Sender(
        outbox,
        mqtt_client(mosquitto_broker, "edge-agent"),
        STORE,
        batch_size=10,
        window=window,
        ack_timeout=60,  # no resend during this test
    )
    peer = AckingTestPeer(mosquitto_broker, auto_ack=False)
    outbox.append(sales(200))
    async with running(peer.run()):
        await asyncio.wait_for(peer.connected.wait(), 10)
        async with running(run_agent(sender)):
            await wait_until(lambda: len(peer.batches) >= window, 10, "a full window")
            await asyncio.sleep(0.5)  # give an unbounded sender time to overshoot
            assert len(peer.batches) == window
            assert sender.in_flight == window
            # The broker PUBACKed every one of them; only the server's ack may empty the outbox.
            assert sender.stats.batches_published == window
            assert outbox.depth() == 200

            # Acking the first batch opens exactly one slot.
            await peer.send_ack(STORE, SOURCE, up_to=10)
            await wait_until(lambda: len(peer.batches) == window + 1, 10, "one more batch")
            await asyncio.sleep(0.3)
            assert len(peer.batches) == window + 1
            assert outbox.depth() == 190
            assert sender.in_flight == window

            peer.auto_ack = True
            await peer.send_ack(STORE, SOURCE)
            await wait_until(lambda: outbox.depth() == 0, 20, "the outbox to drain")

    assert sender.stats.max_in_flight == window
    assert peer.seen == set(range(1, 201))
    assert sender.stats.resends == 0


@pytest.mark.slow
async def test_kill_9_of_mosquitto_with_movements_in_flight_loses_nothing(
    mosquitto_broker: MosquittoBroker, outbox: Outbox
) -> None:
    window = 8
    sender = Sender(
        outbox,
        mqtt_client(mosquitto_broker, "edge-agent"),
        STORE,
        batch_size=20,
        window=window,
        ack_timeout=1.0,
    )
    peer = AckingTestPeer(mosquitto_broker, persistent_session=True)
    outbox.append(sales(3_000))
    async with running(run_agent(sender)):
        async with running(peer.run()):
            await wait_until(lambda: peer.high_water >= 600, 20, "600 movements acked")
        # The peer is away but its session persists: the broker PUBACKs what the sender
        # publishes and queues it for the peer, in memory only. The window fills and stops.
        # (With ack_timeout=1 s the sender may already be resending that window: also fine.)
        await wait_until(lambda: sender.in_flight == window, 10, "a full window")

        await asyncio.to_thread(mosquitto_broker.kill)
        # Let an ack that was already being written finish (its thread outlives the cancel).
        await asyncio.sleep(0.2)
        depth_at_crash = outbox.depth()
        assert depth_at_crash > 0
        # Tills keep selling while the broker is down; nothing leaves the outbox without an ack.
        await sender.submit(sales(500, prefix="DOWN"))
        await asyncio.sleep(0.5)
        assert outbox.depth() == depth_at_crash + 500

        await asyncio.to_thread(mosquitto_broker.restart)
        async with running(peer.run()):
            await wait_until(lambda: outbox.depth() == 0, 60, "the outbox to drain")

    assert peer.seen == set(range(1, 3_501)), "the peer eventually has every seq"
    assert outbox.last_acked == 3_500
    assert outbox.rejected() == []
    # What the broker PUBACKed and lost was sent again (after the reconnect, or after
    # ack_timeout if the peer had not resubscribed yet).
    assert sender.stats.movements_published > 3_500
    assert sender.stats.max_in_flight <= window
    duplicates = peer.received - len(peer.seen)
    print(
        f"\nkill -9 test: {peer.received} movements received for 3,500 seqs "
        f"({duplicates} duplicates), {sender.stats.resends} resends, {peer.gaps} gaps"
    )


async def send_100_losing_the_first_batch(
    broker: MosquittoBroker, outbox: Outbox, *, ack_timeout: float, echo_batch_id: bool
) -> tuple[Sender, AckingTestPeer]:
    """100 sales in batches of 10 (window 3) to a peer that loses batch 1-10; until drained."""
    sender = Sender(
        outbox,
        mqtt_client(broker, "edge-agent"),
        STORE,
        batch_size=10,
        window=3,
        ack_timeout=ack_timeout,
    )
    peer = AckingTestPeer(broker, drop_first=1, echo_batch_id=echo_batch_id)
    outbox.append(sales(100))
    async with running(peer.run()):
        await asyncio.wait_for(peer.connected.wait(), 10)
        async with running(run_agent(sender)):
            await wait_until(lambda: outbox.depth() == 0, 30, "the outbox to drain")
    return sender, peer


async def test_a_lost_batch_is_resent_at_once_when_the_next_ack_shows_the_gap(
    mosquitto_broker: MosquittoBroker, outbox: Outbox
) -> None:
    # The ack timeout is far beyond the test's patience: only the gap seen in the acks of the
    # batches after the lost one can bring the outbox to zero in time.
    sender, peer = await send_100_losing_the_first_batch(
        mosquitto_broker, outbox, ack_timeout=120, echo_batch_id=True
    )
    assert sender.stats.resends == 0
    assert sender.stats.fast_resends == 1  # batches 11-20 and 21-30 both showed the gap
    assert peer.seen == set(range(1, 101))
    assert first_receipts(peer)[:10] == list(range(11, 21)), "batch 1-10 was lost, then resent"


async def test_a_lost_batch_is_resent_after_the_ack_timeout(
    mosquitto_broker: MosquittoBroker, outbox: Outbox
) -> None:
    # A peer that does not echo batch ids: only the ack timeout reveals the loss.
    sender, peer = await send_100_losing_the_first_batch(
        mosquitto_broker, outbox, ack_timeout=0.5, echo_batch_id=False
    )
    assert sender.stats.resends >= 1
    assert peer.seen == set(range(1, 101))
    assert first_receipts(peer)[:10] == list(range(11, 21)), "batch 1-10 was lost, then resent"
    assert peer.gaps >= 1
    assert sender.stats.max_in_flight <= 3


async def test_rejected_seqs_leave_the_outbox_and_are_recorded(
    mosquitto_broker: MosquittoBroker, outbox: Outbox
) -> None:
    rejected = frozenset({3, 77, 150})
    sender = Sender(
        outbox, mqtt_client(mosquitto_broker, "edge-agent"), STORE, batch_size=25, window=2
    )
    peer = AckingTestPeer(mosquitto_broker, reject=rejected)
    outbox.append(sales(200))
    async with running(peer.run()):
        await asyncio.wait_for(peer.connected.wait(), 10)
        async with running(run_agent(sender)):
            await wait_until(lambda: outbox.depth() == 0, 20, "the outbox to drain")

    records = outbox.rejected()
    assert [r.seq for r in records] == sorted(rejected)
    for record in records:
        assert record.reason == pb.INVALID_FIELD
        assert record.detail == f"test peer rejects seq {record.seq}"
        assert record.movement is not None
        assert record.movement.seq == record.seq
    assert sender.stats.rejections == 3
    assert sender.stats.reject_reasons == {"INVALID_FIELD": 3}
    assert outbox.last_acked == 200
    assert outbox.pending() == []


async def test_handle_ack_ignores_garbage_and_other_sources(
    mosquitto_broker: MosquittoBroker, outbox: Outbox
) -> None:
    # No connection needed: handle_ack only touches the outbox.
    sender = Sender(outbox, mqtt_client(mosquitto_broker, "edge-agent"), STORE)
    outbox.append(sales(10))
    assert await sender.handle_ack(b"\xff\xff not a protobuf") is None
    assert sender.stats.invalid_acks == 1
    other = pb.MovementAck(sources=[pb.SourceAck(source_id="someone-else", seq=10)])
    other.rejections.add(source_id="someone-else", seq=2, reason=pb.WRONG_STORE)
    assert await sender.handle_ack(other.SerializeToString()) is not None
    assert outbox.depth() == 10
    # A payload the server could not attribute (seq 0) settles nothing either.
    unparseable = pb.MovementAck()
    unparseable.rejections.add(reason=pb.UNPARSEABLE, detail="truncated")
    await sender.handle_ack(unparseable.SerializeToString())
    assert outbox.depth() == 10
    mine = pb.MovementAck(sources=[pb.SourceAck(source_id=SOURCE, seq=4)])
    await sender.handle_ack(mine.SerializeToString())
    assert outbox.depth() == 6
    assert outbox.last_acked == 4


def test_sender_arguments_are_checked(outbox: Outbox) -> None:
    async def build(**kwargs: float) -> None:
        Sender(outbox, aiomqtt.Client("127.0.0.1"), STORE, **kwargs)  # type: ignore[arg-type]

    for bad in ({"batch_size": 0}, {"window": 0}, {"ack_timeout": 0}, {"max_payload_bytes": 10}):
        with pytest.raises(ValueError, match="must"):
            asyncio.run(build(**bad))


# --------------------------------------------------------------------------- payload budget


def tagged_sales(count: int, epcs: int) -> list[pb.Movement]:
    """``count`` sales naming ``epcs`` EPCs each (~26 bytes per EPC on the wire)."""
    return [
        pb.Movement(
            sku=f"SKU-{i}",
            location_id=STORE,
            type=pb.SALE,
            quantity=epcs,
            epc=[f"{i:08X}{k:016X}" for k in range(epcs)],
        )
        for i in range(count)
    ]


@contextlib.contextmanager
def limited_broker(tmp_path: Path, *config: str) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "limited-mq", extra_config=config) as broker:
        yield broker


def budget_sender(broker: MosquittoBroker, outbox: Outbox) -> Sender:
    """A sender whose payloads stay within 8,000 bytes (for a message_size_limit of 8 KiB)."""
    client = mqtt_client(broker, "edge-agent")
    return Sender(outbox, client, STORE, ack_timeout=2.0, max_payload_bytes=8000)


async def send_until_drained(
    broker: MosquittoBroker, sender: Sender, **peer_options: Any
) -> AckingTestPeer:
    """Run ``sender`` against an AckingTestPeer (with ``peer_options``) until drained."""
    peer = AckingTestPeer(broker, **peer_options)
    async with running(peer.run()):
        await asyncio.wait_for(peer.connected.wait(), 10)
        async with running(run_agent(sender)):
            await wait_until(lambda: sender.outbox.depth() == 0, 60, "the outbox to drain")
    return peer


async def test_batches_stay_under_the_payload_budget(tmp_path: Path, outbox: Outbox) -> None:
    # mosquitto does not announce message_size_limit: the agent's own budget keeps below it.
    # One batch of 100 such sales is ~160 KB: sent whole, it would get PUBACK 149 and paho
    # would drop the connection, again and again.
    with limited_broker(tmp_path, "message_size_limit 8192") as broker:
        sender = budget_sender(broker, outbox)
        outbox.append(tagged_sales(100, epcs=60))
        peer = await send_until_drained(broker, sender)
    assert peer.seen == set(range(1, 101))
    assert first_receipts(peer) == list(range(1, 101))
    assert max(peer.payload_sizes) <= 8000
    assert all(len(peer.last_received[seq].epc) == 60 for seq in peer.seen)
    assert sender.stats.split_batches > 0
    assert sender.stats.too_large == 0
    assert outbox.rejected() == []


async def test_the_brokers_announced_maximum_packet_size_caps_the_budget(
    tmp_path: Path, outbox: Outbox
) -> None:
    with limited_broker(tmp_path, "max_packet_size 6000") as broker:
        client = mqtt_client(broker, "edge-agent")
        limits = ConnackLimits(client)
        # The agent's default budget (256 KiB) is far above what this broker accepts.
        sender = Sender(outbox, client, STORE, ack_timeout=2.0, broker_limits=limits)
        outbox.append(tagged_sales(100, epcs=60))
        peer = await send_until_drained(broker, sender)
    assert limits.max_packet_size == 6000
    assert sender.payload_budget == 6000 - publish_overhead(sender.movements_topic)
    assert peer.seen == set(range(1, 101))
    assert max(peer.payload_sizes) <= sender.payload_budget
    assert sender.stats.too_large == 0


async def test_a_count_of_thousands_of_tags_is_sent_without_its_epcs(
    tmp_path: Path, outbox: Outbox
) -> None:
    with limited_broker(tmp_path, "message_size_limit 8192") as broker:
        sender = budget_sender(broker, outbox)
        outbox.append(sales(3))
        outbox.append(tagged_sales(1, epcs=1000))  # ~26 KB with its EPCs: seq 4
        outbox.append(sales(3))
        peer = await send_until_drained(broker, sender)
    assert peer.seen == set(range(1, 8))
    slim = peer.last_received[4]
    assert (slim.sku, slim.quantity, list(slim.epc)) == ("SKU-0", 1000, [])
    assert outbox.rejected() == []
    assert (sender.stats.epcs_dropped, sender.stats.too_large) == (1, 0)


async def test_a_movement_too_large_alone_is_set_aside_and_the_rest_delivered(
    tmp_path: Path, outbox: Outbox
) -> None:
    with limited_broker(tmp_path, "message_size_limit 8192") as broker:
        sender = budget_sender(broker, outbox)
        outbox.append(sales(3))
        huge = pb.Movement(
            sku="SKU-X",
            location_id=STORE,
            type=pb.ADJUSTMENT,
            adjustment_sign=pb.DECREASE,
            quantity=1,
            reason="damaged " * 2000,  # 16 KB without any EPC: seq 4
        )
        outbox.append([huge])
        outbox.append(sales(3))
        peer = await send_until_drained(broker, sender)
    # Seq 4 was still sent, as a stand-in the server rejects, so that seqs 5-7 can apply.
    assert peer.seen == set(range(1, 8))
    stand_in = peer.last_received[4]
    assert (stand_in.sku, stand_in.seq) == ("", 4)
    [record] = outbox.rejected()
    assert record.seq == 4
    assert record.reason == pb.INVALID_FIELD
    assert "too large to publish" in record.detail
    assert record.movement is not None
    assert record.movement.reason == huge.reason  # the original, for the back office
    assert sender.stats.too_large == 1


# --------------------------------------------------------------------------- server limits


async def test_a_batch_over_the_servers_payload_limit_is_resent_within_it(
    mosquitto_broker: MosquittoBroker, outbox: Outbox
) -> None:
    # The agent's budget (256 KiB) is above the server's (20 KB here) and the broker has no
    # limit: batches of 100 such sales (~160 KB) are refused whole, unparsed, with no batch id.
    limits = ServerLimits()
    sender = Sender(
        outbox, mqtt_client(mosquitto_broker, "edge-agent"), STORE, server_limits=limits
    )
    outbox.append(tagged_sales(300, epcs=60))
    outbox.append(tagged_sales(1, epcs=1000))  # ~26 KB: over the new limit even alone
    peer = await send_until_drained(mosquitto_broker, sender, max_payload=20_000)
    assert peer.seen == set(range(1, 302))
    assert first_receipts(peer) == list(range(1, 302))
    assert max(peer.payload_sizes) <= 20_000
    assert peer.too_large >= 1
    assert (limits.max_payload_bytes, limits.refusals) == (20_000, peer.too_large)
    assert sender.stats.resplits >= 1
    assert list(peer.last_received[301].epc) == [], "the big one went the existing way: slim"
    assert outbox.rejected() == []
    # What was learnt outlives the connection: the next sender starts within the limit.
    again = Sender(outbox, mqtt_client(mosquitto_broker, "x"), STORE, server_limits=limits)
    assert again.payload_budget == 20_000


async def test_a_batch_over_the_servers_movement_limit_is_resent_split(
    mosquitto_broker: MosquittoBroker, outbox: Outbox
) -> None:
    sender = Sender(outbox, mqtt_client(mosquitto_broker, "edge-agent"), STORE, batch_size=100)
    assert sender.batch_limit == 100
    outbox.append(sales(250))
    peer = await send_until_drained(mosquitto_broker, sender, max_movements=30)
    assert peer.seen == set(range(1, 251))
    assert max(len(b) for b in peer.batches) <= 30
    assert sender.batch_limit == sender.server_limits.max_movements == 30
    assert outbox.rejected() == []


async def test_a_movement_the_server_refuses_within_its_limits_is_set_aside_alone(
    mosquitto_broker: MosquittoBroker, outbox: Outbox
) -> None:
    # The server refuses every batch holding seq 7 although it keeps within the limits it
    # announces: the batches shrink until seq 7 is alone, then it is set aside, never stalling.
    sender = Sender(outbox, mqtt_client(mosquitto_broker, "edge-agent"), STORE, batch_size=8)
    outbox.append(sales(20))
    peer = await send_until_drained(mosquitto_broker, sender, too_large_seqs=frozenset({7}))
    assert peer.seen == set(range(1, 21))
    assert peer.last_received[7].sku == "", "seq 7 went as the set-aside stand-in"
    [record] = outbox.rejected()
    assert record.seq == 7
    assert "BATCH_TOO_LARGE" in record.detail
    assert sender.stats.too_large == 1


def test_batches_hold_at_most_10000_movements_by_default(outbox: Outbox) -> None:
    async def build() -> int:
        sender = Sender(outbox, aiomqtt.Client("127.0.0.1"), STORE, batch_size=50_000)
        return sender.batch_limit

    assert asyncio.run(build()) == MAX_BATCH_MOVEMENTS == 10_000
