"""B11 — the ledger under B1's load: B1 with the ledger writer process beside the server, on
SQLite (the server's default database in its data dir) and on PostgreSQL, against B1 without
it, in the same run.

Each side is B1's Unistock side (``bench.scenarios.b1.unistock``: private mosquitto, server
subprocess on a private redis with AOF always, 8 simulated store agents in a closed loop). For
the ledger sides, ``unistock-ledger`` runs as its own process on the same Redis and database
(PostgreSQL: ``bench.baselines.pg.postgres_url``, a fresh database per run). After the measured
window the agents stop and the bench waits until the ledger has caught up, then reports:

* movements/s during the window and the ratio to B1 without the ledger (target ≥ 0.85);
* ledger lag p99: per feed entry, the time from its flush (its feed id) to its rows committed
  in SQL — the writer's ``unistock_ledger_delay_seconds`` histogram, p99 interpolated within
  its buckets as Prometheus' ``histogram_quantile`` does (target ≤ 2 s);
* missing and doubled: the movements the server applied (``unistock_movements_total``,
  outcome ``applied``) against the ledger's movement rows and their distinct ``(source_id,
  seq, location, sku)`` (target 0 and 0);
* the drain: seconds from the end of the load until the ledger held every movement.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from bench._procs import RedisProc, free_port, stop_process
from bench.baselines.pg import postgres_url
from bench.harness import Config, Result, log, row, scenario, try_unistock
from bench.scenarios import b1
from bench.unistock_side import ServerProc, scrape_metrics

ID = "B11"
NAME = "the ledger under B1's load (unistock-ledger process, SQLite and PostgreSQL)"
TARGET = "≥ 0.85 × B1 without the ledger; ledger lag p99 ≤ 2 s; 0 missing, 0 doubled"
_numbers = itertools.count(1)
MOVEMENTS = "unistock_movements_total{"
ROOT = str(Path(__file__).resolve().parent.parent.parent)


@dataclass
class LedgerRun:
    movements_per_s: float = 0.0
    lag_p99_s: float = float("nan")
    applied: int = 0
    rows: int = 0
    missing: int = 0
    doubled: int = 0
    drain_s: float = float("nan")
    cpu_s: dict[str, float] = field(default_factory=dict)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile over cumulative (le, count) buckets (+Inf last)."""
    total = buckets[-1][1]
    if not total:
        return float("nan")
    rank = q * total
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = le, count
    return lower


def delay_buckets(metrics: dict[str, float]) -> list[tuple[float, float]]:
    """The writer's unistock_ledger_delay_seconds buckets: (le, cumulative count), ascending."""
    prefix = "unistock_ledger_delay_seconds_bucket{le="
    return sorted(
        (float(k[len(prefix) : -1]), v) for k, v in metrics.items() if k.startswith(prefix)
    )


