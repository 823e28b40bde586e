"""F1: kill -9 of the server while a back-office system streams movements.

The server runs as a child process on a private Redis (AOF, fsync always). A source streams
batches on one ApplyMovements stream and records the acks; a concurrent task kills the server
with SIGKILL once some batches are acknowledged, while later ones are in flight. A new server
process on the same Redis must show, for every position, exactly a prefix of that position's
movements (a position is written as a whole), covering at least every acknowledged batch. Then
the source resends every batch from the first: each movement ends up applied exactly once, and
the acks' applied/duplicates counts say what had landed. Three kills in one run.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.faults.helpers import SIGN, Key, Mv, levels, movement_batch
from tests.fixtures.server import TOKENS, ServerProcess
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import RedisServer
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

SOURCE = "wms-1"
KEYS: list[Key] = [(f"SKU-{i % 10}", f"dc-{i // 10}") for i in range(50)]
PER_BATCH = 50
BATCHES_PER_ROUND = 120
KILL_AFTER_ACKS = 25
ROUNDS = 3


def make_batches(rng: random.Random, first_seq: int, n: int) -> list[list[Mv]]:
    out: list[list[Mv]] = []
    seq = first_seq
    for _ in range(n):
        batch: list[Mv] = []
        for _ in range(PER_BATCH):
            sku, loc = rng.choice(KEYS)
            kind = "RECEIPT" if rng.random() < 0.6 else "SALE"
            batch.append((seq, kind, sku, loc, rng.randint(1, 9)))
            seq += 1
        out.append(batch)
    return out


async def stream_until_killed(proc: ServerProcess, batches: list[list[Mv]], kill_after: int) -> int:
    """Stream batches; kill -9 the server after kill_after acks. Returns the acked seq."""
    acked_seq = 0
    acks = 0
    enough = asyncio.Event()
    error: tuple[UnistockClientError, bool] | None = None

    async def produce() -> AsyncIterator[pb.MovementBatch]:
        for i, b in enumerate(batches):
            yield movement_batch(SOURCE, b, batch_id=str(i))
        await asyncio.Event().wait()  # keep the stream open: the end comes from the kill

    async def killer() -> None:
        await enough.wait()
        proc.kill()

    kill_task = asyncio.create_task(killer())
    try:
        async with UnistockClient(proc.target, TOKENS["backoffice"], timeout=None) as c:
            try:
                async for ack in c.apply_movements(produce()):
                    assert ack.sources[0].source_id == SOURCE
                    assert ack.sources[0].seq > acked_seq, "acks must come in batch order"
                    acked_seq = ack.sources[0].seq
                    acks += 1
                    if acks >= kill_after:
                        enough.set()
            except UnistockClientError as exc:
                error = (exc, enough.is_set())
    finally:
        enough.set()
        await kill_task
    assert error is not None, "the stream outlived the kill"
    assert error[1], f"stream failed before the kill: {error[0]}"
    assert acks >= kill_after
    assert acked_seq < batches[-1][-1][0], "every batch was acked before the kill took effect"
    return acked_seq


async def send_all(target: str, batches: list[list[Mv]]) -> tuple[int, int]:
    """Send every batch on one stream; returns (applied, duplicates) summed over the acks."""
    applied = duplicates = n = 0
    async with UnistockClient(target, TOKENS["backoffice"], timeout=None) as c:
        async for ack in c.apply_movements(
            movement_batch(SOURCE, b, batch_id=str(i)) for i, b in enumerate(batches)
        ):
            assert ack.batch_id == str(n)
            assert ack.sources[0].seq == batches[n][-1][0]
            assert not ack.rejections
            applied += ack.applied
            duplicates += ack.duplicates
            n += 1
    assert n == len(batches)
    return applied, duplicates


def per_position(batches: list[list[Mv]]) -> dict[Key, list[tuple[int, int]]]:
    """Each position's movements in seq order, as (seq, signed quantity)."""
    out: dict[Key, list[tuple[int, int]]] = {k: [] for k in KEYS}
    for b in batches:
        for seq, kind, sku, loc, q in b:
            out[(sku, loc)].append((seq, SIGN[kind] * q))
    return out


async def test_kill_9_mid_stream_then_replay(tmp_path: Path, redis_server: RedisServer) -> None:
    rng = random.Random(1234)
    proc = ServerProcess(redis_server.url, tmp_path / "server")
    sent: list[list[Mv]] = []
    try:
        proc.start()
        for _ in range(ROUNDS):
            new = make_batches(rng, (sent[-1][-1][0] + 1) if sent else 1, BATCHES_PER_ROUND)
            sent.extend(new)
            acked_seq = await stream_until_killed(proc, new, KILL_AFTER_ACKS)

            proc.start()
            moves = per_position(sent)
            async with UnistockClient(proc.target, TOKENS["backoffice"]) as c:
                before = await levels(c, KEYS)
            landed = 0
            for key, seq_q in moves.items():
                lv = before[key]
                k = lv.version  # one version per applied movement: the prefix length
                assert k <= len(seq_q), f"{key}: more changes than movements sent: {lv}"
                acked_here = sum(1 for seq, _ in seq_q if seq <= acked_seq)
                assert k >= acked_here, f"{key}: acked movements lost ({k} < {acked_here})"
                assert lv.on_hand == sum(q for _, q in seq_q[:k]), (
                    f"{key}: on_hand {lv.on_hand} is not the sum of its first {k} movements"
                )
                assert lv.reserved == 0
                landed += k

            # The source replays everything from its first batch: each movement applies once.
            applied, duplicates = await send_all(proc.target, sent)
            total = sum(len(b) for b in sent)
            assert duplicates == landed
            assert applied == total - landed
            async with UnistockClient(proc.target, TOKENS["backoffice"]) as c:
                after = await levels(c, KEYS)
            for key, seq_q in moves.items():
                lv = after[key]
                assert (lv.on_hand, lv.version) == (sum(q for _, q in seq_q), len(seq_q)), key

        # A graceful stop and a fresh process on the same Redis see the same, and a last replay
        # of everything is all duplicates.
        assert proc.terminate() == 0
        proc.start()
        applied, duplicates = await send_all(proc.target, sent)
        assert (applied, duplicates) == (0, sum(len(b) for b in sent))
        async with UnistockClient(proc.target, TOKENS["backoffice"]) as c:
            final = await levels(c, KEYS)
        for key, seq_q in per_position(sent).items():
            assert final[key].on_hand == sum(q for _, q in seq_q)
            assert final[key].available == max(0, final[key].on_hand)
    finally:
        proc.stop()
        if proc.log_path.exists():
            assert "Traceback" not in proc.log_path.read_text(), proc.log_path.read_text()[-3000:]
