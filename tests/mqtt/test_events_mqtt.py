"""Events on MQTT: each store's events on unistock/v1/stores/{store_id}/events, in order, at
least once across a restart of the server (real mosquitto and Redis)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import aiomqtt

from tests.fixtures.server import TOKENS, MakeServer, start_mqtt_server, target
from unistock.client import UnistockClient
from unistock.devtools.services import MosquittoBroker
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

DEADLINE = 20.0


@contextlib.asynccontextmanager
async def store_app(
    broker: MosquittoBroker, topic: str
) -> AsyncIterator[asyncio.Queue[tuple[str, pb.InventoryEvent]]]:
    """A store app subscribed to topic: (topic, event) as they come."""
    got: asyncio.Queue[tuple[str, pb.InventoryEvent]] = asyncio.Queue()
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"app-{topic.replace('/', '-')}",
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    ) as client:  # fmt: skip
        await client.subscribe(topic, qos=1)

        async def collect() -> None:
            async for m in client.messages:
                msg = pb.WatchEventsResponse.FromString(m.payload)  # type: ignore[arg-type]
                for ev in msg.events:
                    await got.put((str(m.topic), ev))

        task = asyncio.create_task(collect())
        try:
            yield got
        finally:
            task.cancel()


async def take(
    q: asyncio.Queue[tuple[str, pb.InventoryEvent]], n: int
) -> list[tuple[str, pb.InventoryEvent]]:
    async with asyncio.timeout(DEADLINE):
        return [await q.get() for _ in range(n)]


async def published_from_now(srv: UnistockServer) -> None:
    """Until the server's publisher is connected and past its start-up point."""
    pub = srv.event_publisher
    assert pub is not None
    async with asyncio.timeout(DEADLINE):
        await pub.ready.wait()


async def test_each_store_gets_its_events_in_order_across_a_restart(
    make_server: MakeServer, clean_redis_url: str, mosquitto_broker: MosquittoBroker
) -> None:
    srv = await start_mqtt_server(make_server, clean_redis_url, mosquitto_broker)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        # store-9 owns location backroom-9 (master data); s1 is its own store.
        await c.upsert_locations(
            [apb.Location(location_id="backroom-9", type=apb.STORE, store_id="store-9")]
        )
    await published_from_now(srv)
    async with (
        store_app(mosquitto_broker, "unistock/v1/stores/+/events") as everything,
        UnistockClient(target(srv), TOKENS["admin"]) as c,
    ):
        batch = pb.MovementBatch(
            source_id="bo",
            movements=[
                pb.Movement(seq=1, sku="A", location_id="s1", type=pb.RECEIPT, quantity=3),
                pb.Movement(seq=2, sku="A", location_id="backroom-9", type=pb.RECEIPT, quantity=2),
            ],
        )
        [a async for a in c.apply_movements([batch])]
        await c.reserve("cc-1", [("A", "s1", 1)], kind="CLICK_AND_COLLECT")
        first = await take(everything, 3)
        # In event_id order per store (a store's events of one round come in one message).
        assert sorted((t, e.type, e.location_id) for t, e in first) == [
            ("unistock/v1/stores/s1/events", pb.BACK_IN_STOCK, "s1"),
            ("unistock/v1/stores/s1/events", pb.READY_FOR_PICKUP, "s1"),
            ("unistock/v1/stores/store-9/events", pb.BACK_IN_STOCK, "backroom-9"),
        ]
        s1 = [e for t, e in first if t.endswith("/s1/events")]
        assert s1[0].type == pb.BACK_IN_STOCK
        assert s1[0].event_id < s1[1].event_id
        await srv.stop()
        srv = await start_mqtt_server(make_server, clean_redis_url, mosquitto_broker)
        async with UnistockClient(target(srv), TOKENS["admin"]) as c2:
            await c2.reserve("cc-2", [("A", "backroom-9", 1)], kind="CLICK_AND_COLLECT")
        # At least once: what the first server published may come again; nothing is missed.
        seen = {e.event_id for _, e in first}
        while True:
            topic, ev = (await take(everything, 1))[0]
            if ev.event_id not in seen:
                break
        assert (topic, ev.type, ev.reservation_id) == (
            "unistock/v1/stores/store-9/events", pb.READY_FOR_PICKUP, "cc-2",
        )  # fmt: skip
    assert srv.event_publisher is not None
