"""The server's lifecycle: start everything in order, serve, stop gracefully (safe twice)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import gc
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc
from grpc import aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server
from sqlalchemy.exc import SQLAlchemyError

from unistock.server.actors import Inventory
from unistock.server.actors.events import EventDeriver
from unistock.server.actors.ledger import CONSUMER as LEDGER_CONSUMER
from unistock.server.actors.ledger import LedgerWriter, writer_lease
from unistock.server.actors.liveness import StoreLiveness
from unistock.server.actors.masterdata import MasterData
from unistock.server.actors.networks import NetworkIndex
from unistock.server.api.admin import SERVICE as ADMIN_SERVICE
from unistock.server.api.admin import AdminService
from unistock.server.api.auth import AuthInterceptor, TokenStore
from unistock.server.api.events import EventHub, EventStreams
from unistock.server.api.ledger import SERVICE as LEDGER_SERVICE
from unistock.server.api.ledger import LedgerService
from unistock.server.api.service import SERVICE, InventoryService
from unistock.server.api.sourcing import network_candidates
from unistock.server.api.status import ServerStatusReport
from unistock.server.api.watch import WatchHub
from unistock.server.app.settings import Settings, redact_url
from unistock.server.domain import Unavailable
from unistock.server.metrics import EventMetrics, Metrics
from unistock.server.mqtt import LocationDirectory, MqttIngestor
from unistock.server.mqtt.events import EventPublisher
from unistock.server.persistence.events import EventLog
from unistock.server.persistence.feed import FeedReader
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.ledger import LedgerStore
from unistock.server.persistence.ledger_queries import LedgerQueries
from unistock.server.persistence.sql import MasterDataStore, default_url
from unistock.server.persistence.store import RedisStore

log = logging.getLogger(__name__)

#: The cyclic garbage collector's thresholds while serving (CPython's default: 700, 10, 10).
#: The young generations as CPython has them (short pauses: ≤ ~4 ms measured), full
#: collections after 1,000 gen-1 collections instead of 10. A full collection walks every
#: tracked object, and CPython's other brake on them (only when the objects promoted since the
#: last one are > 25 % of those it kept) did not hold them back under a stream of writes:
#: bench B8's seeding (218,000 RECEIPTs) ran 4-6 full collections a second, 60-190 ms each,
#: ~45 % of its 12 s; with these none, 5.0-5.8 s. (50,000, 20, 20) did as well for the seeding
#: but made gen-0 pauses 18 ms.
GC_THRESHOLDS = (700, 10, 1000)


class StartupError(RuntimeError):
    """The server cannot start; the message names the setting and what is wrong."""


class State(enum.Enum):
    """Lifecycle of a server object."""

    NEW = "new"
    RUNNING = "running"
    STOPPED = "stopped"


#: A dev token as the server writes it (secrets.token_urlsafe(24): 32 URL-safe characters).
_DEV_TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def load_tokens(settings: Settings, env_tokens: str = "") -> tuple[TokenStore, str | None]:
    """Configured tokens; with none configured, an admin token for dev (returned): the one in
    `<data dir>/dev-token` when an earlier start left it there (readable by its owner only, as
    the server writes it), so that clients holding it go on working across restarts; else a
    new one."""
    tokens = TokenStore()
    if settings.tokens_file is not None:
        tokens.load_file(settings.tokens_file)
    if env_tokens:
        tokens.load_env(env_tokens)
    if len(tokens):
        return tokens, None
    dev = _kept_dev_token(settings.data_dir / "dev-token") or secrets.token_urlsafe(24)
    tokens.add(dev, "admin", "dev")
    return tokens, dev


def _kept_dev_token(path: Path) -> str | None:
    """The dev token an earlier start wrote at path, if it is still private and well-formed."""
    try:
        if path.stat().st_mode & 0o077:  # readable by others: not kept, a new one replaces it
            return None
        token = path.read_text().strip()
    except OSError:
        return None
    return token if _DEV_TOKEN.fullmatch(token) else None


class UnistockServer:
    """Redis store, group commit, actors, gRPC API, metrics and background loops."""

    def __init__(
        self, settings: Settings, tokens: TokenStore, metrics: Metrics | None = None
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.metrics = metrics or Metrics(ledger=bool(settings.ledger_in_process))
        self.state = State.NEW
        self.grpc_port = 0
        self.metrics_port = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._grpc: aio.Server | None = None
        self._metrics_http: Any = None
        self._done = asyncio.Event()
        self._stop_lock = asyncio.Lock()
        self._stopping = False
        #: Background tasks that ended cancelled while running (the server must not go on).
        self._lost: list[str] = []
        #: What start() opened so far, to close again if it fails half way.
        self._opened: list[Callable[[], Awaitable[None]]] = []
        #: Events (None: --events 0), and their MQTT publisher (None: no --mqtt-url either).
        self.events: EventDeriver | None = None
        self.event_hub: EventHub | None = None
        self.event_publisher: EventPublisher | None = None
        #: When this process was created (time.monotonic(); start() resets it): its uptime.
        self.started_monotonic = time.monotonic()

    async def __aenter__(self) -> UnistockServer:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind the ports, connect, take ownership of the partitions, start serving.

        Raises StartupError (a port in use, Redis unreachable, a bad file) with everything
        opened so far closed again. The ports are bound first: a second server started by
        mistake fails there, before it takes the partitions over from the first (fencing it).
        """
        if self.state is not State.NEW:
            raise RuntimeError(f"cannot start a server that is {self.state.value}")
        s = self.settings
        server = self._grpc = aio.server(
            interceptors=[AuthInterceptor(self.tokens)],
            options=[
                ("grpc.max_receive_message_length", 16 * 1024 * 1024),
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
                # One server per port: with SO_REUSEPORT (grpc's default) a second server on
                # the same port starts without a word and clients reach either at random.
                ("grpc.so_reuseport", 0),
            ],
        )
        try:
            await self._bind(server)
            await self._open()
        except BaseException:
            await self._abort_start()
            raise
        await server.start()
        gc.set_threshold(*GC_THRESHOLDS)
        for name in ("", SERVICE):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        self.state = State.RUNNING
        self.started_monotonic = time.monotonic()
        log.info(
            "serving gRPC on %s:%d (%s), metrics on :%d, redis %s",
            s.grpc_host,
            self.grpc_port,
            "TLS" if s.tls_cert else "plaintext",
            self.metrics_port,
            s.redis_url,
        )

    async def _bind(self, server: aio.Server) -> None:
        s = self.settings
        address = f"{s.grpc_host}:{s.grpc_port}"
        try:
            if s.tls_cert and s.tls_key:
                creds = grpc.ssl_server_credentials(
                    [(s.tls_key.read_bytes(), s.tls_cert.read_bytes())]
                )
                self.grpc_port = server.add_secure_port(address, creds)
            else:
                self.grpc_port = server.add_insecure_port(address)
        except OSError as exc:
            raise StartupError(f"--tls-cert/--tls-key: cannot read: {exc}") from None
        except RuntimeError as exc:
            raise StartupError(
                f"--grpc-port: cannot listen on {address} ({exc}); is another "
                "unistock-server running there? (--grpc-port / UNISTOCK_GRPC_PORT chooses "
                "another; clients then need --target / UNISTOCK_TARGET)"
            ) from None
        if s.metrics_port:
            try:
                self._metrics_http, _ = start_http_server(
                    s.metrics_port, addr=s.grpc_host, registry=self.metrics.registry
                )
            except OSError as exc:
                raise StartupError(
                    f"--metrics-port: cannot listen on {s.grpc_host}:{s.metrics_port} ({exc})"
                ) from None
            self.metrics_port = self._metrics_http.server_port

    async def _open(self) -> None:
        s = self.settings
        self.store = RedisStore.from_url(
            s.redis_url,
            Keyspace(s.key_prefix, s.partitions),
            command_timeout=s.redis_timeout_s,
        )
        self.store.feed_max_entries = s.feed_max_entries
        self._opened.append(self.store.close)
        try:
            await self.store.open()
        except Unavailable as exc:
            raise StartupError(
                f"--redis-url: cannot use {redact_url(s.redis_url)}: {exc}"
            ) from None
        except ValueError as exc:
            raise StartupError(f"--partitions: {exc}") from None
        self.commit = GroupCommit(
            self.store,
            self.metrics,
            linger=s.flush_linger_ms / 1000,
            max_positions=s.flush_max_positions,
            retention=s.reservation_retention_s,
        )
        self.inventory = Inventory(
            self.store, self.commit, self.metrics, max_resident=s.max_resident
        )
        self._opened.append(self.inventory.close)
        try:
            await self.inventory.start()
        except Unavailable as exc:
            raise StartupError(
                f"--redis-url: cannot use {redact_url(s.redis_url)}: {exc}"
            ) from None
        if not s.database_url:
            try:
                s.data_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StartupError(f"--data-dir: cannot create {s.data_dir}: {exc}") from None
        database_url = s.database_url or default_url(s.data_dir)
        try:
            self.master = MasterData(MasterDataStore(database_url))
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [""])[0]
            raise StartupError(
                f"--database-url: cannot use {redact_url(database_url)}: {first}"
            ) from None
        self._opened.append(self.master.close)
        try:
            await self.master.start()
        except Unavailable as exc:
            raise StartupError(
                f"--database-url: cannot use {redact_url(database_url)}: {exc}"
            ) from None
        self.inventory.set_safety_source(self.master.safety_stock)
        self.commit.low_stock_threshold = self.master.low_stock_threshold
        self.commit.clock = self.inventory.clock
        # The change feed into the SQL ledger (same database as master data), off the hot path
        # but in this process when asked (it shares its CPU: docs/performance.md, B11).
        self.ledger = LedgerWriter(
            FeedReader(
                self.store.client,
                self.store.keyspace,
                LEDGER_CONSUMER,
                self.store.epochs,
                command_timeout=s.redis_timeout_s,
            ),
            LedgerStore(self.master.store.engine),
            self.metrics.ledger,
            lease=writer_lease(self.store.client, self.store.keyspace),
        )
        # The durable consumers expected (the ledger): the feed is kept for them from now on,
        # even before they first run (else another consumer's trim could pass them by).
        for name in s.consumers:
            try:
                await FeedReader(
                    self.store.client, self.store.keyspace, name, self.store.epochs
                ).register()
            except Unavailable as exc:
                raise StartupError(f"--redis-url: {exc}") from None
        if s.ledger_in_process:
            self._spawn(self.ledger.run(), "ledger")
        self._spawn(self._sample_feed(), "feed-fill")
        self.hub = WatchHub(self.metrics, max_pending=s.watch_max_pending)
        self.commit.listeners.append(self.hub.publish)
        self._spawn(self._run_commit(), "group-commit")
        self._spawn(
            self.inventory.run_expiry(s.expiry_interval_s, s.expiring_soon_s),
            "reservation-expiry",
        )
        self._spawn(self.inventory.run_shipments(), "transfer-shipments")
        self._spawn(self.inventory.run_index_backfill(), "reservation-index-backfill")
        if s.mqtt_url:
            try:
                locations = (
                    LocationDirectory.from_csv(s.locations_file)
                    if s.locations_file
                    else LocationDirectory()
                )
            except (OSError, ValueError) as exc:
                raise StartupError(f"--locations-file: {exc}") from None
            locations.lookup = self.master.store_of
            self.ingestor: MqttIngestor | None = MqttIngestor(
                s.mqtt_url, self.inventory, self.metrics, locations
            )
            self.liveness: StoreLiveness | None = StoreLiveness()
            self.ingestor.liveness = self.liveness
            self.metrics.stores.liveness = self.liveness
            self._spawn(self.ingestor.run(), "mqtt-ingest")
        else:
            self.ingestor = None
            self.liveness = None  # no agents to hear from: no store is ever stale
        if s.idle_passivation_s > 0:
            self._spawn(
                self.inventory.run_idle_passivation(s.idle_passivation_s), "idle-passivation"
            )
        self.network_hub = WatchHub(self.metrics, max_pending=s.watch_max_pending)
        self.networks = NetworkIndex(
            self.store, self.commit, self.master, self.network_hub.publish_entries
        )
        self.networks.liveness = self.liveness
        self._spawn(self.networks.run(), "network-availability")
        self.inventory.sourcer = functools.partial(network_candidates, self.networks)
        self.service = InventoryService(self.inventory, self.hub, self.networks, self.network_hub)
        self.service.reservation_hub.max_pending = s.watch_max_pending
        self._start_events()
        assert self._grpc is not None
        self.admin = AdminService(self.master, self.inventory, self.metrics, self.networks)
        self.admin.status = ServerStatusReport(self)
        # Histories and KPIs, read from the ledger's tables in the master data's database.
        self.ledger_service = LedgerService(LedgerQueries(self.master.store.engine), self.metrics)
        self._grpc.add_generic_rpc_handlers(
            (self.service.handler(), self.admin.handler(), self.ledger_service.handler())
        )
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._grpc)
        reflection.enable_server_reflection(
            (SERVICE, ADMIN_SERVICE, LEDGER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self._grpc,
        )

    async def _abort_start(self) -> None:
        """Close what a failed start() opened."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._grpc is not None:
            # A server that bound its port but never started keeps it bound until it has run:
            # start and stop it (no handler is registered yet, nothing is served).
            if self.grpc_port:
                await self._grpc.start()
            await self._grpc.stop(None)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        for close in reversed(self._opened):
            await close()
        self.state = State.STOPPED

    def _spawn(self, coro: Coroutine[object, object, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if self.state is State.RUNNING and not self._stopping:
                # Nobody stops a background loop but stop(): one that ended cancelled is lost.
                log.critical("background task %s was cancelled; stopping", task.get_name())
                self._lost.append(task.get_name())
                self._done.set()
            return
        exc = task.exception()
        if exc is not None:
            log.critical("background task %s failed: %r; stopping", task.get_name(), exc)
            self._done.set()

    def _start_events(self) -> None:
        """Events (WatchEvents): derived from the change feed in this process (--events 1)."""
        s = self.settings
        if not s.events:
            return
        ledger = self.metrics.ledger.feed_lost if s.ledger_in_process else None
        metrics = EventMetrics(self.metrics.registry, feed_lost=ledger)
        events = EventLog(
            self.store,
            max_per_partition=s.events_max_per_partition,
            retention_s=s.events_retention_s,
        )
        self.events = EventDeriver(self.store, events, metrics)
        self.event_hub = EventHub(metrics, max_pending=s.events_max_pending)
        self.service.events = EventStreams(self.events, self.event_hub, self.master)
        self.commit.listeners.append(self.events.wake)
        self._spawn(self.events.run(), "events")
        if self.ingestor is not None:  # store apps read their events on MQTT
            self.event_publisher = EventPublisher(
                s.mqtt_url, self.events, self.ingestor.locations, self.store, metrics
            )
            self._spawn(self.event_publisher.run(), "mqtt-events")

    async def _run_commit(self) -> None:
        await self.commit.run()

    async def sample_feed(self) -> float:
        """Set unistock_feed_fill_ratio: the fullest partition's feed stream over its cap (1: a
        consumer that far behind starts losing entries). Raises Unavailable."""
        fill = await self.store.feed_fullest() / self.store.feed_max_entries
        self.metrics.feed_fill.set(fill)
        return fill

    async def _sample_feed(self, every: float = 5.0) -> None:
        while True:
            with contextlib.suppress(Unavailable):  # Redis down: the flushes say so
                await self.sample_feed()
            await asyncio.sleep(every)

    async def wait(self) -> None:
        """Until a background task fails (e.g. the partitions were taken over) or stop()."""
        await self._done.wait()

    @property
    def serving(self) -> bool:
        """Running and not stopping, with no background task lost."""
        return self.state is State.RUNNING and not self._stopping and not self.failed

    @property
    def failed(self) -> bool:
        """Whether a background task failed (the process should exit non-zero)."""
        return bool(self._lost) or any(
            t.done() and not t.cancelled() and t.exception() for t in self._tasks
        )

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight ones finish, flush, close. Safe to call twice."""
        async with self._stop_lock:
            self._stopping = True
            if self.state is not State.RUNNING:
                self.state = State.STOPPED
                return
            grace = self.settings.shutdown_grace_s if grace is None else grace
            await self.health.enter_graceful_shutdown()
            self.hub.shutdown()
            self.network_hub.shutdown()
            self.service.reservation_hub.shutdown()
            if self.event_hub is not None:
                self.event_hub.shutdown()
            assert self._grpc is not None
            await self._grpc.stop(grace)
            for task in self._tasks:
                if task.get_name() != "group-commit":
                    task.cancel()
            await self.commit.close(grace)
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.inventory.close()
            await self.store.close()
            if self._metrics_http is not None:
                self._metrics_http.shutdown()
                self._metrics_http.server_close()
            self.state = State.STOPPED
            self._done.set()
            log.info("stopped")
