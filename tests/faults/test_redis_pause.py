"""F4: Redis frozen with SIGSTOP for about 5 s while channels reserve.

Calls made during the freeze fail with UNAVAILABLE or DEADLINE_EXCEEDED (the client's deadline
is shorter than the freeze). Once Redis runs again, retrying each failed reservation_id holds it
exactly once: reserved equals the number of distinct reservations times their quantity.

A call whose deadline passes while it waits for a group commit must not cancel the commit
window that other calls share (asyncio cancels the future a cancelled task awaits): the
windows are handed out shielded, and the flusher survives.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.faults.helpers import eventually, levels, movement_batch
from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import RedisServer
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

A = ("SKU-A", "store-1")
B = ("SKU-B", "store-2")
LINES = [(*A, 1), (*B, 2)]
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


async def test_call_cancelled_while_waiting_for_flush_keeps_flusher_alive(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    srv = await make_server(redis_server.url)
    async with UnistockClient(target(srv), TOKENS["admin"], timeout=2, retry=None) as c:
        seed = movement_batch("wms-1", [(1, "RECEIPT", *A, 10)])
        assert [a.applied async for a in c.apply_movements([seed])] == [1]
        await c.reserve("r-1", [(*A, 1)], kind="ORDER")
        # r-1 is cached and its position resident: extend needs no read, only a flush, and
        # the flush cannot finish while Redis is frozen; the call's deadline passes first.
        redis_server.pause()
        try:
            short = UnistockClient(target(srv), TOKENS["admin"], timeout=0.3, retry=None)
            async with short:
                with pytest.raises(UnistockClientError) as err:
                    await short.extend("r-1", 3600)
            assert err.value.code in TRANSIENT
        finally:
            redis_server.resume()
        # The server must keep writing: the next reservation is held and durable.
        resp = await c.reserve("r-2", [(*A, 1)], kind="ORDER")
        assert resp.reservation.state == pb.ACTIVE
        assert not srv.failed
        assert (await levels(c, [A]))[A].reserved == 2


async def test_redis_paused_then_retries_hold_once(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    srv = await make_server(redis_server.url)
    async with (
        UnistockClient(target(srv), TOKENS["channel"], timeout=2, retry=None) as chan,
        UnistockClient(target(srv), TOKENS["backoffice"], timeout=10, retry=None) as bo,
    ):
        seed = movement_batch("wms-1", [(1, "RECEIPT", *A, 10_000), (2, "RECEIPT", *B, 10_000)])
        assert [a.applied async for a in bo.apply_movements([seed])] == [2]

        ok: set[str] = set()
        failed: dict[str, grpc.StatusCode] = {}
        counter = iter(range(1_000_000))
        phase = {"paused": False, "resumed": False}
        ok_after_resume: list[str] = []

        resumed_at = [0.0]

        async def worker() -> None:
            while not (phase["resumed"] and len(ok_after_resume) >= 10):
                # A wedged server fails the test instead of hanging it.
                assert not phase["resumed"] or time.monotonic() < resumed_at[0] + 10, (
                    f"no recovery after Redis resumed: {len(failed)} failed calls"
                )
                rid = f"r-{next(counter)}"
                try:
                    await chan.reserve(rid, LINES, kind="ORDER")
                    ok.add(rid)
                    if phase["resumed"]:
                        ok_after_resume.append(rid)
                except UnistockClientError as exc:
                    failed[rid] = exc.code
                    await asyncio.sleep(0.2)

        workers = [asyncio.create_task(worker()) for _ in range(4)]
        try:
            await eventually(lambda: _true(len(ok) >= 20))
            redis_server.pause()
            phase["paused"] = True
            # A call that only waits for a flush (cached record, resident positions) when its
            # deadline passes: the freeze must not break the flusher for everybody else.
            some = next(iter(ok))
            with pytest.raises(UnistockClientError) as err:
                await chan.extend(some, 3600)
            assert err.value.code in TRANSIENT
            await asyncio.sleep(3)
        finally:
            redis_server.resume()
        phase["resumed"] = True
        resumed_at[0] = time.monotonic()
        for outcome in await asyncio.gather(*workers, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

        assert failed, "no call failed while Redis was frozen"
        assert set(failed.values()) <= TRANSIENT, failed
        assert not ok & set(failed)

        for rid in failed:
            resp = await chan.reserve(rid, LINES, kind="ORDER")
            assert resp.reservation.state == pb.ACTIVE
        every = ok | set(failed)
        for rid in every:
            assert (await chan.reserve(rid, LINES, kind="ORDER")).replayed
            assert (await chan.get_reservation(rid)).state == pb.ACTIVE
        got = await levels(bo, [A, B])
        assert got[A].reserved == len(every) * 1
        assert got[B].reserved == len(every) * 2
        assert got[A].available == 10_000 - len(every)

    # Durable: a new server on the same Redis sees exactly the same holds.
    await srv.stop()
    srv2 = await make_server(redis_server.url)
    async with UnistockClient(target(srv2), TOKENS["backoffice"], retry=None) as bo:
        got = await levels(bo, [A, B])
        assert (got[A].reserved, got[B].reserved) == (len(every), 2 * len(every))
        for rid in every:
            assert (await bo.get_reservation(rid)).state == pb.ACTIVE


async def _true(value: bool) -> bool:
    return value


async def test_client_leaving_a_movement_stream_keeps_flusher_alive(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    """The same through ApplyMovements: a back-office client that goes away while its batch
    waits for a flush (the ack writer is cancelled while awaiting the window)."""
    srv = await make_server(redis_server.url)
    async with UnistockClient(target(srv), TOKENS["admin"], timeout=2, retry=None) as c:
        seed = movement_batch("wms-1", [(1, "RECEIPT", *A, 10)])
        assert [a.applied async for a in c.apply_movements([seed])] == [1]

        async def batches() -> AsyncIterator[pb.MovementBatch]:
            yield movement_batch("wms-1", [(2, "RECEIPT", *A, 5)])
            await asyncio.Event().wait()

        async def stream() -> None:
            async for _ in c.apply_movements(batches()):
                pytest.fail("acknowledged while Redis is frozen")

        redis_server.pause()
        try:
            task = asyncio.create_task(stream())
            # Wait until the server applied the batch in memory (the flush is what blocks).
            await eventually(lambda: _true(srv.commit.is_dirty(A)), within=10, interval=0.02)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        finally:
            redis_server.resume()
        resp = await c.reserve("r-1", [(*A, 1)], kind="ORDER")
        assert resp.reservation.state == pb.ACTIVE
        assert not srv.failed
        # The abandoned batch was applied (the client will resend it: a duplicate).
        [level] = await c.get_availability(keys=[A])
        assert (level.on_hand, level.reserved) == (15, 1)
