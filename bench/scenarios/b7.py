"""B7 — Unistock vs SQL row locks (peer baseline).

Baseline: PostgreSQL via SQLAlchemy 2 asyncio + asyncpg; reserve/release as row-locking
transactions, 64 callers alternating reserve → release on random rows; plus a zero-oversell
check (1,000 concurrent reserves of 1 unit on a row with 10 units). PostgreSQL from
``UNISTOCK_BENCH_PG_URL``, else local 127.0.0.1:5432, else a private initdb cluster, else skipped.
"""

from __future__ import annotations

from dataclasses import asdict

from bench.baselines import sql_locks
from bench.baselines.pg import postgres_url
from bench.baselines.sql_locks import ReservationRun
from bench.harness import Config, CpuMeter, Result, log, prefixed, row, scenario, try_unistock
from bench.unistock_side import channel, oversell_check, reservation_load, unistock_server

ID = "B7"
NAME = "Unistock vs SQL row locks"
TARGET = "Unistock ≥ 10 × its reservations/s at equal or better p99, zero oversell on both"
CONCURRENCY = 64
ROWS = 1000
OVERSELL_ATTEMPTS = 1000


def duration(cfg: Config) -> float:
    return cfg.n(5.0, 1.5)


async def baseline(cfg: Config) -> ReservationRun | None:
    async with postgres_url() as (url, how):
        if url is None:
            log(f"B7 baseline skipped: {how}")
            return None
        log(f"B7 using PostgreSQL: {how}")
        run = await sql_locks.baseline(
            url, concurrency=CONCURRENCY, duration_s=duration(cfg), rows=ROWS,
            oversell_attempts=OVERSELL_ATTEMPTS,
        )  # fmt: skip
        run.backend = f"postgresql ({how}) via SQLAlchemy asyncio + asyncpg"
        return run


async def unistock(cfg: Config) -> ReservationRun:
    """Same workload against the Unistock server (subprocess + private redis, AOF always): 64
    workers alternating Reserve → ReleaseReservation over ``ROWS`` positions for ``duration(cfg)``
    s (see B3), then the oversell check: a position with on_hand 10, ``OVERSELL_ATTEMPTS``
    concurrent Reserve(1) → ``sql_locks.OversellCheck`` (successes; ``reserved`` read back;
    ``reservation_rows`` = reservations the server acknowledged)."""
    async with unistock_server() as (srv, redis), channel(srv.target) as stub:
        load = await reservation_load(
            stub,
            positions=ROWS,
            concurrency=CONCURRENCY,
            duration_s=duration(cfg),
            cpu=CpuMeter(server=srv.pid, redis=redis.pid),
        )
        o = await oversell_check(stub, OVERSELL_ATTEMPTS, 10, "b7")
    check = sql_locks.OversellCheck(
        o.attempts, o.on_hand, o.succeeded, o.reserved_after, o.succeeded, o.oversold, o.seconds
    )
    return ReservationRun(
        load, load.ops_per_s / 2, check, ROWS, CONCURRENCY,
        backend="unistock server subprocess + private redis-server (AOF appendfsync always)",
        extra={"oversell_refused": o.refused, "oversell_other_errors": o.other_errors},
    )  # fmt: skip


@scenario(ID, NAME, target=TARGET)
async def run(cfg: Config) -> list[Result]:
    base = await baseline(cfg)
    uni, status, note = await try_unistock(unistock, cfg)
    if base is None:
        return [row(ID, "reservations/s", "res/s", uni.reservations_per_s if uni else None, None,
                    status="skipped", note="no PostgreSQL available")]  # fmt: skip
    extra = {"baseline": asdict(base), "unistock": asdict(uni) if uni else None}
    cpu = prefixed("baseline", base.load.cpu_s) | prefixed(
        "unistock", uni.load.cpu_s if uni else None
    )
    return [
        row(ID, "reservations/s (reserve+release cycles)", "res/s",
            uni.reservations_per_s if uni else None, base.reservations_per_s,
            status=status, note=note, extra=extra, cpu_s=cpu, target="≥ 10 × baseline"),
        row(ID, "p99 latency per reserve/release call", "ms",
            uni.load.p99_ms if uni else None, base.load.p99_ms,
            status=status, note=note, target="≤ baseline p99",
            extra={"p50_ms": {"baseline": base.load.p50_ms,
                              "unistock": uni.load.p50_ms if uni else None}}),
        row(ID, f"oversold units ({OVERSELL_ATTEMPTS} × reserve 1 of 10)", "units",
            uni.oversell.oversold if uni else None, base.oversell.oversold,
            status=status, note=note, target="0 on both",
            extra={"baseline": asdict(base.oversell),
                   "unistock": asdict(uni.oversell) if uni else None}),
    ]  # fmt: skip
