"""F21 (issue 10 item 3): TransferReservation and automatic re-sourcing racing a till sale of
the last unit and a release, on a real server and Redis. In every round the three race in one
loop pass (their order varies); afterwards the reservation's lines sum to what it held (or it is
released), no unit is held twice (every position's reserved is the sum of the ACTIVE lines on
it) and each operation happened all or nothing."""

from __future__ import annotations

import asyncio
import contextlib
import random

import pytest

from tests.server.test_api import batch, mv, send
from unistock.client import UnistockClient, UnistockClientError
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow
LOCS = ["s1", "s2", "s3"]


async def check(c: UnistockClient, rids: list[str], sku: str, held: dict[str, int]) -> None:
    levels = {
        lv.location_id: lv for lv in await c.get_availability(keys=[(sku, loc) for loc in LOCS])
    }
    owed = dict.fromkeys(LOCS, 0)
    for rid in rids:
        r = await c.get_reservation(rid)
        if r.state == pb.ACTIVE:
            assert sum(ln.quantity for ln in r.lines) == held[rid], (rid, r)
            for ln in r.lines:
                owed[ln.location_id] += ln.quantity
        else:
            assert r.state in (pb.RELEASED, pb.FULFILLED), r
    for loc in LOCS:
        assert levels[loc].reserved == owed[loc], (loc, levels[loc], owed)
        assert levels[loc].available >= 0


async def race(
    c: UnistockClient,
    rng: random.Random,
    till: str,
    sku: str,
    rids: list[str],
    first: str,
    other: str,
) -> None:
    """A till sale of the last units where rids[0] is held (re-sourcing follows), an order
    manager's TransferReservation of rids[0] and a release of rids[1], in one loop pass."""

    async def sale() -> None:
        await asyncio.sleep(rng.random() * 0.01)
        await send(c, batch(till, mv(1, "SALE", sku, first, 2)))

    async def move() -> None:
        await asyncio.sleep(rng.random() * 0.01)
        # Refused when the server moved it first or the destination could not promise it.
        with contextlib.suppress(UnistockClientError):
            await c.transfer_reservation(rids[0], "om-1", [(sku, first, other, 1)])

    async def release() -> None:
        await asyncio.sleep(rng.random() * 0.01)
        await c.release(rids[1])

    await asyncio.gather(sale(), move(), release())


async def test_transfers_re_sourcing_sales_and_releases_race_safely(
    server: UnistockServer, admin: UnistockClient
) -> None:
    await admin.upsert_locations(
        [apb.Location(location_id=loc, type=apb.STORE, ship_from_store=True) for loc in LOCS]
    )
    await admin.upsert_networks([apb.Network(network_id="web", location_ids=LOCS)])
    rng = random.Random(21)
    seq = 0
    for round_ in range(12):
        sku = f"R{round_}"
        seq += 1
        await send(
            admin,
            batch("wms", mv(seq, "RECEIPT", sku, "s1", 2), mv(seq + 1, "RECEIPT", sku, "s2", 2),
                  mv(seq + 2, "RECEIPT", sku, "s3", 2)),
        )  # fmt: skip
        seq += 2
        rids = [f"{sku}-a", f"{sku}-b"]
        held = {}
        for rid in rids:
            await admin.reserve(rid, [], kind="CART", network_lines=[(sku, "web", 1)])
            held[rid] = 1
        first = (await admin.get_reservation(rids[0])).lines[0].location_id
        other = next(loc for loc in LOCS if loc != first)
        seq += 1
        await race(admin, rng, f"till-{round_}", sku, rids, first, other)
        for _ in range(50):  # the re-sourcing after the sale settles
            await asyncio.sleep(0.02)
            try:
                await check(admin, rids, sku, held)
                break
            except AssertionError:
                continue
        await check(admin, rids, sku, held)
