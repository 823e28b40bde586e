"""LedgerService (issue 11 item 4, the read side) on a real server, Redis and SQLite /
PostgreSQL: histories of what was applied through the server (the ledger writer in the
process), paged without a row twice or missed while rows are added, filtered by type and time;
KPIs per location, store and channel equal to what was applied (sales, returns, shrinkage from
a count and its correction, lost in transit from transfer-discrepancy rows, reservations made /
fulfilled / expired / released); validation, roles, a database that is down; the 0004
migration on a database that has ledger rows."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.timestamp_pb2 import Timestamp

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.persistence.test_sql import downgraded_to, upgraded_to
from tests.server.test_api import batch, mv, send
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import PostgresServer
from unistock.server.app.server import UnistockServer
from unistock.server.persistence.ledger import MOVEMENT, TRANSFER, LedgerStore
from unistock.server.persistence.sql import LEDGER, MasterDataStore
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb
from unistock.v1 import ledger_pb2 as lpb

E = lpb.LedgerEntry


async def ledger_server(make_server: MakeServer, redis_url: str, sql_url: str) -> UnistockServer:
    return await make_server(
        redis_url, database_url=sql_url, ledger_in_process=1, expiry_interval_s=0.1
    )


async def history(c: UnistockClient, **where: Any) -> list[lpb.LedgerEntry]:
    return [e async for e in c.ledger_entries(**where)]


async def settled(c: UnistockClient, n: int, **where: Any) -> list[lpb.LedgerEntry]:
    """The history once it has n entries (the ledger writer runs behind the answers)."""
    for _ in range(200):
        entries = await history(c, **where)
        if len(entries) >= n:
            assert len(entries) == n, [E.Type.Name(e.type) for e in entries]
            return entries
        await asyncio.sleep(0.05)
    raise AssertionError(f"{len(entries)} entries, expected {n}: {where}")


def names(entries: list[lpb.LedgerEntry]) -> list[str]:
    return [E.Type.Name(e.type) for e in entries]


def ms(ts: Timestamp) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


async def test_history_of_a_position_a_location_a_sku_and_a_reservation(
    make_server: MakeServer, clean_redis_url: str, sql_url: str
) -> None:
    srv = await ledger_server(make_server, clean_redis_url, sql_url)
    async with (
        UnistockClient(target(srv), TOKENS["backoffice"]) as bo,
        UnistockClient(target(srv), TOKENS["admin"]) as c,
    ):
        await send(
            bo,
            batch(
                "till",
                mv(1, "RECEIPT", "A", "s1", 10),
                mv(2, "SALE", "A", "s1", 3),
                mv(3, "RETURN", "A", "s1", 1),
                mv(4, "RECEIPT", "B", "s1", 4),
                mv(5, "RECEIPT", "A", "s2", 7),
            ),
        )
        await c.reserve("o-1", [("A", "s1", 2)], kind="ORDER", channel="web", customer_id="cu")
        await c.fulfil("o-1", [("A", "s1", 1)], request_id="ship-1")
        # The pickup at the till reports the unit shipped again, and the one still held.
        await send(bo, batch("till", mv(6, "SALE", "A", "s1", 2, reservation_id="o-1")))
        await send(bo, batch("count", mv(1, "COUNT", "A", "s1", 5, count_id="c-1")))
        [level] = await c.get_availability(keys=[("A", "s1")])

        position = await settled(c, 6, sku="A", location_id="s1")
        assert names(position) == ["RECEIPT", "SALE", "RETURN", "SHIPMENT", "SALE", "COUNT"]
        assert [e.entry_id for e in position] == sorted(e.entry_id for e in position)
        # Invariant 9 as the service shows it: on_hand after each entry, the deltas summing to it.
        assert [e.on_hand for e in position] == [10, 7, 8, 7, 6, 5]
        assert sum(e.on_hand_delta for e in position) == level.on_hand == 5
        receipt, sale, _, shipment, pickup, count = position
        assert (receipt.source_id, receipt.seq, receipt.quantity) == ("till", 1, 10)
        assert (receipt.movement_type, receipt.version) == (E.RECEIPT, 1)
        assert (sale.on_hand_delta, sale.available) == (-3, 7)
        assert (shipment.reservation_id, shipment.quantity, shipment.source_id) == ("o-1", 1, "")
        assert (pickup.reservation_id, pickup.quantity, pickup.on_hand_delta) == ("o-1", 2, -1)
        assert (count.count_id, count.variance, count.quantity) == ("c-1", -1, 5)
        assert receipt.feed_id
        assert receipt.at.seconds > 0

        location = await history(c, location_id="s1")
        assert [(e.sku, E.Type.Name(e.type)) for e in location if e.sku == "B"] == [
            ("B", "RECEIPT")
        ]
        assert len(location) == 7
        everywhere = await history(c, sku="A")
        assert sorted({e.location_id for e in everywhere}) == ["s1", "s2"]
        assert len(everywhere) == 7

        # A reservation: its transitions (with the record) and the entries naming it.
        res = await settled(c, 5, reservation_id="o-1")
        assert sorted(names(res)) == ["RESERVATION"] * 3 + ["SALE", "SHIPMENT"]
        assert [list(e.transitions) for e in res if e.type == E.RESERVATION] == [
            ["CREATED"],
            ["PARTLY_FULFILLED"],
            ["FULFILLED"],
        ]
        created = res[0]
        assert (created.channel, created.customer_id, created.revision) == ("web", "cu", 1)
        assert created.reservation.reservation_id == "o-1"
        assert [(ln.sku, ln.location_id, ln.quantity) for ln in created.reservation.lines] == [
            ("A", "s1", 2)
        ]
        assert [e for e in res if e.type == E.RESERVATION][-1].reservation_state == 2  # FULFILLED
        assert (created.sku, created.location_id) == ("", "")


async def test_pages_list_every_entry_once_while_entries_are_added(
    make_server: MakeServer, clean_redis_url: str, sql_url: str
) -> None:
    srv = await ledger_server(make_server, clean_redis_url, sql_url)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as c:
        await send(c, batch("wms", *(mv(i, "RECEIPT", "A", "s1", i) for i in range(1, 8))))
        await settled(c, 7, location_id="s1")
        seen: list[int] = []
        token = ""
        seq = 8
        while True:
            page = await c.list_ledger_entries(location_id="s1", page_size=3, page_token=token)
            assert len(page.entries) <= 3
            seen += [e.quantity for e in page.entries]
            token = page.next_page_token
            if not token:
                break
            # An entry written between two pages: on a later page, and nothing missed.
            await send(c, batch("wms", mv(seq, "RECEIPT", "A", "s1", seq)))
            await settled(c, seq, location_id="s1")
            seq += 1
        assert seq == 10  # pages 1-3, 4-6, then 7-9 (8 and 9 written while paging)
        assert seen == list(range(1, seq))
        # The default page and the iterator's limit.
        assert len((await c.list_ledger_entries(location_id="s1")).entries) == 9
        assert len([e async for e in c.ledger_entries(location_id="s1", limit=4)]) == 4


async def test_default_page_size_is_100(server: UnistockServer) -> None:
    rows = [
        {"entry_key": f"p:s1|A:{i}", "feed_id": "1-0", "kind": MOVEMENT, "at_ms": 1_000 + i,
         "sku": "A", "location_id": "s1", "version": i, "movement_type": 3, "quantity": i}
        for i in range(1, 151)
    ]  # fmt: skip
    await asyncio.to_thread(LedgerStore(server.master.store.engine).write, rows)
    async with UnistockClient(target(server), TOKENS["backoffice"]) as c:
        first = await c.list_ledger_entries(location_id="s1")
        assert [e.quantity for e in first.entries] == list(range(1, 101))
        rest = await c.list_ledger_entries(location_id="s1", page_token=first.next_page_token)
        assert [e.quantity for e in rest.entries] == list(range(101, 151))
        assert rest.next_page_token == ""
        assert len((await c.list_ledger_entries(sku="A", page_size=1000)).entries) == 150


async def test_type_and_time_filters(
    make_server: MakeServer, clean_redis_url: str, sql_url: str
) -> None:
    srv = await ledger_server(make_server, clean_redis_url, sql_url)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as c:
        for i, kind in enumerate(["RECEIPT", "SALE", "RETURN", "SALE", "RECEIPT", "SALE"], 1):
            await send(c, batch("till", mv(i, kind, "A", "s1", 1)))
            await asyncio.sleep(0.01)  # entries a few ms apart (and some maybe in the same ms)
        every = await settled(c, 6, sku="A", location_id="s1")
        sales = await history(c, sku="A", location_id="s1", types=["SALE"])
        assert [e.seq for e in sales] == [2, 4, 6]
        both = await history(c, sku="A", location_id="s1", types=["SALE", E.RETURN])
        assert [e.seq for e in both] == [2, 3, 4, 6]
        assert await history(c, sku="A", location_id="s1", types=["COUNT", "SHIPMENT"]) == []
        third = every[2].at
        since = await history(c, location_id="s1", since=third)
        assert since == [e for e in every if ms(e.at) >= ms(third)]
        assert since[0].seq <= 3
        assert since[-1].seq == 6
        until = await history(c, location_id="s1", until=third)
        assert until == [e for e in every if ms(e.at) < ms(third)]
        assert len(since) + len(until) == 6
        later = datetime.now(UTC) + timedelta(hours=1)
        assert await history(c, location_id="s1", since=later) == []
        assert await history(c, location_id="s1", until=later) == every


async def applied_day(c: UnistockClient, srv: UnistockServer, sql_url: str) -> None:
    """What test_kpis applies: see the expected figures there."""
    await c.upsert_locations(
        [
            apb.Location(location_id="s1", type=apb.STORE, store_id="store-1"),
            apb.Location(location_id="s1b", type=apb.STORE, store_id="store-1"),
        ]
    )
    await send(
        c,
        batch(
            "till",
            mv(1, "RECEIPT", "A", "s1", 20),
            mv(2, "RECEIPT", "A", "s1b", 5),
            mv(3, "SALE", "A", "s1", 3),  # a till sale: channel store
            mv(4, "RETURN", "A", "s1", 1),
        ),
    )
    await c.reserve("web-1", [("A", "s1", 2)], kind="ORDER", channel="web")
    await c.fulfil("web-1")  # a SHIPMENT of 2 for web
    await c.reserve("cc-1", [("A", "s1b", 2)], kind="CLICK_AND_COLLECT", channel="app")
    await c.fulfil("cc-1", [("A", "s1b", 1)], request_id="cc-1-a")  # a SHIPMENT of 1 for app
    # The pickup of both units at the till: the one shipped already is not sold twice.
    await send(c, batch("till", mv(5, "SALE", "A", "s1b", 2, reservation_id="cc-1")))
    await c.reserve("cart-1", [("A", "s1", 1)], kind="CART", ttl_seconds=1, channel="web")
    await c.reserve("rel-1", [("A", "s1", 1)], kind="ORDER")  # no channel: ""
    await c.release("rel-1")
    # on_hand 16 at s1; counted 14: variance -2; then a sale that happened before the count
    # arrives: it corrects the variance by +1 (shrinkage 1) and is a sale (1 unit).
    await send(c, batch("count", mv(1, "COUNT", "A", "s1", 14, count_id="c-1")))
    await send(c, batch("till", mv(6, "SALE", "A", "s1", 1, count_id="c-1")))
    # At s1b: a damaged return (returned, though not on_hand) and a damage written off (an
    # ADJUSTMENT: no shrinkage, which is counts only).
    await send(
        c,
        batch(
            "till",
            mv(7, "RETURN", "A", "s1b", 1, condition=pb.NON_SELLABLE),
            mv(8, "ADJUSTMENT", "A", "s1b", 1, adjustment_sign=pb.DECREASE, reason="damaged"),
        ),
    )
    for _ in range(100):  # cart-1 expires (ttl 1 s)
        if (await c.get_reservation("cart-1")).state == 4:
            break
        await asyncio.sleep(0.1)
    # Transfer discrepancies at s2 (the transfer-discrepancy writer's rows): 5 lost, 2 of
    # them turned up; OVER_RECEIVED is no loss.
    store = MasterDataStore(sql_url)
    try:
        LedgerStore(store.engine).write(
            [
                {"entry_key": f"t:T1:{i}", "feed_id": "1-0", "kind": TRANSFER, "at_ms": at,
                 "sku": "A", "location_id": "s2", "transfer_id": "T1", "quantity": q,
                 "reason": reason}
                for i, (reason, q, at) in enumerate(
                    [("CLOSED_SHORT", 5, now_ms()), ("RECEIVED_AFTER_CLOSE", 2, now_ms()),
                     ("OVER_RECEIVED", 3, now_ms())]
                )
            ]
        )  # fmt: skip
    finally:
        store.close()


def now_ms() -> int:
    return int(datetime.now(UTC).timestamp() * 1000)


def figures(resp: lpb.GetKpisResponse) -> dict[str, tuple[int, ...]]:
    """key -> (sold, returned, shrinkage, lost, made, fulfilled, expired, released)"""
    return {
        g.key: (
            g.units_sold,
            g.units_returned,
            g.shrinkage,
            g.lost_in_transit,
            g.reservations_made,
            g.reservations_fulfilled,
            g.reservations_expired,
            g.reservations_released,
        )
        for g in resp.groups
    }


async def test_kpis_per_location_store_and_channel_equal_what_was_applied(
    make_server: MakeServer, clean_redis_url: str, sql_url: str
) -> None:
    srv = await ledger_server(make_server, clean_redis_url, sql_url)
    started = datetime.now(UTC) - timedelta(seconds=1)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await applied_day(c, srv, sql_url)
        # Every reservation's last transition is in the ledger (12 position entries meanwhile).
        for rid, last in (("web-1", "FULFILLED"), ("cc-1", "FULFILLED"), ("cart-1", "EXPIRED"),
                          ("rel-1", "RELEASED")):  # fmt: skip
            for _ in range(200):
                entries = await history(c, reservation_id=rid, types=["RESERVATION"])
                if entries and last in entries[-1].transitions:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"{rid} never {last} in the ledger")
        await settled(c, 6, location_id="s1")  # receipt, sale, return, shipment, count, sale
        s1b = await settled(c, 5, location_id="s1b")  # receipt, shipment, pickup, return, adj.
        assert [(e.type, e.on_hand_delta) for e in s1b[-2:]] == [(E.RETURN, 0), (E.ADJUSTMENT, -1)]
        by_location = figures(await c.get_kpis("LOCATION", since=started))
        #                sold returned shrink lost made fulf exp rel
        assert by_location == {
            "s1": (3 + 2 + 1, 1, 1, 0, 3, 1, 1, 1),
            "s1b": (2, 1, 0, 0, 1, 1, 0, 0),
            "s2": (0, 0, 0, 3, 0, 0, 0, 0),
        }
        assert figures(await c.get_kpis("STORE", since=started)) == {
            "store-1": (8, 2, 1, 0, 4, 2, 1, 1),
            "s2": (0, 0, 0, 3, 0, 0, 0, 0),
        }
        by_channel = figures(await c.get_kpis("CHANNEL"))
        assert by_channel == {
            "": (0, 0, 0, 0, 1, 0, 0, 1),
            "app": (2, 0, 0, 0, 1, 1, 0, 0),
            "store": (3 + 1, 2, 1, 3, 0, 0, 0, 0),
            "web": (2, 0, 0, 0, 2, 1, 1, 0),
        }
        # Filters: the locations' entries (a reservation with a line there), the channels'.
        assert figures(await c.get_kpis("CHANNEL", location_ids=["s1b"])) == {
            "app": (2, 0, 0, 0, 1, 1, 0, 0),
            "store": (0, 1, 0, 0, 0, 0, 0, 0),
        }
        assert figures(await c.get_kpis("LOCATION", channels=["web", ""])) == {
            "s1": (2, 0, 0, 0, 3, 1, 1, 1)
        }
        # The time range: nothing after now, nothing before the day started.
        later = datetime.now(UTC) + timedelta(minutes=1)
        empty = await c.get_kpis("LOCATION", since=later)
        assert list(empty.groups) == []
        assert empty.newest_entry_at.seconds >= int(started.timestamp())
        assert list((await c.get_kpis("CHANNEL", until=started)).groups) == []


async def test_kpis_of_an_empty_ledger(server: UnistockServer) -> None:
    async with UnistockClient(target(server), TOKENS["backoffice"]) as c:
        resp = await c.get_kpis("STORE")
        assert list(resp.groups) == []
        assert not resp.HasField("newest_entry_at")


async def refused(call: Awaitable[Any], code: grpc.StatusCode, field: str = "") -> str:
    with pytest.raises(UnistockClientError) as err:
        await call
    assert err.value.code == code, err.value
    assert field in err.value.details, err.value.details
    return err.value.details


async def test_invalid_requests_name_the_field(server: UnistockServer) -> None:
    bad = grpc.StatusCode.INVALID_ARGUMENT
    now = datetime.now(UTC)
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await refused(c.list_ledger_entries(), bad, "location_id")
        await refused(c.list_ledger_entries(reservation_id="r", sku="A"), bad, "reservation_id")
        await refused(c.list_ledger_entries(sku="A B"), bad, "sku")
        await refused(c.list_ledger_entries(location_id="s|1"), bad, "location_id")
        await refused(c.list_ledger_entries(sku="A", types=[0]), bad, "types[0]")
        await refused(c.list_ledger_entries(sku="A", types=["SALE", 99]), bad, "types[1]")
        await refused(c.list_ledger_entries(sku="A", types=["SALE"] * 33), bad, "types")
        await refused(c.list_ledger_entries(sku="A", page_size=1001), bad, "page_size")
        await refused(c.list_ledger_entries(sku="A", page_token="x!"), bad, "page_token")
        await refused(c.list_ledger_entries(sku="A", page_token="AAAA"), bad, "page_token")
        await refused(
            c.list_ledger_entries(sku="A", since=now, until=now - timedelta(seconds=1)),
            bad,
            "until",
        )
        await refused(
            c.list_ledger_entries(sku="A", since=Timestamp(seconds=1, nanos=-1)), bad, "since"
        )
        await refused(c.get_kpis(0), bad, "group_by")
        await refused(c.get_kpis("LOCATION", location_ids=["ok", ""]), bad, "location_ids[1]")
        await refused(c.get_kpis("CHANNEL", channels=["x" * 129]), bad, "channels[0]")
        await refused(c.get_kpis("CHANNEL", location_ids=["s"] * 1001), bad, "location_ids")
        await refused(
            c.get_kpis("STORE", since=now, until=now - timedelta(milliseconds=1)), bad, "until"
        )
        # At the bounds: accepted.
        assert (await c.list_ledger_entries(sku="A", page_size=1000)).entries == []
        assert (await c.list_ledger_entries(sku="A", since=now, until=now)).entries == []


async def test_roles_backoffice_and_admin_only(server: UnistockServer) -> None:
    for role in ("backoffice", "admin"):
        async with UnistockClient(target(server), TOKENS[role]) as c:
            assert list((await c.list_ledger_entries(sku="A")).entries) == []
            assert list((await c.get_kpis("LOCATION")).groups) == []
    async with UnistockClient(target(server), TOKENS["channel"]) as c:
        details = await refused(
            c.list_ledger_entries(sku="A"), grpc.StatusCode.PERMISSION_DENIED, "ListLedgerEntries"
        )
        assert "channel" in details
        await refused(c.get_kpis("LOCATION"), grpc.StatusCode.PERMISSION_DENIED, "GetKpis")
    async with UnistockClient(target(server), "not-a-token-0123456789") as c:
        await refused(c.get_kpis("LOCATION"), grpc.StatusCode.UNAUTHENTICATED)


async def test_database_down_is_unavailable_then_answers_again(
    make_server: MakeServer, clean_redis_url: str, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database("unistock")
    srv = await make_server(clean_redis_url, database_url=url)
    async with UnistockClient(target(srv), TOKENS["backoffice"], retry=None) as c:
        assert list((await c.list_ledger_entries(sku="A")).entries) == []
        postgres_server.stop()
        try:
            details = await refused(
                c.list_ledger_entries(sku="A"), grpc.StatusCode.UNAVAILABLE, "ledger database"
            )
            assert "\n" not in details
            await refused(c.get_kpis("CHANNEL"), grpc.StatusCode.UNAVAILABLE, "ledger database")
        finally:
            postgres_server.start()
        assert list((await c.get_kpis("CHANNEL")).groups) == []


def test_0004_upgrades_a_ledger_keeping_its_rows(sql_url: str) -> None:
    store = MasterDataStore(sql_url)
    try:
        row = {"entry_key": "p:s1|A:1", "feed_id": "1-0", "kind": 1, "at_ms": 5, "sku": "A",
               "location_id": "s1", "movement_type": 3, "quantity": 2}  # fmt: skip
        with upgraded_to(store, "0003") as conn:
            conn.execute(LEDGER.insert().values(row))
        store.migrate()
        indexes = {i["name"] for i in sa.inspect(store.engine).get_indexes("ledger_entries")}
        assert {"ix_ledger_sku_at", "ix_ledger_kind_at", "ix_ledger_reservation_kind"} <= indexes
        assert "ix_ledger_reservation" not in indexes
        assert LedgerStore(store.engine).count() == 1
    finally:
        store.close()


def test_0007_writes_each_feed_entry_once_and_keeps_the_rows_before_it(sql_url: str) -> None:
    """0007: a ledger of 0006 keeps its rows and ids; the feed entries they came from count as
    written (a writer killed between its SQL commit and its cursor's save, then upgraded, reads
    them again: skipped); entry_key is no longer unique, the reservation index is partial; the
    downgrade restores both and keeps the rows."""
    store = MasterDataStore(sql_url)
    old = {"entry_key": "p:s1|A:1", "feed_id": "7-0", "kind": 1, "at_ms": 5, "sku": "A",
           "location_id": "s1", "movement_type": 3, "quantity": 2}  # fmt: skip
    new = {**old, "entry_key": "p:s1|A:2", "feed_id": "8-0", "version": 2}
    try:
        with upgraded_to(store, "0006") as conn:
            conn.execute(LEDGER.insert().values(old))
            first = conn.execute(sa.select(LEDGER.c.id)).scalar_one()
        store.migrate()
        ledger = LedgerStore(store.engine)
        assert ledger.write([old], partition=3) == 0  # read again after the upgrade
        assert ledger.write([new], partition=3) == 1
        assert ledger.write([new], partition=3) == 0
        assert ledger.write([new], partition=4) == 1  # another partition's entry 8-0
        with store.engine.connect() as conn:
            assert conn.execute(
                sa.text("SELECT id, entry_key, partition FROM ledger_entries JOIN ledger_feed"
                        " USING (feed_id) ORDER BY id, partition")
            ).all() == [(first, "p:s1|A:1", -1), (first + 1, "p:s1|A:2", 3),
                        (first + 1, "p:s1|A:2", 4), (first + 2, "p:s1|A:2", 3),
                        (first + 2, "p:s1|A:2", 4)]  # fmt: skip
            indexes = {i["name"]: i for i in sa.inspect(conn).get_indexes("ledger_entries")}
            assert not any(i["unique"] for i in indexes.values())
            uniques = sa.inspect(conn).get_unique_constraints("ledger_entries")
            assert uniques == []
            where = "sqlite_where" if store.engine.dialect.name == "sqlite" else "postgresql_where"
            assert "reservation_id IS NOT NULL" in str(
                indexes["ix_ledger_reservation_kind"]["dialect_options"][where]
            )
        with store.engine.begin() as conn:  # (4's copy of 8-0 away: entry_keys unique again)
            conn.execute(sa.delete(LEDGER).where(LEDGER.c.id == first + 2))
        downgraded_to(store, "0006")
        with store.engine.connect() as conn:
            assert "ledger_feed" not in sa.inspect(conn).get_table_names()
            assert conn.execute(
                sa.text("SELECT id, entry_key FROM ledger_entries ORDER BY id")
            ).all() == [(first, "p:s1|A:1"), (first + 1, "p:s1|A:2")]
        with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:  # unique again
            conn.execute(LEDGER.insert().values({**new, "feed_id": "9-0"}))
        store.migrate()  # and up again
        assert LedgerStore(store.engine).count() == 2
    finally:
        store.close()
