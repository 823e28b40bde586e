"""Sends a store's outbox to the server over MQTT, with a bounded window of unacked batches.

The sender publishes the outbox's pending movements as ``MovementBatch`` messages on
``unistock/v1/stores/{store_id}/movements`` (QoS 1, seq order) and keeps at most ``window``
batches that the *server* has not acknowledged yet. The server's ``MovementAck`` arrives on
``unistock/v1/stores/{store_id}/acks``; the agent's message dispatcher hands it to
:meth:`Sender.handle_ack`, which settles the outbox and wakes the loop. A broker PUBACK is never
taken as delivery: Mosquitto acknowledges QoS 1 from memory and loses it on a crash.

Recovery is by resending from the outbox, never from memory: every :meth:`Sender.run` (one per
MQTT connection) starts from the lowest unsettled seq, and when no ack progress is seen for
``ack_timeout`` seconds with batches in flight, the window is thrown away and sent again from
there. The server deduplicates on ``(source_id, seq)``, so a resend costs bandwidth only.

The MQTT client is created, connected and reconnected by the agent; a typical session::

    async with client:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(sender.run())  # subscribes to the acks topic, then sends
            async for message in client.messages:
                if message.topic.matches(sender.acks_topic):
                    await sender.handle_ack(message.payload)

When the connection drops, ``client.publish`` (in ``run``) or the message iterator raises
:class:`aiomqtt.MqttError`; the task group ends, and the agent reconnects and runs both again.
Create the client with ``protocol=ProtocolVersion.V5`` and
``socket_options=[(IPPROTO_TCP, TCP_NODELAY, 1)]``: neither aiomqtt nor paho disables Nagle,
and each small QoS 1 round trip then stalls for ~40 ms.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import aiomqtt
from google.protobuf.message import DecodeError
from paho.mqtt import client as paho_mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from unistock.edge.limits import (
    DEFAULT_MAX_PAYLOAD,
    MAX_BATCH_MOVEMENTS,
    ConnackLimits,
    ServerLimits,
    batch_bytes,
    field_size,
)
from unistock.edge.outbox import Outbox, reject_reason_name
from unistock.edge.reconnect import reraise_if_cancelling
from unistock.v1 import inventory_pb2 as pb

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_MAX_PAYLOAD",
    "MAX_BATCH_MOVEMENTS",
    "ConnackLimits",
    "PublishRefusals",
    "Sender",
    "SenderStats",
    "ServerLimits",
    "acks_topic",
    "movements_topic",
    "status_topic",
]

_log = logging.getLogger(__name__)

#: MQTT 5 content type of a binary protobuf payload (the server also accepts the JSON mapping).
CONTENT_TYPE = "application/x-protobuf"


def publish_overhead(topic: str) -> int:
    """Bytes an MQTT 5 PUBLISH of ours adds to its payload, at most.

    Fixed header (1 + a length of up to 4), topic (2 + its bytes), packet id (2), properties
    (a length of up to 4, then the content type: 1 + 2 + its bytes).
    """
    return 5 + 2 + len(topic.encode()) + 2 + 4 + 3 + len(CONTENT_TYPE)


def movements_topic(store_id: str) -> str:
    """Topic on which a store's agent publishes its ``MovementBatch`` messages."""
    return f"unistock/v1/stores/{store_id}/movements"


def acks_topic(store_id: str) -> str:
    """Topic on which the server publishes its ``MovementAck`` messages for a store."""
    return f"unistock/v1/stores/{store_id}/acks"


def status_topic(store_id: str) -> str:
    """Retained topic of a store agent's status (and its last will)."""
    return f"unistock/v1/stores/{store_id}/status"


def reason_label(reason: ReasonCode) -> str:
    """A metric label for an MQTT reason code: ``not_authorized``, ``quota_exceeded``…"""
    return reason.getName().lower().replace(" ", "_")


