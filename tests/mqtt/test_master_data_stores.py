"""Which store may report a location's movements over MQTT comes from master data (SQLite and
PostgreSQL): a location set with AdminService.UpsertLocations(store_id=...) takes effect for the
very next batch, without a restart, for its store only, and is still in force after a restart
(it is read back from SQL, not from anything the ingestion keeps)."""

from __future__ import annotations

import asyncio

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.mqtt.harness import Agent, batch, connect, level
from unistock.client import UnistockClient
from unistock.devtools.services import MosquittoBroker
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

LOC = "s9-backroom"


async def started(
    make_server: MakeServer, redis_url: str, broker: MosquittoBroker, sql_url: str
) -> UnistockServer:
    """A server ingesting MQTT with master data in sql_url, subscribed before it returns."""
    srv = await make_server(redis_url, mqtt_url=broker.url, database_url=sql_url)
    assert srv.ingestor is not None
    async with asyncio.timeout(20):
        await srv.ingestor.connected.wait()
    return srv


async def applied(agent: Agent, source: str, seq: int, qty: int = 1) -> pb.MovementAck:
    """Send one movement at LOC; its ack must say it was applied."""
    await agent.send(batch(source, seq, 1, LOC, qty=qty))
    ack = await agent.ack()
    assert list(ack.rejections) == [], ack
    assert ([(s.source_id, s.seq) for s in ack.sources], ack.applied) == ([(source, seq)], 1)
    return ack


async def wrong_store(agent: Agent, source: str, seq: int, qty: int = 1) -> pb.MovementAck:
    """Send one movement at LOC; its ack must reject it WRONG_STORE (final: progress moves)."""
    await agent.send(batch(source, seq, 1, LOC, qty=qty))
    ack = await agent.ack()
    assert [(r.source_id, r.seq, r.reason) for r in ack.rejections] == [
        (source, seq, pb.WRONG_STORE)
    ], ack
    assert repr(LOC) in ack.rejections[0].detail
    assert repr(agent.store) in ack.rejections[0].detail
    assert ([(s.source_id, s.seq) for s in ack.sources], ack.applied) == ([(source, seq)], 0)
    return ack


def location(store_id: str) -> apb.Location:
    return apb.Location(location_id=LOC, type=apb.STORE, name="Backroom", store_id=store_id)


async def test_a_locations_store_from_master_data_applies_at_once_and_after_a_restart(
    make_server: MakeServer,
    clean_redis_url: str,
    mosquitto_broker: MosquittoBroker,
    sql_url: str,
) -> None:
    srv = await started(make_server, clean_redis_url, mosquitto_broker, sql_url)
    async with (
        connect(mosquitto_broker, "store-9") as s9,
        connect(mosquitto_broker, "store-8") as s8,
    ):
        # Unknown to master data (and no --locations-file): only a location named like the
        # store belongs to it.
        await wrong_store(s9, "s9-till", 1, qty=5)
        assert (await level(srv, "SKU-1", LOC)).version == 0
        async with UnistockClient(target(srv), TOKENS["admin"]) as admin:
            assert await admin.upsert_locations([location("store-9")]) == 1
        # The next batch (a new seq) is applied: no restart, no reconnect of anything.
        await applied(s9, "s9-till", 2, qty=5)
        assert (await level(srv, "SKU-1", LOC)).on_hand == 5
        # Another store (with a source of its own) may not report it.
        await wrong_store(s8, "s8-till", 1, qty=100)
        assert (await level(srv, "SKU-1", LOC)).on_hand == 5
        # The identity rule still holds for locations master data does not name.
        await s8.send(batch("s8-till", 2, 1, "store-8"))
        assert (await s8.ack()).applied == 1

        await srv.stop()
        srv = await started(make_server, clean_redis_url, mosquitto_broker, sql_url)
        # Read back from SQL: still store-9's, still not store-8's.
        await applied(s9, "s9-till", 3, qty=2)
        await wrong_store(s8, "s8-till", 3, qty=100)
        lv = await level(srv, "SKU-1", LOC)
        assert lv.on_hand == 7
        async with UnistockClient(target(srv), TOKENS["admin"]) as admin:
            [stored] = await admin.list_locations()
            assert stored == location("store-9")
            # Moved to store-8: both directions change with the next batch.
            await admin.upsert_locations([location("store-8")])
        await applied(s8, "s8-till", 4, qty=1)
        await wrong_store(s9, "s9-till", 4, qty=1)
        assert (await level(srv, "SKU-1", LOC)).on_hand == 8
