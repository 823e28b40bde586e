"""B8 — FindStock over 1,000 locations × 10,000 SKUs vs the same question as one SQL query.

Data (deterministic, seed 8; the same on both sides): 1,000 locations at uniformly random
coordinates in Germany's bounding box (lat 47.3–55.0, lon 5.9–15.0): ``WAREHOUSES`` warehouses
(ship) and stores, each store with click & collect (70 %), ship from store (40 %) and
e-reservation (50 %) drawn independently. One network ``web`` with all of them (staleness 0).
10,000 SKUs with a Zipf-like popularity (weight 1 / (rank + 1) ^ ``ZIPF_S``); each store holds
``STORE_SKUS`` distinct SKUs and each warehouse ``WAREHOUSE_SKUS``, drawn by popularity (so the
head is stocked nearly everywhere and the tail at a handful of locations: ~218,000 positions,
small enough to seed through ``ApplyMovements`` in seconds on the 2-core machine and to keep the
server's per-SKU map in memory; still ~22 per SKU on average). Available per position: 1–12 in a
store, 10–500 in a warehouse.

Orders (pre-generated, the same sequence on both sides): 3 distinct SKUs drawn by the same
popularity from the stocked SKUs (customers order what is popular: the head makes single
locations cover whole orders; the tail makes partial options), quantity 1–2 each, a random
customer position in the same box, mode alternating SHIP / CLICK_AND_COLLECT, limit 10, no
max distance, no split, no variants.

Unistock side: server subprocess + private redis (AOF always); master data first
(UpsertLocations, UpsertNetworks; the bench token is admin), then the stock as RECEIPT batches
of 10,000 on one ``ApplyMovements`` stream, so the network index follows the flushes' deltas;
ready once GetNetworkAvailability of ``web`` counts every location and the most popular SKU's
level equals its sum in the data. (The other order — stock first, then the network — makes
UpsertNetworks join 1,000 locations holding stock at once: each join re-versions and
re-publishes every level of the network, ~40 s on this data with the event loop blocked, the
call ending UNAVAILABLE after its 10 s timeout.) Then
FindStock (generated stub, pre-built requests) back to back on one channel: first one caller
(service time, no queueing), then ``CONCURRENCY`` callers.

Baseline: the same data in PostgreSQL (``bench.baselines.sql_sourcing``: tables, indexes, the
single query), the same orders through SQLAlchemy asyncio + asyncpg on a pool of
``CONCURRENCY`` connections, one caller then ``CONCURRENCY`` callers. PostgreSQL as in B7
(``bench.baselines.pg.postgres_url``). ``--quick`` keeps the data and shortens the runs.

Spot check: the first ``SPOT`` orders on both sides after the load; compared are the top option
(location id, covers_all, distance within 1 m) and the whole top-10 list of location ids.

What limits it (rows of their own, so the ratio to SQL can be read against them):

- transport: the same server, channel and ``CONCURRENCY`` callers with a trivial call
  (``GetNetworkAvailability`` of one SKU: no sourcing at all), calls/s. Python gRPC (grpc.aio)
  on both ends of one 2-core machine; FindStock cannot be faster than this through it.
- compute: FindStock's own work per order, µs: ``find_stock`` called in this process on a
  ``NetworkIndex`` built here from the same data (the real index and master-data classes,
  ``where`` filled as the server's flushes fill it; no Redis, no gRPC), each pre-built request
  parsed from its bytes and the answer serialised, as the server does; next to PostgreSQL's own
  execution time of the same orders' query (``EXPLAIN (ANALYZE, TIMING OFF)``, planning time
  apart), i.e. either side's work without its client and protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from grpc import aio
from sqlalchemy.ext.asyncio import create_async_engine

from bench.baselines import sql_sourcing
from bench.baselines.pg import postgres_url
from bench.harness import Config, CpuMeter, Result, log, prefixed, row, scenario, try_unistock
from bench.load import LoadStats, closed_loop
from bench.unistock_side import (
    MAX_BATCH,
    METADATA,
    SEED_SOURCE,
    apply_batches,
    channel,
    next_seq,
    receipt,
    unistock_server,
)
from unistock.server.actors.masterdata import MasterData
from unistock.server.actors.networks import NetworkIndex
from unistock.server.api.sourcing import find_stock
from unistock.server.domain.masterdata import Location, LocationType, Network
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.sql import MasterDataStore
from unistock.server.persistence.store import RedisStore
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import admin_pb2_grpc as apb_grpc
from unistock.v1 import inventory_pb2 as pb

ID = "B8"
NAME = "FindStock over 1,000 locations × 10,000 SKUs vs one SQL query"
TARGET = "p99 ≤ 5 ms and ≥ 10 × the SQL query's throughput"
NETWORK = "web"
LOCATIONS = 1000
WAREHOUSES = 10
SKUS = 10_000
STORE_SKUS = 200
WAREHOUSE_SKUS = 2000
ZIPF_S = 0.8
LINES = 3
LIMIT = 10
CONCURRENCY = 4
SPOT = 100
#: orders timed in process (compute rows), after as many again to warm up
COMPUTE_ORDERS = 4000
#: orders EXPLAIN ANALYZEd on the SQL side
EXPLAIN_ORDERS = 300
P99_TARGET_MS = 5.0
BOX = ((47.3, 55.0), (5.9, 15.0))  # Germany: latitude, longitude
MODES = ("SHIP", "CLICK_AND_COLLECT")


def duration(cfg: Config) -> float:
    return cfg.n(10.0, 2.0)


def single_duration(cfg: Config) -> float:
    return cfg.n(5.0, 1.0)


async def measure(
    op: Callable[[int], Awaitable[object]], cfg: Config, cpu: Callable[[], CpuMeter]
) -> tuple[LoadStats, LoadStats]:
    """One caller (service time, no queueing), then ``CONCURRENCY`` callers."""
    with client_gc_frozen():
        one = await closed_loop(
            op, concurrency=1, duration_s=single_duration(cfg), warmup_s=0.5, cpu=cpu()
        )
        many = await closed_loop(
            op, concurrency=CONCURRENCY, duration_s=duration(cfg), warmup_s=1.0, cpu=cpu()
        )
    return one, many


@contextlib.contextmanager
def client_gc_frozen() -> Iterator[None]:
    """This (client) process's data (orders, stock rows) out of its garbage collector's reach
    while measuring, so neither side's latencies include the client's full collections (60-70
    ms each, several per run before)."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


