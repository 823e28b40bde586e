"""Reservation indexes against a real Redis: written with the records, swept once ended
records vanish, backfilled once for records stored before them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.persistence.rindex_helpers import expected_index, stored_index
from unistock.server.actors import Inventory
from unistock.server.domain import Line, Movement, MovementType, ReserveRequest
from unistock.server.metrics import Metrics
from unistock.server.persistence.codec import encode_reservation
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.rindex import Query, decode_token
from unistock.server.persistence.store import RedisStore

KS = Keyspace("ix", 8)
DEADLINE = 20.0


@contextlib.asynccontextmanager
async def runtime(url: str, retention: float = 7 * 86400) -> AsyncIterator[Inventory]:
    store = RedisStore.from_url(url, KS)
    await store.open()
    commit = GroupCommit(store, Metrics(), linger=0, retention=retention)
    inventory = Inventory(store, commit, commit._metrics)
    await inventory.start()
    task = asyncio.create_task(commit.run())
    try:
        await inventory.apply_movements(
            [Movement("seed", 1, "SKU", "store-2", MovementType.RECEIPT, 100)]
        )
        yield inventory
    finally:
        await commit.close(grace=1)
        await asyncio.wait_for(task, 5)
        await inventory.close()
        await store.close()


def request(rid: str, customer: str = "ann") -> ReserveRequest:
    return ReserveRequest.build(rid, [Line("SKU", "store-2", 1)], 3, 0, "web", customer)


async def listed(inv: Inventory, **where: object) -> list[str]:
    page = await inv.reservation_index.page(Query(**where), 1000)  # type: ignore[arg-type]
    return [r.reservation_id for r, _ in page.records]


async def test_sweep_removes_entries_once_the_record_is_gone(clean_redis_url: str) -> None:
    async with runtime(clean_redis_url, retention=0.3) as inv:
        store = inv.store
        await inv.reserve(request("gone"))
        await inv.reserve(request("kept"))
        await inv.release("gone")
        assert await listed(inv, customer_id="ann") == ["gone", "kept"]
        index = inv.reservation_index
        far = round((inv.clock() + 3600) * 1000)
        async with asyncio.timeout(DEADLINE):
            while await store.load_reservations(["gone"]) != [None]:  # noqa: ASYNC110 (Redis expires it)
                await asyncio.sleep(0.05)
        # Listed no more (its record is gone), though its entries are still there...
        assert await listed(inv, customer_id="ann") == ["kept"]
        assert await stored_index(store) != await expected_index(store)
        # ... until the sweep removes them: then the indexes hold exactly the stored records.
        assert await index.sweep(far) == 1
        assert await stored_index(store) == await expected_index(store)
        p = KS.reservation_partition("gone")
        assert await store.client.zcard(KS.index_drops(p)) == 0
        assert await store.client.hlen(KS.index_terminal(p)) == 0
        assert await index.sweep(far) == 0


async def test_sweep_waits_for_a_record_still_retained(clean_redis_url: str) -> None:
    async with runtime(clean_redis_url) as inv:
        await inv.reserve(request("r1"))
        await inv.release("r1")
        p = KS.reservation_partition("r1")
        assert await inv.store.client.zcard(KS.index_drops(p)) == 1
        # Past its drop time by the server's clock, but Redis still has the record (e.g. the
        # clocks disagree): nothing removed, looked at again when Redis drops it.
        far = round((inv.clock() + 30 * 86400) * 1000)
        assert await inv.reservation_index.sweep(far) == 0
        assert await listed(inv, customer_id="ann") == ["r1"]
        assert await stored_index(inv.store) == await expected_index(inv.store)
        score = await inv.store.client.zscore(KS.index_drops(p), "r1")
        assert score is not None
        assert score > far


async def test_backfill_indexes_records_stored_before_the_indexes(clean_redis_url: str) -> None:
    async with runtime(clean_redis_url) as inv:
        await inv.reserve(request("new"))
        await inv.reserve(request("old-active", "bob"))
        await inv.reserve(request("old-ended", "bob"))
        await inv.release("old-ended")
        store = inv.store
        # As before the upgrade: the old records' entries were never written.
        for key, _member in await stored_index(store):
            await store.client.delete(key)
        await store.client.delete(*(KS.index_drops(p) for p in range(KS.partitions)))
        await store.client.delete(*(KS.index_terminal(p) for p in range(KS.partitions)))
        assert await listed(inv, customer_id="bob") == []
        assert await inv.reservation_index.backfill() == 3
        assert await listed(inv, customer_id="bob") == ["old-active", "old-ended"]
        assert await listed(inv, customer_id="bob", states=frozenset({3})) == ["old-ended"]
        assert await stored_index(store) == await expected_index(store)
        p = KS.reservation_partition("old-ended")
        assert await store.client.zscore(KS.index_drops(p), "old-ended") is not None
        # Once: every partition is marked done.
        assert await inv.reservation_index.backfill() == 0


async def test_backfill_skips_a_record_written_since_it_was_read(clean_redis_url: str) -> None:
    async with runtime(clean_redis_url) as inv:
        await inv.reserve(request("r1"))
        record = inv.reservations.get("r1")
        assert record is not None
        read = encode_reservation(record)  # what a backfill read, ACTIVE
        await inv.release("r1")  # then the record changed (flushed with its entries)
        store = inv.store
        name = KS.reservation(KS.reservation_partition("r1"), "r1")
        before = await stored_index(store)
        assert before == await expected_index(store)
        # The script sees another revision stored: it adds nothing (no ACTIVE entry back).
        assert (
            await inv.reservation_index.index_read(
                KS.reservation_partition("r1"), [(name, read, -1)]
            )
            == 0
        )
        assert await stored_index(store) == before
        # As read now, it is indexed (the same entries: idempotent).
        [now] = await store.load_reservations(["r1"])
        ttl = await store.client.pttl(name)
        assert (
            await inv.reservation_index.index_read(
                KS.reservation_partition("r1"), [(name, now, ttl)]
            )
            == 1
        )
        assert await stored_index(store) == before


async def test_pages_short_of_matches_go_on_until_the_token_is_empty(clean_redis_url: str) -> None:
    async with runtime(clean_redis_url) as inv:
        await inv.apply_movements([Movement("seed", 2, "SKU", "dc", MovementType.RECEIPT, 100)])
        ids = [f"r{i:02d}" for i in range(80)]
        wanted = ids[3::8]  # at dc; the others at store-2
        for rid in ids:
            where = "dc" if rid in wanted else "store-2"
            await inv.reserve(
                ReserveRequest.build(rid, [Line("SKU", where, 1)], 3, 0, "web", "ann")
            )
        created = {rid: await inv.get_reservation(rid) for rid in ids}
        ordered = sorted(ids, key=lambda rid: (round(created[rid].created_at * 1000), rid))
        index = inv.reservation_index

        async def every(query: Query, size: int, newest_first: bool) -> tuple[list[str], int]:
            got: list[str] = []
            pages, after = 0, ""
            while True:
                page = await index.page(query, size, after, newest_first=newest_first)
                pages += 1
                got += [r.reservation_id for r, _ in page.records]
                if not page.next_token:
                    return got, pages
                after = decode_token(page.next_token, newest_first)

        for newest_first in (False, True):
            order = ordered[::-1] if newest_first else ordered
            # Ann's reservations at dc: read through the customer's sets, most members do not
            # match; each page is exact up to the end of the sets it had to cut short.
            got, _ = await every(Query(customer_id="ann", location_id="dc"), 2, newest_first)
            assert got == [rid for rid in order if rid in wanted], newest_first
            got, _ = await every(Query(customer_id="ann"), 3, newest_first)
            assert got == order, newest_first
            # One round per page: pages short of matches (even empty) come first; the token
            # is what says "go on".
            index.max_rounds = 1
            got, pages = await every(Query(customer_id="ann", location_id="dc"), 2, newest_first)
            assert got == [rid for rid in order if rid in wanted], newest_first
            assert pages > len(wanted) // 2
            index.max_rounds = 16
