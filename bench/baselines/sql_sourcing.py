"""B8 baseline (peer): FindStock's question as one SQL query on PostgreSQL via SQLAlchemy 2
asyncio + asyncpg.

Tables (schema ``unistock_bench_b8``, dropped and recreated on every run):
``locations(id, type, lat, lon, click_and_collect, ship_from_store, e_reservation)`` and
``stock(location_id, sku, available)`` with primary key ``(location_id, sku)`` and an index on
``(sku, location_id) INCLUDE (available)``; ANALYZEd after loading.

Per order, one statement (``query()``): the order's lines as a ``VALUES`` list joined to the
stock rows of their SKUs (index on sku, index-only) and to the locations offering the mode (the
server's ``offers``: SHIP = not a store, or a store shipping from store; CLICK_AND_COLLECT = a
store with click & collect), ``GROUP BY`` location: lines covered, units servable, covers_all,
depth (min over the order's lines of available − wanted, a line the location lacks counting as
0 available, as the server's ``rank`` does: the ``CASE … bool_or`` terms), the haversine
great-circle distance in SQL (the ``haversine`` library's formula and earth radius, so the same
floats up to rounding); ``ORDER BY covers_all DESC, distance, depth DESC, id LIMIT``. Only
locations holding a unit of some line are candidates, as on the server.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import TextClause, text
from sqlalchemy.ext.asyncio import AsyncEngine

SCHEMA = "unistock_bench_b8"
EARTH_RADIUS_KM = 6371.0088  # haversine's _AVG_EARTH_RADIUS_KM (what the server uses)
MODES = ("SHIP", "CLICK_AND_COLLECT")

DDL = [
    f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE",
    f"CREATE SCHEMA {SCHEMA}",
    f"""CREATE TABLE {SCHEMA}.locations (
        id text COLLATE "C" PRIMARY KEY, type text NOT NULL,
        lat double precision NOT NULL, lon double precision NOT NULL,
        click_and_collect boolean NOT NULL, ship_from_store boolean NOT NULL,
        e_reservation boolean NOT NULL)""",
    f"""CREATE TABLE {SCHEMA}.stock (
        location_id text COLLATE "C" NOT NULL, sku text COLLATE "C" NOT NULL,
        available integer NOT NULL, PRIMARY KEY (location_id, sku))""",
]
INDEXES = [
    f"CREATE INDEX stock_sku ON {SCHEMA}.stock (sku, location_id) INCLUDE (available)",
    f"VACUUM ANALYZE {SCHEMA}.locations",
    f"VACUUM ANALYZE {SCHEMA}.stock",
]

_OFFERS = {
    "SHIP": "(loc.type <> 'STORE' OR loc.ship_from_store)",
    "CLICK_AND_COLLECT": "(loc.type = 'STORE' AND loc.click_and_collect)",
}


def query(mode: str, n_lines: int) -> str:
    """The SQL of one order of ``n_lines`` lines (params sku0, qty0, …, lat, lon, lim)."""
    values = ", ".join(
        f'(CAST(:sku{i} AS text) COLLATE "C", CAST(:qty{i} AS integer))' for i in range(n_lines)
    )
    r = EARTH_RADIUS_KM
    distance = (
        f"2 * {r} * asin(sqrt("
        "power(sin(radians(loc.lat - :lat) / 2), 2)"
        " + cos(radians(:lat)) * cos(radians(loc.lat))"
        " * power(sin(radians(loc.lon - :lon) / 2), 2)))"
    )
    missing = ", ".join(
        f"CASE WHEN bool_or(l.sku = CAST(:sku{i} AS text)) THEN NULL"
        f" ELSE CAST(:qty{i} AS integer) END"
        for i in range(n_lines)
    )
    return f"""
WITH lines(sku, qty) AS (VALUES {values})
SELECT loc.id,
       {distance} AS distance_km,
       count(*) FILTER (WHERE s.available >= l.qty) = {n_lines} AS covers_all,
       least(min(s.available - l.qty), -greatest({missing})) AS depth,
       count(*) FILTER (WHERE s.available >= l.qty) AS lines_covered,
       sum(least(s.available, l.qty)) AS units
