"""Helpers for the Unistock sides of the scenarios: the server as a child process with its own
private redis-server, a raw generated-stub client (bearer token, no wrapper), seeding stock
through ``ApplyMovements`` and the reserve/release workload shared by B3 and B7.

The server runs as ``python -m unistock.server.app.cli`` (a child process, so its CPU is measured
separately); its log goes to a file in the Redis temp dir (printed on failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import subprocess
import sys
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio
from prometheus_client.parser import text_string_to_metric_families

from bench._procs import RedisProc, free_port, stop_process
from bench.harness import CpuMeter, log
from bench.load import LoadStats, closed_loop
from unistock.server.domain import Movement, MovementType, Position
from unistock.server.persistence.codec import encode_position
from unistock.server.persistence.keys import LAYOUT_VERSION, Keyspace
from unistock.v1 import inventory_pb2 as pb
from unistock.v1 import inventory_pb2_grpc as pb_grpc

TOKEN = "bench-admin-token-0123456789abcdef"
METADATA = (("authorization", f"Bearer {TOKEN}"),)
KEYSPACE = Keyspace()
SEED_SOURCE = "bench-seed"
#: Source of the movement every synthetic stored position was last changed by (B4/B5).
AGENT_SOURCE = "store-0001-agent"
MAX_BATCH = 10_000  # server's most movements per batch
#: A generated ``InventoryServiceStub`` on a ``grpc.aio`` channel (its stubs are typed for the
#: sync API, so it is ``Any`` here).
Stub = Any


# --------------------------------------------------------------------------- server process


async def scrape_metrics(port: int) -> dict[str, float]:
    """A /metrics endpoint on this host as {"name{labels}": value}, labels sorted by name
    (histogram buckets, _sum and _count included)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
    await writer.drain()
    raw = await reader.read()
    writer.close()
    text = raw.partition(b"\r\n\r\n")[2].decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


class ServerProc:
    """``unistock-server`` as a child process on a free port, against ``redis_url``."""

    def __init__(self, redis_url: str, log_dir: Path, *args: str) -> None:
        self.redis_url = redis_url
        self.port = free_port()
        self.metrics_port = free_port()
        self.args = args
        self.log_path = log_dir / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def spawn(self) -> None:
        env = dict(os.environ, UNISTOCK_TOKENS=f"admin:{TOKEN}")
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        args = [
            sys.executable, "-m", "unistock.server.app.cli",
            "--redis-url", self.redis_url,
            "--grpc-port", str(self.port),
            "--metrics-port", str(self.metrics_port),
            "--data-dir", str(self.log_path.parent / "var"),
            "--log-level", "WARNING",
            *self.args,
        ]  # fmt: skip
        with self.log_path.open("ab") as out:
            self.started_at = time.perf_counter()
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
            )

    async def wait_ready(self, limit_s: float = 60.0) -> float:
        """Wait until the gRPC port accepts connections and answers a GetAvailability; returns
        seconds since spawn()."""
        assert self.proc is not None
        deadline = time.perf_counter() + limit_s
        while True:  # TCP first: a gRPC channel's reconnect backoff would blur the figure
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.tail()}")
            try:
                _, w = await asyncio.open_connection("127.0.0.1", self.port)
                w.close()
                break
            except OSError:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"server port not open: {self.tail()}") from None
                await asyncio.sleep(0.005)
        async with aio.insecure_channel(self.target) as ch:
            stub = pb_grpc.InventoryServiceStub(ch)
            req = pb.GetAvailabilityRequest(keys=[pb.StockKey(sku="READY", location_id="probe")])
            await stub.GetAvailability(
                req, metadata=METADATA, timeout=max(1.0, deadline - time.perf_counter())
            )
        return time.perf_counter() - self.started_at

    async def scrape(self) -> dict[str, float]:
        """The server's /metrics as {"name{labels}": value} (histogram _sum/_count included)."""
        return await scrape_metrics(self.metrics_port)

    @staticmethod
    def window(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """Means over a window of the server's own timings (ms) and batch sizes."""

        def mean(name: str, scale: float = 1.0) -> float:
            n = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
            total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
            return round(total / n * scale, 3) if n else float("nan")

        flushes = after.get("unistock_flush_duration_seconds_count", 0) - before.get(
            "unistock_flush_duration_seconds_count", 0
        )
        return {
            "flushes": flushes,
            "flush_mean_ms": mean("unistock_flush_duration_seconds", 1000),
            "flush_positions_mean": mean("unistock_flush_batch_positions"),
            "mqtt_ingest_to_durable_mean_ms": mean("unistock_mqtt_ingest_to_durable_seconds", 1000),
        }

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 15.0)
            self.proc = None


