"""F14: reservations whose hold runs out while the server is down expire on restart, once each.

The first server never sweeps after start-up (expiry interval of an hour), so the reservations
are still ACTIVE in Redis when it stops. Once their expiry has passed, a new server (sweeping
every 0.2 s) expires each of them once and their units become available again; a third server
finds nothing left to expire.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from tests.faults.helpers import eventually, levels, movement_batch, sample
from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import RedisServer
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

A = ("SKU-A", "store-1")
B = ("SKU-B", "store-1")
C = ("SKU-A", "store-2")
STOCK = 20
# (reservation_id, lines): single and multi-line, across locations.
HELD = {
    "cart-1": [(*A, 2)],
    "cart-2": [(*A, 1), (*B, 3)],
    "cart-3": [(*B, 1), (*C, 4)],
    "cart-4": [(*C, 5)],
}
KEEP = {"order-1": [(*A, 1), (*C, 1)]}  # no expiry: must stay ACTIVE throughout
EXPIRED = "unistock_reservations_expired_total"


async def test_reservations_expire_after_restart(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    srv = await make_server(redis_server.url, expiry_interval_s=3600)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        seed = movement_batch(
            "wms-1", [(i + 1, "RECEIPT", *k, STOCK) for i, k in enumerate((A, B, C))]
        )
        assert [a.applied async for a in c.apply_movements([seed])] == [3]
        latest = 0.0
        for rid, lines in HELD.items():
            r = (await c.reserve(rid, lines, kind="CART", ttl_seconds=1)).reservation
            latest = max(latest, r.expires_at.ToNanoseconds() / 1e9)
        for rid, lines in KEEP.items():
            await c.reserve(rid, lines, kind="ORDER")
        held = await levels(c, [A, B, C])
        assert (held[A].reserved, held[B].reserved, held[C].reserved) == (4, 4, 10)
    await srv.stop()
    assert sample(srv.metrics.registry, EXPIRED) == 0

    # Down past every expiry.
    await asyncio.sleep(max(0.0, latest - time.time()) + 0.3)
    assert time.time() > latest

    srv2 = await make_server(redis_server.url, expiry_interval_s=0.2)
    async with UnistockClient(target(srv2), TOKENS["admin"]) as c:

        async def all_expired() -> bool:
            states = [(await c.get_reservation(rid)).state for rid in HELD]
            return all(s == pb.EXPIRED for s in states)

        await eventually(all_expired)
        # Let several more sweeps run: none may expire anything a second time.
        await asyncio.sleep(1.0)
        assert sample(srv2.metrics.registry, EXPIRED) == len(HELD)
        for rid in KEEP:
            assert (await c.get_reservation(rid)).state == pb.ACTIVE
        after = await levels(c, [A, B, C])
        for key in (A, B, C):
            keep = sum(q for lines in KEEP.values() for s, loc, q in lines if (s, loc) == key)
            assert after[key].on_hand == STOCK
            assert after[key].reserved == keep, key
            assert after[key].available == STOCK - keep, key
        # Expired is final: release and fulfil are refused, a replay returns it as EXPIRED.
        replay = await c.reserve("cart-1", HELD["cart-1"], kind="CART", ttl_seconds=1)
        assert replay.replayed
        assert replay.reservation.state == pb.EXPIRED
        for end in (c.release, c.fulfil):
            with pytest.raises(UnistockClientError) as err:
                await end("cart-2")
            assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    await srv2.stop()

    srv3 = await make_server(redis_server.url, expiry_interval_s=0.2)
    async with UnistockClient(target(srv3), TOKENS["admin"]) as c:
        await asyncio.sleep(0.6)
        assert sample(srv3.metrics.registry, EXPIRED) == 0
        for rid in HELD:
            assert (await c.get_reservation(rid)).state == pb.EXPIRED
        after = await levels(c, [A, B, C])
        assert (after[A].reserved, after[B].reserved, after[C].reserved) == (1, 0, 1)
        # The freed units can be promised again.
        await c.reserve("cart-5", [(*A, STOCK - 1)], kind="CART")