# --------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Loc:
    id: str
    type: str  # STORE | WAREHOUSE
    lat: float
    lon: float
    click_and_collect: bool
    ship_from_store: bool
    e_reservation: bool


@dataclass(frozen=True)
class Order:
    lines: tuple[tuple[str, int], ...]
    mode: str
    near: tuple[float, float]


@dataclass
class Data:
    locations: list[Loc]
    stock: list[tuple[str, str, int]]  # (location_id, sku, available)
    orders: list[Order]
    skus_stocked: int


def sku_id(i: int) -> str:
    return f"SKU-{i:05d}"


def make_data(n_orders: int, seed: int = 8) -> Data:
    rng = random.Random(seed)
    (la0, la1), (lo0, lo1) = BOX
    locs = []
    for i in range(LOCATIONS):
        lat, lon = rng.uniform(la0, la1), rng.uniform(lo0, lo1)
        if i < WAREHOUSES:
            locs.append(Loc(f"wh-{i + 1:02d}", "WAREHOUSE", lat, lon, False, False, False))
        else:
            cc, sfs, er = rng.random() < 0.7, rng.random() < 0.4, rng.random() < 0.5
            locs.append(Loc(f"store-{i + 1:04d}", "STORE", lat, lon, cc, sfs, er))
    cum = list(itertools.accumulate(1 / (i + 1) ** ZIPF_S for i in range(SKUS)))
    stock = []
    stocked: set[int] = set()
    for loc in locs:
        k = WAREHOUSE_SKUS if loc.type == "WAREHOUSE" else STORE_SKUS
        got: set[int] = set()
        while len(got) < k:
            got.update(rng.choices(range(SKUS), cum_weights=cum, k=k - len(got)))
        for s in sorted(got):
            units = rng.randint(10, 500) if loc.type == "WAREHOUSE" else rng.randint(1, 12)
            stock.append((loc.id, sku_id(s), units))
        stocked |= got
    pool = sorted(stocked)
    pool_cum = list(itertools.accumulate(1 / (i + 1) ** ZIPF_S for i in pool))
    orders = []
    for n in range(n_orders):
        skus: set[int] = set()
        while len(skus) < LINES:
            skus.add(rng.choices(pool, cum_weights=pool_cum)[0])
        lines = tuple((sku_id(s), rng.randint(1, 2)) for s in sorted(skus))
        near = (round(rng.uniform(la0, la1), 6), round(rng.uniform(lo0, lo1), 6))
        orders.append(Order(lines, MODES[n % 2], near))
    return Data(locs, stock, orders, len(stocked))


