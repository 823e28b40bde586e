"""A movement too large to publish is set aside without stopping the store (agent + server)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.edge.test_agent_e2e import drained, on_hand, server
from unistock.devtools.services import MosquittoBroker
from unistock.edge.agent import AgentSettings, StoreAgent
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

__all__ = ["server"]  # the fixture, imported for its use below


async def test_the_server_moves_past_a_set_aside_movement(
    server: UnistockServer, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    settings = AgentSettings(
        store_id="s1",
        mqtt_url=mosquitto_broker.url,
        data_dir=tmp_path / "agent",
        intake_port=0,
        metrics_port=0,
        ack_timeout=2.0,
        max_payload_bytes=4096,
    )
    async with StoreAgent(settings) as agent:
        task = asyncio.create_task(agent.run())
        try:
            await agent.record([pb.Movement(sku="SOCK", type=pb.RECEIPT, quantity=5000)])
            # A count of 2,000 tags (~52 KB) cannot fit a 4 KiB payload, even alone.
            epcs = [f"3034257BF400B78{k:09X}" for k in range(2000)]
            await agent.record([pb.Movement(sku="SOCK", type=pb.SALE, quantity=2000, epc=epcs)])
            await agent.record(
                [pb.Movement(sku="SOCK", type=pb.SALE, quantity=1) for _ in range(3)]
            )
            await drained(agent)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # The server rejected seq 2's stand-in and applied what came after it.
        assert agent.outbox.last_acked == 5
        assert await on_hand(server, "SOCK") == 4997
        [record] = agent.outbox.rejected()
        assert (record.seq, record.reason) == (2, pb.INVALID_FIELD)
        assert record.movement is not None
        assert len(record.movement.epc) == 2000
