"""A crash can cut any flush after any of its commands, also while transfers flow (issue 9 item
3, F17 under crash at any point).

Like test_flush_prefix_crash: random rounds of transfer movements (shipments between two
locations, receipts short, exact, twice or early, closes) are run on a real Redis with every
flush recorded; then, for every flush and every prefix of its script calls, exactly that Redis
state is rebuilt, a fresh inventory starts on it and applies what it finds in the shipments
outbox (as a restarted server does), and the invariants are checked:

1. units are conserved per SKU: sum of on_hand + in_transit + lost - unexpected over every
   location and transfer = the units received at the start (a shipment whose origin write
   survived always reaches its record, one whose origin did not never does, none twice),
2. every position's in_transit equals the sum of its transfer records' in_transit,
3. every record is found from its transfer id (the index is never behind a record),
4. the outbox is empty once the recovery ran,
5. the change feed holds each discrepancy of each record exactly once, in the record's order
   (none of a record write that was cut, none twice from a write retried after it landed).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.test_flush_prefix_crash import (
    KS,
    RecordingStore,
    crash_redis,
    prefixes,
    rebuild,
    runtime,
)
from unistock.devtools.services import RedisServer
from unistock.server.domain import Movement, MovementType, UnistockError
from unistock.server.persistence.codec import TransferFeedRecord, decode_feed

pytestmark = pytest.mark.slow
__all__ = ["crash_redis"]  # the module's Redis, shared with the reservation prefix test

SKUS = ["S1", "S2"]
LOCS = ["L1", "L2"]
TIDS = ["T1", "T2", "T3"]
STOCK = 6

Op = tuple[Any, ...]
ops_st = st.one_of(
    st.tuples(
        st.just("ship"), st.sampled_from(TIDS), st.sampled_from(SKUS), st.booleans(),
        st.integers(1, 3),
    ),
    st.tuples(
        st.just("receive"), st.sampled_from(TIDS), st.sampled_from(SKUS), st.booleans(),
        st.integers(1, 3),
    ),
    st.tuples(st.just("close"), st.sampled_from(TIDS), st.booleans()),
)  # fmt: skip
rounds_st = st.lists(st.lists(ops_st, min_size=1, max_size=4), min_size=1, max_size=4)


class Seqs:
    """One source per location (its back office), seqs in order."""

    def __init__(self) -> None:
        self.next: Counter[str] = Counter()

    def __call__(self, location: str) -> tuple[str, int]:
        self.next[location] += 1
        return f"bo-{location}", self.next[location]


async def run_op(inv: Any, op: Op, seqs: Seqs) -> None:
    with contextlib.suppress(UnistockError):
        if op[0] == "close":
            _, tid, forward = op
            await inv.close_transfer(tid, LOCS[1] if forward else LOCS[0])
            return
        kind, tid, sku, forward, qty = op
        src, dst = (LOCS[0], LOCS[1]) if forward else (LOCS[1], LOCS[0])
        if kind == "ship":
            source, seq = seqs(src)
            m = Movement(source, seq, sku, src, MovementType.TRANSFER_OUT, qty,
                         transfer_id=tid, counterpart_location_id=dst)  # fmt: skip
        else:
            source, seq = seqs(dst)
            m = Movement(source, seq, sku, dst, MovementType.TRANSFER_IN, qty, transfer_id=tid)
        await inv.apply_movements([m])


async def recovered(url: str, where: str) -> None:
    async with runtime(url) as rt:
        inv = rt.inventory
        shipping = asyncio.create_task(inv.run_shipments(retry=0.05))
        try:
            for _ in range(200):
                if not await rt.store.pending_shipments():
                    break
                await asyncio.sleep(0.02)
            assert not await rt.store.pending_shipments(), where
            await rt.commit.barrier()
            positions = {
                p.key: p for p in await inv.levels([(s, loc) for s in SKUS for loc in LOCS])
            }
            records = []
            for tid in TIDS:
                with contextlib.suppress(UnistockError):
                    records += await inv.get_transfer(tid)
            for loc in LOCS:  # every record is indexed
                for tid in TIDS:
                    with contextlib.suppress(UnistockError):
                        [t] = await inv.get_transfer(tid, loc)
                        assert t in records, (where, t)
            for sku in SKUS:
                total = sum(p.on_hand + p.in_transit for k, p in positions.items() if k[0] == sku)
                total += sum(t.line(sku).lost - t.line(sku).unexpected for t in records)
                assert total == STOCK * len(LOCS), (where, sku, positions, records)
                for loc in LOCS:
                    shown = positions[sku, loc].in_transit
                    owed = sum(t.in_transit(sku) for t in records if t.destination == loc)
                    assert shown == owed, (where, sku, loc, positions, records)
            # 5. the feed holds each discrepancy of each record once, in order
            fed: dict[tuple[str, str], list[tuple[int, str, int, str, int]]] = {}
            for partition in range(KS.partitions):
                for _, entry in await rt.store.read_feed(partition, count=100_000):
                    for c in decode_feed(entry):
                        if isinstance(c, TransferFeedRecord):
                            fed.setdefault((c.destination, c.transfer_id), []).extend(
                                (d.kind, d.sku, d.quantity, d.source_id, d.seq)
                                for d in c.discrepancies
                            )
            for t in records:
                kept = [
                    (int(d.kind), d.sku, d.quantity, d.source_id, d.seq) for d in t.discrepancies
                ]
                assert fed.get(t.key, []) == kept, (where, t)
        finally:
            shipping.cancel()
            await asyncio.gather(shipping, return_exceptions=True)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rounds=rounds_st)
def test_transfers_survive_a_crash_at_every_command_of_every_flush(
    crash_redis: RedisServer, rounds: list[list[Op]]
) -> None:
    async def scenario() -> None:
        RecordingStore.flushes = []
        store = RecordingStore.from_url(crash_redis.url, KS)
        await store.client.flushall()
        await store.close()
        async with runtime(crash_redis.url, RecordingStore) as rt:
            shipping = asyncio.create_task(rt.inventory.run_shipments(retry=0.05))
            await rt.inventory.apply_movements(
                [
                    Movement("seed", i, s, loc, MovementType.RECEIPT, STOCK)
                    for i, (s, loc) in enumerate(((s, loc) for s in SKUS for loc in LOCS), 1)
                ]
            )
            seeded = len(RecordingStore.flushes)
            seqs = Seqs()
            for ops in rounds:
                await asyncio.gather(*(run_op(rt.inventory, op, seqs) for op in ops))
            for _ in range(200):  # the last shipments reach their records
                if not await rt.store.pending_shipments():
                    break
                await asyncio.sleep(0.02)
            await rt.commit.barrier()
            shipping.cancel()
            await asyncio.gather(shipping, return_exceptions=True)
        flushes = RecordingStore.flushes
        for upto, n in prefixes(flushes):
            if upto >= seeded:
                await rebuild(crash_redis.url, flushes, upto, n)
                await recovered(crash_redis.url, f"flush {upto}, {n} calls")

    asyncio.run(scenario())
