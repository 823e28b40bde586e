"""The till examples of docs/integration-stores.md run as written (only the agent's address is this test's): a sale
with request_id and sent_at, and a damaged return restocked after inspection, through a real
agent, mosquitto, the server and Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.docs import example
from tests.edge.harness import drained, on_hand, start_agent, stop_agent
from unistock.devtools.services import MosquittoBroker
from unistock.server.app.server import UnistockServer


async def test_the_till_examples_run_as_written(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, mqtt_server: UnistockServer
) -> None:
    examples = [example("till-sale"), example("till-damaged-return")]
    agent, task = await start_agent(tmp_path, mosquitto_broker, store="s1")
    try:
        for block in examples:
            code = block.text
            assert "agent.s1.lan:50061" in code
            code = code.replace("agent.s1.lan:50061", f"127.0.0.1:{agent.intake_port}")
            # The examples are synchronous grpc code, as a till's would be: run them in a thread.
            await asyncio.to_thread(exec, compile(code, block.where, "exec"), {})
        await drained(agent)
        # The sale (1 unit), then the damaged return restocked: on_hand -1 + 1.
        assert await on_hand(mqtt_server, "SHOE-42") == 0
        [p] = await mqtt_server.inventory.levels([("SHOE-42", "s1")])
        assert p.non_sellable == 0
        assert p.version == 3
    finally:
        await stop_agent(agent, task)
