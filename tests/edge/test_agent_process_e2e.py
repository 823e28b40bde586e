"""The agent as operators run it: real ``unistock-edge-agent`` processes and a real mosquitto.

One writer per outbox (a second agent on the same data directory refuses to start, naming the
holder; the intake port is not shared), and signals that tell the truth (a clean stop leaves
OFFLINE retained, the oldest-unacked age grows while the broker is away).
"""

from __future__ import annotations

import asyncio
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from tests.edge.harness import (
    agent_process,
    agent_settings,
    metric,
    start_agent,
    stop_agent,
)
from tests.edge.test_sender import as_bytes, mqtt_client
from unistock.devtools.services import MosquittoBroker, free_port
from unistock.edge.agent import StoreAgent
from unistock.edge.cli import EXIT_ALREADY_RUNNING
from unistock.edge.datalock import AgentAlreadyRunning
from unistock.edge.sender import status_topic
from unistock.v1 import inventory_pb2 as pb


async def retained_status(broker: MosquittoBroker, store: str = "s1") -> pb.AgentStatus:
    """The status retained on the store's topic (waits for it to exist)."""
    async with mqtt_client(broker, f"status-reader-{time.monotonic_ns()}") as client:
        await client.subscribe(status_topic(store), qos=1)
        async with asyncio.timeout(30):
            async for message in client.messages:
                return pb.AgentStatus.FromString(as_bytes(message.payload))
    raise AssertionError("unreachable")


async def test_a_second_agent_on_one_data_dir_refuses_to_start_naming_the_holder(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    data = tmp_path / "shared-volume"
    async with agent_process(data, mosquitto_broker.url) as first:
        async with agent_process(data, mosquitto_broker.url, ready=False) as second:
            _, err = await asyncio.wait_for(second.communicate(), 60)
            assert second.returncode == EXIT_ALREADY_RUNNING
            message = err.decode()
            assert "refusing to start: another unistock-edge-agent already runs" in message
            assert "Traceback" not in message
            assert f"pid {first.pid} " in message, message
        assert first.returncode is None, "the holder goes on"
        first.kill()  # a dead holder's lock must not block the next agent
        await first.wait()
    async with agent_process(data, mosquitto_broker.url) as third:
        assert third.returncode is None


async def test_the_lock_is_taken_before_the_outbox_is_touched(
    tmp_path: Path, mosquitto_url: str
) -> None:
    settings = agent_settings(tmp_path, mosquitto_url)
    async with StoreAgent(settings) as first:
        with pytest.raises(AgentAlreadyRunning):
            StoreAgent(settings)
        await first.record([pb.Movement(sku="A", type=pb.RECEIPT, quantity=1)])
    # Released at exit: the next agent on the directory starts and sees the movement.
    async with StoreAgent(settings) as again:
        assert again.outbox.depth() == 1


async def test_a_second_agent_cannot_share_the_intake_port(
    tmp_path: Path, mosquitto_url: str
) -> None:
    # grpc enables SO_REUSEPORT by default: two agents would silently split the tills.
    async with StoreAgent(agent_settings(tmp_path, mosquitto_url, "s1")) as first:
        other = agent_settings(tmp_path, mosquitto_url, "s2", intake_port=first.intake_port)
        with pytest.raises(RuntimeError, match=f"intake port {first.intake_port}"):
            async with StoreAgent(other):
                pass
    # The refused agent released what it took: it starts once the port is free.
    async with StoreAgent(other) as second:
        assert second.intake_port == first.intake_port


async def test_sigterm_leaves_offline_retained(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    async with agent_process(tmp_path / "agent", mosquitto_broker.url) as proc:
        online = await retained_status(mosquitto_broker)
        assert online.state == pb.AgentStatus.ONLINE
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    # A clean disconnect discards the last will: the agent must say OFFLINE itself.
    status = await retained_status(mosquitto_broker)
    assert status.state == pb.AgentStatus.OFFLINE
    assert status.source_id == online.source_id


async def test_the_oldest_unacked_age_grows_while_the_broker_is_down(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    # No server: nothing is ever acked.
    agent, task = await start_agent(tmp_path, mosquitto_broker, metrics_port=free_port())
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"

    async def scrape() -> str:
        def get() -> str:
            with urllib.request.urlopen(url, timeout=10) as r:
                return bytes(r.read()).decode()

        return await asyncio.to_thread(get)

    try:
        await asyncio.wait_for(agent.connected.wait(), 30)
        await agent.record([pb.Movement(sku="A", type=pb.RECEIPT, quantity=1)])
        await asyncio.to_thread(mosquitto_broker.kill)
        first = metric(await scrape(), "unistock_agent_oldest_unacked_age_seconds")
        async with asyncio.timeout(30):  # grows while nothing is acked, however long
            while True:
                age = metric(await scrape(), "unistock_agent_oldest_unacked_age_seconds")
                if age >= first + 1:
                    break
                await asyncio.sleep(0.2)
        assert age >= first + 1
        assert metric(await scrape(), "unistock_agent_outbox_depth") == 1
    finally:
        await stop_agent(agent, task)
