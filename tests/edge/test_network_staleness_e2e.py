"""A stale store drops out of a network's availability and returns (issue 10 item 1), with a
real store agent, mosquitto, the server, Redis and SQLite master data: the agent is stopped,
its store goes silent past the network's staleness limit and its units are left out (counted as
a stale location), on GetNetworkAvailability and on a watch stream; the agent comes back and
they count again. A location without a store_id (the DC, fed by its WMS) is never stale."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.edge.harness import drained, intake, start_agent, stop_agent
from tests.fixtures.server import TOKENS, MakeServer, start_mqtt_server, target
from tests.server.test_api import batch, mv, send
from unistock.client import UnistockClient
from unistock.devtools.services import MosquittoBroker
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

LIMIT = 2  # seconds


async def until(c: UnistockClient, want: tuple[int, int, int], within: float = 15) -> None:
    """Until web's level of JACKET is (available, locations, stale_locations)."""
    got = None
    for _ in range(int(within / 0.1)):
        [lv] = await c.get_network_availability("web", ["JACKET"])
        got = (lv.available, lv.locations, lv.stale_locations)
        if got == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"web level {got}, expected {want}")


async def web_with(c: UnistockClient, store: str) -> None:
    """Master data: a store (reported by its own agent) and a DC, both in web (LIMIT)."""
    await c.upsert_locations(
        [
            apb.Location(location_id=store, type=apb.STORE, store_id=store),
            apb.Location(location_id="dc", type=apb.WAREHOUSE),
        ]
    )
    await c.upsert_networks(
        [apb.Network(network_id="web", location_ids=[store, "dc"], staleness_limit_seconds=LIMIT)]
    )


async def test_a_silent_store_drops_out_of_the_network_and_returns(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, mqtt_server: UnistockServer
) -> None:
    async with UnistockClient(target(mqtt_server), TOKENS["admin"]) as c:
        await web_with(c, "s1")
        await send(c, batch("wms", mv(1, "RECEIPT", "JACKET", "dc", 10)))
        agent, task = await start_agent(tmp_path, mosquitto_broker, "s1")
        try:
            async with intake(agent) as till:
                await till.RecordMovement(
                    ipb.RecordMovementRequest(
                        movement=pb.Movement(sku="JACKET", type=pb.RECEIPT, quantity=5),
                        request_id="goods-in-1",
                    )
                )
            await drained(agent)
            await until(c, (15, 2, 0))
            seen: list[pb.NetworkLevel] = []

            async def watch() -> None:
                async for msg in c.watch_networks(["web"], ["JACKET"]):
                    seen.extend(msg.levels)

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(LIMIT + 1)  # the agent's statuses keep the store fresh
            await until(c, (15, 2, 0), within=0.5)
        finally:
            await stop_agent(agent, task)
        await until(c, (10, 1, 1))  # silent past the limit: its 5 units are left out
        agent, task = await start_agent(tmp_path, mosquitto_broker, "s1")
        try:
            await until(c, (15, 2, 0))  # heard from again (and nothing unacknowledged)
        finally:
            await stop_agent(agent, task)
        for _ in range(50):
            if seen and (seen[-1].available, seen[-1].stale_locations) == (15, 0):
                break
            await asyncio.sleep(0.1)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        steps = [(lv.available, lv.stale_locations) for lv in seen]
        assert (10, 1) in steps, steps
        assert steps[-1] == (15, 0), steps
        assert [lv.version for lv in seen] == sorted(lv.version for lv in seen)


async def test_a_store_silent_before_a_restart_is_still_stale_after_it(
    mosquitto_broker: MosquittoBroker, make_server: MakeServer, clean_redis_url: str
) -> None:
    """Last-heard times are kept in Redis: a store with no agent (never heard from) that went
    stale is stale at once after a restart, not fresh again for another staleness limit."""

    srv = await start_mqtt_server(make_server, clean_redis_url, mosquitto_broker)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await web_with(c, "s9")
        await send(
            c,
            batch("wms", mv(1, "RECEIPT", "JACKET", "dc", 10), mv(2, "RECEIPT", "JACKET", "s9", 5)),
        )
        await until(c, (10, 1, 1))  # no agent: stale once the limit has passed
    await srv.stop()
    srv = await start_mqtt_server(make_server, clean_redis_url, mosquitto_broker)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        [lv] = await c.get_network_availability("web", ["JACKET"])  # the first answer
        assert (lv.available, lv.locations, lv.stale_locations) == (10, 1, 1)
