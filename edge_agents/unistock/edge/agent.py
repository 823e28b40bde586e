"""The store edge agent: local intake for tills and RFID readers, durable outbox, MQTT uplink.

    tills, readers ──gRPC StoreIntake──▶ StoreAgent ──append (SQLite, synchronous=FULL)──▶ Outbox
                                              │                                         │
                                              └── Sender: MovementBatch, QoS 1 ◀──pending┘
                                                  MovementAck (server, after durable) ──▶ settle

A till's call returns once its movement is durable in the outbox; from there it reaches the
server exactly once (resent until the server's own ack covers it; the server deduplicates).
The agent keeps taking sales while the broker or the server is away, for hours.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import logging
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio
from paho.mqtt.reasoncodes import ReasonCode
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.exc import DBAPIError

from unistock.client.mqtt import broker_args
from unistock.edge.catalogue import Catalogue, CatalogueError
from unistock.edge.counting import (
    CountMarks,
    CountSession,
    ReadOutcome,
    on_agent_clock,
)
from unistock.edge.countstore import CountStore
from unistock.edge.datalock import StoreLock, lock_path
from unistock.edge.intake import Intake, now_timestamp, timestamp_at
from unistock.edge.outbox import Outbox, OutboxError, RejectedMovement
from unistock.edge.readers import (
    DEFAULT_READER_TOPIC,
    PayloadError,
    ReaderListener,
    parse_tag_reads,
    reader_from_topic,
)
from unistock.edge.reconnect import reconnecting, reraise_if_cancelling
from unistock.edge.sender import (
    DEFAULT_MAX_PAYLOAD,
    ConnackLimits,
    PublishRefusals,
    Sender,
    SenderStats,
    ServerLimits,
    reason_label,
    status_topic,
)
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.intake.v1 import intake_pb2_grpc as ipb_grpc
from unistock.v1 import inventory_pb2 as pb

log = logging.getLogger(__name__)


class AgentStartError(RuntimeError):
    """The agent cannot start because of one setting.

    ``setting`` is the :class:`AgentSettings` field at fault (``intake_port``: the CLI names
    it ``--intake-port``), ``value`` its value, ``problem`` what is wrong, in one line.
    """

    def __init__(self, store_id: str, setting: str, value: object, problem: str) -> None:
        super().__init__(f"store {store_id}: {setting.replace('_', ' ')} {value}: {problem}")
        self.setting = setting
        self.value = value
        self.problem = problem


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _cannot_bind(host: str, port: int) -> str | None:
    """Why no address of ``host`` can be bound on ``port`` (a TCP listener), or ``None``.

    Asked before grpc binds the intake: grpc only says "Failed to bind" (and prints its own
    error on stderr). Like grpc, SO_REUSEADDR: a port with connections in TIME_WAIT is free.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        return f"cannot resolve {host!r}: {e.strerror or e}"
    problem = None
    for family, type_, proto, _, addr in infos:
        with socket.socket(family, type_, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(addr)
            except OSError as e:
                problem = problem or str(e.strerror or e)
                continue
        return None
    return problem


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """What one store's agent needs."""

    store_id: str
    mqtt_url: str
    data_dir: Path = Path("var/agent")
    location_id: str = ""  # default: the store id
    source_id: str = ""  # default: agent-<store id>
    intake_host: str = "127.0.0.1"
    intake_port: int = 50061
    metrics_port: int = 9465
    catalogue: Path | None = None
    batch_size: int = 100
    window: int = 8
    ack_timeout: float = 10.0
    status_interval: float = 10.0
    #: Largest MovementBatch payload to publish (less if the broker's CONNACK says so).
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    #: The store's reader broker (RFID tag reads over MQTT); empty: no MQTT readers.
    reader_mqtt_url: str = ""
    #: Topic filters readers publish tag reads on; ``{store_id}`` is replaced.
    reader_topics: tuple[str, ...] = (DEFAULT_READER_TOPIC,)
    #: reader id -> location it reads; readers not listed read the store's location.
    reader_locations: Mapping[str, str] = field(default_factory=dict)
    #: How long StopCount waits for the reader broker round trip (ReaderListener.sync).
    reader_sync_timeout: float = 5.0

    @property
    def location(self) -> str:
        """The store's default location."""
        return self.location_id or self.store_id

    @property
    def source(self) -> str:
        """The agent's movement source id."""
        return self.source_id or f"agent-{self.store_id}"

    def reader_location(self, reader_id: str) -> str:
        """The location a reader's tag reads count for."""
        return self.reader_locations.get(reader_id) or self.location


class AgentMetrics:
    """The agent's own /metrics."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.depth = Gauge("unistock_agent_outbox_depth", "Movements not yet acked.", registry=r)
        self.oldest = Gauge(
            "unistock_agent_oldest_unacked_age_seconds",
            "Age of the oldest movement not yet acknowledged by the server.",
            registry=r,
        )
        self.recorded = Counter(
            "unistock_agent_movements_recorded_total", "Movements taken in.", ["type"], registry=r
        )
        self.acked = Counter(
            "unistock_agent_movements_acked_total", "Movements the server acknowledged.", registry=r
        )
        self.connected = Gauge(
            "unistock_agent_connected", "1 while connected to the broker.", registry=r
        )
        self.reader_connected = Gauge(
            "unistock_agent_reader_broker_connected",
            "1 while connected to the reader broker (MQTT tag reads).",
            registry=r,
        )
        self.publish_refused = Counter(
            "unistock_agent_publish_refused_total",
            "Publishes the broker refused (MQTT 5 PUBACK reason >= 128), by reason and topic "
            "(movements, status).",
            ["reason", "topic"],
            registry=r,
        )
        self.device_clock_offset = Gauge(
            "unistock_agent_device_clock_offset_seconds",
            "Agent clock minus a till's (device's) clock, seen on its last request with sent_at.",
            ["device"],
            registry=r,
        )
        self.rejections_unresolved = Gauge(
            "unistock_agent_rejections_unresolved",
            "Movements the server rejected (after the till got its receipt) that store staff "
            "have not resolved yet (StoreIntake.ResolveRejectedMovement).",
            registry=r,
        )
        self.tag_reads = Counter(
            "unistock_agent_tag_reads_total",
            "RFID tag reads received (gRPC or MQTT), by outcome; a read fed to two running "
            "sessions of its location counts twice.",
            ["outcome"],
            registry=r,
        )


def _by_label(name: str, doc: str, label: str, counts: Mapping[str, int]) -> Metric:
    """A counter family with one sample per label value of counts."""
    family = CounterMetricFamily(name, doc, labels=[label])
    for value, n in sorted(counts.items()):
        family.add_metric([value], n)
    return family


class _SendCollector(Collector):
    """The sender's counters (cumulative over connections) as agent metrics: the send rate is
    ``rate(unistock_agent_movements_published_total[1m])``."""

    def __init__(
        self, stats: SenderStats, limits: ServerLimits, in_flight: Callable[[], int]
    ) -> None:
        self.stats = stats
        self.limits = limits
        self.in_flight = in_flight

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        yield CounterMetricFamily(
            "unistock_agent_movements_published",
            "Movements published to the broker (resends included).",
            value=s.movements_published,
        )
        yield CounterMetricFamily(
            "unistock_agent_batches_published",
            "MovementBatch messages published (resends included).",
            value=s.batches_published,
        )
        resends = CounterMetricFamily(
            "unistock_agent_resends",
            "Windows sent again: after ack_timeout without progress (timeout), or at once when "
            "an ack showed that the server lacks an earlier batch (gap).",
            labels=["trigger"],
        )
        resends.add_metric(["timeout"], s.resends)
        resends.add_metric(["gap"], s.fast_resends)
        yield resends
        yield _by_label(
            "unistock_agent_movements_rejected",
            "Movements the server rejected (final: kept in the outbox's rejected table), by "
            "reason.",
            "reason",
            s.reject_reasons,
        )
        yield _by_label(
            "unistock_agent_notices",
            "Notices the server sent about applied movements (PICKUP_MISMATCH: a sale named a "
            "reservation that holds nothing of its SKU here; it was applied as a plain sale), by "
            "kind.",
            "kind",
            s.notices,
        )
        yield GaugeMetricFamily(
            "unistock_agent_batches_in_flight",
            "Batches published and not yet acknowledged by the server.",
            value=self.in_flight(),
        )
        limits = self.limits
        yield CounterMetricFamily(
            "unistock_agent_batches_too_large",
            "Batches the server refused whole as too large (BATCH_TOO_LARGE); each lowers the "
            "batch limits below to the server's and resends the window re-split.",
            value=limits.refusals,
        )
        yield GaugeMetricFamily(
            "unistock_agent_server_batch_max_movements",
            "Most movements per batch the server takes, as the agent knows it (10,000 until the "
            "server refuses a batch and says otherwise).",
            value=limits.max_movements,
        )
        if limits.max_payload_bytes is not None:
            yield GaugeMetricFamily(
                "unistock_agent_server_batch_max_payload_bytes",
                "Largest batch payload the server takes, learnt from its BATCH_TOO_LARGE refusal.",
                value=limits.max_payload_bytes,
            )


def _mqtt_client(settings: AgentSettings, will: aiomqtt.Will) -> aiomqtt.Client:
    return aiomqtt.Client(
        **broker_args(settings.mqtt_url),
        identifier=f"unistock-agent-{settings.store_id}",
        will=will,
    )


#: Seconds between two writes of the counted EPCs buffered in the count store.
COUNT_FLUSH_INTERVAL = 0.5


@dataclass
class _Counts:
    running: dict[str, CountSession] = field(default_factory=dict)
    #: count_id -> the running session's key in the count store.
    keys: dict[str, int] = field(default_factory=dict)
    #: What the COUNTs in the stream covered: the count a late movement is marked with.
    marks: CountMarks = field(default_factory=CountMarks)
    #: (key, stopped_at, session) of sessions found stopping at start: their COUNTs are
    #: appended (again) before the intake opens.
    unfinished: list[tuple[int, float, CountSession]] = field(default_factory=list)


class StoreAgent:
    """One store's agent. Use as an async context manager; `run()` until cancelled."""

    def __init__(self, settings: AgentSettings) -> None:
        """Lock the store's data directory, open its outbox, count store and catalogue.

        Raises:
            AgentAlreadyRunning: another agent holds the store's data directory.
            AgentStartError: a setting that cannot be used (the data directory, the catalogue,
                a source id that is not the outbox's).
        """
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            # Before the outbox and the count store are opened: each has one writer, and a second
            # agent on the directory is refused here (AgentAlreadyRunning, naming the holder).
            self._store_lock = StoreLock(lock_path(settings.data_dir, settings.store_id))
            self._store_lock.acquire()
        except OSError as e:
            raise self._start_error(settings, "data_dir", settings.data_dir, e) from None
        try:
            self._open(settings)
        except BaseException:
            self._store_lock.release()
            raise

    @staticmethod
    def _start_error(
        settings: AgentSettings, setting: str, value: object, e: BaseException
    ) -> AgentStartError:
        """An error opening or reading what ``setting`` names, as an AgentStartError."""
        if isinstance(e, OSError):
            named = e.filename is not None and str(e.filename) != str(value)
            problem = f"{e.strerror or e}" + (f": {e.filename}" if named else "")
        elif isinstance(e, CatalogueError):
            problem = f"line {e.line}: {e.problem}"
        elif isinstance(e, DBAPIError):
            problem = f"cannot open the database: {e.orig}"
        elif isinstance(e, UnicodeDecodeError):
            problem = f"not UTF-8 text ({e})"
        else:
            problem = str(e)
        return AgentStartError(settings.store_id, setting, value, problem)

    def _open(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.metrics = AgentMetrics()
        self.send_stats = SenderStats()
        #: The server's batch limits, learnt once for the life of the process.
        self.server_limits = ServerLimits()
        self.metrics.registry.register(
            _SendCollector(
                self.send_stats,
                self.server_limits,
                lambda: self.sender.in_flight if self.sender else 0,
            )
        )
        try:
            self.outbox = Outbox(
                settings.data_dir / f"outbox-{settings.store_id}.sqlite",
                settings.source,
                incarnation=True,
            )
        except (OutboxError, ValueError) as e:  # another source's outbox, a source id too long
            raise self._start_error(settings, "source_id", settings.source, e) from None
        except (OSError, DBAPIError) as e:
            raise self._start_error(settings, "data_dir", settings.data_dir, e) from None
        # Read at scrape time: values set on record/ack froze while nothing was acked.
        self.metrics.depth.set_function(self.outbox.depth)
        self.metrics.oldest.set_function(lambda: self.outbox.oldest_unacked_age() or 0.0)
        self.metrics.rejections_unresolved.set_function(lambda: self.outbox.unresolved()[0])
        # Set (then replaced by a fresh one) whenever a rejection is recorded or resolved.
        self._rejections_event = asyncio.Event()
        try:
            self.catalogue = (
                Catalogue.from_csv(settings.catalogue) if settings.catalogue else Catalogue({})
            )
        except (OSError, CatalogueError, ValueError) as e:  # UnicodeDecodeError too
            self.outbox.close()
            raise self._start_error(settings, "catalogue", settings.catalogue, e) from None
        self.sender: Sender | None = None
        self.connected = asyncio.Event()
        self.intake_port = 0
        self.metrics_port = 0
        try:
            self.count_store = CountStore(settings.data_dir / f"counts-{settings.store_id}.sqlite")
        except (OSError, DBAPIError) as e:
            self.outbox.close()
            raise self._start_error(settings, "data_dir", settings.data_dir, e) from None
        self._counts = self._restore_counts()
        self._count_flusher: asyncio.Task[None] | None = None
        self._grpc: aio.Server | None = None
        self._metrics_http: Any = None
        self._lock = asyncio.Lock()  # appends are serialised: seq order = arrival order
        self._drained = asyncio.Event()  # set while the outbox is empty
        self.readers: ReaderListener | None = None
        if settings.reader_mqtt_url:
            self.readers = ReaderListener(
                settings.reader_mqtt_url,
                [t.replace("{store_id}", settings.store_id) for t in settings.reader_topics],
                identifier=f"unistock-agent-{settings.store_id}-readers",
                sync_topic=f"unistock/v1/stores/{settings.store_id}/agent/reader-sync",
                on_message=self._reader_message,
            )
        self._reader_warned_at = -1e9  # loop time of the last unparseable-payload warning
        self._skewed_devices: set[str] = set()  # devices warned about for their clock

    async def __aenter__(self) -> StoreAgent:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)  # the lock, the files, what did start
            raise
        return self

    async def _start(self) -> None:
        s = self.settings
        await self._finish_stopping()
        # grpc sets SO_REUSEPORT by default: a second process would bind the same port and
        # take half of the tills' calls without a word.
        self._grpc = aio.server(options=[("grpc.so_reuseport", 0)])
        ipb_grpc.add_StoreIntakeServicer_to_server(Intake(self), self._grpc)
        intake = _host_port(s.intake_host, s.intake_port)
        problem = _cannot_bind(s.intake_host, s.intake_port) if s.intake_port else None
        try:
            if problem is None:
                self.intake_port = self._grpc.add_insecure_port(intake)
        except RuntimeError:  # taken in between; grpc says no more than "Failed to bind"
            problem = "another process has the port, or the host is not this machine's"
        if problem is not None:
            raise AgentStartError(
                s.store_id, "intake_port", s.intake_port, f"cannot listen on {intake}: {problem}"
            )
        await self._grpc.start()
        if s.metrics_port:
            try:
                self._metrics_http, _ = start_http_server(
                    s.metrics_port, addr=s.intake_host, registry=self.metrics.registry
                )
            except OSError as e:
                raise AgentStartError(
                    s.store_id,
                    "metrics_port",
                    s.metrics_port,
                    f"cannot serve /metrics on {_host_port(s.intake_host, s.metrics_port)}: "
                    f"{e.strerror or e} (another process has the port?)",
                ) from None
            self.metrics_port = self._metrics_http.server_port
        self._check_drained()
        self._count_flusher = asyncio.create_task(self._flush_counts(), name="agent-count-flush")
        log.info("store %s: intake on %s", s.store_id, _host_port(s.intake_host, self.intake_port))
        if self.metrics_port:
            log.info(
                "store %s: metrics on %s",
                s.store_id,
                _host_port(s.intake_host, self.metrics_port),
            )

    async def __aexit__(self, *exc: object) -> None:
        if self._grpc is not None:
            await self._grpc.stop(2)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if self._count_flusher is not None:
            self._count_flusher.cancel()
            await asyncio.gather(self._count_flusher, return_exceptions=True)
        await asyncio.to_thread(self.count_store.flush)
        self.count_store.close()
        self.outbox.close()
        self._store_lock.release()

    # -- intake ------------------------------------------------------------------------------

    async def record(
        self,
        movements: list[pb.Movement],
        before: Callable[[], object] | None = None,
        *,
        device_id: str = "",
    ) -> list[int]:
        """Store movements durably in the outbox (in order) and wake the sender.

        ``before`` (blocking, run in a thread) is done first, in the same turn of the appends'
        lock: what it writes is durable before the movements, and before anything appended after.
        ``device_id`` (the till or device that sent them) is kept with them for their rejection.
        """
        for m in movements:
            self._complete(m)
        async with self._lock:
            if before is not None:
                await asyncio.to_thread(before)
            seqs = await asyncio.to_thread(
                functools.partial(self.outbox.append, movements, device_id=device_id)
            )
        self._recorded(movements)
        return seqs

    async def record_once(
        self,
        m: pb.Movement,
        request_id: str,
        before: Callable[[], object] | None = None,
        *,
        device_id: str = "",
    ) -> tuple[int, bool]:
        """:meth:`record` one movement under a till's idempotency key (``Outbox.append_once``).

        Returns:
            ``(seq, appended)``; ``appended`` is ``False`` when ``request_id`` was recorded
            before: its seq is returned and nothing is appended.

        Raises:
            RequestConflict: ``request_id`` was recorded for another movement.
        """
        self._complete(m)
        async with self._lock:
            if before is not None:
                await asyncio.to_thread(before)
            seq, appended = await asyncio.to_thread(
                functools.partial(self.outbox.append_once, m, request_id, device_id=device_id)
            )
        if appended:
            self._recorded([m])
        return seq, appended

    def _complete(self, m: pb.Movement) -> None:
        """Fill in what the agent decides: occurred_at, location, the count it precedes."""
        if not m.HasField("occurred_at"):
            m.occurred_at.CopyFrom(now_timestamp())
        if not m.location_id:
            m.location_id = self.settings.location
        if m.type != pb.COUNT:
            m.count_id = self._preceded_count(m)

    def _recorded(self, movements: list[pb.Movement]) -> None:
        for m in movements:
            self.metrics.recorded.labels(pb.MovementType.Name(m.type)).inc()
        self._drained.clear()
        if self.sender is not None:
            self.sender.notify()
        self._check_drained()

    async def wait_drained(self) -> None:
        """Until the server has acknowledged everything in the outbox."""
        if self.outbox.depth() == 0:
            return
        await self._drained.wait()

    def to_agent_clock(self, m: pb.Movement, sent_at: Timestamp | None, device: str) -> None:
        """Put a till's ``occurred_at`` on the agent's clock (:func:`on_agent_clock`).

        Call it as the request arrives, before :meth:`record`: a movement without
        ``occurred_at`` is stamped with the agent's clock there anyway.
        """
        if not m.HasField("occurred_at"):
            return
        received = datetime.datetime.now(datetime.UTC)
        sent = sent_at.ToDatetime(tzinfo=datetime.UTC) if sent_at is not None else None
        occurred = on_agent_clock(m.occurred_at.ToDatetime(tzinfo=datetime.UTC), received, sent)
        m.occurred_at.FromDatetime(occurred)
        if sent is not None:
            offset = (received - sent).total_seconds()
            self.metrics.device_clock_offset.labels(device or "-").set(offset)
            if abs(offset) > 300 and device not in self._skewed_devices:
                self._skewed_devices.add(device)
                log.warning(
                    "device %r: its clock is %+.0f s off the agent's; its times are corrected "
                    "by its sent_at",
                    device,
                    -offset,
                )

    def _preceded_count(self, m: pb.Movement) -> str:
        # A movement that happened before a count of its SKU at its location, and reaches us
        # after that count was emitted (a till that was offline from the agent), is marked with
        # the latest such count: the server then treats it as a correction of that count's
        # variance, not as a second change of on_hand (domain invariant 7, CountMarks). A
        # count_id the device set is replaced: only the agent knows the counts of its stream.
        occurred = m.occurred_at.ToDatetime(tzinfo=datetime.UTC)
        return self._counts.marks.mark(m.sku, m.location_id, occurred)

    def _check_drained(self) -> None:
        if self.outbox.depth() == 0:
            self._drained.set()

    def status(self, state: int) -> pb.AgentStatus:
        """The status message to publish."""
        unresolved, last_rejected_at = self.outbox.unresolved()
        status = pb.AgentStatus(
            store_id=self.settings.store_id,
            source_id=self.outbox.source_id,
            state=state,  # type: ignore[arg-type]
            outbox_depth=self.outbox.depth(),
            last_acked_seq=self.outbox.last_acked,
            oldest_unacked_age_seconds=self.outbox.oldest_unacked_age() or 0.0,
            at=now_timestamp(),
            rejected_unresolved=unresolved,
        )
        if last_rejected_at is not None:
            status.last_rejected_at.CopyFrom(timestamp_at(last_rejected_at))
        return status

    # -- rejections --------------------------------------------------------------------------

    def rejections_changed(self) -> asyncio.Event:
        """An event set the next time a rejection is recorded or resolved.

        Take it *before* reading the outbox: what changes after the read then sets it.
        """
        return self._rejections_event

    def _rejections_recorded(self) -> None:
        """Wake the watches and the status publisher: the rejected table changed."""
        event, self._rejections_event = self._rejections_event, asyncio.Event()
        event.set()

    async def resolve(self, seq: int, by: str, note: str) -> RejectedMovement | None:
        """Mark the rejection of ``seq`` handled (``Outbox.resolve``; idempotent).

        The status is published again at once (``rejected_unresolved``).

        Returns:
            The rejection as resolved, or ``None`` if ``seq`` is not a rejected movement.
        """
        rejection = await asyncio.to_thread(self.outbox.resolve, seq, by, note)
        if rejection is not None:
            self._rejections_recorded()
        return rejection

    # -- uplink ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Uplink, and the reader broker if configured, each reconnecting with backoff.

        Until cancelled.
        """
        s = self.settings
        uplink = reconnecting(self._uplink_session, f"store {s.store_id}")
        if self.readers is None:
            await uplink
            return
        readers = reconnecting(self._reader_session, f"store {s.store_id}: reader broker")
        async with asyncio.TaskGroup() as tg:
            tg.create_task(uplink, name="agent-uplink")
            tg.create_task(readers, name="agent-readers")

    async def _uplink_session(self, on_connected: Callable[[], None]) -> None:
        """One uplink connection: send, settle acks, publish status, until it fails."""
        s = self.settings
        topic = status_topic(s.store_id)
        will = aiomqtt.Will(
            topic, self.status(pb.AgentStatus.OFFLINE).SerializeToString(), qos=1, retain=True
        )
        try:
            client = _mqtt_client(s, will)
            limits = ConnackLimits(client)  # before connecting: it reads the CONNACK
            async with client:
                reraise_if_cancelling()
                refusals = PublishRefusals(client, self._publish_refused)
                sender = Sender(
                    self.outbox,
                    client,
                    s.store_id,
                    batch_size=s.batch_size,
                    window=s.window,
                    ack_timeout=s.ack_timeout,
                    refusals=refusals,
                    stats=self.send_stats,
                    max_payload_bytes=s.max_payload_bytes,
                    broker_limits=limits,
                    server_limits=self.server_limits,
                    on_rejected=self._rejections_recorded,
                )
                self.sender = sender
                self.connected.set()
                self.metrics.connected.set(1)
                on_connected()
                try:
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(sender.run(), name="agent-sender")
                        tg.create_task(
                            self._publish_status(client, topic, refusals), name="agent-status"
                        )
                        async for message in client.messages:
                            if message.topic.matches(sender.acks_topic):
                                before = self.outbox.last_acked
                                await sender.handle_ack(message.payload)
                                self.metrics.acked.inc(max(0, self.outbox.last_acked - before))
                                self._check_drained()
                except BaseException:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():  # a stop, not a lost connection
                        await self._say_offline(client, topic)
                    raise
        finally:
            self.sender = None
            self.connected.clear()
            self.metrics.connected.set(0)

    async def _reader_session(self, on_connected: Callable[[], None]) -> None:
        assert self.readers is not None

        def connected() -> None:
            self.metrics.reader_connected.set(1)
            on_connected()

        try:
            await self.readers.session(connected)
        finally:
            self.metrics.reader_connected.set(0)

    def _publish_refused(self, topic: str, reason: ReasonCode) -> None:
        self.metrics.publish_refused.labels(reason_label(reason), topic.rsplit("/", 1)[-1]).inc()

    async def _say_offline(self, client: aiomqtt.Client, topic: str) -> None:
        """On a clean stop, leave OFFLINE retained before disconnecting.

        The broker discards the last will on a clean DISCONNECT: without this, a stopped
        agent's retained status would say ONLINE for ever. Best effort, within 2 s: a broker
        that is gone by now cannot be told anything (its copy of the will covers that case).
        """
        try:
            await client.publish(
                topic,
                self.status(pb.AgentStatus.OFFLINE).SerializeToString(),
                qos=1,
                retain=True,
                timeout=2,
            )
        except (aiomqtt.MqttError, OSError) as e:
            log.warning(
                "store %s: could not publish the OFFLINE status: %s", self.settings.store_id, e
            )

    async def _publish_status(
        self, client: aiomqtt.Client, topic: str, refusals: PublishRefusals
    ) -> None:
        """Publish the status every ``status_interval``, and at once when a rejection is
        recorded or resolved (so that ``rejected_unresolved`` is current)."""
        while True:
            changed = self.rejections_changed()
            await client.publish(
                topic, self.status(pb.AgentStatus.ONLINE).SerializeToString(), qos=1, retain=True
            )
            reraise_if_cancelling()  # else a stop would wait for this loop for ever
            reason = refusals.take(topic)
            if reason is not None:  # once per status interval at most
                log.error(
                    "the broker refused the agent status on %s: reason %d %s",
                    topic,
                    reason.value,
                    reason.getName(),
                )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.status_interval):
                    await changed.wait()

    # -- counts ------------------------------------------------------------------------------

    def _restore_counts(self) -> _Counts:
        """The count store again: running sessions go on, what the COUNTs covered marks sales."""
        counts = _Counts(marks=CountMarks(self.count_store.covers()))
        epcs = sold = stopped = 0
        for stored in self.count_store.load():
            session = stored.session(self.catalogue)
            if stored.stopped:
                stopped += 1
                if stored.stopping:
                    stopped_at = stored.stopped_at or time.time()
                    counts.unfinished.append((stored.key, stopped_at, session))
                continue
            counts.running[stored.count_id] = session
            counts.keys[stored.count_id] = stored.key
            epcs += len(stored.counted)
            sold += len(stored.sold)
        log.info(
            "store %s: restored %d running count sessions (%d counted EPCs, %d sold EPCs) and "
            "%d stopped ones",
            self.settings.store_id,
            len(counts.running),
            epcs,
            sold,
            stopped,
        )
        return counts

    async def _flush_counts(self) -> None:
        """Write the counted EPCs to the count store every COUNT_FLUSH_INTERVAL, until cancelled."""
        while True:
            await asyncio.sleep(COUNT_FLUSH_INTERVAL)
            try:
                await asyncio.to_thread(self.count_store.flush)
            except Exception:  # a full disk must not stop the counts; retried next interval
                log.exception("store %s: writing counted EPCs failed", self.settings.store_id)

    async def start_count(self, req: ipb.StartCountRequest) -> None:
        """Open an RFID count session (durable once this returns).

        A ``count_id`` already running is started again: the new session replaces it.
        """
        location = req.location_id or self.settings.location
        scope = frozenset(req.skus) or None
        started_at = datetime.datetime.now(datetime.UTC)
        session = CountSession(
            req.count_id, location, scope, started_at, catalogue=self.catalogue
        )  # first: a bad location raises before anything is stored
        key = await asyncio.to_thread(
            self.count_store.start, req.count_id, location, scope, started_at
        )
        self._counts.running[req.count_id] = session
        self._counts.keys[req.count_id] = key

    async def stop_count(self, count_id: str) -> list[pb.Movement]:
        """Close a session: one COUNT per SKU in scope, appended at this point of the stream.

        With MQTT readers, first waits (up to ``reader_sync_timeout``) until every tag read the
        reader broker accepted before this call has been fed to the session
        (:meth:`ReaderListener.sync`); reads the broker accepts after that are late.

        The session is marked stopping in the count store (its counted EPCs written) just before
        the COUNTs are appended, and stopped after: an agent that dies in between appends the
        same COUNTs again when it starts (the server ignores a count_id it already applied),
        and marks late sales against the count meanwhile.

        Raises:
            KeyError: no running session ``count_id`` (also when a concurrent stop won).
        """
        if count_id not in self._counts.running:
            raise KeyError(count_id)
        if self.readers is not None and not await self.readers.sync(
            self.settings.reader_sync_timeout
        ):
            log.warning(
                "count %s: reader broker %s; reads it still holds will be late for the count",
                count_id,
                "did not answer in time" if self.readers.connected.is_set() else "not connected",
            )
        session = self._counts.running.pop(count_id)
        key = self._counts.keys.pop(count_id)
        session.stop()
        # Late sales of the SKUs it counted that happened before it are marked from now on.
        self._counts.marks.add(session.covers())
        return await self._append_counts(key, time.time(), session)

    async def _append_counts(
        self, key: int, stopped_at: float, session: CountSession
    ) -> list[pb.Movement]:
        """Append a stopped session's COUNTs, then mark it stopped in the count store.

        The session is marked *stopping* (with its counted EPCs written) in the same turn of
        the appends' lock, before the COUNTs: an agent that dies before the final mark
        appends them again at start (_finish_stopping); the server drops a count_id it already
        applied, and the session marks late sales all along.
        """
        counts = [
            pb.Movement(
                sku=r.sku,
                location_id=session.location_id,
                type=pb.COUNT,
                quantity=r.quantity,
                count_id=session.count_id,
                epc=sorted(r.distinct_epcs),
            )
            for r in session.stop()
        ]
        if counts:
            seqs = await self.record(
                counts,
                before=functools.partial(
                    self.count_store.stopping, key, stopped_at, session.covers()
                ),
            )
            for m, seq in zip(counts, seqs, strict=True):
                m.seq = seq
                m.source_id = self.outbox.source_id
        await asyncio.to_thread(self.count_store.stopped, key, stopped_at)
        return counts

    async def _finish_stopping(self) -> None:
        """Complete the stops a crash interrupted (sessions found stopping at start)."""
        unfinished, self._counts.unfinished = self._counts.unfinished, []
        for key, stopped_at, session in unfinished:
            counts = await self._append_counts(key, stopped_at, session)
            log.warning(
                "store %s: count %s was being stopped when the agent stopped: its %d COUNTs "
                "appended again (the server ignores a count it already applied)",
                self.settings.store_id,
                session.count_id,
                len(counts),
            )

    # -- tag reads ---------------------------------------------------------------------------

    def feed_read(
        self, session: CountSession, epc: str, reader_id: str, antenna: int, at: datetime.datetime
    ) -> ReadOutcome:
        """One tag read into one session, counted in ``unistock_agent_tag_reads_total``."""
        outcome = session.read(epc, reader_id, antenna, at)
        self.metrics.tag_reads.labels(outcome.value).inc()
        key = self._counts.keys.get(session.count_id)
        sku = session.counted_sku(epc)
        if outcome is ReadOutcome.COUNTED and key is not None and sku is not None:
            self.count_store.counted(key, epc, sku)  # buffered: written within 0.5 s
        return outcome

    def _reader_message(self, topic: str, payload: bytes) -> None:
        """A message from the reader broker: its reads go to the sessions of the reader's location."""
        assert self.readers is not None
        topic_reader = topic
        for topic_filter in self.readers.topic_filters:
            if aiomqtt.Topic(topic).matches(topic_filter):
                topic_reader = reader_from_topic(topic, topic_filter)
                break
        now = datetime.datetime.now(datetime.UTC)
        try:
            reads, bad = parse_tag_reads(payload, topic_reader, now)
        except PayloadError as e:
            reads, bad = [], 1
            self._reader_payload_warning(topic, str(e))
        if bad:
            self.metrics.tag_reads.labels("unparseable").inc(bad)
        for read in reads:
            location = self.settings.reader_location(read.reader_id)
            sessions = [s for s in self._counts.running.values() if s.location_id == location]
            if not sessions:
                self.metrics.tag_reads.labels("no_session").inc()
            for session in sessions:
                self.feed_read(session, read.epc, read.reader_id, read.antenna, read.read_at)

    def _reader_payload_warning(self, topic: str, error: str) -> None:
        # A misconfigured reader sends many bad messages a second: warn once a minute, the
        # rest at debug; unistock_agent_tag_reads_total{outcome="unparseable"} has them all.
        now = asyncio.get_running_loop().time()
        if now - self._reader_warned_at >= 60:
            self._reader_warned_at = now
            log.warning("ignoring a reader message on %s: %s (more at debug)", topic, error)
        else:
            log.debug("ignoring a reader message on %s: %s", topic, error)


async def serve(settings: AgentSettings) -> None:
    """Run one agent until cancelled."""
    async with StoreAgent(settings) as agent:
        with contextlib.suppress(asyncio.CancelledError):
            await agent.run()
