"""STORE_OFFLINE / STORE_ONLINE (issue 11 item 2) with a real store agent, mosquitto, the
server and Redis: the agent stops, its store goes silent past its network's staleness limit ->
exactly one STORE_OFFLINE (on WatchEvents and on the store's MQTT topic); the server restarts
while the store is still silent -> nothing again; the agent comes back -> exactly one
STORE_ONLINE; a store gone silent while no server ran is offline once after the start, and so
is a network level that had only its units (NETWORK_OUT_OF_STOCK)."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from tests.client.test_cli import server_args, spawn
from tests.edge.harness import start_agent, stop_agent
from tests.edge.test_network_staleness_e2e import LIMIT, web_with
from tests.fixtures.server import TOKENS, MakeServer, start_mqtt_server, target
from tests.mqtt.test_events_mqtt import published_from_now, store_app, take
from tests.server.test_events import Events, caught_up, move
from unistock.client import UnistockClient
from unistock.devtools.services import MosquittoBroker
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

STORE_TYPES = [pb.STORE_OFFLINE, pb.STORE_ONLINE]
NET_TYPES = [pb.NETWORK_OUT_OF_STOCK, pb.NETWORK_BACK_IN_STOCK, pb.NETWORK_LOW_STOCK]


async def server_with_s1(
    make_server: MakeServer, redis_url: str, broker: MosquittoBroker
) -> UnistockServer:
    """A server ingesting MQTT, with store s1 and a DC in network web (staleness limit LIMIT s)."""
    srv = await start_mqtt_server(make_server, redis_url, broker)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await web_with(c, "s1")
    return srv


async def test_offline_and_online_once_each_across_a_restart(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    make_server: MakeServer,
    clean_redis_url: str,
) -> None:
    srv = await server_with_s1(make_server, clean_redis_url, mosquitto_broker)
    await published_from_now(srv)
    watch = Events(srv, types=STORE_TYPES)
    await watch.started()
    async with store_app(mosquitto_broker, "unistock/v1/stores/s1/events") as app:
        agent, task = await start_agent(tmp_path, mosquitto_broker, "s1")
        try:
            await asyncio.sleep(LIMIT + 1)  # the agent's statuses keep the store fresh
        finally:
            await stop_agent(agent, task)
        off = await watch.next()  # silent past the limit
        assert (off.type, off.store_id, off.location_id) == (pb.STORE_OFFLINE, "s1", "")
        assert "beyond network web's staleness limit of 2 s" in off.detail, off.detail
        [(topic, mqtt_off)] = await take(app, 1)
        assert (topic, mqtt_off.event_id) == ("unistock/v1/stores/s1/events", off.event_id)
    await watch.nothing_more(srv)
    await watch.close()

    await srv.stop()  # the store is still silent after the restart: nothing again
    srv = await start_mqtt_server(make_server, clean_redis_url, mosquitto_broker)
    assert srv.networks is not None
    async with asyncio.timeout(20):
        await srv.networks.ready.wait()
    await asyncio.sleep(1.5)  # a round of the staleness loop
    await caught_up(srv)
    agent, task = await start_agent(tmp_path, mosquitto_broker, "s1")
    try:
        everything = Events(srv, after_event_id="0-0", types=STORE_TYPES)
        first, on = await everything.take(2)  # heard from again
        assert first.event_id == off.event_id
        assert (on.type, on.store_id) == (pb.STORE_ONLINE, "s1")
        await asyncio.sleep(1.5)  # another round: still fresh, nothing more
        await everything.nothing_more(srv)
        await everything.close()
    finally:
        await stop_agent(agent, task)
    # The docs' command prints them (the stream's start first).
    proc = await spawn(
        *server_args(srv), "events", "--type", "STORE_OFFLINE", "--type", "STORE_ONLINE",
        "--after", "0-0",
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        lines = [json.loads(await proc.stdout.readline()) for _ in range(3)]
    proc.send_signal(signal.SIGINT)
    await proc.communicate()
    assert [(e.get("type"), e.get("storeId")) for e in lines[1:]] == [
        ("STORE_OFFLINE", "s1"),
        ("STORE_ONLINE", "s1"),
    ]


async def test_a_store_gone_silent_while_the_server_was_down_is_offline_once_after_it(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,
    make_server: MakeServer,
    clean_redis_url: str,
) -> None:
    """...and web, whose only stock of JACKET is at s1, is out of stock once after it too
    (NETWORK_OUT_OF_STOCK: s1's units left web's level while no server ran)."""
    srv = await server_with_s1(make_server, clean_redis_url, mosquitto_broker)
    agent, task = await start_agent(tmp_path, mosquitto_broker, "s1")
    try:
        async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
            await move(bo, pb.RECEIPT, "JACKET", "s1", 3, source="wms")
        await asyncio.sleep(1.5)  # heard from (and its last-heard time saved)
        await caught_up(srv)
        await srv.stop()
    finally:
        await stop_agent(agent, task)
    await asyncio.sleep(LIMIT + 1)  # silent past the limit while no server runs
    srv = await start_mqtt_server(make_server, clean_redis_url, mosquitto_broker)
    everything = Events(srv, after_event_id="0-0", types=STORE_TYPES)
    [off] = await everything.take(1)
    assert (off.type, off.store_id) == (pb.STORE_OFFLINE, "s1")
    web = Events(srv, after_event_id="0-0", types=NET_TYPES)
    back, out = await web.take(2)
    assert [(e.type, e.network, e.sku, e.available) for e in (back, out)] == [
        (pb.NETWORK_BACK_IN_STOCK, "web", "JACKET", 3),
        (pb.NETWORK_OUT_OF_STOCK, "web", "JACKET", 0),
    ]
    assert "1 stale" in out.detail, out.detail
    await asyncio.sleep(1.5)  # another round of the staleness loop: nothing more
    await everything.nothing_more(srv)
    await web.nothing_more(srv)
    await everything.close()
    await web.close()
