"""`unistock-ledger`: the ledger writer as its own process.

It moves the change feed (Redis streams `us:{p}:feed`, written by the server's group commit)
into the SQL ledger (`ledger_entries`, the server's database: SQLite in the data directory by
default, PostgreSQL by URL), exactly once, until SIGTERM/SIGINT. It shares nothing with the
server but Redis and the database, so it never takes the server's CPU (docs/performance.md, B11), and it can
be stopped, killed or restarted at any time: it resumes after its cursors, and the feed keeps
every entry it has not written (up to the feed's cap, --feed-max-entries of the server).

One writer at a time writes (a lease in Redis): it prints `unistock-ledger ready: ...` once it
holds the lease, or `unistock-ledger standing by: <host>:<pid> holds the lease ...` while
another writer on the same feed does (and `ready` when it takes over, e.g. that one stopped).

Exit codes: 0 stopped by a signal, 1 could not start (Redis or SQL unusable), 2 bad flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from prometheus_client import start_http_server
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError

from unistock.server.actors.ledger import CONSUMER, LedgerWriter, writer_lease
from unistock.server.app.settings import (
    build_parser,
    check_common,
    redact_url,
    run_console,
    values_of,
)
from unistock.server.domain import Unavailable
from unistock.server.metrics import LedgerMetrics
from unistock.server.persistence.feed import FeedReader
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.ledger import LedgerStore
from unistock.server.persistence.sql import MasterDataStore, default_url

log = logging.getLogger("unistock.ledger")


@dataclass(frozen=True, slots=True)
class LedgerSettings:
    """What the ledger process needs; every field has a flag and an UNISTOCK_* variable (the
    same ones as the server's for what they share)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = ""
    data_dir: pathlib.Path = pathlib.Path("var")
    key_prefix: str = "us"
    ledger_metrics_host: str = "127.0.0.1"
    ledger_metrics_port: int = 9466
    ledger_batch: int = 200
    redis_timeout_s: float = 5.0
    log_level: str = "INFO"
    #: Not a setting: --unregister's action (see main).
    unregister: bool = False

    @classmethod
    def parse(cls, argv: Sequence[str] | None = None) -> LedgerSettings:
        """Settings from flags, falling back to UNISTOCK_<NAME> variables, then defaults."""
        parser = build_parser(
            os.environ,
            cls,
            _HELP,
            prog="unistock-ledger",
            description="Unistock ledger writer: the change feed into the SQL ledger.",
        )

        s = cls(**values_of(cls, parser.parse_args(argv)))
        if not 1 <= s.ledger_batch <= 10_000:
            parser.error(f"--ledger-batch: 1 to 10000, got {s.ledger_batch}")
        check_common(parser, s)
        return s


_HELP = {
    "redis_url": "the server's Redis (the change feed)",
    "database_url": "the server's SQL database (SQLAlchemy URL, e.g. "
    "postgresql+psycopg://user:pass@host/db); empty: the SQLite file unistock.db in --data-dir",
    "data_dir": "the server's data directory (for the default SQLite database)",
    "key_prefix": "prefix of every Redis key (as the server's --key-prefix)",
    "ledger_metrics_host": "address of the Prometheus /metrics endpoint",
    "ledger_metrics_port": "Prometheus /metrics port (0: disabled)",
    "ledger_batch": "feed entries read per partition per round (one SQL transaction a round)",
    "redis_timeout_s": "deadline of one Redis round trip",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "unregister": "instead of writing: stop being one of the feed's durable consumers (the "
    "feed is no longer kept for the ledger; see --feed-consumers of the server) and exit",
}


class StartupError(Exception):
    """The process cannot start (the message names the flag)."""


async def _unregister(client: aioredis.Redis, prefix: str) -> int:
    """--unregister: the ledger is no longer a durable consumer of the feed; exit code."""
    try:
        raw = await client.hget(f"{prefix}:meta", "partitions")
        if raw is None:
            print(f"unistock-ledger: no keyspace {prefix!r} in that Redis: nothing to do")
            return 0
        feed = FeedReader(client, Keyspace(prefix, int(raw)), CONSUMER)
        had = await feed.unregister()
    except (RedisError, OSError, Unavailable) as exc:
        print(f"unistock-ledger: cannot unregister: --redis-url: {exc}", file=sys.stderr)
        return 1
    finally:
        await client.aclose()
    print(
        f"unistock-ledger: {CONSUMER!r} unregistered from {had} partitions: the change feed is "
        "no longer kept for it (start servers with --feed-consumers without it, or the next "
        "start registers it again)"
    )
    return 0


async def _partitions(client: aioredis.Redis, prefix: str, stop: asyncio.Event, url: str) -> int:
    """The keyspace's partition count from us:meta, waiting for a server to create it."""
    warned = False
    while not stop.is_set():
        try:
            raw = await client.hget(f"{prefix}:meta", "partitions")
        except (RedisError, OSError) as exc:
            raise StartupError(f"--redis-url: {exc}") from None
        if raw is not None:
            return int(raw)
        if not warned:
            log.warning(
                "no keyspace %r in Redis at %s yet: waiting for the server to create it",
                prefix,
                redact_url(url),
            )
            warned = True
        await asyncio.sleep(1.0)
    return 0


def _migrated(url: str) -> MasterDataStore:
    """The database with its schema at the newest revision. The server migrates it too as it
    starts: a migration racing the server's is retried (both end at the same revision)."""
    store = MasterDataStore(url)
    for attempt in range(10):
        try:
            store.migrate()
            return store
        except SQLAlchemyError as exc:
            if attempt == 9:
                first = (str(exc).strip().splitlines() or [""])[0]
                raise StartupError(f"--database-url: cannot use it: {first}") from None
            time.sleep(0.5 * (attempt + 1))
    return store


async def serve(settings: LedgerSettings) -> int:
    """Run until a signal; returns the exit code (0 stopped, 1 could not start)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    url = settings.database_url or default_url(settings.data_dir)
    client = aioredis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=settings.redis_timeout_s
    )
    if settings.unregister:
        return await _unregister(client, settings.key_prefix)
    # The port first, like the server: a port in use fails before anything else is done.
    metrics = LedgerMetrics()
    http = None
    if settings.ledger_metrics_port:
        try:
            http, _ = start_http_server(
                settings.ledger_metrics_port,
                addr=settings.ledger_metrics_host,
                registry=metrics.registry,
            )
        except OSError as exc:
            print(
                f"unistock-ledger: cannot start: --ledger-metrics-port: cannot listen on "
                f"{settings.ledger_metrics_host}:{settings.ledger_metrics_port} ({exc})",
                file=sys.stderr,
            )
            await client.aclose()
            return 1
    try:
        partitions = await _partitions(client, settings.key_prefix, stop, settings.redis_url)
        if stop.is_set():
            return 0
        if not settings.database_url:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        sql = await asyncio.to_thread(_migrated, url)
    except (StartupError, OSError) as exc:
        print(f"unistock-ledger: cannot start: {exc}", file=sys.stderr)
        await client.aclose()
        if http is not None:
            http.shutdown()
        return 1
    feed = FeedReader(
        client,
        Keyspace(settings.key_prefix, partitions),
        CONSUMER,
        command_timeout=settings.redis_timeout_s,
    )
    lease = writer_lease(client, feed.keyspace)
    into = sql.engine.url.render_as_string(hide_password=True)

    def lease_changed(holder: str | None) -> None:
        # "ready" only while it writes: a second writer on the same feed says it stands by
        # (and "ready" once it takes over).
        if holder is None:
            print(
                f"unistock-ledger ready: {partitions} partitions of {settings.key_prefix!r} "
                f"into {into}",
                flush=True,
            )
        else:
            print(
                f"unistock-ledger standing by: {holder} holds the lease of "
                f"{settings.key_prefix!r} (another ledger writer; this one writes once it "
                "stops)",
                flush=True,
            )

    writer = LedgerWriter(
        feed,
        LedgerStore(sql.engine),
        metrics,
        batch=settings.ledger_batch,
        lease=lease,
        on_lease=lease_changed,
    )
    task = asyncio.create_task(writer.run(), name="ledger")
    sampler = asyncio.create_task(_sample(feed, metrics), name="feed-retained")
    await stop.wait()
    for t in (task, sampler):
        t.cancel()
    await asyncio.gather(task, sampler, return_exceptions=True)
    with contextlib.suppress(Unavailable):
        await lease.release()  # a standby writer takes over at once
    if http is not None:
        http.shutdown()
    await client.aclose()
    sql.close()
    log.info("stopped")
    return 0


async def _sample(feed: FeedReader, metrics: LedgerMetrics, every: float = 5.0) -> None:
    """unistock_feed_retained_entries every `every` s."""
    while True:
        with contextlib.suppress(Exception):  # Redis down: the writer's rounds report it
            metrics.feed_retained.set(await feed.retained())
        await asyncio.sleep(every)


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    settings = LedgerSettings.parse(argv)
    run_console(settings.log_level, serve(settings))


if __name__ == "__main__":
    main()