def count_rows(url: str) -> tuple[int, int]:
    """(movement rows, distinct movements among them) in the ledger."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows, distinct = conn.execute(
                sa.text(
                    "select count(*), count(distinct source_id || '|' || seq || '|' || "
                    "location_id || '|' || sku) from ledger_entries where kind = 1"
                )
            ).one()
        return int(rows), int(distinct)
    except sa.exc.OperationalError:
        return 0, 0
    finally:
        engine.dispose()


async def applied_count(srv: ServerProc) -> int:
    """Movements the server applied (unistock_movements_total, outcome applied)."""
    server = await srv.scrape()
    return int(sum(v for k, v in server.items() if k.startswith(MOVEMENTS) and "=applied" in k))


def ledger_beside(url: str | None, result: LedgerRun) -> b1.Beside:
    """unistock-ledger beside the server (url None: the server's default SQLite); on exit, wait
    until it has every applied movement and fill `result`."""

    @contextlib.asynccontextmanager
    async def beside(srv: ServerProc, redis: RedisProc) -> AsyncIterator[object]:
        metrics_port = free_port()
        database = url or f"sqlite:///{(srv.log_path.parent / 'var' / 'unistock.db').resolve()}"
        root = ROOT
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        log_path = srv.log_path.with_name(f"ledger-{metrics_port}.log")
        with log_path.open("ab") as out:
            proc = subprocess.Popen(  # noqa: ASYNC220 (a child process, as ServerProc does)
                [
                    sys.executable, "-m", "unistock.server.app.ledger",
                    "--redis-url", redis.url, "--database-url", database,
                    "--ledger-metrics-port", str(metrics_port), "--log-level", "WARNING",
                ],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            )  # fmt: skip
        try:
            yield proc
            ended = time.perf_counter()
            deadline = ended + 120
            while True:  # the server's count read again each time: batches still in flight
                applied = await applied_count(srv)
                result.rows, distinct = await asyncio.to_thread(count_rows, database)
                if distinct >= applied or time.perf_counter() > deadline:
                    break
                await asyncio.sleep(0.2)
            result.drain_s = round(time.perf_counter() - ended, 3)
            await asyncio.sleep(1.0)  # a late duplicate would show
            result.applied = await applied_count(srv)
            result.rows, distinct = await asyncio.to_thread(count_rows, database)
            result.missing = result.applied - distinct
            result.doubled = result.rows - distinct
            buckets = delay_buckets(await scrape_metrics(metrics_port))
            result.lag_p99_s = round(histogram_quantile(0.99, buckets), 3)
        finally:
            stop_process(proc, 15.0)

    return beside


@contextlib.asynccontextmanager
async def fresh_postgres() -> AsyncIterator[tuple[str | None, str]]:
    """A fresh database on bench's PostgreSQL (psycopg URL), dropped after; (None, why) if none."""
    async with postgres_url() as (url, how):
        if url is None:
            yield None, how
            return
        import psycopg

        base = sa.engine.make_url(url.replace("+asyncpg", "+psycopg"))
        name = f"b11_{os.getpid()}_{next(_numbers)}"
        conninfo = {
            "host": base.host,
            "port": base.port,
            "user": base.username,
            "dbname": base.database,
        }
        with psycopg.connect(**conninfo, autocommit=True) as conn:
            conn.execute(f'create database "{name}"')
        try:
            yield base.set(database=name).render_as_string(hide_password=False), how
        finally:
            with psycopg.connect(**conninfo, autocommit=True) as conn:
                conn.execute(f'drop database if exists "{name}" with (force)')


async def measure(cfg: Config, database: str | None, sqlite: bool) -> LedgerRun:
    result = LedgerRun()
    beside = ledger_beside(database, result) if (sqlite or database) else None
    through = await b1.unistock(cfg, beside=beside)
    result.movements_per_s = through.movements_per_s
    result.cpu_s = through.cpu_s
    return result


@scenario(ID, NAME, target=TARGET)
async def run(cfg: Config) -> list[Result]:
    rounds = cfg.n(2, 1)
    without: list[float] = []
    sqlite: list[LedgerRun] = []
    pg: list[LedgerRun] = []
    pg_url: str | None = None
    how = ""
    for n in range(rounds):  # alternated, so that a noisy minute hits every side
        base, _, note = await try_unistock(measure, cfg, None, False)
        if base:
            without.append(base.movements_per_s)
        got, status, note = await try_unistock(measure, cfg, None, True)
        if got:
            sqlite.append(got)
        # A fresh database per round, as SQLite's (in the server's data dir) is: a round's
        # rows must not meet the last round's (each round's feed starts again).
        async with fresh_postgres() as (url, why):
            pg_url, how = url, why
            if n == 0:
                log(f"B11 PostgreSQL: {how}")
            if pg_url:
                got, status, note = await try_unistock(measure, cfg, pg_url, False)
                if got:
                    pg.append(got)
    baseline = sum(without) / len(without) if without else None
    log(f"B11 without the ledger: {without} movements/s")
    out: list[Result] = []
    for label, runs in (("SQLite", sqlite), ("PostgreSQL", pg)):
        if not runs:
            out.append(row(ID, f"movements/s with the ledger ({label})", "mv/s", None, baseline,
                           status="error" if label == "SQLite" or pg_url else "skipped",
                           note=note if pg_url or label == "SQLite" else how))  # fmt: skip
            continue
        for r in runs:
            log(f"B11 {label}: {r}")
        mean = sum(r.movements_per_s for r in runs) / len(runs)
        worst_lag = max(r.lag_p99_s for r in runs)
        missing = sum(r.missing for r in runs)
        doubled = sum(r.doubled for r in runs)
        extra = {"runs": [r.__dict__ for r in runs], "without": without}
        status = "ok" if missing == 0 and doubled == 0 else "error"
        note = "" if status == "ok" else f"{missing} missing, {doubled} doubled"
        out += [
            row(ID, f"movements/s with the ledger ({label})", "mv/s", mean, baseline,
                status=status, note=note, extra=extra),
            row(ID, f"ledger lag p99 ({label})", "s", worst_lag, None, target="≤ 2 s"),
            row(ID, f"missing + doubled ({label})", "movements", missing + doubled, None,
                target="0"),
            row(ID, f"drain after the load ({label})", "s",
                max(r.drain_s for r in runs), None, target="-"),
        ]  # fmt: skip
    return out
