"""The change feed's write path (issue 11 item 1) against a real redis-server: the flush script
appends a position's changes to its partition's stream in the same call as the position, only
when the position is written, each change once (an ambiguous earlier attempt that did apply is
not repeated), with ids that increase across partitions and across a reopening."""

from __future__ import annotations

import pytest

from tests.persistence.test_store import KS, pos_write
from unistock.server.domain import Fenced, Movement, MovementType, Position
from unistock.server.persistence.codec import FeedRecord, decode_feed, feed_change
from unistock.server.persistence.store import RedisStore


@pytest.fixture
async def store(clean_redis_url: str) -> RedisStore:
    s = RedisStore.from_url(clean_redis_url, KS)
    await s.open()
    yield s  # type: ignore[misc]
    await s.close()


def receive(p: Position, seq: int, qty: int, source: str = "wms") -> None:
    """A RECEIPT applied to p, recorded for the feed as the runtime records it."""
    m = Movement(source, seq, p.key[0], p.key[1], MovementType.RECEIPT, qty)
    before = p.on_hand
    r = p.apply(m)
    p.feed_add(
        feed_change(1_000 + seq, m, r, p.on_hand - before, 0, p.on_hand, 0, p.available, p.version)
    )


async def feed(store: RedisStore, location: str) -> list[tuple[str, list[FeedRecord]]]:
    entries = await store.read_feed(KS.location_partition(location))
    return [
        (entry_id, [c for c in decode_feed(blob) if isinstance(c, FeedRecord)])
        for entry_id, blob in entries
    ]


def seqs(entries: list[tuple[str, list[FeedRecord]]]) -> list[int]:
    return [m.seq for _, changes in entries for m in changes]


async def test_changes_go_with_their_position_once(store: RedisStore) -> None:
    p = Position(("SKU", "s1"))
    receive(p, 1, 5)
    receive(p, 2, 3)
    assert (await store.flush([pos_write(p)]))[0] == 1
    [(first_id, changes)] = await feed(store, "s1")
    assert [(m.seq, m.on_hand_delta, m.on_hand, m.version) for m in changes] == [
        (1, 5, 5, 1),
        (2, 3, 8, 2),
    ]
    assert (changes[0].type, changes[0].source_id, changes[0].sku, changes[0].location_id) == (
        MovementType.RECEIPT,
        "wms",
        "SKU",
        "s1",
    )
    assert (changes[1].available, changes[1].at_ms, changes[1].extra) == (8, 1_002, None)
    # The same write again (an attempt reported failed that did apply): nothing twice.
    await store.flush([pos_write(p)])
    assert seqs(await feed(store, "s1")) == [1, 2]
    # Changes written are forgotten by the runtime; a later change is appended after them.
    p.feed = None
    receive(p, 3, 1)
    await store.flush([pos_write(p)])
    entries = await feed(store, "s1")
    assert seqs(entries) == [1, 2, 3]
    assert entries[1][0] > first_id


async def test_a_retry_carrying_old_and_new_changes_appends_only_the_new(
    store: RedisStore,
) -> None:
    """An attempt reported failed did apply (changes 1-2); the retry carries them with a newer
    change (3): only 3 is appended."""
    p = Position(("SKU", "s1"))
    receive(p, 1, 5)
    receive(p, 2, 3)
    await store.flush([pos_write(p)])
    receive(p, 3, 1)  # p.feed still holds 1 and 2: the runtime thinks they failed
    await store.flush([pos_write(p)])
    assert seqs(await feed(store, "s1")) == [1, 2, 3]


async def test_a_stale_position_write_appends_none_of_its_changes(store: RedisStore) -> None:
    newer = Position(("SKU", "s1"))
    for seq in (1, 2, 3):
        receive(newer, seq, 1)
    older = Position(("SKU", "s1"))
    for seq in (1, 2):
        receive(older, seq, 1)
    await store.flush([pos_write(newer)])
    assert await store.flush([pos_write(older)]) == (0, 1)
    assert seqs(await feed(store, "s1")) == [1, 2, 3]


