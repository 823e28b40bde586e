"""F19: kill -9 of the server and a restart of PostgreSQL while the ledger is being written.

A server process and a ledger writer process (`unistock-ledger`) run on a private Redis (AOF,
fsync always) and a private PostgreSQL cluster. A back-office source streams movement batches
and a channel makes and ends reservations. Meanwhile PostgreSQL is stopped - the server keeps
acknowledging movements and reservations (the hot path never waits for SQL) - and started
again; then the server is killed with SIGKILL mid-stream, started again, and every batch is
sent again (idempotent). Once the ledger has caught up, it holds every applied movement and
every reservation transition exactly once, and each position's ledger deltas sum to its
on_hand (invariant 9).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.helpers import Key, Mv, levels, movement_batch
from tests.faults.test_server_kill import KEYS, make_batches
from tests.fixtures.ledger import LedgerProcess, rows_settle
from tests.fixtures.server import TOKENS, ServerProcess
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import PostgresServer, RedisServer
from unistock.server.persistence.ledger import MOVEMENT, RESERVATION
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

SOURCE = "wms-1"  # test_server_kill's source, its positions and its batches


async def send(target: str, batches: list[list[Mv]]) -> int:
    """Every batch on one stream; the acks received."""
    acks = 0
    async with UnistockClient(target, TOKENS["backoffice"], timeout=None) as c:
        async for _ in c.apply_movements(movement_batch(SOURCE, b) for b in batches):
            acks += 1
    return acks


async def stream_until_killed(proc: ServerProcess, batches: list[list[Mv]], after: int) -> int:
    """Stream batches, kill -9 the server once `after` are acknowledged; the acks received."""
    acks = 0
    enough = asyncio.Event()

    async def produce() -> AsyncIterator[pb.MovementBatch]:
        for b in batches:
            yield movement_batch(SOURCE, b)
            await asyncio.sleep(0.005)
        await asyncio.Event().wait()

    async def killer() -> None:
        await enough.wait()
        proc.kill()

    task = asyncio.create_task(killer())
    try:
        async with UnistockClient(proc.target, TOKENS["backoffice"], timeout=None) as c:
            try:
                async for _ in c.apply_movements(produce()):
                    acks += 1
                    if acks >= after:
                        enough.set()
            except UnistockClientError:
                pass
    finally:
        enough.set()
        await task
    return acks


async def reservations(target: str, first: int, n: int) -> list[str]:
    """n reservations: each made, then released, fulfilled or left ACTIVE."""
    ids = []
    async with UnistockClient(target, TOKENS["admin"]) as c:
        for i in range(first, first + n):
            rid = f"r-{i}"
            sku, loc = KEYS[i % len(KEYS)]
            try:
                await c.reserve(rid, [(sku, loc, 1)], kind="ORDER", channel="web")
            except UnistockClientError:
                continue  # not enough stock there: nothing held, nothing in the ledger
            ids.append(rid)
            if i % 3 == 0:
                await c.release(rid)
            elif i % 3 == 1:
                await c.fulfil(rid, request_id=f"ship-{rid}")
    return ids


async def test_f19_server_kill_and_postgres_restart_while_writing_the_ledger(
    tmp_path: Path, redis_server: RedisServer, postgres_server: PostgresServer
) -> None:
    rng = random.Random(19)
    db = postgres_server.create_database("f19")
    server = ServerProcess(redis_server.url, tmp_path / "server", "--database-url", db)
    ledger = LedgerProcess(redis_server.url, db, tmp_path / "ledger", "--ledger-batch", "20")
    sent: list[list[Mv]] = []
    reserved: list[str] = []
    try:
        server.start()
        ledger.start()
        sent += make_batches(rng, 1, 40)
        assert await send(server.target, sent) == 40
        reserved += await reservations(server.target, 0, 12)

        # PostgreSQL down: the server still acknowledges movements and reservations.
        postgres_server.stop()
        more = make_batches(rng, sent[-1][-1][0] + 1, 40)
        sent += more
        assert await send(server.target, more) == 40
        reserved += await reservations(server.target, 12, 12)
        postgres_server.start()

        # kill -9 of the server mid-stream, while the ledger catches up.
        more = make_batches(rng, sent[-1][-1][0] + 1, 80)
        sent += more
        acked = await stream_until_killed(server, more, 20)
        assert 20 <= acked < 80
        server.start()
        assert await send(server.target, sent) == len(sent)  # again: duplicates change nothing
        reserved += await reservations(server.target, 24, 12)
        async with UnistockClient(server.target, TOKENS["admin"]) as c:
            got = await levels(c, KEYS)
        on_hand = {k: lv.on_hand for k, lv in got.items() if lv.version}

        seqs = {seq for b in sent for seq, *_ in b}
        rows = await rows_settle(db, len(seqs) + len(reserved), wait=60)
        moved = Counter(r.seq for r in rows if r.kind == MOVEMENT)
        assert set(moved) == seqs, "movements missing from the ledger"
        assert max(moved.values()) == 1, "a movement twice in the ledger"
        created = Counter(
            r.reservation_id for r in rows if r.kind == RESERVATION and "CREATED" in r.transitions
        )
        assert set(created) == set(reserved)
        assert max(created.values()) == 1
        revisions = Counter((r.reservation_id, r.revision) for r in rows if r.kind == RESERVATION)
        assert max(revisions.values()) == 1
        ended = {r.reservation_id for r in rows if r.kind == RESERVATION and r.state != 1}
        assert ended == {rid for rid in reserved if int(rid[2:]) % 3 != 2}
        sums: Counter[Key] = Counter()
        for r in rows:
            if r.on_hand_delta is not None:
                sums[(r.sku, r.location_id)] += r.on_hand_delta
        assert {k: sums[k] for k in on_hand} == on_hand  # invariant 9
        assert "ledger not written yet" in ledger.log_text()  # it did see PostgreSQL down
    finally:
        ledger.kill()
        server.stop()
