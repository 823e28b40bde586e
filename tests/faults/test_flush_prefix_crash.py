"""A crash can cut a group-commit flush after any of its commands (issue 8, item 1.7).

Redis applies a pipeline's script calls in order and appends them to its AOF in that order, so a
crash (or an AOF cut short) keeps every earlier flush and a prefix of the last one's calls. This
test records every flush of random sequences of reservation operations (several landing in one
window: reserve, release, extend, fulfil all or part, expire, transfer held units between
locations, on shared positions), then, for
every flush and every prefix of its script calls, rebuilds exactly that Redis state on a real
redis-server, starts a fresh inventory on it (a restart: positions are reconciled with their
records as they are activated) and checks the domain's invariants:

1. conservation: on_hand = units received - units shipped by the fulfilments that are durable,
2. reserved = the sum of the ACTIVE records' lines on the position (= the sum of its holds),
3. nothing is promised beyond what is there: reserved <= on_hand, available >= 0;
4. the change feed (issue 11) has every change of on_hand that is durable and no other: per
   position, the on_hand deltas of its feed changes (the seed's receipts, the fulfilments'
   shipments) sum to its stored on_hand, each fulfilment's shipment naming its reservation;
   and every reservation's transitions: its first is CREATED, each revision once, the last
   carries the stored record (as the wire shows it), and none for a record not stored;
5. the reservation indexes (issue 11 item 3) hold exactly the entries of the stored records
   (their state's customer, channel and location sets; a moved one not at its old location).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.persistence.rindex_helpers import expected_index, stored_index
from unistock.devtools.services import RedisServer
from unistock.server.actors import Inventory
from unistock.server.domain import (
    Line,
    Move,
    Movement,
    MovementType,
    ReserveRequest,
    Transition,
    UnistockError,
)
from unistock.server.metrics import Metrics
from unistock.server.persistence.codec import (
    FeedRecord,
    ReservationFeedRecord,
    decode_feed,
    decode_position,
    decode_reservation,
    reservation_message,
)
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.store import Phase, RedisStore

pytestmark = pytest.mark.slow

KEYS = [("S1", "L1"), ("S2", "L1"), ("S1", "L2")]
RIDS = ["R1", "R2", "R3"]
STOCK = 4
KS = Keyspace(prefix="crash", partitions=8)


class RecordingStore(RedisStore):
    """A RedisStore that keeps every flush's phases (what the pipeline sent, in order)."""

    flushes: list[list[Phase]]

    async def flush(self, phases: list[Phase]) -> tuple[int, int]:
        result = await super().flush(phases)
        self.flushes.append(phases)
        return result


def calls(phases: list[Phase]) -> list[tuple[int, int]]:
    """The (phase index, partition) of each script call of a flush, in pipeline order."""
    return [(i, p) for i, phase in enumerate(phases) for p in phase]


def prefix(phases: list[Phase], n: int) -> list[Phase]:
    """The first n script calls of a flush, as phases."""
    keep = calls(phases)[:n]
    out: list[Phase] = [{} for _ in phases]
    for i, p in keep:
        out[i][p] = phases[i][p]
    return [ph for ph in out if ph]


@dataclass
class Clock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Runtime:
    store: RedisStore
    commit: GroupCommit
    inventory: Inventory
    task: asyncio.Task[None]
    clock: Clock = field(default_factory=Clock)


@contextlib.asynccontextmanager
async def runtime(url: str, store_cls: type[RedisStore] = RedisStore) -> AsyncIterator[Runtime]:
    store = store_cls.from_url(url, KS)
    await store.open()
    commit = GroupCommit(store, Metrics(), linger=0)
    clock = Clock()
    inventory = Inventory(store, commit, commit._metrics, clock=clock)
    await inventory.start()
    task = asyncio.create_task(commit.run())
    try:
        yield Runtime(store, commit, inventory, task, clock)
    finally:
        await commit.close(grace=1)
        await asyncio.wait_for(task, 5)
        await inventory.close()
        await store.close()


