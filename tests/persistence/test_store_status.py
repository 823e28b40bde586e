"""Store status changes in the change feed (STORE_OFFLINE / STORE_ONLINE, issue 11 item 2)
against a real redis-server: the flush script keeps each store's last published status
(us:{p}:storestat) and appends a change (a group of kind 4) only when the status it writes is
newer and different, so a retried or repeated write appends nothing twice, and a store never
stored counts as online."""

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
    StoreStatusFeedRecord,
    decode_feed,
    store_status_change,
    store_status_value,
)
from unistock.server.persistence.ledger import ledger_rows, position_rows
from unistock.server.persistence.store import PartitionWrite, RedisStore
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
    for s in statuses:
        phase.setdefault(KS.store_partition(s[0]), PartitionWrite()).statuses.append(s)
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