LOCATIONS = [f"s{i}" for i in range(12)]  # several partitions of the 8


async def flush_round(store: RedisStore, round_: int, locations: list[str] = LOCATIONS) -> None:
    """One flush of a RECEIPT at each location (seq round_ + 1)."""
    ps = []
    for loc in locations:
        p = Position(("SKU", loc), version=round_ * 10)
        receive(p, round_ + 1, 1)
        ps.append(p)
    await store.flush([pos_write(*ps)])


async def three_rounds(store: RedisStore) -> list[tuple[tuple[int, int], int, bytes]]:
    """Three flushes of flush_round; the feed they made, in order."""
    for round_ in range(3):
        await flush_round(store, round_)
    return await store.read_feed_from((0, 0))


def feed_id(text: str) -> tuple[int, int]:
    ms, _, n = text.partition("-")
    return (int(ms), int(n))


async def test_ids_increase_across_partitions_and_reopening(
    store: RedisStore, clean_redis_url: str
) -> None:
    for round_ in range(3):
        await flush_round(store, round_)
    ids = []
    for partition in {KS.location_partition(loc) for loc in LOCATIONS}:
        ids += [entry_id for entry_id, _ in await store.read_feed(partition)]
    assert len(ids) == len(set(ids))
    top = max(ids, key=feed_id)
    again = RedisStore.from_url(clean_redis_url, KS)
    await again.open()  # a restart: ids go on above every stored one
    try:
        assert feed_id(again.feed_id()) > feed_id(top)
    finally:
        await again.close()


async def test_a_reader_gets_every_partition_in_order_and_nothing_unsettled(
    store: RedisStore,
) -> None:
    got = await three_rounds(store)
    ids = [at for at, _, _ in got]
    assert ids == sorted(ids)
    assert len(got) == len({KS.location_partition(loc) for loc in LOCATIONS}) * 3
    rounds = [c.seq for _, _, entry in got for c in decode_feed(entry)]
    assert rounds == sorted(rounds)  # round 1's changes, then round 2's, then round 3's
    assert await store.read_feed_from(ids[3], limit=2) == got[4:6]
    # A flush begins (its ids are given; its script calls may land at any moment): readers
    # stop below its first id until a flush completes (a failed one's calls may still land).
    first = store.feed_id()
    store.feed_id()
    last = store.feed_id()
    assert store.feed_watermark() == feed_id(first)
    await flush_round(store, 3)
    assert store.feed_watermark() > feed_id(last)
    assert len(await store.read_feed_from((0, 0))) == len(got) + len(got) // 3


async def test_the_feed_is_trimmed_behind_the_slowest_durable_consumer(store: RedisStore) -> None:
    got = await three_rounds(store)
    assert await store.load_feed_cursor("ledger") == (0, 0)
    middle = got[len(got) // 2][0]
    await store.save_feed_cursor("ledger", middle)
    await store.trim_feed(["ledger", "events"])  # events has no cursor: nothing trimmed
    assert await store.read_feed_from((0, 0)) == got
    await store.save_feed_cursor("events", got[-1][0])
    await store.trim_feed(["ledger", "events"])  # behind ledger, the slowest
    assert await store.read_feed_from((0, 0)) == [e for e in got if e[0] > middle]
    assert await store.load_feed_cursor("ledger") == middle


async def test_a_failed_flush_holds_readers_back(store: RedisStore, clean_redis_url: str) -> None:
    """A flush that fails may still have applied some of its calls (or apply them late):
    readers stay below its first id until a later flush completes."""
    other = RedisStore.from_url(clean_redis_url, KS)
    await other.open()  # takes the partitions over: store's next flush is refused
    try:
        before = store.feed_watermark()
        with pytest.raises(Fenced):
            await flush_round(store, 0, ["s1"])
        assert store.feed_watermark() > before
        held = store.feed_watermark()
        store.feed_id()
        assert store.feed_watermark() == held  # still the failed flush's first id
    finally:
        await other.close()
