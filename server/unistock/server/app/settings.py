"""Settings: one typed, frozen object built from flags and UNISTOCK_* environment variables."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import pathlib
import re
import sys
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import sqlalchemy as sa

from unistock.client.config import redact_url as redact_url  # its users import it from here


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server needs to start. Every field has a flag and an env variable."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = ""
    mqtt_url: str = ""
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    metrics_port: int = 9464
    data_dir: pathlib.Path = pathlib.Path("var")
    tokens_file: pathlib.Path | None = None
    locations_file: pathlib.Path | None = None
    tls_cert: pathlib.Path | None = None
    tls_key: pathlib.Path | None = None
    key_prefix: str = "us"
    partitions: int = 64
    flush_linger_ms: float = 2.0
    flush_max_positions: int = 8192
    max_resident: int = 2_000_000
    idle_passivation_s: float = 900.0
    ledger_in_process: int = 0
    feed_max_entries: int = 100_000
    feed_consumers: str = "ledger"
    expiry_interval_s: float = 1.0
    expiring_soon_s: float = 300.0
    reservation_retention_s: float = 7 * 86400
    watch_max_pending: int = 100_000
    events: int = 1
    events_retention_s: float = 86400.0
    events_max_per_partition: int = 1_000_000
    events_max_pending: int = 10_000
    redis_timeout_s: float = 5.0
    shutdown_grace_s: float = 5.0
    log_level: str = "INFO"

    @classmethod
    def parse(
        cls, argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Settings from flags, falling back to UNISTOCK_<NAME> variables, then defaults."""
        env = os.environ if env is None else env
        parser = build_parser(env)
        ns = parser.parse_args(argv)
        s = cls(**values_of(cls, ns))
        if s.events not in (0, 1):
            parser.error(f"--events: 0 or 1, got {s.events}")
        if s.ledger_in_process not in (0, 1):
            parser.error(f"--ledger-in-process: 0 or 1, got {s.ledger_in_process}")
        if bool(s.tls_cert) != bool(s.tls_key):
            parser.error("--tls-cert and --tls-key go together")
        if s.partitions < 1:
            parser.error("--partitions must be >= 1")
        if not s.expiring_soon_s >= 0:
            parser.error(f"--expiring-soon-s: 0 or more, got {s.expiring_soon_s}")
        if s.feed_max_entries < 1000:
            parser.error(f"--feed-max-entries: at least 1000, got {s.feed_max_entries}")
        for name in ("watch_max_pending", "events_max_pending", "max_resident"):
            if getattr(s, name) < 1:
                parser.error(f"--{name.replace('_', '-')}: at least 1, got {getattr(s, name)}")
        try:
            consumer_names(s.feed_consumers)
        except ValueError as exc:
            parser.error(f"--feed-consumers: {exc}")
        check_common(parser, s)
        return s

    @property
    def consumers(self) -> list[str]:
        """--feed-consumers as names."""
        return consumer_names(self.feed_consumers)


#: A durable feed consumer's name (it is a hash field in Redis and a metric label).
_CONSUMER = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def consumer_names(text: str) -> list[str]:
    """The names of a comma-separated list ("" is none). Raises ValueError naming a bad one."""
    if not text.strip():
        return []
    names = [n.strip() for n in text.split(",")]
    for n in names:
        if not _CONSUMER.fullmatch(n):
            raise ValueError(f"{n!r} is not a consumer name (1-64 of A-Z a-z 0-9 _ . -)")
    return names


def check_common(parser: argparse.ArgumentParser, s: Any) -> None:
    """The checks every process's settings share (server, ledger writer): parser.error (exit
    2) naming the flag."""
    if s.log_level.upper() not in LOG_LEVELS:
        parser.error(f"--log-level: one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}")
    scheme = s.redis_url.partition("://")[0]
    if scheme not in ("redis", "rediss", "unix"):
        parser.error(f"--redis-url: a redis://, rediss:// or unix:// URL, got {s.redis_url!r}")
    if s.redis_timeout_s <= 0:
        parser.error(f"--redis-timeout-s: above 0, got {s.redis_timeout_s}")
    if s.database_url:
        try:
            sa.engine.make_url(s.database_url).get_dialect()
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError) as exc:
            parser.error(f"--database-url: {exc}")
        except ImportError as exc:  # a known dialect whose driver is not installed
            parser.error(f"--database-url: {exc}")
    for name in ("metrics_port", "ledger_metrics_port", "grpc_port"):
        port = getattr(s, name, 0)
        if not 0 <= port <= 65535:
            parser.error(f"--{name.replace('_', '-')}: 0 to 65535, got {port}")