FROM lines l
JOIN {SCHEMA}.stock s ON s.sku = l.sku AND s.available > 0
JOIN {SCHEMA}.locations loc ON loc.id = s.location_id AND {_OFFERS[mode]}
GROUP BY loc.id, loc.lat, loc.lon
ORDER BY covers_all DESC, distance_km, depth DESC, loc.id
LIMIT :lim"""


@dataclass(frozen=True)
class SqlOption:
    location_id: str
    distance_km: float
    covers_all: bool
    depth: int
    lines_covered: int
    units: int


async def load(
    engine: AsyncEngine,
    locations: Sequence[tuple[str, str, float, float, bool, bool, bool]],
    stock: Sequence[tuple[str, str, int]],
) -> None:
    """Create the tables, load ``locations`` rows (id, type, lat, lon, click_and_collect,
    ship_from_store, e_reservation) and ``stock`` rows (location_id, sku, available), index,
    ANALYZE."""
    async with engine.begin() as conn:
        for stmt in DDL:
            await conn.execute(text(stmt))
        cols = list(zip(*locations, strict=True))
        await conn.execute(
            text(
                f"INSERT INTO {SCHEMA}.locations SELECT * FROM unnest("
                "CAST(:a AS text[]), CAST(:b AS text[]), CAST(:c AS float8[]),"
                " CAST(:d AS float8[]), CAST(:e AS bool[]), CAST(:f AS bool[]),"
                " CAST(:g AS bool[]))"
            ),
            dict(zip("abcdefg", (list(c) for c in cols), strict=True)),
        )
        chunk = 50_000
        for start in range(0, len(stock), chunk):
            part = stock[start : start + chunk]
            await conn.execute(
                text(
                    f"INSERT INTO {SCHEMA}.stock SELECT * FROM unnest("
                    "CAST(:l AS text[]), CAST(:s AS text[]), CAST(:a AS int[]))"
                ),
                {"l": [r[0] for r in part], "s": [r[1] for r in part], "a": [r[2] for r in part]},
            )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for stmt in INDEXES:
            await conn.execute(text(stmt))


class Finder:
    """One prepared text() per (mode, number of lines); ``find`` runs one order."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._sql: dict[tuple[str, int], TextClause] = {}

    def _stmt(self, mode: str, n: int) -> TextClause:
        s = self._sql.get((mode, n))
        if s is None:
            s = self._sql[mode, n] = text(query(mode, n))
        return s

    @staticmethod
    def _params(
        lines: Sequence[tuple[str, int]], near: tuple[float, float], limit: int
    ) -> dict[str, object]:
        params: dict[str, object] = {"lat": near[0], "lon": near[1], "lim": limit}
        for i, (sku, qty) in enumerate(lines):
            params[f"sku{i}"], params[f"qty{i}"] = sku, qty
        return params

    async def explain(
        self,
        lines: Sequence[tuple[str, int]],
        mode: str,
        near: tuple[float, float],
        limit: int,
    ) -> tuple[float, float]:
        """PostgreSQL's own (planning, execution) time of one order's query in ms, by
        ``EXPLAIN (ANALYZE, TIMING OFF)``: the query's work in the server, no client, no
        protocol."""
        sql = text("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + query(mode, len(lines)))
        async with self.engine.connect() as conn:
            got = (await conn.execute(sql, self._params(lines, near, limit))).scalar_one()
        plan = (json.loads(got) if isinstance(got, str) else got)[0]
        return float(plan["Planning Time"]), float(plan["Execution Time"])

    async def find(
        self,
        lines: Sequence[tuple[str, int]],
        mode: str,
        near: tuple[float, float],
        limit: int,
    ) -> list[SqlOption]:
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(self._stmt(mode, len(lines)), self._params(lines, near, limit))
            ).all()
        return [
            SqlOption(r[0], float(r[1]), bool(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows
        ]