Op = tuple[Any, ...]
reserve_st = st.tuples(
    st.just("reserve"),
    st.sampled_from(RIDS),
    st.lists(
        st.tuples(st.sampled_from(KEYS), st.integers(1, 3)),
        min_size=1,
        max_size=2,
        unique_by=lambda t: t[0],
    ),
    st.sampled_from([0, 60]),
)
ops_st = st.one_of(
    reserve_st,
    st.tuples(st.just("release"), st.sampled_from(RIDS)),
    st.tuples(st.just("extend"), st.sampled_from(RIDS)),
    st.tuples(st.just("fulfil"), st.sampled_from(RIDS), st.integers(0, 2)),
    st.tuples(st.just("expire"), st.integers(30, 120)),
    # Move one held unit of S1 between L1 and L2 (TransferReservation, issue 10).
    st.tuples(st.just("transfer"), st.sampled_from(RIDS), st.integers(1, 2)),
)
reserves_st = st.lists(reserve_st, min_size=1, max_size=3)
# A first round of reservations, then rounds of operations on them.
rounds_st = st.tuples(
    reserves_st, st.lists(st.lists(ops_st, min_size=1, max_size=4), min_size=1, max_size=4)
).map(lambda t: [t[0], *t[1]])


async def run_op(rt: Runtime, op: Op) -> None:
    inv = rt.inventory
    with contextlib.suppress(UnistockError):
        if op[0] == "reserve":
            _, rid, lines, ttl = op
            await inv.reserve(
                ReserveRequest.build(
                    rid,
                    [Line(k[0], k[1], q) for k, q in lines],
                    5,
                    ttl,
                    "web",
                    "ann" if rid != "R3" else "bob",
                )
            )
        elif op[0] == "release":
            await inv.release(op[1])
        elif op[0] == "extend":
            await inv.extend(op[1], rt.clock.now + 3600)
        elif op[0] == "transfer":
            _, rid, n = op
            record = await inv.get_reservation(rid)
            for ln in record.lines:
                if ln.sku == "S1":
                    to = "L2" if ln.location_id == "L1" else "L1"
                    moves = [Move("S1", ln.location_id, to, min(n, ln.quantity))]
                    await inv.transfer_reservation(rid, f"t{n}-{ln.location_id}", moves)
                    break
        elif op[0] == "fulfil":
            _, rid, units = op
            record = await inv.get_reservation(rid)
            lines = [Line(ln.sku, ln.location_id, min(units, ln.quantity)) for ln in record.lines]
            await inv.fulfil(rid, [ln for ln in lines if ln.quantity] if units else [], f"f{units}")
        else:
            rt.clock.now += op[1]
            await inv.expire_due()


async def whole_feed(
    store: RedisStore,
) -> tuple[list[FeedRecord], list[ReservationFeedRecord]]:
    """Every change in the stored feed of every partition: (position changes, reservation
    changes), each in its partition's order."""
    changes: list[FeedRecord] = []
    transitions: list[ReservationFeedRecord] = []
    for partition in range(KS.partitions):
        for _, entry in await store.read_feed(partition, count=100_000):
            for c in decode_feed(entry):
                if isinstance(c, FeedRecord):
                    changes.append(c)
                elif isinstance(c, ReservationFeedRecord):  # (not level changes)
                    transitions.append(c)
    return changes, transitions


async def check_feed(url: str, where: str) -> None:
    """Invariant 4, on the state as rebuilt (before a restart changes anything)."""
    store = RedisStore.from_url(url, KS)
    try:
        stored = dict(zip(KEYS, await store.load_positions(KEYS), strict=True))
        records = dict(zip(RIDS, await store.load_reservations(RIDS), strict=True))
        changes, transitions = await whole_feed(store)
    finally:
        await store.close()
    for rid, data in records.items():
        mine_ = [t for t in transitions if t.reservation_id == rid]
        if data is None:
            assert not mine_, (where, rid, mine_)
            continue
        record = decode_reservation(data)
        revisions = [t.revision for t in mine_]
        assert revisions == sorted(set(revisions)), (where, rid, revisions)
        assert mine_[0].transitions[0] == Transition.CREATED, (where, rid, mine_)
        # The last change is the stored record as readers see it (a later revision that
        # changed nothing they see, e.g. a repeated extension to the same time, has none).
        assert mine_[-1].revision <= record.revision, (where, rid, record, mine_)
        assert mine_[-1].reservation == reservation_message(record), (where, rid, record, mine_)
    for key, data in stored.items():
        mine = [c for c in changes if (c.sku, c.location_id) == key]
        on_hand = 0 if data is None else decode_position(key, data).on_hand
        assert sum(c.on_hand_delta for c in mine) == on_hand, (where, key, on_hand, mine)
        for c in mine:
            if c.type is None:
                assert c.extra is not None, (where, c)
                assert c.extra.reservation_id in RIDS, (where, c)