# ------------------------------------------------------------------------------------- results


@dataclass
class Top:
    """The answer to one order, reduced for the spot check."""

    ids: list[str]
    covers_all: bool | None
    distance_km: float | None
    n: int

    @classmethod
    def of(cls, options: Sequence[Any]) -> Top:
        """The spot-check view of ranked options (either side's: location_id, covers_all,
        distance_km)."""
        first = options[0] if options else None
        return cls(
            [x.location_id for x in options],
            first.covers_all if first else None,
            first.distance_km if first else None,
            len(options),
        )


@dataclass
class Side:
    load: LoadStats  # CONCURRENCY callers
    single: LoadStats  # one caller
    spot: list[Top]
    backend: str = ""
    setup_s: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    #: the transport alone (Unistock: a trivial call, CONCURRENCY callers)
    trivial: LoadStats | None = None
    #: the side's own work per order, µs (Unistock: in-process find_stock; SQL: execution)
    compute_us: float | None = None


# ------------------------------------------------------------------------------------ baseline


async def baseline(cfg: Config, data: Data) -> Side | None:
    async with postgres_url() as (url, how):
        if url is None:
            log(f"B8 baseline skipped: {how}")
            return None
        log(f"B8 using PostgreSQL: {how}")
        engine = create_async_engine(url, pool_size=CONCURRENCY, max_overflow=0, pool_timeout=120)
        try:
            t0 = time.perf_counter()
            await sql_sourcing.load(
                engine,
                [
                    (loc.id, loc.type, loc.lat, loc.lon, loc.click_and_collect,
                     loc.ship_from_store, loc.e_reservation)
                    for loc in data.locations
                ],
                data.stock,
            )  # fmt: skip
            load_s = time.perf_counter() - t0
            finder = sql_sourcing.Finder(engine)
            orders = data.orders
            spot = []
            for o in orders[:SPOT]:
                opts = await finder.find(o.lines, o.mode, o.near, LIMIT)
                spot.append(Top.of(opts))
            seq = itertools.count()

            async def op(_: int) -> None:
                o = orders[next(seq) % len(orders)]
                await finder.find(o.lines, o.mode, o.near, LIMIT)

            single, load = await measure(
                op, cfg, lambda: CpuMeter(by_name={"postgres": "postgres"})
            )
            times = [
                await finder.explain(o.lines, o.mode, o.near, LIMIT)
                for o in orders[: cfg.n(EXPLAIN_ORDERS, EXPLAIN_ORDERS // 3)]
            ]
        finally:
            await engine.dispose()
    planning, execution = (statistics.mean(t) * 1000 for t in zip(*times, strict=True))
    return Side(
        load,
        single,
        spot,
        backend=f"postgresql ({how}) via SQLAlchemy asyncio + asyncpg, one query per order",
        setup_s={"load_and_index_s": round(load_s, 2)},
        extra={
            "explain_mean_us": {"planning": round(planning, 1), "execution": round(execution, 1)}
        },
        compute_us=execution,
    )


# ------------------------------------------------------------------------------------ unistock


def _location(loc: Loc) -> apb.Location:
    return apb.Location(
        location_id=loc.id,
        type=apb.WAREHOUSE if loc.type == "WAREHOUSE" else apb.STORE,
        name=loc.id,
        latitude=loc.lat,
        longitude=loc.lon,
        has_position=True,
        click_and_collect=loc.click_and_collect,
        ship_from_store=loc.ship_from_store,
        e_reservation=loc.e_reservation,
    )


def _request(o: Order) -> pb.FindStockRequest:
    return pb.FindStockRequest(
        lines=[pb.StockLine(sku=s, quantity=q) for s, q in o.lines],
        mode=pb.FindStockRequest.FulfilmentMode.Value(o.mode),
        network=NETWORK,
        near=pb.GeoPoint(latitude=o.near[0], longitude=o.near[1]),
        limit=LIMIT,
    )


async def unistock(cfg: Config, data: Data) -> Side:
    async with unistock_server() as (srv, redis), channel(srv.target) as stub:
        t0 = time.perf_counter()
        async with aio.insecure_channel(srv.target) as ch:
            admin = apb_grpc.AdminServiceStub(ch)
            await admin.UpsertLocations(
                apb.UpsertLocationsRequest(locations=[_location(x) for x in data.locations]),
                metadata=METADATA,
            )
            web = apb.Network(
                network_id=NETWORK,
                channel="web-shop",
                location_ids=[x.id for x in data.locations],
                staleness_limit_seconds=0,
            )
            await admin.UpsertNetworks(apb.UpsertNetworksRequest(networks=[web]), metadata=METADATA)
        master_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        batches = [
            pb.MovementBatch(
                source_id=SEED_SOURCE,
                movements=[
                    receipt(sku, loc, units, next_seq())
                    for loc, sku, units in data.stock[i : i + MAX_BATCH]
                ],
            )
            for i in range(0, len(data.stock), MAX_BATCH)
        ]
        await apply_batches(stub, batches)
        seed_s = time.perf_counter() - t1
        head = sku_id(0)
        want = sum(units for _, sku, units in data.stock if sku == head)
        deadline = time.perf_counter() + 120
        while True:
            resp = await stub.GetNetworkAvailability(
                pb.GetNetworkAvailabilityRequest(network=NETWORK, skus=[head]), metadata=METADATA
            )
            (lvl,) = resp.levels
            if lvl.locations == LOCATIONS and lvl.available == want:
                break
            if time.perf_counter() > deadline:
                raise TimeoutError(
                    f"network not built: {lvl.locations} locations, {head} available "
                    f"{lvl.available} (want {LOCATIONS}, {want})"
                )
            await asyncio.sleep(0.05)
        log(f"B8 unistock: master data {master_s:.1f}s, {len(data.stock):,} positions seeded "
            f"in {seed_s:.1f}s")  # fmt: skip
        reqs = [_request(o) for o in data.orders]
        spot = []
        for r in reqs[:SPOT]:
            resp = await stub.FindStock(r, metadata=METADATA)
            opts = list(resp.options)
            spot.append(Top.of(opts))
        seq = itertools.count()

        async def op(_: int) -> None:
            await stub.FindStock(reqs[next(seq) % len(reqs)], metadata=METADATA)

        single, load = await measure(op, cfg, lambda: CpuMeter(server=srv.pid, redis=redis.pid))
        level = pb.GetNetworkAvailabilityRequest(network=NETWORK, skus=[head])

        async def trivial_op(_: int) -> None:
            await stub.GetNetworkAvailability(level, metadata=METADATA)

        with client_gc_frozen():
            trivial = await closed_loop(
                trivial_op,
                concurrency=CONCURRENCY,
                duration_s=duration(cfg),
                warmup_s=1.0,
                cpu=CpuMeter(server=srv.pid, redis=redis.pid),
            )
    return Side(
        load,
        single,
        spot,
        backend="unistock server subprocess + private redis-server; FindStock via generated "
        "stub, one channel",
        setup_s={"master_data_s": round(master_s, 2), "seed_s": round(seed_s, 2)},
        trivial=trivial,
        compute_us=in_process_us(data),
    )


def in_process_index(data: Data) -> NetworkIndex:
    """The server's network index over ``data``, built in this process: the real MasterData
    and NetworkIndex (neither reads its store for FindStock: none is given), `where` as the
    flushes of the seeded RECEIPTs make it (sku -> location -> available)."""
    master = MasterData(cast(MasterDataStore, None))
    master.locations = {
        x.id: Location(
            x.id,
            LocationType.WAREHOUSE if x.type == "WAREHOUSE" else LocationType.STORE,
            name=x.id,
            latitude=x.lat,
            longitude=x.lon,
            click_and_collect=x.click_and_collect,
            ship_from_store=x.ship_from_store,
            e_reservation=x.e_reservation,
        )
        for x in data.locations
    }
    master.networks = {
        NETWORK: Network(NETWORK, tuple(sorted(master.locations)), channel="web-shop")
    }
    commit = cast(GroupCommit, SimpleNamespace(listeners=[]))
    index = NetworkIndex(cast(RedisStore, None), commit, master)
    for loc, sku, units in data.stock:
        index.where.setdefault(sku, {})[loc] = units
    return index


def in_process_us(data: Data) -> float:
    """FindStock's own work per order (µs, mean over ``COMPUTE_ORDERS``): request bytes parsed,
    ``find_stock``, answer serialised, on `in_process_index` (see the module docstring)."""
    index = in_process_index(data)
    raw = [_request(o).SerializeToString() for o in data.orders[: 2 * COMPUTE_ORDERS]]
    parse = pb.FindStockRequest.FromString
    with client_gc_frozen():  # as in the server, no full collection of the index meanwhile
        for r in raw[COMPUTE_ORDERS:]:  # warm-up: caches, allocator
            find_stock(parse(r), index).SerializeToString()
        t0 = time.perf_counter()
        for r in raw[:COMPUTE_ORDERS]:
            find_stock(parse(r), index).SerializeToString()
        return (time.perf_counter() - t0) / COMPUTE_ORDERS * 1e6


# ---------------------------------------------------------------------------------- spot check


def spot_check(a: list[Top], b: list[Top], orders: list[Order]) -> dict[str, Any]:
    """Unistock (a) vs SQL (b) on the same orders."""
    top = lists = 0
    examples: list[dict[str, Any]] = []
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        same_top = (x.ids[:1] == y.ids[:1] and x.covers_all == y.covers_all) and (
            x.distance_km is None
            or y.distance_km is None
            or abs(x.distance_km - y.distance_km) < 0.001
        )
        top += not same_top
        lists += x.ids != y.ids
        if (not same_top or x.ids != y.ids) and len(examples) < 5:
            examples.append({"order": asdict(orders[i]), "unistock": asdict(x), "sql": asdict(y)})
    return {
        "orders": len(a),
        "top_mismatches": top,
        "top10_list_mismatches": lists,
        "covers_all_top": sum(bool(x.covers_all) for x in a),
        "mean_options": round(sum(x.n for x in a) / max(1, len(a)), 2),
        "examples": examples,
    }


@scenario(ID, NAME, target=TARGET)
async def run(cfg: Config) -> list[Result]:
    t0 = time.perf_counter()
    data = make_data(20_000)
    log(f"B8 data: {len(data.locations)} locations, {len(data.stock):,} positions, "
        f"{data.skus_stocked:,} SKUs stocked, {len(data.orders):,} orders "
        f"({time.perf_counter() - t0:.1f}s)")  # fmt: skip
    base = await baseline(cfg, data)
    uni, status, note = await try_unistock(unistock, cfg, data)
    check = spot_check(uni.spot, base.spot, data.orders) if uni and base else {}
    if check:
        log(f"B8 spot check: {check}")
    data_info = {
        "locations": len(data.locations),
        "warehouses": WAREHOUSES,
        "positions": len(data.stock),
        "skus_stocked": data.skus_stocked,
        "lines": LINES,
        "limit": LIMIT,
        "concurrency": CONCURRENCY,
    }

    def side(s: Side | None) -> dict[str, Any] | None:
        if s is None:
            return None
        return {
            "load": asdict(s.load),
            "single_caller": asdict(s.single),
            "backend": s.backend,
            "setup_s": s.setup_s,
        }

    extra = {"data": data_info, "baseline": side(base), "unistock": side(uni),
             "spot_check": check}  # fmt: skip
    cpu = prefixed("baseline", base.load.cpu_s if base else None) | prefixed(
        "unistock", uni.load.cpu_s if uni else None
    )
    if base is None:
        status, note = "skipped", "no PostgreSQL available"
    ul, bl = (uni.load if uni else None), (base.load if base else None)
    u1, b1 = (uni.single if uni else None), (base.single if base else None)
    tr = uni.trivial if uni else None
    return [
        row(ID, f"calls/s, {CONCURRENCY} callers (base = SQL queries/s)", "/s",
            ul.ops_per_s if ul else None, bl.ops_per_s if bl else None,
            status=status, note=note, extra=extra, cpu_s=cpu, target="≥ 10 × baseline"),
        row(ID, f"p50 latency, {CONCURRENCY} callers", "ms",
            ul.p50_ms if ul else None, bl.p50_ms if bl else None,
            status=status, note=note, target="-"),
        row(ID, f"p99 latency, {CONCURRENCY} callers", "ms",
            ul.p99_ms if ul else None, bl.p99_ms if bl else None,
            status=status, note=note, target=f"≤ {P99_TARGET_MS:g} ms"),
        row(ID, "p50 latency, 1 caller (service time)", "ms",
            u1.p50_ms if u1 else None, b1.p50_ms if b1 else None,
            status=status, note=note, target="-",
            extra={"calls_per_s": {"unistock": u1.ops_per_s if u1 else None,
                                   "baseline": b1.ops_per_s if b1 else None}}),
        row(ID, "p99 latency, 1 caller (service time)", "ms",
            u1.p99_ms if u1 else None, b1.p99_ms if b1 else None,
            status=status, note=note, target=f"≤ {P99_TARGET_MS:g} ms"),
        row(ID, f"trivial gRPC call/s, {CONCURRENCY} callers (ceiling)", "/s",
            tr.ops_per_s if tr else None, bl.ops_per_s if bl else None,
            status=status, note=note, target="ceiling",
            extra={"trivial": asdict(tr) if tr else None,
                   "findstock_share_of_trivial": round(ul.ops_per_s / tr.ops_per_s, 3)
                   if ul and tr and tr.ops_per_s else None}),
        row(ID, "compute/order in process (base: PG exec)", "µs",
            uni.compute_us if uni else None, base.compute_us if base else None,
            status=status, note=note, target="-",
            extra={"sql_explain_mean_us": base.extra.get("explain_mean_us") if base else None}),
        row(ID, f"spot check: top option differs ({SPOT} orders)", "",
            float(check["top_mismatches"]) if check else None,
            None, status=status, note=note, target="0"),
    ]  # fmt: skip
