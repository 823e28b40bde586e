"""The SQL ledger (issue 11 item 4, first part) on a real server, Redis and SQLite / PostgreSQL:
every applied movement, fulfilment shipment and reservation transition reaches the ledger once;
a position's ledger deltas sum to its on_hand (invariant 9); a restart writes nothing twice;
feed entries read again after a crash add nothing."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, mv, send
from unistock.client import UnistockClient
from unistock.server.actors.ledger import LedgerWriter
from unistock.server.app.server import UnistockServer
from unistock.server.domain import Unavailable
from unistock.server.metrics import LedgerMetrics
from unistock.server.persistence.feed import FeedReader, FeedRound
from unistock.server.persistence.ledger import MOVEMENT, RESERVATION, SHIPMENT, LedgerStore
from unistock.server.persistence.sql import LEDGER, LEDGER_FEED, MasterDataStore


class DiesBeforeItsCursors(FeedReader):
    """A writer's feed reader killed between its SQL commit and its cursors' save."""

    async def commit(self, got: FeedRound) -> None:
        raise Unavailable("killed")


async def settled(srv: UnistockServer, rows: int) -> LedgerStore:
    ledger = srv.ledger._ledger
    for _ in range(100):
        if await asyncio.to_thread(ledger.count) >= rows:
            break
        await asyncio.sleep(0.05)
    return ledger


async def test_every_change_reaches_the_ledger_once(
    make_server: MakeServer, clean_redis_url: str, sql_url: str
) -> None:
    srv = await make_server(clean_redis_url, database_url=sql_url, ledger_in_process=1)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await send(
            c,
            batch(
                "wms",
                mv(1, "RECEIPT", "A", "s1", 10),
                mv(2, "RECEIPT", "B", "s1", 4),
                mv(3, "SALE", "A", "s1", 3),
                mv(3, "SALE", "A", "s1", 3),  # a duplicate: not in the ledger
            ),
        )
        await c.reserve("o-1", [("A", "s1", 2)], kind="ORDER", channel="web")
        await c.fulfil("o-1", [("A", "s1", 1)], request_id="ship-1")
        await c.fulfil("o-1", request_id="ship-2")
        await send(c, batch("count", mv(1, "COUNT", "B", "s1", 6, count_id="c-1")))
        levels = {lv.sku: lv.on_hand for lv in await c.get_availability(sku="A")}
        levels |= {lv.sku: lv.on_hand for lv in await c.get_availability(sku="B")}
    # 3 movements + 1 count, 2 shipments, 3 reservation changes (created, partly, fulfilled)
    ledger = await settled(srv, 9)
    with ledger.engine.connect() as conn:
        rows = list(conn.execute(sa.select(LEDGER).order_by(LEDGER.c.id)))
    kinds = [r.kind for r in rows]
    assert kinds.count(MOVEMENT) == 4
    assert kinds.count(SHIPMENT) == 2
    assert [r.transitions for r in rows if r.kind == RESERVATION] == [
        "CREATED",
        "PARTLY_FULFILLED",
        "FULFILLED",
    ]
    assert {r.channel for r in rows if r.kind == RESERVATION} == {"web"}
    for sku in ("A", "B"):  # invariant 9: the ledger's deltas sum to on_hand
        assert sum(r.on_hand_delta for r in rows if r.sku == sku) == levels[sku], sku
    [count] = [r for r in rows if r.count_id]
    assert (count.variance, count.on_hand) == (2, 6)
    await srv.stop()
    srv = await make_server(clean_redis_url, database_url=sql_url, ledger_in_process=1)
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(srv.ledger._ledger.count) == len(rows)


async def test_entries_read_again_after_the_sql_commit_add_nothing(
    make_server: MakeServer, clean_redis_url: str, sql_url: str
) -> None:
    """A writer that dies between its SQL commit and its cursors' save: the next one reads the
    same feed entries again and skips them (ledger_feed), in whatever rounds it reads them; a
    new entry after them is written."""

    srv = await make_server(clean_redis_url, database_url=sql_url)
    ks, client = srv.store.keyspace, srv.store.client
    await FeedReader(client, ks, "crashy").register()
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        for seq in range(1, 6):
            await send(c, batch("wms", mv(seq, "RECEIPT", "A", f"s{seq % 2}", seq)))
        await c.reserve("o-1", [("A", "s1", 2)], kind="ORDER", channel="web")
    store = MasterDataStore(sql_url)
    try:
        store.migrate()
        ledger = LedgerStore(store.engine)
        dying = LedgerWriter(DiesBeforeItsCursors(client, ks, "crashy"), ledger, LedgerMetrics())
        with pytest.raises(Unavailable):
            await dying.drain_once()
        assert await asyncio.to_thread(ledger.count) == 6
        again = LedgerWriter(FeedReader(client, ks, "crashy"), ledger, LedgerMetrics(), batch=1)
        while await again.drain_once():  # one entry per partition per round
            pass
        assert await asyncio.to_thread(ledger.count) == 6
        async with UnistockClient(target(srv), TOKENS["admin"]) as c:
            await send(c, batch("wms", mv(6, "SALE", "A", "s1", 1)))
        while await again.drain_once():
            pass
        with store.engine.connect() as conn:
            keys = [r.entry_key for r in conn.execute(sa.select(LEDGER).order_by(LEDGER.c.id))]
        assert len(keys) == len(set(keys)) == 7
    finally:
        store.close()


async def test_transfer_discrepancies_reach_the_ledger_once(
    make_server: MakeServer, clean_redis_url: str, sql_url: str
) -> None:
    """Each discrepancy a transfer record records is a TRANSFER row, once, across a restart;
    GetKpis's lost in transit counts CLOSED_SHORT minus RECEIVED_AFTER_CLOSE at the
    destination."""
    from tests.server.test_transfers import into, out
    from unistock.server.persistence.ledger import TRANSFER

    srv = await make_server(clean_redis_url, database_url=sql_url, ledger_in_process=1)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await send(c, batch("wms", mv(1, "RECEIPT", "BOOT-42", "dc-1", 20)))
        await send(c, batch("dc", out(1, 5, "t-1", "s1")))
        await send(c, batch("till", into(1, 3, "t-1", "s1")))
        await c.close_transfer("t-1", "s1")  # 2 units lost in transit
        await send(c, batch("till", into(2, 1, "t-1", "s1")))  # 1 of them turned up
        await send(c, batch("till", into(3, 4, "t-2", "s1")))  # t-2 was never shipped
    ledger = await settled(srv, 10)
    await srv.stop()
    srv = await make_server(clean_redis_url, database_url=sql_url, ledger_in_process=1)
    await asyncio.sleep(0.5)
    with ledger.engine.connect() as conn:
        rows = list(conn.execute(sa.select(LEDGER).where(LEDGER.c.kind == TRANSFER)))
    found = sorted((r.transfer_id, r.reason, r.sku, r.location_id, r.quantity) for r in rows)
    assert found == [
        ("t-1", "CLOSED_SHORT", "BOOT-42", "s1", 2),
        ("t-1", "RECEIVED_AFTER_CLOSE", "BOOT-42", "s1", 1),
        ("t-2", "RECEIVED_BEFORE_SHIPPED", "BOOT-42", "s1", 4),
    ]
    assert all(r.on_hand_delta is None for r in rows)  # invariant 9 unchanged
    by_source = {r.reason: (r.source_id, r.seq) for r in rows}
    assert by_source["RECEIVED_AFTER_CLOSE"] == ("till", 2)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        kpis = await c.get_kpis("LOCATION")
    [s1] = [g for g in kpis.groups if g.key == "s1"]
    assert s1.lost_in_transit == 1


def test_pruning_forgets_only_written_entries_behind_each_cursor(sql_url: str) -> None:
    """LedgerStore.prune_feed: per partition, the entries from before its cursor's millisecond;
    entries recorded before 0007 (partition -1) from before the oldest cursor."""
    store = MasterDataStore(sql_url)
    try:
        store.migrate()
        rows = [
            (3, "1796660000000-0"),
            (3, "1796660000005-0"),
            (3, "1796660000009-2"),  # the cursor's own millisecond: kept
            (7, "1796660000001-0"),  # after partition 7's cursor: kept
            (-1, "1796650000000-0"),
            (-1, "1796670000000-0"),
        ]
        with store.engine.begin() as conn:
            conn.execute(sa.insert(LEDGER_FEED), [{"partition": p, "feed_id": f} for p, f in rows])
        ledger = LedgerStore(store.engine)
        assert ledger.prune_feed({3: 1796660000009, 7: 1796660000000}) == 3
        with store.engine.connect() as conn:
            left = sorted(conn.execute(sa.select(LEDGER_FEED.c.partition, LEDGER_FEED.c.feed_id)))
        assert left == [(-1, "1796670000000-0"), (3, "1796660000009-2"), (7, "1796660000001-0")]
        assert ledger.prune_feed({}) == 0
    finally:
        store.close()


async def test_a_writer_prunes_behind_its_cursors_and_still_skips_what_it_reads_again(
    make_server: MakeServer, clean_redis_url: str, sql_url: str
) -> None:
    """The writer forgets ledger_feed rows behind its saved cursors (bounded table), and a
    writer dying between its SQL commit and its cursors' save after that still has the rows it
    needs: the next one skips those entries."""

    srv = await make_server(clean_redis_url, database_url=sql_url)
    ks, client = srv.store.keyspace, srv.store.client
    await FeedReader(client, ks, "pruner").register()
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        for seq in range(1, 5):  # one location: one partition, entries in distinct ms
            await send(c, batch("wms", mv(seq, "RECEIPT", "A", "s1", seq)))
            await asyncio.sleep(0.01)
    store = MasterDataStore(sql_url)
    try:
        store.migrate()
        ledger = LedgerStore(store.engine)
        writer = LedgerWriter(FeedReader(client, ks, "pruner"), ledger, LedgerMetrics())
        writer.prune_every = 0
        while await writer.drain_once():
            pass
        assert await asyncio.to_thread(ledger.count) == 4
        with store.engine.connect() as conn:
            kept = list(conn.execute(sa.select(LEDGER_FEED)))
        assert len(kept) == 1  # the last entry (its cursor's millisecond); 3 forgotten
        async with UnistockClient(target(srv), TOKENS["admin"]) as c:
            await send(c, batch("wms", mv(5, "SALE", "A", "s1", 1)))
        dying = LedgerWriter(DiesBeforeItsCursors(client, ks, "pruner"), ledger, LedgerMetrics())
        with pytest.raises(Unavailable):
            await dying.drain_once()
        assert await asyncio.to_thread(ledger.count) == 5
        again = LedgerWriter(FeedReader(client, ks, "pruner"), ledger, LedgerMetrics())
        again.prune_every = 0
        while await again.drain_once():
            pass
        assert await asyncio.to_thread(ledger.count) == 5  # read again, skipped
    finally:
        store.close()
