"""F3: kill -9 of Redis (AOF, appendfsync always) during a burst of reservations and movements.

Channels reserve with unique ids and a warehouse streams movements while Redis is SIGKILLed and
restarted. Calls during the outage fail with UNAVAILABLE (or DEADLINE_EXCEEDED) and the server's
flusher recovers on its own once Redis is back. Then every Reserve that was answered OK is
ACTIVE with its units held, every acknowledged movement is applied, and retrying every failed
Reserve with its reservation_id holds it exactly once; a new server on the same Redis agrees.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest

from tests.faults.helpers import SIGN, Key, Mv, eventually, levels, movement_batch
from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import RedisServer
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

KEYS: list[Key] = [(f"SKU-{i % 5}", f"store-{i // 5}") for i in range(20)]
STOCK = 10_000
RESERVES = 240
WORKERS = 8
KILL_AFTER_OK = 40
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
ResLines = list[tuple[str, str, int]]


class Source:
    """A warehouse system: resends from its first unacknowledged batch until all are acked."""

    def __init__(self, client: UnistockClient, batches: list[list[Mv]]) -> None:
        self.client = client
        self.batches = batches
        self.acked = 0  # batches[:acked] are acknowledged
        self.failures: list[grpc.StatusCode] = []

    async def run(self, pause: float = 0.02) -> None:
        while self.acked < len(self.batches):

            async def paced(start: int) -> AsyncIterator[pb.MovementBatch]:
                for i in range(start, len(self.batches)):
                    yield movement_batch("wms-1", self.batches[i], batch_id=str(i))
                    await asyncio.sleep(pause)

            try:
                async for ack in self.client.apply_movements(paced(self.acked)):
                    assert ack.batch_id == str(self.acked)
                    assert not ack.rejections
                    self.acked += 1
            except UnistockClientError as exc:
                self.failures.append(exc.code)
                await asyncio.sleep(0.1)


async def check_state(
    c: UnistockClient,
    ok: dict[str, ResLines],
    batches: list[list[Mv]],
    maybe: dict[str, ResLines] | None = None,
) -> None:
    """Every answered reservation ACTIVE with its lines; each unanswered one (maybe) either
    absent or ACTIVE; reserved == the sum of the ACTIVE lines; on_hand as the history says."""
    reserved: Counter[Key] = Counter()
    active = dict(ok)
    for rid, lines in (maybe or {}).items():
        try:
            await c.get_reservation(rid)
        except UnistockClientError as exc:
            missing: UnistockClientError | None = exc
        else:
            missing = None
        if missing is None:
            active[rid] = lines
        else:
            assert missing.code == grpc.StatusCode.NOT_FOUND, missing
    for rid, lines in active.items():
        r = await c.get_reservation(rid)
        assert r.state == pb.ACTIVE, f"{rid} is {pb.ReservationState.Name(r.state)}"
        assert sorted((ln.sku, ln.location_id, ln.quantity) for ln in r.lines) == sorted(lines)
        for sku, loc, q in lines:
            reserved[(sku, loc)] += q
    on_hand: Counter[Key] = Counter()
    for b in batches:
        for _, kind, sku, loc, q in b:
            on_hand[(sku, loc)] += SIGN[kind] * q
    got = await levels(c, KEYS)
    for key in KEYS:
        lv = got[key]
        assert (lv.on_hand, lv.reserved) == (on_hand[key], reserved[key]), key
        assert lv.available == max(0, lv.on_hand - lv.reserved - lv.safety_stock)


async def test_redis_kill_during_burst(make_server: MakeServer, redis_server: RedisServer) -> None:
    rng = random.Random(99)
    srv: UnistockServer = await make_server(redis_server.url)
    seed = [[(i + 1, "RECEIPT", sku, loc, STOCK) for i, (sku, loc) in enumerate(KEYS)]]
    seq = len(KEYS) + 1
    batches: list[list[Mv]] = []
    for _ in range(60):
        b: list[Mv] = []
        for _ in range(10):
            sku, loc = rng.choice(KEYS)
            b.append((seq, rng.choice(["RECEIPT", "SALE", "RETURN"]), sku, loc, rng.randint(1, 5)))
            seq += 1
        batches.append(b)
    requests: dict[str, ResLines] = {}
    for n in range(RESERVES):
        picked = rng.sample(KEYS, rng.randint(1, 3))
        requests[f"r-{n}"] = [(sku, loc, rng.randint(1, 3)) for sku, loc in picked]

    async with (
        UnistockClient(target(srv), TOKENS["channel"], timeout=5, retry=None) as chan,
        UnistockClient(target(srv), TOKENS["backoffice"], timeout=5, retry=None) as bo,
    ):
        assert [a.applied async for a in bo.apply_movements([movement_batch("wms-1", seed[0])])]
        ok: dict[str, ResLines] = {}
        failed: dict[str, grpc.StatusCode] = {}
        queue = list(requests)
        killed = asyncio.Event()

        async def worker() -> None:
            while queue:
                rid = queue.pop(0)
                try:
                    await chan.reserve(rid, requests[rid], kind="ORDER")
                    ok[rid] = requests[rid]
                    if len(ok) >= KILL_AFTER_OK:
                        killed.set()
                except UnistockClientError as exc:
                    failed[rid] = exc.code
                    await asyncio.sleep(0.1)

        source = Source(bo, batches)
        mover = asyncio.create_task(source.run())
        workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
        await killed.wait()
        redis_server.kill()
        # Let calls hit the outage, then bring Redis back from its AOF.
        await eventually(
            lambda: _true(
                len(failed) >= 10 and (bool(source.failures) or source.acked == len(batches))
            )
        )
        redis_server.restart()
        await asyncio.gather(*workers)
        await mover

        assert failed, "no call saw the outage"
        assert set(failed.values()) <= TRANSIENT, Counter(failed.values())
        assert set(source.failures) <= TRANSIENT, source.failures
        assert len(ok) + len(failed) == RESERVES

        # The server recovered by itself: every answered reservation is there and held. A
        # Reserve that failed may or may not hold (its write may have landed, or be retried by
        # the flusher): either way reserved is the sum of the ACTIVE ones.
        await check_state(bo, ok, seed + batches, {rid: requests[rid] for rid in failed})

        # Each failed Reserve retried with its id holds exactly once (some were held already).
        replayed = 0
        for rid in failed:
            resp = await chan.reserve(rid, requests[rid], kind="ORDER")
            assert resp.reservation.state == pb.ACTIVE
            replayed += resp.replayed
            ok[rid] = requests[rid]
        # A retry of an already answered one is a replay.
        some = next(iter(set(ok) - set(failed)))
        assert (await chan.reserve(some, requests[some], kind="ORDER")).replayed
        await check_state(bo, ok, seed + batches)

    # A new server on the same Redis reads the same state (everything above was durable).
    await srv.stop()
    srv2 = await make_server(redis_server.url)
    async with (
        UnistockClient(target(srv2), TOKENS["channel"], retry=None) as chan,
        UnistockClient(target(srv2), TOKENS["backoffice"], retry=None) as bo,
    ):
        await check_state(bo, ok, seed + batches)
        for rid in list(ok)[:20]:
            assert (await chan.reserve(rid, requests[rid], kind="ORDER")).replayed
        await check_state(bo, ok, seed + batches)
        acks = [a async for a in bo.apply_movements(movement_batch("wms-1", b) for b in batches)]
        assert sum(a.duplicates for a in acks) == sum(len(b) for b in batches)
        assert sum(a.applied for a in acks) == 0
        await check_state(bo, ok, seed + batches)


async def _true(value: bool) -> bool:
    return value
