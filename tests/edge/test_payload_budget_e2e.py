"""Movements over the payload budget never stop a store (agent + server): a count of thousands
of tags is sent without its EPC list; anything still too large is set aside."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.edge.harness import agent_settings, drained, on_hand
from tests.edge.test_agent_e2e import server
from unistock.devtools.services import MosquittoBroker
from unistock.edge.agent import StoreAgent
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

__all__ = ["server"]  # the fixture, imported for its use below


async def test_oversized_movements_are_slimmed_or_set_aside_and_the_rest_applies(
    server: UnistockServer, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    settings = agent_settings(tmp_path, mosquitto_broker.url, max_payload_bytes=4096)
    async with StoreAgent(settings) as agent:
        task = asyncio.create_task(agent.run())
        try:
            await agent.record([pb.Movement(sku="SOCK", type=pb.RECEIPT, quantity=5000)])
            # A sale naming 2,000 tags (~52 KB) cannot fit a 4 KiB payload with its EPCs.
            epcs = [f"3034257BF400B78{k:09X}" for k in range(2000)]
            await agent.record([pb.Movement(sku="SOCK", type=pb.SALE, quantity=2000, epc=epcs)])
            # An adjustment with a 5 KB reason cannot fit at all.
            await agent.record(
                [
                    pb.Movement(
                        sku="SOCK",
                        type=pb.ADJUSTMENT,
                        adjustment_sign=pb.DECREASE,
                        quantity=1,
                        reason="damaged " * 640,
                    )
                ]
            )
            await agent.record(
                [pb.Movement(sku="SOCK", type=pb.SALE, quantity=1) for _ in range(3)]
            )
            await drained(agent)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        # Seq 2 applied without its EPCs; seq 3's stand-in rejected; seqs 4-6 applied.
        assert agent.outbox.last_acked == 6
        assert await on_hand(server, "SOCK") == 5000 - 2000 - 3
        [record] = agent.outbox.rejected()
        assert (record.seq, record.reason) == (3, pb.INVALID_FIELD)
        assert record.movement is not None
        assert record.movement.reason.startswith("damaged")
        # Store staff see it like a server rejection (the agent's own record, not the stand-in's).
        assert "too large to publish" in record.detail
        assert agent.status(pb.AgentStatus.ONLINE).rejected_unresolved == 1


async def test_batches_over_the_servers_limit_are_resent_within_it_and_nothing_stalls(
    server: UnistockServer, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    # The agent's budget (4 MiB) is above the server's 1 MiB and the broker has no size limit:
    # the first batch (~1.9 MB) is refused whole (BATCH_TOO_LARGE, unparsed, with the limits).
    settings = agent_settings(
        tmp_path, mosquitto_broker.url, max_payload_bytes=4 * 1024 * 1024, batch_size=1000
    )
    async with StoreAgent(settings) as agent:
        await agent.record([pb.Movement(sku="SOCK", type=pb.RECEIPT, quantity=100_000)])
        burst = [
            pb.Movement(
                sku="SOCK",
                type=pb.SALE,
                quantity=100,
                epc=[f"3034257BF4{i:05X}{k:09X}" for k in range(100)],
                reason="till 7: bulk order for the school uniform fair " * 10,
            )
            for i in range(600)
        ]
        await agent.record(burst)
        task = asyncio.create_task(agent.run())
        try:
            await agent.record(
                [pb.Movement(sku="SOCK", type=pb.SALE, quantity=1) for _ in range(5)]
            )
            await drained(agent)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert agent.outbox.last_acked == 1 + 600 + 5
        assert await on_hand(server, "SOCK") == 100_000 - 600 * 100 - 5
        assert agent.outbox.rejected() == []
        assert agent.server_limits.max_payload_bytes == 1024 * 1024
        assert agent.server_limits.refusals >= 1
