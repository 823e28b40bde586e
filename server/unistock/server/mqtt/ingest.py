"""Ingestion of movement batches published by store edge agents over MQTT.

    unistock/v1/stores/{store_id}/movements   edge -> server, QoS 1, MovementBatch
    unistock/v1/stores/{store_id}/acks        server -> edge, QoS 1, MovementAck

A broker's PUBACK is not durability (Mosquitto keeps QoS 1 in memory, and aiomqtt acks a
message before our code runs), so the agent keeps every movement in its outbox until our own
MovementAck covers its seq, and we publish that ack only once the movement is durable in Redis.

Acks are cumulative ("every seq up to N is done"), so a source's movements must be applied
without gaps: per source we keep the highest contiguous seq applied (durable in Redis, written
after the positions in the same flush). A batch that starts beyond it (an earlier message was
lost between the broker's PUBACK and our durable write) is not applied; the ack repeats the
old seq, and the agent resends from there (go-back-N). Inside a batch, processing stops at
the first gap. Seqs at or below it are duplicates (redelivery, replay) and change nothing.

A source belongs to one store: the first store that sends it (the claim is written to Redis,
in the source's partition, before its first batch is applied). A batch on another store's
topic naming that source is rejected whole (WRONG_STORE for each of its movements) and changes
nothing: no position, no progress, no SourceAck in its ack. A movement rejected for a fault of
its own (a field, a location not of this store) is final and advances its source's progress,
so that its agent gets past it. A batch refused as a whole (too large, no valid source_id, no
movement, not parseable) advances nothing either: BATCH_TOO_LARGE tells the sender the limits
so it can split the batch and send the same seqs again.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field

import aiomqtt
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from unistock.client.config import redact_url
from unistock.client.mqtt import broker_args
from unistock.server.actors import Inventory
from unistock.server.actors.liveness import StoreLiveness
from unistock.server.api.convert import (
    MAX_BATCH,
    ack_feedback,
    batch_from_wire,
    rejection,
    too_large,
)
from unistock.server.domain import Fenced, InvalidArgument, Movement, Unavailable, check_id
from unistock.server.domain.values import id_ok
from unistock.server.metrics import Metrics
from unistock.server.mqtt.bounded import (
    MAX_SOURCES,
    MAX_STORE_SERIES,
    AgentStatuses,
    SourceState,
    SourceTable,
    StoreSeries,
)
from unistock.server.mqtt.fair import FairQueue
from unistock.server.mqtt.locations import LocationDirectory
from unistock.v1 import inventory_pb2 as pb

log = logging.getLogger(__name__)

TOPIC_ROOT = "unistock/v1/stores"
MOVEMENTS_TOPIC = f"{TOPIC_ROOT}/+/movements"
#: The agents' retained statuses: store liveness for network staleness.
STATUS_TOPIC = f"{TOPIC_ROOT}/+/status"


async def pause_before_reconnecting(backoff: float) -> float:
    """Sleep about `backoff` s (jittered) after a lost connection; returns the next backoff
    (doubled, at most 10 s). Raises CancelledError when the task is being cancelled: aiomqtt
    (asyncio.wait_for on 3.11) can turn a cancellation into an MqttError, and a cancelled task
    must stop, not reconnect."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    await asyncio.sleep(backoff * (0.5 + random.random()))
    return min(backoff * 2, 10.0)


