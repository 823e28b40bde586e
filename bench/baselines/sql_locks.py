"""B7 baseline (peer): reservations with SQL row locks on PostgreSQL via SQLAlchemy 2 asyncio
+ asyncpg.

reserve = one transaction: ``SELECT … FOR UPDATE`` the stock row, check available, update
``reserved``, insert a reservation. release = lock the reservation, lock the stock row, give the
units back, mark the reservation released. 64 callers each alternate reserve → release on a
random row (one call = one op; reservations/s = ops/s / 2). Plus a zero-oversell check: 1,000
concurrent reserves of 1 unit on a row with 10 units (through the 64-connection pool).
Tables live in schema ``unistock_bench`` (dropped and recreated on every run).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.harness import CpuMeter
from bench.load import LoadStats, closed_loop

SCHEMA = "unistock_bench"
LOC = "store-0001"

DDL = [
    f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE",
    f"CREATE SCHEMA {SCHEMA}",
    f"""CREATE TABLE {SCHEMA}.stock (
        sku text NOT NULL, location_id text NOT NULL,
        on_hand integer NOT NULL, reserved integer NOT NULL DEFAULT 0,
        PRIMARY KEY (sku, location_id))""",
    f"""CREATE TABLE {SCHEMA}.reservation (
        id bigserial PRIMARY KEY, sku text NOT NULL, location_id text NOT NULL,
        qty integer NOT NULL, state text NOT NULL DEFAULT 'active',
        created_at timestamptz NOT NULL DEFAULT now())""",
]

_LOCK_STOCK = text(
    f"SELECT on_hand, reserved FROM {SCHEMA}.stock WHERE sku = :sku AND location_id = :loc "
    "FOR UPDATE"
)
_ADD_RESERVED = text(
    f"UPDATE {SCHEMA}.stock SET reserved = reserved + :qty WHERE sku = :sku AND location_id = :loc"
)
_INSERT_RES = text(
    f"INSERT INTO {SCHEMA}.reservation (sku, location_id, qty) VALUES (:sku, :loc, :qty) "
    "RETURNING id"
)
_LOCK_RES = text(
    f"SELECT sku, location_id, qty FROM {SCHEMA}.reservation WHERE id = :id AND state = 'active' "
    "FOR UPDATE"
)
_RELEASE_RES = text(f"UPDATE {SCHEMA}.reservation SET state = 'released' WHERE id = :id")


class OutOfStock(Exception):
    pass


async def reserve(engine: AsyncEngine, sku: str, loc: str, qty: int) -> int:
    """Reserve ``qty``; returns the reservation id or raises OutOfStock (rolled back)."""
    async with engine.begin() as conn:
        on_hand, reserved = (await conn.execute(_LOCK_STOCK, {"sku": sku, "loc": loc})).one()
        if on_hand - reserved < qty:
            raise OutOfStock(sku)
        await conn.execute(_ADD_RESERVED, {"sku": sku, "loc": loc, "qty": qty})
        return int((await conn.execute(_INSERT_RES, {"sku": sku, "loc": loc, "qty": qty})).one()[0])


async def release(engine: AsyncEngine, rid: int) -> bool:
    async with engine.begin() as conn:
        r = (await conn.execute(_LOCK_RES, {"id": rid})).one_or_none()
        if r is None:
            return False
        sku, loc, qty = r
        await conn.execute(_LOCK_STOCK, {"sku": sku, "loc": loc})
        await conn.execute(_ADD_RESERVED, {"sku": sku, "loc": loc, "qty": -qty})
        await conn.execute(_RELEASE_RES, {"id": rid})
        return True


@dataclass
class OversellCheck:
    attempts: int
    on_hand: int
    succeeded: int
    reserved_column: int
    reservation_rows: int
    oversold: int  # succeeded - on_hand, if positive (must be 0)
    seconds: float


@dataclass
class ReservationRun:
    """One side of B7 (and the shape the Unistock side returns too)."""

    load: LoadStats  # one op = one reserve or one release call
    reservations_per_s: float  # reserve+release cycles per second = load.ops_per_s / 2
    oversell: OversellCheck
    rows: int
    concurrency: int
    backend: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


async def setup(engine: AsyncEngine, rows: int) -> None:
    async with engine.begin() as conn:
        for stmt in DDL:
            await conn.execute(text(stmt))
        await conn.execute(
            text(
                f"INSERT INTO {SCHEMA}.stock (sku, location_id, on_hand) "
                f"SELECT 'SKU-' || lpad(g::text, 7, '0'), '{LOC}', 1000000000 "
                "FROM generate_series(0, :n - 1) g"
            ),
            {"n": rows},
        )
        await conn.execute(
            text(f"INSERT INTO {SCHEMA}.stock (sku, location_id, on_hand) VALUES ('HOT', :l, 10)"),
            {"l": LOC},
        )


async def oversell_check(
    engine: AsyncEngine, attempts: int = 1000, on_hand: int = 10
) -> OversellCheck:
    async with engine.begin() as conn:
        await conn.execute(
            text(f"UPDATE {SCHEMA}.stock SET on_hand = :oh, reserved = 0 WHERE sku = 'HOT'"),
            {"oh": on_hand},
        )
        await conn.execute(text(f"DELETE FROM {SCHEMA}.reservation WHERE sku = 'HOT'"))

    async def one() -> bool:
        try:
            await reserve(engine, "HOT", LOC, 1)
            return True
        except OutOfStock:
            return False

    t0 = time.perf_counter()
    ok = sum(await asyncio.gather(*(one() for _ in range(attempts))))
    dt = time.perf_counter() - t0
    async with engine.connect() as conn:
        reserved = (
            await conn.execute(text(f"SELECT reserved FROM {SCHEMA}.stock WHERE sku = 'HOT'"))
        ).scalar_one()
        nres = (
            await conn.execute(text(f"SELECT count(*) FROM {SCHEMA}.reservation WHERE sku = 'HOT'"))
        ).scalar_one()
    return OversellCheck(
        attempts, on_hand, ok, int(reserved), int(nres), max(0, ok - on_hand), round(dt, 3)
    )


async def baseline(
    url: str,
    *,
    concurrency: int = 64,
    duration_s: float = 5.0,
    warmup_s: float = 0.5,
    rows: int = 1000,
    oversell_attempts: int = 1000,
) -> ReservationRun:
    engine = create_async_engine(url, pool_size=concurrency, max_overflow=0, pool_timeout=120)
    try:
        await setup(engine, rows)
        held: list[int | None] = [None] * concurrency
        rng = random.Random(7)

        async def op(i: int) -> None:
            rid = held[i]
            if rid is None:
                held[i] = await reserve(engine, f"SKU-{rng.randrange(rows):07d}", LOC, 1)
            else:
                held[i] = None
                await release(engine, rid)

        load = await closed_loop(
            op,
            concurrency=concurrency,
            duration_s=duration_s,
            warmup_s=warmup_s,
            cpu=CpuMeter(by_name={"postgres": "postgres"}),
        )
        oversell = await oversell_check(engine, oversell_attempts)
    finally:
        await engine.dispose()
    return ReservationRun(load, load.ops_per_s / 2, oversell, rows, concurrency)
