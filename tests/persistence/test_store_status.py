"""Store status and network level class changes in the change feed (STORE_OFFLINE /
STORE_ONLINE, NETWORK_* events; issue 11 item 2) against a real redis-server: the flush script
keeps each store's last published status (us:{p}:storestat) and each network level's class
(us:{p}:netstat), and appends a change (a group of kind 4 or 5) only when the status it writes
is newer and different, so a retried or repeated write appends nothing twice; a store never
stored counts as online, a network level as out of stock (or, for a start's baseline, as the
class written)."""

from __future__ import annotations

import asyncio

import pytest

from tests.persistence import test_store
from tests.persistence.test_group_commit import committer
from tests.persistence.test_store import KS
from unistock.devtools.services import RedisServer
from unistock.server.actors.events import derive, partition_of
from unistock.server.domain import Unavailable
from unistock.server.persistence.codec import (
    FEED_NETWORK,
    FEED_STORE,
    LOW,
    OK,
    OUT,
    NetworkLevelFeedRecord,
    StoreStatusFeedRecord,
    decode_feed,
    network_level_change,
    network_level_value,
    store_status_change,
    store_status_value,
)
from unistock.server.persistence.ledger import ledger_rows, position_rows
from unistock.server.persistence.store import PartitionWrite, RedisStore, StatusWrite
from unistock.v1 import inventory_pb2 as pb

store = test_store.store  # the fixture: an opened RedisStore on an empty Redis


def status(store_id: str, revision: int, online: bool) -> tuple[str, bytes, bytes]:
    change = store_status_change(
        revision, 5_000 + revision, store_id, online, 1_000, f"reason {revision}"
    )
    return store_id, store_status_value(revision, online), change


async def write(store: RedisStore, *statuses: tuple[str, bytes, bytes]) -> int:
    """Flush statuses (each in its store's partition); returns the records written."""
    phase: dict[int, PartitionWrite] = {}
    for store_id, value, change in statuses:
        phase.setdefault(KS.store_partition(store_id), PartitionWrite()).statuses.append(
            StatusWrite(FEED_STORE, store_id, value, change, b"1")
        )
    return (await store.flush([phase]))[0]


async def changes(store: RedisStore, store_id: str) -> list[tuple[str, StoreStatusFeedRecord]]:
    out = []
    for entry_id, blob in await store.read_feed(KS.store_partition(store_id)):
        out += [(entry_id, r) for r in decode_feed(blob) if isinstance(r, StoreStatusFeedRecord)]
    return out


async def test_a_change_is_appended_once_and_only_when_the_status_changes(
    store: RedisStore,
) -> None:
    assert await write(store, status("s1", 1, True)) == 1  # never stored: online already
    assert await changes(store, "s1") == []
    offline = status("s1", 2, False)
    assert await write(store, offline) == 1
    [(_, r)] = await changes(store, "s1")
    assert r == StoreStatusFeedRecord("s1", 2, 5_002, False, 1_000, "reason 2")
    assert await write(store, offline) == 0  # a retry of a write that did apply
    assert await write(store, status("s1", 1, True)) == 0  # older than the stored one
    assert len(await changes(store, "s1")) == 1
    assert await write(store, status("s1", 3, False)) == 1  # newer, same status: no change
    assert len(await changes(store, "s1")) == 1
    # Offline then online again in one flush: both changes, in order.
    assert await write(store, status("s1", 4, True), status("s1", 5, False)) == 2
    got = [(r.revision, r.online) for _, r in await changes(store, "s1")]
    assert got == [(2, False), (4, True), (5, False)]
    stored = await store.client.hget(KS.store_status(KS.store_partition("s1")), "s1")
    assert stored == store_status_value(5, False)


async def test_the_ledger_ignores_it_and_the_deriver_makes_one_event(store: RedisStore) -> None:
    await write(store, status("s2", 7, False))
    [(entry_id, blob)] = await store.read_feed(KS.store_partition("s2"))
    [record] = decode_feed(blob, notable=True)
    assert isinstance(record, StoreStatusFeedRecord)
    assert ledger_rows(entry_id, [record]) == []
    rows, others = position_rows(entry_id, blob)
    assert (rows, ledger_rows(entry_id, others)) == ([], [])
    [ev] = derive(record)
    assert (ev.type, ev.store_id, ev.location_id, ev.at.ToMilliseconds()) == (
        pb.STORE_OFFLINE,
        "s2",
        "",
        5_007,
    )
    assert ev.detail == "store s2 offline: reason 7 (last heard from 1970-01-01T00:00:01Z)"
    assert partition_of(KS, ev) == KS.store_partition("s2")
    [back] = derive(record._replace(online=True))
    assert back.type == pb.STORE_ONLINE


