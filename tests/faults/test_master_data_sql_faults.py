"""Master data's SQL database failing under a running server (a private, real PostgreSQL).

* PostgreSQL down at start-up: the start fails naming --database-url, without the URL's
  password, and the same settings start once PostgreSQL is back (the failed start released
  everything it took).
* PostgreSQL stopped while the server runs: every admin write fails UNAVAILABLE (safe to retry)
  and changes nothing, neither in memory (ListLocations, levels) nor in SQL; inventory calls
  (movements, Reserve, GetAvailability, positions activated meanwhile) keep working on the
  master data in memory; once PostgreSQL is back the same calls succeed, at the first attempt.
* PostgreSQL frozen (SIGSTOP): admin writes fail at the client's deadline, reads and inventory
  calls keep working.
* Server bugs these found (fixed): the start-up error was three lines, not one; the first admin
  write after a PostgreSQL restart failed on a stale pooled connection with the whole SQL
  statement in its message (RESOURCE_EXHAUSTED past gRPC's metadata limit for a big upsert); a
  write cancelled by its deadline while PostgreSQL was frozen committed in SQL later but never
  in memory.
* SetSafetyStock interrupted between its SQL write and the positions' (the crash state is
  written straight into SQL while no server runs): the next server corrects each position as it
  activates it, both a new safety stock and a cleared one, and stores the correction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from tests.faults.helpers import levels, movement_batch
from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import InsufficientStockError, UnistockClient, UnistockClientError
from unistock.devtools.services import PostgresServer
from unistock.server.app.server import StartupError
from unistock.server.persistence.sql import MasterDataStore, MasterSnapshot
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

PASSWORD = "Sup3r-s3cret-pw"
S1 = apb.Location(location_id="s1", type=apb.STORE, name="Store 1", default_safety_stock=1)
SHOE = ("SHOE", "s1")
BAG = ("BAG", "s1")


def with_password(url: str) -> str:
    """url (postgresql+psycopg://postgres@...) with a password (the test cluster trusts
    loopback, so it is ignored by PostgreSQL but must never be shown)."""
    return url.replace("://postgres@", f"://postgres:{PASSWORD}@", 1)


async def unavailable(call: Awaitable[Any]) -> UnistockClientError:
    with pytest.raises(UnistockClientError) as err:
        await call
    assert err.value.code == grpc.StatusCode.UNAVAILABLE, err.value
    return err.value


async def send(c: UnistockClient, b: pb.MovementBatch) -> pb.MovementAck:
    [ack] = [a async for a in c.apply_movements([b])]
    return ack


# -- start-up ------------------------------------------------------------------------------------


async def test_postgres_down_at_start_fails_naming_the_flag_without_the_password(
    make_server: MakeServer,
    clean_redis_url: str,
    postgres_server: PostgresServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = with_password(postgres_server.create_database("unistock"))
    postgres_server.stop()
    with caplog.at_level(logging.DEBUG), pytest.raises(StartupError) as err:
        await make_server(clean_redis_url, database_url=url)
    msg = str(err.value)
    assert msg.startswith("--database-url: cannot use postgresql+psycopg://postgres:***@127.0.0.1:")
    assert "Connection refused" in msg
    assert PASSWORD not in msg
    assert PASSWORD not in caplog.text
    # Nothing was left taken (gRPC port, Redis partitions): the same settings start now.
    postgres_server.start()
    srv = await make_server(clean_redis_url, database_url=url)
    async with UnistockClient(target(srv), TOKENS["admin"], retry=None) as c:
        assert await c.upsert_locations([S1]) == 1
        assert (await send(c, movement_batch("wms", [(1, "RECEIPT", *SHOE, 3)]))).applied == 1


async def test_postgres_down_at_start_is_one_line(
    make_server: MakeServer, clean_redis_url: str, postgres_server: PostgresServer
) -> None:
    url = with_password(postgres_server.create_database("unistock"))
    postgres_server.stop()
    with pytest.raises(StartupError) as err:
        await make_server(clean_redis_url, database_url=url)
    assert "\n" not in str(err.value), str(err.value)


# -- PostgreSQL stopped while the server runs ----------------------------------------------------


async def test_postgres_stopped_admin_writes_unavailable_nothing_half_applied_inventory_works(
    make_server: MakeServer, clean_redis_url: str, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database("unistock")
    # max_resident=1: positions are passivated and activated again while PostgreSQL is down.
    srv = await make_server(clean_redis_url, database_url=url, max_resident=1)
    async with UnistockClient(target(srv), TOKENS["admin"], retry=None) as c:
        assert await c.upsert_locations([S1]) == 1
        assert await c.set_safety_stock([apb.SafetyStock(sku="SHOE", location_id="s1", units=2)])
        ack = await send(
            c, movement_batch("wms", [(1, "RECEIPT", *SHOE, 10), (2, "RECEIPT", *BAG, 5)])
        )
        assert ack.applied == 2
        before = await c.list_locations()
        assert before == [S1]

        postgres_server.stop()
        changed = apb.Location(
            location_id="s1", type=apb.STORE, name="Renamed", default_safety_stock=4
        )
        new = apb.Location(location_id="s2", type=apb.STORE, store_id="s2")
        # Every admin write: UNAVAILABLE, twice each (a retry while still down is no different).
        for _ in range(2):
            await unavailable(c.upsert_locations([changed, new]))
            await unavailable(
                c.set_safety_stock(
                    [
                        apb.SafetyStock(sku="SHOE", location_id="s1", units=9),
                        apb.SafetyStock(sku="BAG", location_id="s1", units=3),
                    ]
                )
            )
            await unavailable(c.upsert_products([apb.Product(sku="SHOE", model="SHOE")]))
            await unavailable(
                c.upsert_networks([apb.Network(network_id="web", location_ids=["s1"])])
            )
        # Nothing in memory changed: reads answer the state before, from memory.
        assert await c.list_locations() == before
        assert await c.list_networks() == []
        got = await levels(c, [SHOE, BAG])
        assert (got[SHOE].safety_stock, got[SHOE].available) == (2, 8)
        assert (got[BAG].safety_stock, got[BAG].available) == (1, 4)
        # Inventory works throughout: movements, reservations, reads, a never-seen position
        # (it starts with its location's default, from memory).
        assert (await send(c, movement_batch("wms", [(3, "SALE", *SHOE, 1)]))).applied == 1
        r = await c.reserve("r-1", [(*SHOE, 3), (*BAG, 1)], kind="ORDER")
        assert r.reservation.state == pb.ACTIVE
        with pytest.raises(InsufficientStockError):
            await c.reserve("r-2", [(*SHOE, 5)], kind="CART")  # 9 - 3 held - 2 safety = 4
        [hat] = await c.get_availability(keys=[("HAT", "s1")])
        assert (hat.safety_stock, hat.version) == (1, 0)
        got = await levels(c, [SHOE, BAG])
        assert (got[SHOE].on_hand, got[SHOE].reserved, got[SHOE].available) == (9, 3, 4)
        assert (got[BAG].on_hand, got[BAG].reserved, got[BAG].available) == (5, 1, 3)

        postgres_server.start()
        # Nothing of the failed calls reached SQL either.
        store = MasterDataStore(url)
        try:
            snap = await asyncio.to_thread(store.load)
        finally:
            store.close()
        assert [loc.name for loc in snap.locations] == ["Store 1"]
        assert (snap.networks, snap.products, snap.safety_stock) == ([], [], [("SHOE", "s1", 2)])
        # Back: the same calls succeed at the first attempt, and are in force at once.
        assert await c.upsert_locations([changed, new]) == 2
        assert (
            await c.set_safety_stock(
                [
                    apb.SafetyStock(sku="SHOE", location_id="s1", units=9),
                    apb.SafetyStock(sku="BAG", location_id="s1", units=3),
                ]
            )
            == 2
        )
        assert await c.upsert_networks([apb.Network(network_id="web", location_ids=["s1"])]) == 1
        assert await c.list_locations() == [changed, new]
        got = await levels(c, [SHOE, BAG, ("HAT", "s1")])
        assert (got[SHOE].safety_stock, got[SHOE].available) == (9, 0)
        assert (got[BAG].safety_stock, got[BAG].available) == (3, 1)
        assert got["HAT", "s1"].safety_stock == 4  # the new default
    assert not srv.failed


async def test_first_admin_write_after_a_postgres_restart_is_unavailable_at_worst(
    make_server: MakeServer, clean_redis_url: str, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database("unistock")
    srv = await make_server(clean_redis_url, database_url=url)
    many = [
        apb.Location(location_id=f"loc-{i:05d}", type=apb.STORE, name="Store", store_id=f"st-{i}")
        for i in range(2_000)
    ]
    async with UnistockClient(target(srv), TOKENS["admin"], retry=None) as c:
        assert await c.upsert_locations([S1]) == 1
        postgres_server.restart()  # no admin call while it was down
        first: UnistockClientError | None = None
        try:
            assert await c.upsert_locations(many) == 2_000
        except UnistockClientError as exc:
            first = exc
        if first is not None:  # refused: UNAVAILABLE, short, no SQL; the retry succeeds
            assert first.code == grpc.StatusCode.UNAVAILABLE, str(first)[:300]
            assert len(str(first)) < 2_000, str(first)[:300]
            assert "INSERT" not in str(first)
            assert await c.upsert_locations(many) == 2_000


# -- PostgreSQL frozen (SIGSTOP) while the server runs --------------------------------------------

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
S2 = apb.Location(location_id="s2", type=apb.STORE, store_id="store-2")


async def transient(call: Awaitable[Any]) -> None:
    with pytest.raises(UnistockClientError) as err:
        await call
    assert err.value.code in TRANSIENT, err.value


async def test_postgres_paused_admin_writes_fail_and_inventory_keeps_working(
    make_server: MakeServer, clean_redis_url: str, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database("unistock")
    srv = await make_server(clean_redis_url, database_url=url, max_resident=1)
    async with UnistockClient(target(srv), TOKENS["admin"], timeout=2, retry=None) as c:
        await c.upsert_locations([S1])
        assert (await send(c, movement_batch("wms", [(1, "RECEIPT", *SHOE, 10)]))).applied == 1
        postgres_server.pause()
        try:
            # Nothing answers, not even on the pooled connection: the client's deadline passes.
            await transient(c.upsert_locations([S2]))
            assert await c.list_locations() == [S1]
            assert (await send(c, movement_batch("wms", [(2, "RECEIPT", *BAG, 5)]))).applied == 1
            r = await c.reserve("r-1", [(*SHOE, 2), (*BAG, 1)], kind="ORDER")
            assert r.reservation.state == pb.ACTIVE
            got = await levels(c, [SHOE, BAG])
            assert (got[SHOE].available, got[BAG].available) == (7, 3)  # safety stock 1 each
        finally:
            postgres_server.resume()
        assert not srv.failed


async def _settled(
    url: str, check: Callable[[MasterSnapshot], bool], within: float = 3.0
) -> MasterSnapshot:
    """SQL's snapshot once check(snapshot) holds, or after `within` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        store = MasterDataStore(url)
        try:
            snap = await asyncio.to_thread(store.load)
        finally:
            store.close()
        if check(snap) or loop.time() > deadline:
            return snap
        await asyncio.sleep(0.1)