async def check_index(url: str, where: str) -> None:
    """Invariant 5: the reservation indexes hold exactly the stored records' entries, and only
    terminal records have entries kept for the sweep."""
    store = RedisStore.from_url(url, KS)
    try:
        assert await stored_index(store) == await expected_index(store), where
        for p in range(KS.partitions):
            for rid in await store.client.hkeys(KS.index_terminal(p)):
                [data] = await store.load_reservations([cast(bytes, rid).decode()])
                assert data is not None, (where, rid)
                assert not decode_reservation(data).active, (where, rid)
    finally:
        await store.close()


async def check_invariants(url: str, where: str) -> None:
    await check_feed(url, where)
    await check_index(url, where)
    async with runtime(url) as rt:
        inv = rt.inventory
        records = {}
        for rid in RIDS:
            with contextlib.suppress(UnistockError):
                records[rid] = await inv.get_reservation(rid)
        positions = {p.key: p for p in await inv.levels(KEYS)}
        for key, p in positions.items():
            shipped = sum(r.progress_of(key).shipped for r in records.values())
            assert p.on_hand == STOCK - shipped, (where, key, p, records)
            active = sum(r.held(key) for r in records.values())
            assert p.reserved == active, (where, key, p, records)
            assert p.reserved <= p.on_hand, (where, key, p)
            assert p.available >= 0, (where, key, p)
        await rt.commit.barrier()


async def rebuild(url: str, flushes: list[list[Phase]], upto: int, n: int) -> None:
    store = RedisStore.from_url(url, KS)
    try:
        await store.client.flushall()
        await store.open()
        for phases in flushes[:upto]:
            await store.flush(phases)
        if n:
            await store.flush(prefix(flushes[upto], n))
    finally:
        await store.close()


def prefixes(flushes: list[list[Phase]]) -> Iterator[tuple[int, int]]:
    for i, phases in enumerate(flushes):
        for n in range(len(calls(phases)) + 1):
            yield i, n


@pytest.fixture(scope="module")
def crash_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("crash-redis"), appendfsync="no") as r:
        yield r


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rounds=rounds_st)
def test_invariants_hold_after_a_crash_at_every_command_of_every_flush(
    crash_redis: RedisServer, rounds: list[list[Op]]
) -> None:
    async def scenario() -> None:
        RecordingStore.flushes = []
        store = RedisStore.from_url(crash_redis.url, KS)
        await store.client.flushall()
        await store.close()
        async with runtime(crash_redis.url, RecordingStore) as rt:
            await rt.inventory.apply_movements(
                [
                    Movement("seed", i, k[0], k[1], MovementType.RECEIPT, STOCK)
                    for i, k in enumerate(KEYS, 1)
                ]
            )
            seeded = len(RecordingStore.flushes)
            for ops in rounds:
                # Every op of a round starts in the same loop pass: their turns share a window
                # unless one waits for another's change of the same reservation to be durable.
                await asyncio.gather(*(run_op(rt, op) for op in ops))
            await rt.commit.barrier()
        flushes = RecordingStore.flushes
        for upto, n in prefixes(flushes):
            if upto >= seeded:
                await rebuild(crash_redis.url, flushes, upto, n)
                await check_invariants(crash_redis.url, f"flush {upto}, {n} calls")

    asyncio.run(scenario())
