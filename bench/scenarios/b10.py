"""B10 — the wave: 10,000 carts on one position expire at once.

Unistock side: one position holding ``CARTS`` units gets ``CARTS`` CART reservations of one unit
(64 concurrent callers, all with the same TTL), then the carts expire. Measured: how long
creating the holds took, and how long after the last cart's expiry a watch stream on the
position shows every unit available again.
Baseline (same run, same server): the same number of one-unit carts spread over ``CARTS``
positions of one unit each (one cart per position), measured the same way (every position back
to available 1 on a watch stream of their location).
Target: units back within 2 s of expiry in both; creating the hot holds ≤ 1.2 × the spread case.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.harness import Config, Result, row, scenario
from bench.unistock_side import METADATA, Stub, channel, seed, unistock_server
from unistock.v1 import inventory_pb2 as pb

ID = "B10"
NAME = "the wave: 10,000 carts on one position expire at once"
TARGET = "units back ≤ 2 s after expiry in both; creating hot holds ≤ 1.2 × spread"
CONCURRENCY = 64


@dataclass
class Wave:
    """One run: seconds to create the holds, and from the last expiry to all units back."""

    create_s: float
    back_after_expiry_s: float


async def _reserve_all(stub: Stub, keys: list[tuple[str, str]], ttl: int, tag: str) -> float:
    """One-unit CART reservations, one per key (keys may repeat), CONCURRENCY at a time;
    returns the latest expires_at (epoch seconds)."""
    queue = iter(enumerate(keys))
    latest = 0.0

    async def worker() -> None:
        nonlocal latest
        for i, (sku, loc) in queue:
            req = pb.ReserveRequest(
                reservation_id=f"{tag}-{i}",
                lines=[pb.ReservationLine(sku=sku, location_id=loc, quantity=1)],
                kind=pb.CART,
                ttl_seconds=ttl,
            )
            resp = await stub.Reserve(req, metadata=METADATA)
            latest = max(latest, resp.reservation.expires_at.ToMilliseconds() / 1000)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latest


async def _wave(stub: Stub, keys: list[tuple[str, str]], location: str, ttl: int) -> Wave:
    """Reserve one unit per key, then watch `location` until every position is back."""
    expected = {}
    for key in keys:
        expected[key] = expected.get(key, 0) + 1
    started = time.perf_counter()
    latest = await _reserve_all(stub, keys, ttl, location)
    create_s = time.perf_counter() - started
    if time.time() >= latest:
        raise RuntimeError(f"the TTL ({ttl} s) ran out before every cart was made; raise it")
    back: dict[tuple[str, str], bool] = {}
    done_at = 0.0
    call = stub.WatchAvailability(
        pb.WatchAvailabilityRequest(location_ids=[location]), metadata=METADATA
    )
    async for msg in call:
        for lv in msg.levels:
            key = (lv.sku, lv.location_id)
            if key in expected:
                back[key] = lv.available >= expected[key] and lv.reserved == 0
        if len(back) == len(expected) and all(back.values()) and time.time() >= latest:
            done_at = time.time()
            break
    call.cancel()
    return Wave(create_s, max(0.0, done_at - latest))


async def measure(cfg: Config) -> tuple[Wave, Wave]:
    """(hot, spread) on one server process with its own redis-server."""
    carts = cfg.n(10_000, 2_000)
    ttl = cfg.n(60, 20)
    async with (
        unistock_server("--expiry-interval-s", "0.2") as (srv, _),
        channel(srv.target) as stub,
    ):
        hot = [("B10-HOT", "b10-hot")]
        await seed(stub, hot, carts)
        hot_wave = await _wave(stub, hot * carts, "b10-hot", ttl)
        spread = [(f"B10-{i}", "b10-spread") for i in range(carts)]
        await seed(stub, spread, 1)
        spread_wave = await _wave(stub, spread, "b10-spread", ttl)
    return hot_wave, spread_wave


@scenario(ID, NAME, target=TARGET)
async def run(cfg: Config) -> list[Result]:
    hot, spread = await measure(cfg)
    extra: dict[str, Any] = {"carts": cfg.n(10_000, 2_000)}
    return [
        row(ID, "creating the holds, hot vs spread", "s", hot.create_s, spread.create_s,
            extra=extra, target="≤ 1.2 × spread"),
        row(ID, "units back after the last expiry, hot (spread as baseline)", "s",
            hot.back_after_expiry_s, spread.back_after_expiry_s, extra=extra,
            target="≤ 2 s in both"),
    ]  # fmt: skip