def status_store(topic: str) -> str | None:
    """The store id of a status topic, or None if the topic is not one."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == TOPIC_ROOT and parts[4] == "status":
        return parts[3] or None
    return None


JSON = "application/json"
#: Acks published whose broker PUBACK has not arrived yet (the client allows 1000 in flight).
MAX_ACKS_IN_FLIGHT = 256
#: Larger payloads are refused unparsed (the broker should refuse them first: see deploy/).
MAX_PAYLOAD = 1024 * 1024


@dataclass(slots=True)
class StoreBatch:
    """What one MQTT message did, and the ack to publish once `durable` resolves."""

    store_id: str
    ack: pb.MovementAck
    durable: asyncio.Future[None] | None = None
    received_at: float = field(default_factory=time.perf_counter)


def store_of(topic: str) -> str | None:
    """The store id of a movements topic (not necessarily a valid id), or None if the topic is
    not one."""
    parts = topic.split("/")
    if len(parts) == 5 and "/".join(parts[:3]) == TOPIC_ROOT and parts[4] == "movements":
        return parts[3] or None
    return None


def queue_key(topic: str) -> str:
    """The FairQueue key of a message: its store when valid, else one key shared by all."""
    store_id = store_of(topic)
    return store_id if store_id is not None and id_ok(store_id) else ""


class MqttIngestor:
    """Subscribes to every store's movements and applies them through the inventory."""

    def __init__(
        self,
        url: str,
        inventory: Inventory,
        metrics: Metrics,
        locations: LocationDirectory,
        *,
        client_id: str = "unistock-server",
        session_expiry: int = 7 * 86400,
        max_sources: int = MAX_SOURCES,
        max_store_series: int = MAX_STORE_SERIES,
    ) -> None:
        self.url = url
        self.inventory = inventory
        self.metrics = metrics
        self.locations = locations
        self.client_id = client_id
        self.session_expiry = session_expiry
        self.sources = SourceTable(max_sources)
        self.store_series = StoreSeries(metrics.mqtt_store_last_seen, max_store_series)
        self.connected = asyncio.Event()
        #: Told of every store heard from (batches, statuses); see actors.liveness.
        self.liveness: StoreLiveness | None = None
        #: Each store's last AgentStatus (retained on the broker, so back after a restart).
        self.statuses = AgentStatuses()

    # -- one message -----------------------------------------------------------------------------

    async def ingest(self, topic: str, payload: bytes, content_type: str = "") -> StoreBatch | None:
        """Apply one message; returns the ack to publish once durable (None: not a store topic)."""
        store_id = store_of(topic)
        if store_id is None:
            log.warning("ignoring message on unexpected topic %r", topic)
            return None
        m = self.metrics
        m.mqtt_messages.labels("received").inc()
        try:
            check_id("topic store_id", store_id)
        except InvalidArgument as exc:
            return self._refused(store_id, "bad_topic", [_whole(pb.INVALID_FIELD, str(exc))])
        if len(payload) > MAX_PAYLOAD:
            detail = f"payload of {len(payload)} bytes exceeds the limit of {MAX_PAYLOAD} bytes"
            return self._too_large(store_id, pb.MovementBatch(), detail)
        batch = pb.MovementBatch()
        try:
            if content_type == JSON:
                json_format.Parse(payload, batch)
            else:
                batch.ParseFromString(payload)
        except (DecodeError, json_format.ParseError, UnicodeDecodeError, ValueError) as exc:
            detail = f"cannot parse MovementBatch: {exc}"[:500]
            return self._refused(store_id, "unparseable", [_whole(pb.UNPARSEABLE, detail)])
        m.mqtt_movements.inc(len(batch.movements))
        return await self._apply(store_id, batch)

    def _refused(
        self,
        store_id: str,
        outcome: str,
        rejections: list[pb.Rejection],
        batch: pb.MovementBatch | None = None,
    ) -> StoreBatch:
        """A message refused as a whole: its rejections, and no progress of any source."""
        self.metrics.mqtt_messages.labels(outcome).inc()
        self._count(rejections)
        ack = pb.MovementAck(rejections=rejections)
        if batch is not None:
            ack.batch_id = batch.batch_id
        first = rejections[0] if rejections else None
        log.warning(
            "store %s: refused a message (%s): %s",
            store_id[:140],
            outcome,
            first.detail if first is not None else "",
        )
        return StoreBatch(store_id, ack)

    def _too_large(self, store_id: str, batch: pb.MovementBatch, detail: str) -> StoreBatch:
        refusal = too_large(batch, detail, MAX_PAYLOAD)
        done = self._refused(store_id, "too_large", list(refusal.rejections), batch)
        done.ack.limits.CopyFrom(refusal.limits)
        return done

    def _count(self, rejections: list[pb.Rejection]) -> None:
        by_reason: dict[pb.RejectReason.ValueType, int] = {}
        for r in rejections:
            by_reason[r.reason] = by_reason.get(r.reason, 0) + 1
        for reason, n in by_reason.items():
            self.metrics.movements_rejected.labels(pb.RejectReason.Name(reason)).inc(n)

    async def _apply(self, store_id: str, batch: pb.MovementBatch) -> StoreBatch:
        source = batch.source_id
        if len(batch.movements) > MAX_BATCH:
            detail = f"{len(batch.movements)} movements exceed the limit of {MAX_BATCH} per batch"
            return self._too_large(store_id, batch, detail)
        if not batch.movements or not id_ok(source):
            # Nothing to apply, or no source whose progress they could make: each movement (or
            # the batch) rejected naming source_id or movements.
            return self._refused(store_id, "refused", batch_from_wire(batch)[1], batch)
        state = self.sources.get(source) or await self._claim(source, store_id)
        if state.owner != store_id:
            detail = (
                f"source_id {source!r} belongs to store {state.owner!r}, not to store {store_id!r}"
            )
            rejections = [
                pb.Rejection(source_id=source, seq=mv.seq, reason=pb.WRONG_STORE, detail=detail)
                for mv in batch.movements
            ]
            return self._refused(store_id, "wrong_store", rejections, batch)
        self.store_series.seen(store_id, time.time())
        if self.liveness is not None:
            self.liveness.heard(store_id)
        valid, rejected = batch_from_wire(batch)
        ack = pb.MovementAck(batch_id=batch.batch_id)
        by_seq: dict[int, Movement] = {}
        belongs = self.locations.belongs
        checked: dict[str, bool] = {}  # by location: a store reports few
        for mv in valid:
            ok = checked.get(mv.location_id)
            if ok is None:
                ok = checked[mv.location_id] = belongs(mv.location_id, store_id)
            if ok:
                by_seq[mv.seq] = mv
            else:
                exc = InvalidArgument(
                    "location_id",
                    f"location {mv.location_id!r} does not belong to store {store_id!r}",
                )
                r = rejection(source, mv.seq, exc)
                r.reason = pb.WRONG_STORE
                rejected.append(r)
        final = {r.seq: r for r in rejected}
        done = state.progress
        # Walk the batch's seqs in order from the first one not yet done; stop at a gap.
        seqs = sorted(by_seq.keys() | final.keys())
        expected = done + 1
        apply: list[Movement] = []
        duplicates = 0
        for seq in seqs:
            if seq < 1:  # never valid, so never a duplicate: the sender must hear why
                ack.rejections.append(final[seq])
            elif seq < expected:
                duplicates += 1
            elif seq == expected:
                if seq in by_seq:
                    apply.append(by_seq[seq])
                elif seq in final:
                    ack.rejections.append(final[seq])
                expected += 1
            else:
                self.metrics.mqtt_messages.labels("out_of_order").inc()
                log.info(
                    "store %s source %s: seq %d after %d; waiting for a resend from %d",
                    store_id,
                    source,
                    seq,
                    expected - 1,
                    expected,
                )
                break
        if apply:
            result, _ = await self.inventory.submit_movements(apply)
            ack.applied = result.applied
            ack.duplicates = duplicates + result.duplicates
            # Notices are counted by the inventory (unistock_pickup_mismatches_total). Movements
            # it refused are final, like a validation rejection (the progress still passes
            # them: the sender must not resend them for ever).
            notices, refused = ack_feedback(result.notices, result.refused)
            ack.notices.extend(notices)
            ack.rejections.extend(refused)
        else:
            ack.duplicates = duplicates
        self._count(list(ack.rejections))
        top = expected - 1
        current = self.sources.get(source)
        if current is None or top > current.progress:
            self.sources.put(source, SourceState(store_id, top))
            if top > done:
                self.inventory.commit.source_progress(source, top)
        # Taken after the progress is recorded: the ack waits for both to be durable.
        durable = self.inventory.commit.barrier()
        ack.sources.append(pb.SourceAck(source_id=source, seq=top))
        self.metrics.mqtt_messages.labels("applied" if apply else "nothing_new").inc()
        return StoreBatch(store_id, ack, durable)

    async def _claim(self, source: str, store_id: str) -> SourceState:
        """The source's owner and progress from Redis; store_id now owns it if nobody did."""
        owner, progress = await self.inventory.store.claim_source(source, store_id)
        state = self.sources.get(source)  # another batch may have loaded it meanwhile
        if state is None:
            state = SourceState(owner, progress)
            self.sources.put(source, state)
        return state

    # -- the connection ----------------------------------------------------------------------

    def _client(self) -> aiomqtt.Client:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry
        return aiomqtt.Client(
            **broker_args(self.url),
            identifier=self.client_id,
            clean_start=False,  # a persistent session: the broker queues for us while we are away
            properties=props,
            max_inflight_messages=1000,
        )

    async def run(self) -> None:
        """Consume and ack until cancelled, reconnecting with jittered backoff."""
        backoff = 0.2
        while True:
            try:
                async with self._client() as client:
                    await client.subscribe(MOVEMENTS_TOPIC, qos=1)
                    await client.subscribe(STATUS_TOPIC, qos=1)
                    self.metrics.mqtt_connected.set(1)
                    self.connected.set()
                    backoff = 0.2
                    log.info("mqtt: subscribed to %s on %s", MOVEMENTS_TOPIC, redact_url(self.url))
                    await self._serve(client)
            except* aiomqtt.MqttError as group:  # from the subscribe, or the TaskGroup of _serve
                log.warning(
                    "mqtt: connection lost (%s); reconnecting in %.1f s",
                    group.exceptions[0],
                    backoff,
                )
            finally:
                self.metrics.mqtt_connected.set(0)
                self.connected.clear()
            backoff = await pause_before_reconnecting(backoff)

    async def _serve(self, client: aiomqtt.Client) -> None:
        acks: asyncio.Queue[StoreBatch] = asyncio.Queue(1000)

        async def publish_acks(tg: asyncio.TaskGroup) -> None:
            # In arrival order: a later ack never overtakes an earlier one of the same store.
            # Publishes are issued in that order (paho queues them as called) but their PUBACKs
            # are awaited concurrently, up to MAX_ACKS_IN_FLIGHT: awaiting each broker round
            # trip in turn capped the acks, and with them every agent's window (bench B1).
            slots = asyncio.Semaphore(MAX_ACKS_IN_FLIGHT)
            while True:
                done = await acks.get()
                if done.durable is not None:
                    try:
                        await done.durable
                    except Unavailable as exc:
                        log.warning("store %s: not acked, not durable: %s", done.store_id, exc)
                        continue
                self.metrics.mqtt_ingest_latency.observe(time.perf_counter() - done.received_at)
                await slots.acquire()
                task = tg.create_task(
                    client.publish(
                        f"{TOPIC_ROOT}/{done.store_id}/acks", done.ack.SerializeToString(), qos=1
                    )
                )
                task.add_done_callback(lambda _: slots.release())

        async def receive(queue: FairQueue[tuple[float, aiomqtt.Message]]) -> None:
            async for message in client.messages:
                topic = str(message.topic)
                store = status_store(topic)
                if store is not None:
                    self._status(store, message.payload, bool(message.retain))
                    continue
                queue.put(queue_key(topic), (time.perf_counter(), message))

        async with asyncio.TaskGroup() as tg:
            tg.create_task(publish_acks(tg), name="mqtt-acks")
            queue: FairQueue[tuple[float, aiomqtt.Message]] = FairQueue()
            self.metrics.mqtt_queued.set_function(queue.__len__)
            tg.create_task(receive(queue), name="mqtt-receive")
            while True:
                _, (received_at, message) = await queue.get()
                props = message.properties
                content_type = getattr(props, "ContentType", "") if props is not None else ""
                payload = message.payload
                data = payload if isinstance(payload, bytes) else str(payload).encode()
                try:
                    done = await self.ingest(str(message.topic), data, content_type)
                except (Unavailable, Fenced) as exc:
                    # Redis is down (or no longer ours): no ack; the agent resends after its
                    # ack timeout.
                    log.warning("mqtt: message not applied: %s", exc)
                    continue
                if done is not None:
                    done.received_at = received_at  # the latency includes the time queued
                    await acks.put(done)
                # Nothing above suspends when a message is queued and the positions are
                # resident: without this the loop would run through a whole backlog while the
                # flush that makes it durable, the acks, the watch streams and the receiver
                # wait (bench B2).
                await asyncio.sleep(0)

    def _status(self, store_id: str, payload: object, retained: bool = False) -> None:
        """An agent's status (binary AgentStatus; anything else is ignored): its liveness. A
        retained one (sent by the broker as we subscribe) may be old: it counts from its `at`,
        while a live one counts from now (the agent's clock may be off)."""
        if not isinstance(payload, bytes) or not id_ok(store_id):
            return
        try:
            status = pb.AgentStatus.FromString(payload)
        except DecodeError:
            log.warning("store %s: unreadable status message ignored", store_id)
            return
        self.statuses.keep(store_id, status)
        if self.liveness is None:
            return
        self.liveness.status(
            store_id,
            status.state == pb.AgentStatus.ONLINE,
            status.oldest_unacked_age_seconds,
            at=status.at.ToNanoseconds() / 1e9 if retained and status.HasField("at") else None,
        )


def _whole(reason: pb.RejectReason.ValueType, detail: str, source_id: str = "") -> pb.Rejection:
    """The rejection of a whole message (seq 0: it settles no movement)."""
    return pb.Rejection(source_id=source_id, reason=reason, detail=detail)