async def test_postgres_paused_an_admin_write_is_never_half_applied(
    make_server: MakeServer, clean_redis_url: str, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database("unistock")
    srv = await make_server(clean_redis_url, database_url=url)
    async with UnistockClient(target(srv), TOKENS["admin"], timeout=2, retry=None) as c:
        await c.upsert_locations([S1])
        assert (await send(c, movement_batch("wms", [(1, "RECEIPT", *SHOE, 10)]))).applied == 1
        postgres_server.pause()
        try:
            await transient(c.upsert_locations([S2]))
            await transient(
                c.set_safety_stock([apb.SafetyStock(sku="SHOE", location_id="s1", units=5)])
            )
        finally:
            postgres_server.resume()
        # Whatever SQL ends up with (the writes committed late, or rolled back), memory agrees.
        snap = await _settled(
            url,
            lambda s: len(s.locations) == 2 and bool(s.safety_stock),
        )
        in_sql = [loc.location_id for loc in snap.locations]
        listed = [loc.location_id for loc in await c.list_locations()]
        assert listed == in_sql, (listed, in_sql)
        assert (srv.master.store_of("s2") is not None) == ("s2" in in_sql)
        want = {(s, loc): u for s, loc, u in snap.safety_stock}.get(SHOE, 1)
        assert (await levels(c, [SHOE]))[SHOE].safety_stock == want


# -- SetSafetyStock interrupted between SQL and Redis --------------------------------------------


async def test_safety_stock_written_to_sql_only_is_corrected_when_the_position_activates(
    make_server: MakeServer, clean_redis_url: str, postgres_server: PostgresServer
) -> None:
    url = postgres_server.create_database("unistock")
    srv = await make_server(clean_redis_url, database_url=url)
    async with UnistockClient(target(srv), TOKENS["admin"], retry=None) as c:
        await c.upsert_locations([S1])
        await c.set_safety_stock([apb.SafetyStock(sku="BAG", location_id="s1", units=3)])
        ack = await send(
            c, movement_batch("wms", [(1, "RECEIPT", *SHOE, 10), (2, "RECEIPT", *BAG, 5)])
        )
        assert ack.applied == 2
        got = await levels(c, [SHOE, BAG])
        assert (got[SHOE].safety_stock, got[BAG].safety_stock) == (1, 3)
        stored_versions = {k: lv.version for k, lv in got.items()}
    await srv.stop()
    # The crash state: SetSafetyStock's SQL transaction committed, the positions' never written
    # (SHOE gets one of its own, BAG's is cleared, so it follows its location's default again).
    store = MasterDataStore(url)
    try:
        await asyncio.to_thread(store.set_safety_stock, [("SHOE", "s1", 4), ("BAG", "s1", None)])
    finally:
        store.close()

    srv = await make_server(clean_redis_url, database_url=url)
    async with UnistockClient(target(srv), TOKENS["admin"], retry=None) as c:
        got = await levels(c, [SHOE, BAG])
        assert (got[SHOE].on_hand, got[SHOE].safety_stock, got[SHOE].available) == (10, 4, 6)
        assert (got[BAG].on_hand, got[BAG].safety_stock, got[BAG].available) == (5, 1, 4)
        # The correction is a change of the stored position: a new version, stored.
        assert all(got[k].version > stored_versions[k] for k in (SHOE, BAG))
        with pytest.raises(InsufficientStockError):
            await c.reserve("r-1", [(*SHOE, 7)], kind="CART")
        assert (await c.reserve("r-2", [(*SHOE, 6)], kind="CART")).reservation.state == pb.ACTIVE
        by_sku = {lv.location_id: lv for lv in await c.get_availability(sku="BAG")}
        assert by_sku["s1"].safety_stock == 1
        # A watch snapshot (read from Redis) shows the correction: it was written back.
        snapshot: list[pb.StockLevel] = []
        async for msg in c.watch(["SHOE", "BAG"], ["s1"]):
            snapshot.extend(msg.levels)
            if msg.snapshot_complete:
                break
        seen = {(lv.sku, lv.location_id): lv.safety_stock for lv in snapshot}
        assert seen == {SHOE: 4, BAG: 1}
    await srv.stop()
    srv = await make_server(clean_redis_url, database_url=url)
    async with UnistockClient(target(srv), TOKENS["admin"], retry=None) as c:
        got = await levels(c, [SHOE, BAG])
        assert (got[SHOE].reserved, got[SHOE].safety_stock, got[SHOE].available) == (6, 4, 0)
        assert (got[BAG].safety_stock, got[BAG].available) == (1, 4)
