"""kill -9 of the server while a store agent streams movements: nothing lost, nothing doubled."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.edge.harness import start_agent, stop_agent
from tests.fixtures.server import TOKENS, ServerProcess
from unistock.client import UnistockClient
from unistock.devtools.services import MosquittoBroker, RedisServer
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow


async def test_server_killed_mid_stream_three_times(
    tmp_path: Path, redis_server: RedisServer, mosquitto_broker: MosquittoBroker
) -> None:
    srv = ServerProcess(redis_server.url, tmp_path / "srv", "--mqtt-url", mosquitto_broker.url)
    await asyncio.to_thread(srv.start)
    agent, task = await start_agent(tmp_path, mosquitto_broker, ack_timeout=1.0)
    skus = [f"SKU-{i}" for i in range(20)]
    recorded: dict[str, int] = dict.fromkeys(skus, 0)
    try:
        for round_ in range(3):
            for chunk in range(10):
                movements = [
                    pb.Movement(sku=skus[(chunk * 7 + i) % 20], type=pb.RECEIPT, quantity=1)
                    for i in range(200)
                ]
                for m in movements:
                    recorded[m.sku] += 1
                await agent.record(movements)
                if chunk == 5:
                    # Some of the stream is acked, some in flight, some only in the outbox.
                    srv.kill()
                    srv = ServerProcess(
                        redis_server.url,
                        tmp_path / f"srv{round_}",
                        "--mqtt-url",
                        mosquitto_broker.url,
                    )
                    await asyncio.to_thread(srv.start)
        async with asyncio.timeout(90):
            await agent.wait_drained()
        async with UnistockClient(srv.target, TOKENS["admin"]) as c:
            levels = await c.get_availability(keys=[(sku, "s1") for sku in skus])
        # Every RECEIPT of 1 unit applied exactly once: on_hand and version both equal the count.
        assert {lv.sku: lv.on_hand for lv in levels} == recorded
        assert {lv.sku: lv.version for lv in levels} == recorded
    finally:
        await stop_agent(agent, task)
        srv.stop()