_HELP = {
    "redis_url": "Redis holding the positions (AOF with appendfsync always recommended)",
    "database_url": "SQL database of the master data (locations, networks, products, safety "
    "stock), a SQLAlchemy URL such as postgresql+psycopg://user:pass@host/db; empty: the "
    "SQLite file unistock.db in --data-dir",
    "mqtt_url": "MQTT broker of the store edge agents (mqtt[s]://user:pass@host:port); "
    "empty: no MQTT ingestion",
    "grpc_host": "address the gRPC API listens on",
    "grpc_port": "gRPC API port (0: any free port)",
    "metrics_port": "Prometheus /metrics port (0: disabled)",
    "data_dir": "directory for local state (dev token, the SQLite master data by default)",
    "tokens_file": "bearer tokens, one '<role> <token> [<name>]' per line; "
    "also UNISTOCK_TOKENS=role:token,...",
    "locations_file": "CSV 'location_id,store_id': which store may report each location "
    "over MQTT (default: a store's only location has the store's id)",
    "tls_cert": "PEM certificate chain: serve gRPC over TLS",
    "tls_key": "PEM private key for --tls-cert",
    "key_prefix": "prefix of every Redis key",
    "partitions": "partitions of the keyspace (fixed once the keyspace exists)",
    "flush_linger_ms": "how long a busy group commit waits for more changes before writing "
    "(not when idle)",
    "flush_max_positions": "most positions in one group commit",
    "max_resident": "most positions kept in memory (LRU passivation beyond)",
    "idle_passivation_s": "passivate positions unused for this long (0: never)",
    "ledger_in_process": "1: write the change feed to the SQL ledger inside this server (small "
    "deployments and tests: it shares the server's CPU, see docs/performance.md, B11); 0: off",
    "feed_max_entries": "cap of each partition's change feed stream (entries, approximate): a "
    "durable consumer (the ledger) further behind than this loses entries (alert on "
    "unistock_feed_fill_ratio)",
    "feed_consumers": "durable consumers of the change feed the server registers at start, "
    "comma-separated (the feed is kept for them, up to --feed-max-entries, from then on, even "
    "before they first run); empty: none (a deployment without unistock-ledger)",
    "expiry_interval_s": "how often expired reservations are released",
    "expiring_soon_s": "warn (RESERVATION_EXPIRING_SOON event, EXPIRING_SOON transition) when "
    "an ACTIVE reservation's expiry is this close, once per expiry (0: never)",
    "reservation_retention_s": "how long ended reservations stay readable (idempotent replays)",
    "watch_max_pending": "positions a watcher may lag behind before it is cut",
    "events": "1: derive events from the change feed (WatchEvents); 0: off (WatchEvents is "
    "UNAVAILABLE)",
    "events_retention_s": "how long events stay readable for a resuming WatchEvents",
    "events_max_per_partition": "cap of each partition's events stream (the oldest beyond "
    "it are trimmed about every second)",
    "events_max_pending": "events a WatchEvents subscriber may lag behind before it is cut",
    "redis_timeout_s": "deadline of one Redis round trip before UNAVAILABLE",
    "shutdown_grace_s": "time in-flight calls get to finish on SIGTERM",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
}


def values_of(cls: Any, ns: argparse.Namespace) -> dict[str, Any]:
    """The dataclass cls's field values in parsed flags (path fields as Paths)."""
    values = {}
    for f in fields(cls):
        v = getattr(ns, f.name)
        if v is not None and "Path" in str(f.type):
            v = pathlib.Path(v)
        values[f.name] = v
    return values


def build_parser(
    env: Mapping[str, str],
    cls: Any = None,
    helps: Mapping[str, str] = _HELP,
    prog: str = "unistock-server",
    description: str = "Unistock: real-time inventory server (gRPC API, Redis persistence).",
) -> argparse.ArgumentParser:
    """The argument parser of a settings dataclass (the server's by default): one flag per
    field; each default comes from UNISTOCK_<NAME> when set."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    for f in fields(cls or Settings):
        flag = "--" + f.name.replace("_", "-")
        envname = "UNISTOCK_" + f.name.upper()
        fallback: object = f.default
        default = env.get(envname, fallback)
        kind: Any = type(fallback) if fallback is not None else str
        if kind is bool:  # an action, not a setting: no variable
            parser.add_argument(flag, dest=f.name, action="store_true", help=helps[f.name])
            continue
        if issubclass(kind, pathlib.PurePath):
            kind = str
        parser.add_argument(
            flag,
            dest=f.name,
            type=kind,
            default=None if default is None else kind(default),
            help=f"{helps[f.name]} [env {envname}]",
        )
    return parser


def run_console(level: str, serve: Coroutine[Any, Any, int]) -> None:
    """A console entry point's end: logging at `level` (one format for every process), then
    exit with what `serve` returns."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    sys.exit(asyncio.run(serve))