@contextlib.asynccontextmanager
async def unistock_server(
    *args: str, redis: RedisProc | None = None
) -> AsyncIterator[tuple[ServerProc, RedisProc]]:
    """A private redis-server (unless given) and a ready server process using it."""
    own = redis is None
    r = redis or RedisProc().start()
    srv = ServerProc(r.url, r.dir, *args)
    try:
        srv.spawn()
        await srv.wait_ready()
        yield srv, r
    finally:
        srv.stop()
        if own:
            r.stop()


@contextlib.asynccontextmanager
async def channel(target: str, **opts: int) -> AsyncIterator[Stub]:
    options = [(f"grpc.{k}", v) for k, v in opts.items()]
    async with aio.insecure_channel(target, options=options) as ch:
        await ch.channel_ready()
        yield pb_grpc.InventoryServiceStub(ch)


# --------------------------------------------------------------------------- movements / stock


_seqs = itertools.count(1)


def next_seq() -> int:
    """Process-wide increasing seq for SEED_SOURCE movements."""
    return next(_seqs)


def receipt(sku: str, loc: str, qty: int, seq: int, source: str = SEED_SOURCE) -> pb.Movement:
    return pb.Movement(
        source_id=source, seq=seq, sku=sku, location_id=loc, type=pb.RECEIPT, quantity=qty
    )


async def apply_batches(stub: Stub, batches: Sequence[pb.MovementBatch]) -> list[pb.MovementAck]:
    """Send batches on one ApplyMovements stream; returns the acks (all durable)."""
    acks = [ack async for ack in stub.ApplyMovements(iter(batches), metadata=METADATA)]
    if len(acks) != len(batches):
        raise RuntimeError(f"{len(acks)} acks for {len(batches)} batches")
    for ack in acks:
        if ack.rejections:
            raise RuntimeError(f"movements rejected: {ack.rejections[0]}")
    return acks


async def seed(stub: Stub, keys: Sequence[tuple[str, str]], qty: int) -> None:
    """RECEIPT ``qty`` units on every (sku, location_id) key."""
    batches = []
    for start in range(0, len(keys), MAX_BATCH):
        chunk = keys[start : start + MAX_BATCH]
        batches.append(
            pb.MovementBatch(
                source_id=SEED_SOURCE,
                movements=[receipt(s, loc, qty, next_seq()) for s, loc in chunk],
            )
        )
    await apply_batches(stub, batches)


async def levels(stub: Stub, keys: Sequence[tuple[str, str]]) -> list[pb.StockLevel]:
    req = pb.GetAvailabilityRequest(keys=[pb.StockKey(sku=s, location_id=loc) for s, loc in keys])
    resp = await stub.GetAvailability(req, metadata=METADATA)
    return list(resp.levels)


# --------------------------------------------------------------------------- reservations


def reserve_request(rid: str, sku: str, loc: str, qty: int = 1) -> pb.ReserveRequest:
    return pb.ReserveRequest(
        reservation_id=rid,
        lines=[pb.ReservationLine(sku=sku, location_id=loc, quantity=qty)],
        kind=pb.CART,
    )


@dataclass
class Oversell:
    attempts: int
    on_hand: int
    succeeded: int
    refused: int  # FAILED_PRECONDITION (insufficient stock)
    other_errors: int
    reserved_after: int  # the position's `reserved` read back
    oversold: int
    seconds: float


