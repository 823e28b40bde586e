"""A publish the broker refuses (MQTT 5 PUBACK reason 135) is not taken as delivered.

The broker runs the production ACL (the ``broker`` fixture of tests/deploy); the agent of store
``s1`` is misconfigured with the credentials of store ``s2``, so the ACL refuses its movements and
its status. aiomqtt returns normally from such a publish: the agent must read the reason itself.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.deploy.test_mosquitto_acl import PASSWORDS, broker, server_client
from tests.edge.harness import agent_settings
from unistock.devtools.services import MosquittoBroker
from unistock.edge.agent import StoreAgent
from unistock.v1 import inventory_pb2 as pb

__all__ = ["broker"]  # the fixture, imported for its use here

pytestmark = pytest.mark.timeout(60)


async def until(check: Callable[[], bool], limit: float = 20) -> None:
    async with asyncio.timeout(limit):
        while not check():  # noqa: ASYNC110 (polling metrics: no event to wait on)
            await asyncio.sleep(0.05)


def refused(agent: StoreAgent, topic: str) -> float:
    v = agent.metrics.registry.get_sample_value(
        "unistock_agent_publish_refused_total", {"reason": "not_authorized", "topic": topic}
    )
    return v or 0.0


async def test_refused_movements_are_logged_counted_kept_and_resent(
    broker: MosquittoBroker, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    settings = agent_settings(
        tmp_path,
        f"mqtt://s2:{PASSWORDS['s2']}@127.0.0.1:{broker.port}",  # store s2's user
        ack_timeout=60.0,  # recovery must not come from the ack timeout
    )
    async with StoreAgent(settings) as agent, server_client(broker.port) as server:
        await server.subscribe("unistock/v1/stores/+/movements", qos=1)
        await agent.record([pb.Movement(sku="A", type=pb.RECEIPT, quantity=q) for q in (1, 2, 3)])
        run = asyncio.create_task(agent.run())
        try:
            await until(lambda: agent.sender is not None and refused(agent, "status") >= 1)
            sender = agent.sender
            assert sender is not None
            # Refused, then resent and refused again (the metric counts in paho's callback, just
            # before the sender sees the refusal).
            await until(lambda: sender.stats.refused["not_authorized"] >= 2)
            assert refused(agent, "movements") >= 2
            assert sender.stats.batches_published == 0
            assert sender.in_flight == 0
            assert (agent.outbox.depth(), agent.outbox.last_acked) == (3, 0)
            messages = [r.getMessage() for r in caplog.records]
            assert any("refused movements 1-3" in m and "Not authorized" in m for m in messages)
            assert any("refused the agent status" in m for m in messages)

            # The ACL is fixed and reloaded (SIGHUP): the next resend goes through, on the same
            # connection, without waiting for the ack timeout.
            acl = broker.acl_file
            assert acl is not None
            acl.write_text(acl.read_text() + "\nuser s2\ntopic write unistock/v1/stores/s1/#\n")
            pid = broker.pid
            assert pid is not None
            os.kill(pid, signal.SIGHUP)
            message = await asyncio.wait_for(anext(server.messages), 30)
            batch = pb.MovementBatch.FromString(bytes(message.payload))  # type: ignore[arg-type]
            assert batch.source_id == agent.outbox.source_id
            assert batch.source_id.startswith("agent-s1.")  # the outbox's incarnation
            assert [m.seq for m in batch.movements] == [1, 2, 3]
            await until(lambda: sender.stats.batches_published == 1)  # its PUBACK: success
            assert agent.sender is sender  # no reconnect was needed
        finally:
            run.cancel()
            await asyncio.gather(run, return_exceptions=True)