class PublishRefusals:
    """The MQTT 5 PUBACK reason codes that aiomqtt drops: which publishes the broker refused.

    aiomqtt 2.5's ``publish()`` returns normally whatever the PUBACK says, so a publish refused
    by the broker's ACL (135 Not authorized) or quota (151) looked delivered. Created on a
    client (before or after it connects), this chains the paho client's ``on_publish``
    (aiomqtt's own callback still runs after it, so ``publish()`` still returns) and keeps the
    reason of every refused publish by topic until :meth:`take`. The callback runs before
    aiomqtt wakes the ``publish()`` caller, so when ``publish()`` returns, its refusal is here.

    Args:
        client: the aiomqtt client (speaking MQTT 5: MQTT 3.1.1 PUBACKs carry no reason).
        on_refused: called with ``(topic, reason)`` for every refused publish (metrics).
    """

    def __init__(
        self,
        client: aiomqtt.Client,
        on_refused: Callable[[str, ReasonCode], None] | None = None,
    ) -> None:
        self._paho = client._client
        # aiomqtt creates its paho client with CallbackAPIVersion.VERSION2 (reason codes).
        self._chained = cast(paho_mqtt.CallbackOnPublish_v2 | None, self._paho.on_publish)
        self._on_refused = on_refused
        self._refused: dict[str, ReasonCode] = {}
        self._paho.on_publish = self._on_publish

    def take(self, topic: str) -> ReasonCode | None:
        """The reason the broker refused the latest publish on ``topic`` (once), or ``None``."""
        return self._refused.pop(topic, None)

    def _on_publish(
        self,
        paho: paho_mqtt.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        try:
            if reason.is_failure:
                # paho pops the message after this callback: its topic is still known here.
                message = paho._out_messages.get(mid)
                topic = message.topic if message is not None else ""
                self._refused[topic] = reason
                if self._on_refused is not None:
                    self._on_refused(topic, reason)
        finally:
            if self._chained is not None:
                self._chained(paho, userdata, mid, reason, properties)


@dataclass(frozen=True, slots=True)
class _Batch:
    """A published batch waiting for the server's ack."""

    first_seq: int
    last_seq: int
    #: Publish number on this sender (in the batch_id), so that an ack names the very publish.
    number: int = 0
    movements: int = 0
    size: int = 0
    """Upper bound of its payload (bytes)."""


_NOTICE_KINDS = frozenset(pb.NoticeKind.values())


@dataclass(slots=True)
class SenderStats:
    """Counters for the agent's metrics (monotonic over the sender's life)."""

    batches_published: int = 0
    movements_published: int = 0
    acks_received: int = 0
    movements_settled: int = 0
    rejections: int = 0
    resends: int = 0
    fast_resends: int = 0
    """Windows resent at once because the server acked a batch whose predecessor it lacks."""
    """Windows thrown away and sent again after ``ack_timeout`` without progress."""
    invalid_acks: int = 0
    max_in_flight: int = 0
    """Highest number of unacked batches seen at once; never above ``window``."""
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    """Batches the broker refused (PUBACK reason >= 128), by reason (:func:`reason_label`)."""
    reject_reasons: collections.Counter[str] = field(default_factory=collections.Counter)
    """Movements the server rejected (final), by reason name."""
    notices: collections.Counter[str] = field(default_factory=collections.Counter)
    """Notices about applied movements (e.g. PICKUP_MISMATCH), by kind name."""
    too_large: int = 0
    """Movements too large to publish alone, set aside as rejected by the agent itself."""
    split_batches: int = 0
    """Batches cut below ``batch_size`` movements to stay within the payload budget."""
    epcs_dropped: int = 0
    """Movements over the payload budget sent without their (informational) EPC lists."""
    resplits: int = 0
    """Windows resent re-split after the server refused a batch as too large (BATCH_TOO_LARGE)."""


class Sender:
    """Publishes one outbox over an MQTT connection owned by the agent.

    Args:
        outbox: the store agent's durable outbox.
        client: an ``aiomqtt.Client`` speaking MQTT 5; the agent connects and reconnects it.
        store_id: the store whose topics are used.
        batch_size: maximum movements per ``MovementBatch`` message.
        window: maximum batches published and not yet acknowledged by the server.
        ack_timeout: seconds without any ack progress, while batches are in flight, after
            which the window is resent from the lowest unsettled seq.
        publish_timeout: seconds to wait for the broker's PUBACK of one publish (``None``:
            the client's own timeout); a timeout raises ``aiomqtt.MqttError`` out of
            :meth:`run`, the agent's cue to reconnect.
        refusals: the client's :class:`PublishRefusals` (default: one is created).
        refused_backoff: the longest pause, in seconds, before resending a batch the broker
            refused; pauses start at 0.5 s and double while refusals go on.
        stats: counters to add to (the agent passes one instance to the sender of every
            connection, so that its metrics never go back to zero on a reconnect).
        max_payload_bytes: the largest ``MovementBatch`` payload to publish.
        broker_limits: the client's :class:`ConnackLimits`; when the broker announced a
            Maximum Packet Size, payloads also stay below it minus the PUBLISH overhead.
        server_limits: the server's limits as learnt so far (:class:`ServerLimits`; the
            agent passes one instance to the sender of every connection). Batches also stay
            within them: at most 10,000 movements until the server says otherwise.
        on_rejected: called (in the event loop) after rejections were recorded in the
            outbox: the server's, or a movement set aside as too large.

    Payload budget. A payload over the broker's ``message_size_limit`` gets PUBACK reason 149,
    which paho takes for a protocol error: it drops the connection and the same batch would be
    resent for ever. So a batch holds at most ``batch_size`` movements *and* at most
    :attr:`payload_budget` bytes: the longest run of pending movements that fits is sent, the
    rest follows in the next batches. A movement that cannot fit even alone is, when it carries
    EPCs (an RFID count of thousands of tags), sent without its EPC list: the list is
    informational, the quantity is what counts (logged as a warning, counted in
    :attr:`SenderStats.epcs_dropped`). One that still cannot fit (impossible within the id
    limits, but not left to chance) is set aside rather than blocking the outbox: it is logged as an error, kept in the
    outbox's ``rejected`` table (``INVALID_FIELD``, detail "too large to publish…") for the
    back office, counted in :attr:`SenderStats.too_large`, and a stand-in without SKU is sent
    under its seq, which the server rejects, so that the seqs after it are applied.

    A batch the broker refuses (MQTT 5 PUBACK reason >= 128: 135 Not authorized by the ACL,
    151 quota exceeded…) was not delivered: it is logged as an error, counted in
    :attr:`SenderStats.refused`, taken out of the window, and sent again, from its first seq,
    after a pause. The connection is kept: the broker refused a message, not the session, and
    reconnecting would reset the agent's connect backoff and turn a lasting ACL mistake into a
    reconnect storm; acks of earlier batches keep settling meanwhile, and the outbox depth and
    oldest-unacked age keep growing where monitoring sees them. A fixed ACL (mosquitto reloads
    it on SIGHUP) lets the next attempt through without a restart.

    A batch the *server* refuses as too large (``BATCH_TOO_LARGE``: more movements or more
    bytes than it takes, e.g. an agent configured with ``max_payload_bytes`` above the server's
    limit behind a broker without a size limit) advanced nothing. Its ``MovementAck.limits``
    lower :attr:`server_limits` for the life of the process (logged, counted), and the window
    is resent at once from the lowest unsettled seq, re-split within the new limits; a movement
    too large alone goes the way described above (without its EPCs, or set aside). A refused
    batch of ours that kept within the announced limits halves the number of movements per
    batch; refused alone, its movement is set aside. Either way the store is never stalled.
    """

    def __init__(
        self,
        outbox: Outbox,
        client: aiomqtt.Client,
        store_id: str,
        *,
        batch_size: int = 100,
        window: int = 8,
        ack_timeout: float = 10.0,
        publish_timeout: float | None = None,
        refusals: PublishRefusals | None = None,
        refused_backoff: float = 30.0,
        stats: SenderStats | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        broker_limits: ConnackLimits | None = None,
        server_limits: ServerLimits | None = None,
        on_rejected: Callable[[], None] | None = None,
    ) -> None:
        if batch_size < 1 or window < 1:
            raise ValueError("batch_size and window must be at least 1")
        if max_payload_bytes < 1024:
            raise ValueError("max_payload_bytes must be at least 1024")
        if not ack_timeout > 0:
            raise ValueError("ack_timeout must be positive")
        self.outbox = outbox
        self.client = client
        self.store_id = store_id
        self.batch_size = batch_size
        self.window = window
        self.ack_timeout = ack_timeout
        self.publish_timeout = publish_timeout
        self.movements_topic = movements_topic(store_id)
        self.acks_topic = acks_topic(store_id)
        self.stats = stats if stats is not None else SenderStats()
        self._in_flight: collections.deque[_Batch] = collections.deque()
        # Set by every ack, rejection and append; the loop sleeps on it instead of polling.
        self._wake = asyncio.Event()
        self._properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self._properties.ContentType = CONTENT_TYPE
        self.refusals = refusals if refusals is not None else PublishRefusals(client)
        self.refused_backoff = refused_backoff
        self._refused_pause = 0.0
        self._published = 0  # publish counter, for batch ids
        self._gap: int | None = None  # the server's acked seq, when it reveals a lost batch
        self.max_payload_bytes = max_payload_bytes
        self.broker_limits = broker_limits
        self.server_limits = server_limits if server_limits is not None else ServerLimits()
        self._resplit = False  # the server refused a batch as too large: resend re-split
        self._refused_alone: int | None = None  # seq refused alone within the limits
        self.on_rejected = on_rejected

    @property
    def payload_budget(self) -> int:
        """The largest payload to publish: ``max_payload_bytes``, or less if the broker or
        the server says so."""
        budget = self.max_payload_bytes
        announced = self.broker_limits.max_packet_size if self.broker_limits else None
        if announced is not None:
            budget = min(budget, announced - publish_overhead(self.movements_topic))
        server = self.server_limits.max_payload_bytes
        return budget if server is None else min(budget, server)

    @property
    def batch_limit(self) -> int:
        """The most movements in one batch: ``batch_size``, or less if the server says so."""
        return min(self.batch_size, self.server_limits.max_movements)

    # ---- what the agent calls --------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Number of published batches the server has not acknowledged yet."""
        return len(self._in_flight)

    def notify(self) -> None:
        """Tell the loop that the outbox changed (new movements appended)."""
        self._wake.set()

    async def submit(self, movements: list[pb.Movement]) -> list[int]:
        """Append ``movements`` durably to the outbox and wake the loop.

        Returns:
            The seqs assigned; the movements are safe on disk when this returns.
        """
        seqs = await asyncio.to_thread(self.outbox.append, movements)
        self.notify()
        return seqs

    async def handle_ack(self, payload: bytes | bytearray) -> pb.MovementAck | None:
        """Settle the outbox from a server ``MovementAck`` and wake the loop.

        Rejections are recorded in the outbox's ``rejected`` table (they are final: never
        resent); every movement at or below the acked seq leaves the outbox. Entries for other
        sources are ignored. An unparseable payload is logged and counted, never raised: one
        bad message must not stop the agent's dispatcher.

        Returns:
            The parsed ack, or ``None`` if the payload was not a ``MovementAck``.
        """
        try:
            ack = pb.MovementAck.FromString(bytes(payload))
        except DecodeError:
            self.stats.invalid_acks += 1
            _log.warning("ignoring an unparseable MovementAck (%d bytes)", len(payload))
            return None
        source_id = self.outbox.source_id
        acked: int | None = None
        for source in ack.sources:
            if source.source_id == source_id:
                acked = source.seq if acked is None else max(acked, source.seq)
        rejections: list[tuple[int, int, str]] = []
        for rejection in ack.rejections:
            if rejection.reason == pb.BATCH_TOO_LARGE:
                # A whole batch refused for its size: no movement of it is settled.
                if rejection.source_id in ("", source_id):
                    self._too_large(ack, rejection.detail)
            elif rejection.source_id == source_id and rejection.seq > 0:
                rejections.append((rejection.seq, rejection.reason, rejection.detail))
            elif not rejection.source_id or rejection.seq == 0:
                # A whole payload the server could not read: nothing in the outbox can be
                # settled by it; what it contained is resent after the ack timeout.
                _log.warning(
                    "server rejected a payload it could not attribute: %s %s",
                    reject_reason_name(rejection.reason),
                    rejection.detail,
                )
        for notice in ack.notices:
            if notice.source_id == source_id:
                kind = pb.NoticeKind.Name(notice.kind) if notice.kind in _NOTICE_KINDS else "OTHER"
                self.stats.notices[kind] += 1
                _log.warning(
                    "server notice on seq %d (%s, reservation %r): %s",
                    notice.seq,
                    kind,
                    notice.reservation_id,
                    notice.detail,
                )
        self.stats.acks_received += 1
        if acked is not None:
            self._check_gap(ack.batch_id, acked)
        if acked is None and not rejections:
            return ack
        removed = await asyncio.to_thread(self.outbox.settle, acked, rejections)
        self.stats.movements_settled += removed
        self.stats.rejections += len(rejections)
        for _, reason, detail in rejections:
            self.stats.reject_reasons[reject_reason_name(reason)] += 1
            _log.warning(
                "movement rejected by the server: %s %s", reject_reason_name(reason), detail
            )
        if rejections and self.on_rejected is not None:
            self.on_rejected()
        self._wake.set()
        return ack

    async def run(self) -> None:
        """Subscribe to the acks topic and send the outbox for as long as the connection lasts.

        Runs until cancelled, or until the client raises ``aiomqtt.MqttError`` (connection
        lost, PUBACK timeout), which propagates so that the agent reconnects. Each call starts
        afresh from the lowest unsettled seq: whatever was in flight on an earlier connection
        is sent again.
        """
        # Subscribe before the first publish, so that no ack for this session is missed.
        await self.client.subscribe(self.acks_topic, qos=1)
        reraise_if_cancelling()
        self._in_flight.clear()
        self._gap = None
        self._wake.set()
        loop = asyncio.get_running_loop()
        cursor = 0  # highest seq published on this connection (or settled)
        last_progress = loop.time()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._gap is not None:
                self.stats.fast_resends += 1
                _log.info(
                    "the server acked seq %d past a gap: resending from seq %d now",
                    self._gap,
                    self._gap + 1,
                )
                self._gap = None
                self._in_flight.clear()
                cursor = 0
                last_progress = loop.time()
            if self._resplit:
                self._resplit = False
                self.stats.resplits += 1
                _log.info(
                    "resending from the lowest unsettled seq in batches of at most %d movements "
                    "and %d bytes",
                    self.batch_limit,
                    self.payload_budget,
                )
                await self._set_aside_refused()
                self._in_flight.clear()
                cursor = 0
                last_progress = loop.time()
            while True:
                # Re-read before every publish: acks settle the outbox while we wait for a
                # PUBACK, and a stale count would shrink the window for no reason.
                settled = await asyncio.to_thread(self.outbox.settled_through)
                while self._in_flight and self._in_flight[0].last_seq <= settled:
                    self._in_flight.popleft()
                    last_progress = loop.time()
                if not self._in_flight:
                    # Nothing outstanding: the timeout clock only runs while acks are owed.
                    last_progress = loop.time()
                cursor = max(cursor, settled)
                if len(self._in_flight) >= self.window or self._resplit:
                    break  # full, or the server refused a batch: resend within its limits
                movements = await asyncio.to_thread(
                    self.outbox.pending, cursor, limit=self.batch_limit
                )
                if not movements or self._resplit:  # (a refusal may arrive during the read)
                    break
                fitting = self._fit(movements)
                if not fitting:
                    # One movement over the budget: almost always a COUNT carrying every EPC
                    # it saw. The EPCs are informational; the count is not: send it without.
                    slim = self._without_epcs(movements[0])
                    if slim is None:
                        await self._set_aside(movements[0])
                        continue
                    fitting = [slim]
                movements = fitting
                if not await self._publish(movements):
                    # Refused by the broker: resend from this batch's first seq after a pause.
                    cursor = movements[0].seq - 1
                    await asyncio.sleep(self._refused_pause)
                    continue
                cursor = movements[-1].seq
            if self._in_flight:
                await self._wait_for_progress(last_progress + self.ack_timeout)
                if not self._wake.is_set():
                    # ack_timeout elapsed with no progress: the batches, or their acks, were
                    # lost (broker crash, server restart, a publish the broker refused). Resend
                    # from the lowest unsettled seq.
                    self.stats.resends += 1
                    _log.info(
                        "no ack for %.1f s with %d batches in flight; resending from seq %d",
                        self.ack_timeout,
                        len(self._in_flight),
                        settled + 1,
                    )
                    self._in_flight.clear()
                    cursor = 0
                    last_progress = loop.time()
                    self._wake.set()

    # ---- internals -------------------------------------------------------------------------

    def _check_gap(self, batch_id: str, acked: int) -> None:
        """Notice a lost batch from an ack, without waiting for ack_timeout.

        The server applies a source's movements without gaps and acks each message it
        processed with its contiguous high-water seq, echoing our batch_id. An ack for a batch
        we published on this round that stays below that batch's first seq - 1 means an
        earlier batch never reached the server (lost on a broker crash, refused, or dropped by
        a server that could not write it): resend from the acked seq now, like TCP's fast
        retransmit. Acks of batches from before a resend name publish numbers no longer in
        flight, so one loss triggers one resend.
        """
        batch = self._in_flight_batch(batch_id)
        if batch is not None and acked < batch.first_seq - 1:
            self._gap = acked
            self._wake.set()

    def _in_flight_batch(self, batch_id: str) -> _Batch | None:
        """The batch in flight that ``batch_id`` (echoed by an ack) names, if any."""
        _, _, number = batch_id.rpartition("#")
        if not number.isdigit():
            return None
        n = int(number)
        return next((b for b in self._in_flight if b.number == n), None)

    def _too_large(self, ack: pb.MovementAck, detail: str) -> None:
        """The server refused a batch whole for its size (``BATCH_TOO_LARGE``).

        Learn its limits; resend the window re-split if they lowered ours, or if the batch
        refused is one of ours in flight that kept within them (then halve the movements per
        batch, or set its movement aside if it was alone). A refusal of a batch sent before a
        lesson, or of a stranger's payload on our topic, changes nothing more.
        """
        limits = self.server_limits
        limits.refusals += 1
        lowered = ack.HasField("limits") and limits.learn(ack.limits)
        batch = self._in_flight_batch(ack.batch_id)
        _log.warning(
            "the server refused batch %r as too large (%s)", ack.batch_id or "(unnamed)", detail
        )
        if batch is not None and (
            batch.movements > self.batch_limit or batch.size > self.payload_budget
        ):
            batch = None  # sent before a lesson learnt since: resent re-split already
        if batch is not None and not lowered:
            if batch.movements > 1:
                limits.max_movements = min(limits.max_movements, batch.movements)
                limits.halve_movements()
            else:
                self._refused_alone = batch.first_seq
        if lowered or batch is not None:
            self._resplit = True
            self._wake.set()

    def _fit(self, movements: list[pb.Movement]) -> list[pb.Movement]:
        """The longest prefix of ``movements`` whose MovementBatch fits the payload budget.

        Sizes are exact upper bounds (protobuf field sizes, the longest batch_id): no
        serialisation is needed to decide.
        """
        budget = self.payload_budget
        size = batch_bytes(self.outbox.source_id)
        for n, movement in enumerate(movements):
            size += field_size(movement.ByteSize())
            if size > budget:
                if n:
                    self.stats.split_batches += 1
                return movements[:n]
        return movements

    def _without_epcs(self, movement: pb.Movement) -> pb.Movement | None:
        """movement without its EPC list if that makes it fit the budget, else None.

        Deterministic, so a resend carries the same content; the outbox keeps the EPCs.
        """
        if not movement.epc:
            return None
        slim = pb.Movement()
        slim.CopyFrom(movement)
        del slim.epc[:]
        if not self._fit([slim]):
            return None
        self.stats.epcs_dropped += 1
        _log.warning(
            "seq %d (%s of %r, %d EPCs): over the payload budget of %d bytes; sent without "
            "its EPC list (kept in the outbox until acked)",
            movement.seq,
            pb.MovementType.Name(movement.type),
            movement.sku,
            len(movement.epc),
            self.payload_budget,
        )
        return slim

    async def _set_aside_refused(self) -> None:
        """Set aside the movement the server refused alone although it kept within its limits."""
        seq, self._refused_alone = self._refused_alone, None
        if seq is None:
            return
        pending = await asyncio.to_thread(self.outbox.pending, seq - 1, limit=1)
        if pending and pending[0].seq == seq:
            movement = pending[0]
            await self._set_aside(
                movement,
                f"movement too large for the server: refused alone ({movement.ByteSize()} "
                "bytes) with BATCH_TOO_LARGE (set aside by the agent)",
            )

    async def _set_aside(self, movement: pb.Movement, detail: str = "") -> None:
        """Reject a movement too large to publish alone, and send a stand-in under its seq."""
        self.stats.too_large += 1
        detail = detail or (
            f"movement too large to publish: {movement.ByteSize()} bytes, over the payload "
            f"budget of {self.payload_budget} bytes (set aside by the agent, never sent)"
        )
        _log.error("seq %d (sku %r): %s", movement.seq, movement.sku, detail)
        # Empty sku: the server rejects it (INVALID_FIELD) and moves past the seq.
        stand_in = pb.Movement(
            source_id=movement.source_id,
            seq=movement.seq,
            location_id=movement.location_id,
            type=movement.type,
            quantity=movement.quantity,
            reason="unistock-agent: movement too large to publish, see the agent's rejected table",
        )
        await asyncio.to_thread(
            self.outbox.set_aside, movement.seq, stand_in, pb.INVALID_FIELD, detail
        )
        if self.on_rejected is not None:
            self.on_rejected()

    async def _wait_for_progress(self, deadline: float) -> None:
        """Wait for the wake event until the loop time ``deadline`` (leaving it set if it fires)."""
        if deadline <= asyncio.get_running_loop().time():
            return
        try:
            async with asyncio.timeout_at(deadline):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _publish(self, movements: list[pb.Movement]) -> bool:
        """Publish one batch; ``False`` if the broker refused it (then it is not in flight)."""
        self._published += 1
        size = batch_bytes(self.outbox.source_id, movements)
        batch = _Batch(movements[0].seq, movements[-1].seq, self._published, len(movements), size)
        message = pb.MovementBatch(
            source_id=self.outbox.source_id,
            movements=movements,
            batch_id=f"{batch.first_seq}-{batch.last_seq}#{batch.number}",
        )
        # Counted as in flight before the await: the server's ack can overtake our PUBACK.
        self._in_flight.append(batch)
        self.stats.max_in_flight = max(self.stats.max_in_flight, len(self._in_flight))
        # aiomqtt's publish returns once the broker's PUBACK arrives (QoS 1). That only paces the
        # sender to the broker; delivery is decided by the server's MovementAck.
        await self.client.publish(
            self.movements_topic,
            message.SerializeToString(),
            qos=1,
            properties=self._properties,
            timeout=self.publish_timeout,
        )
        reraise_if_cancelling()
        reason = self.refusals.take(self.movements_topic)
        if reason is not None:
            self._in_flight.remove(batch)
            label = reason_label(reason)
            self.stats.refused[label] += 1
            self._refused_pause = min(max(2 * self._refused_pause, 0.5), self.refused_backoff)
            _log.error(
                "the broker refused movements %d-%d on %s: reason %d %s; nothing was delivered, "
                "resending in %.1f s",
                batch.first_seq,
                batch.last_seq,
                self.movements_topic,
                reason.value,
                reason.getName(),
                self._refused_pause,
            )
            return False
        self._refused_pause = 0.0
        self.stats.batches_published += 1
        self.stats.movements_published += len(movements)
        return True
