"""The change feed under a crash at every command of every flush (issue 11 item 1).

Random rounds of movements (receipts, sales, adjustments, counts, several sources, batches
resent as duplicates, several batches in one group-commit window) are applied while every
flush is recorded; then, for every flush and every prefix of its script calls, exactly that
Redis state is rebuilt on a real redis-server (a crash, or an AOF cut short) and the feed is
checked against the positions stored:

1. nothing missing, nothing extra: per position, the sum of its feed changes' on_hand deltas is
   its stored on_hand, and its last change's version and on_hand are the stored ones (every
   version step here is a movement);
2. exactly once: no (source_id, seq) appears twice;
3. only what happened: every change in the feed is a movement that was applied (and none that
   was refused or a duplicate).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.test_flush_prefix_crash import (
    KS,
    RecordingStore,
    crash_redis,  # noqa: F401 - the fixture
    prefixes,
    rebuild,
    runtime,
    whole_feed,
)
from unistock.devtools.services import RedisServer
from unistock.server.domain import AdjustmentSign, Movement, MovementType, StockKey
from unistock.server.persistence.codec import decode_position
from unistock.server.persistence.store import RedisStore

pytestmark = pytest.mark.slow

KEYS: list[StockKey] = [("S1", "L1"), ("S2", "L1"), ("S1", "L2"), ("S3", "L3")]
SOURCES = ["till-1", "till-2", "wms"]

move_st = st.tuples(
    st.sampled_from(SOURCES),
    st.sampled_from(["RECEIPT", "SALE", "INCREASE", "DECREASE", "COUNT"]),
    st.sampled_from(KEYS),
    st.integers(0, 5),
)
#: rounds of batches; a batch is a list of moves, or "again" (the previous batch resent)
rounds_st = st.lists(
    st.lists(st.one_of(st.lists(move_st, min_size=1, max_size=4), st.just("again")), max_size=3),
    min_size=1,
    max_size=4,
)


def movement(source: str, seq: int, kind: str, key: StockKey, qty: int) -> Movement:
    if kind in ("INCREASE", "DECREASE"):
        sign = AdjustmentSign.INCREASE if kind == "INCREASE" else AdjustmentSign.DECREASE
        return Movement(source, seq, *key, MovementType.ADJUSTMENT, max(qty, 1), reason="damage",
                        adjustment_sign=sign)  # fmt: skip
    if kind == "COUNT":
        return Movement(source, seq, *key, MovementType.COUNT, qty, count_id=f"c{seq}")
    return Movement(source, seq, *key, MovementType[kind], max(qty, 1))


async def check_feed(url: str, applied: set[tuple[str, int]], where: str) -> None:
    store = RedisStore.from_url(url, KS)
    try:
        changes, _ = await whole_feed(store)
        stored = dict(zip(KEYS, await store.load_positions(KEYS), strict=True))
    finally:
        await store.close()
    ids = [(c.source_id, c.seq) for c in changes]
    assert len(ids) == len(set(ids)), (where, "a change twice", ids)
    assert set(ids) <= applied, (where, "a change that was not applied", set(ids) - applied)
    by_key: dict[StockKey, list[int]] = defaultdict(list)
    last = {}
    for c in changes:
        by_key[c.sku, c.location_id].append(c.on_hand_delta)
        last[c.sku, c.location_id] = (c.version, c.on_hand)
    for key, data in stored.items():
        if data is None:
            assert key not in by_key, (where, key)
            continue
        p = decode_position(key, data)
        assert sum(by_key[key]) == p.on_hand, (where, key, p, by_key[key])
        assert last[key] == (p.version, p.on_hand), (where, key, p, last[key])


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rounds=rounds_st)
def test_the_feed_matches_the_positions_after_a_crash_at_every_command(
    crash_redis: RedisServer,  # noqa: F811
    rounds: list[list[list[tuple[str, str, StockKey, int]] | str]],
) -> None:
    async def scenario() -> None:
        RecordingStore.flushes = []
        store = RedisStore.from_url(crash_redis.url, KS)
        await store.client.flushall()
        await store.close()
        seqs: dict[str, int] = defaultdict(int)
        applied: set[tuple[str, int]] = set()
        async with runtime(crash_redis.url, RecordingStore) as rt:
            previous: list[Movement] = []

            async def send(batch: list[Movement]) -> None:
                result = await rt.inventory.apply_movements(batch)
                refused = {(m.source_id, m.seq) for m, _ in result.refused}
                for m, r in zip(
                    [m for m in batch if (m.source_id, m.seq) not in refused],
                    result.results,
                    strict=True,
                ):
                    if r.outcome.value != "duplicate":
                        applied.add((m.source_id, m.seq))

            for batches in rounds:
                todo = []
                for b in batches:
                    if b == "again":
                        todo.append(list(previous))
                        continue
                    batch = []
                    for source, kind, key, qty in b:
                        seqs[source] += 1
                        batch.append(movement(source, seqs[source], kind, key, qty))
                    previous = batch
                    todo.append(batch)
                # The batches of a round share a window.
                await asyncio.gather(*(send(batch) for batch in todo))
            await rt.commit.barrier()
        flushes = RecordingStore.flushes
        for upto, n in prefixes(flushes):
            await rebuild(crash_redis.url, flushes, upto, n)
            await check_feed(crash_redis.url, applied, f"flush {upto}, {n} calls")

    asyncio.run(scenario())
