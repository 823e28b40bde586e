"""A caller cancelled while it waits for a batched load (a client's deadline, a disconnect)
must not cancel the load other callers of the same key wait for: before the fix the expiry
sweep ended silently (no reservation expired again) and another batch of the same source failed
with CancelledError. Found by review; each test failed before."""

from __future__ import annotations

import asyncio

from tests.faults.test_mark_races import gate_first, receipt, rig
from unistock.server.domain import Line, ReservationKind, ReserveRequest

KEY = ("SKU-1", "L1")


async def test_a_cancelled_reader_does_not_stop_expiry(clean_redis_url: str) -> None:
    now = [1000.0]
    a = await rig(clean_redis_url, clock=lambda: now[0])
    await a.inv.apply_movements([receipt("S", 1), receipt("S", 2)])
    req = ReserveRequest.build("cart-1", [Line(*KEY, 1)], ReservationKind.CART, 5)
    await a.inv.reserve(req)
    await a.close()

    b = await rig(clean_redis_url, clock=lambda: now[0])  # nothing cached
    try:
        now[0] += 60
        entered, release = gate_first(b.store, "load_reservations")
        reader = asyncio.create_task(b.inv.get_reservation("cart-1"))  # a client's read
        await entered.wait()
        sweep = asyncio.create_task(b.inv.run_expiry(0.05))
        await asyncio.sleep(0.05)  # the sweep's turn waits on the same load
        reader.cancel()  # the client went away
        release.set()
        for _ in range(50):
            await asyncio.sleep(0.02)
            if (await b.inv.get_reservation("cart-1")).state.name == "EXPIRED":
                break
        assert not sweep.done()
        sweep.cancel()
        await asyncio.gather(sweep, return_exceptions=True)
        assert (await b.inv.get_reservation("cart-1")).state.name == "EXPIRED"
    finally:
        await b.close()


async def test_a_cancelled_batch_does_not_fail_another_of_the_same_source(
    clean_redis_url: str,
) -> None:
    r = await rig(clean_redis_url)
    try:
        entered, release = gate_first(r.store, "load_source_highs")
        a = asyncio.create_task(r.inv.apply_movements([receipt("S", 1)]))
        await entered.wait()
        b = asyncio.create_task(r.inv.apply_movements([receipt("S", 2)]))
        await asyncio.sleep(0.05)  # b waits on the same read of S's highest seq
        a.cancel()  # a's client went away
        release.set()
        [result] = await asyncio.gather(b, return_exceptions=True)
        assert not isinstance(result, BaseException), f"b failed: {result!r}"
        assert result.applied == 1
    finally:
        await r.close()