async def oversell_check(stub: Stub, attempts: int, on_hand: int, tag: str) -> Oversell:
    """``attempts`` concurrent Reserve(1) on a fresh position holding ``on_hand`` units."""
    sku, loc = f"HOT-{tag}", "store-0001"
    await seed(stub, [(sku, loc)], on_hand)
    ok = refused = other = 0

    async def one(i: int) -> None:
        nonlocal ok, refused, other
        try:
            await stub.Reserve(reserve_request(f"over-{tag}-{i}", sku, loc), metadata=METADATA)
            ok += 1
        except aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                refused += 1
            else:
                other += 1
                if other == 1:
                    log(f"oversell check: unexpected {e.code().name}: {e.details()}")

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(attempts)))
    dt = time.perf_counter() - t0
    (lvl,) = await levels(stub, [(sku, loc)])
    return Oversell(
        attempts, on_hand, ok, refused, other, int(lvl.reserved), max(0, ok - on_hand), round(dt, 3)
    )


async def reservation_load(
    stub: Stub,
    *,
    positions: int,
    concurrency: int,
    duration_s: float,
    cpu: CpuMeter,
    loc: str = "store-0001",
    warmup_s: float = 0.5,
) -> LoadStats:
    """Seed ``positions`` well-stocked positions, then ``concurrency`` workers alternating
    Reserve(1 unit of a random position, unique id) → ReleaseReservation; one op = one RPC."""
    keys = [(f"SKU-{i:07d}", loc) for i in range(positions)]
    await seed(stub, keys, 1_000_000)
    held: list[str | None] = [None] * concurrency
    rng = random.Random(7)
    ids = itertools.count()
    run = f"{os.getpid()}-{time.monotonic_ns()}"
    refused = 0

    async def op(i: int) -> None:
        nonlocal refused
        rid = held[i]
        if rid is None:
            rid = f"r-{run}-{next(ids)}"
            sku, location = keys[rng.randrange(positions)]
            await stub.Reserve(reserve_request(rid, sku, location), metadata=METADATA)
            held[i] = rid
        else:
            held[i] = None
            await stub.ReleaseReservation(
                pb.ReleaseReservationRequest(reservation_id=rid), metadata=METADATA
            )

    return await closed_loop(
        op, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s, cpu=cpu
    )


# --------------------------------------------------------------------------- stored positions


def synthetic_position(sku: str, loc: str, on_hand: int = 100, seq: int = 1) -> Position:
    """A position as the server holds it after one RECEIPT from a store agent."""
    p = Position((sku, loc))
    p.apply(Movement(AGENT_SOURCE, seq, sku, loc, MovementType.RECEIPT, on_hand))
    return p


_value_cache: dict[int, bytes] = {}


def stored_value(i: int, loc: str, sku: str) -> bytes:
    """``redis_positions.ValueFn``: the real encoded form of a synthetic position (on_hand and
    seq vary with i; the stored value never contains the key, so a few variants are cached)."""
    v = i % 97
    value = _value_cache.get(v)
    if value is None:
        value = _value_cache[v] = encode_position(synthetic_position(sku, loc, 10 + v, 1 + v))
    return value


def partition_of(i: int, loc: str, sku: str) -> int:
    """``redis_positions.PartitionFn``: the server's own partitioning (crc32 of location)."""
    return zlib.crc32(loc.encode()) % KEYSPACE.partitions


async def write_layout(redis_url: str, locations: Sequence[str]) -> None:
    """``us:meta`` and the ``us:{p}:locs`` sets, as a server that wrote the positions would."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, socket_timeout=None)
    try:
        async with client.pipeline(transaction=False) as pipe:
            pipe.hset(
                KEYSPACE.meta,
                mapping={"layout": LAYOUT_VERSION, "partitions": KEYSPACE.partitions},
            )
            for loc in locations:
                pipe.sadd(KEYSPACE.locations(KEYSPACE.location_partition(loc)), loc)
            await pipe.execute()
    finally:
        await client.aclose()