async def test_group_commit_keeps_a_status_whose_flush_failed(redis_server: RedisServer) -> None:
    redis, commit, task = await committer(redis_server.url)
    gc_ks = redis.keyspace
    try:
        commit.store_status_changed(*status("s3", 1, False))
        await commit.barrier()
        redis_server.kill()
        commit.store_status_changed(*status("s3", 2, True))
        with pytest.raises(Unavailable):
            await commit.barrier()
        redis_server.restart()
        async with asyncio.timeout(30):
            while True:  # retried by the flusher (a barrier waits for the next window)
                try:
                    await commit.barrier()
                    break
                except Unavailable:
                    await asyncio.sleep(0.1)
        got = [
            (r.revision, r.online)
            for _, blob in await redis.read_feed(gc_ks.store_partition("s3"))
            for r in decode_feed(blob)
            if isinstance(r, StoreStatusFeedRecord)
        ]
        assert got == [(1, False), (2, True)]
    finally:
        await commit.close()
        await task
        await redis.close()


def level(
    revision: int, before: int, after: int, available: int, *, baseline: bool = False
) -> StatusWrite:
    """A network level's class status for web/A (see GroupCommit.network_level_changed)."""
    msg = pb.NetworkLevel(sku="A", network="web", available=available, locations=2)
    value = network_level_value(revision, after)
    change = network_level_change(revision, 9_000 + revision, msg, before, after, 5)
    return StatusWrite(FEED_NETWORK, "web|A", value, change, value[8:] if baseline else b"0")


async def write_levels(store: RedisStore, *statuses: StatusWrite) -> int:
    phase = {KS.network_level_partition("web", "A"): PartitionWrite(statuses=list(statuses))}
    return (await store.flush([phase]))[0]


async def level_changes(store: RedisStore) -> list[NetworkLevelFeedRecord]:
    blobs = await store.read_feed(KS.network_level_partition("web", "A"))
    return [r for _, b in blobs for r in decode_feed(b) if isinstance(r, NetworkLevelFeedRecord)]


async def test_network_level_classes_are_appended_once_per_change(store: RedisStore) -> None:
    # A baseline (a start's first look at a level never published): stored, no change.
    assert await write_levels(store, level(1, OUT, OK, 9, baseline=True)) == 1
    assert await level_changes(store) == []
    low = level(2, OK, LOW, 4)
    assert await write_levels(store, low) == 1
    assert await write_levels(store, low) == 0  # a retry of a write that did apply
    assert await write_levels(store, level(3, OK, LOW, 3)) == 1  # newer, same class
    [r] = await level_changes(store)
    assert r == NetworkLevelFeedRecord("web", "A", 2, 9_002, OK, LOW, 4, 2, 0, 5)
    # Out then in stock again in one flush: both, in order; an older revision: nothing.
    assert await write_levels(store, level(4, LOW, OUT, 0), level(5, OUT, OK, 8)) == 2
    assert await write_levels(store, level(1, OK, LOW, 1)) == 0
    assert [(c.revision, c.after) for c in await level_changes(store)] == [
        (2, LOW),
        (4, OUT),
        (5, OK),
    ]
    [(entry_id, blob), *_] = await store.read_feed(KS.network_level_partition("web", "A"))
    [record] = decode_feed(blob, notable=True)
    assert ledger_rows(entry_id, [record]) == []
    [ev] = derive(record)
    assert (ev.type, ev.network, ev.sku, ev.available, ev.location_id) == (
        pb.NETWORK_LOW_STOCK,
        "web",
        "A",
        4,
        "",
    )
    assert partition_of(KS, ev) == KS.network_level_partition("web", "A")


async def test_a_level_never_stored_counts_as_out_of_stock(store: RedisStore) -> None:
    assert await write_levels(store, level(1, OUT, OUT, 0)) == 1  # no change: out already
    assert await write_levels(store, level(2, OUT, LOW, 2)) == 1
    assert [(c.revision, c.after) for c in await level_changes(store)] == [(2, LOW)]
