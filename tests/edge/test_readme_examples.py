"""The README's till examples run as written (only the agent's address is this test's): a sale
with request_id and sent_at, and a damaged return restocked after inspection, through a real
agent, mosquitto, the server and Redis."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from tests.edge.harness import drained, on_hand, start_agent, stop_agent
from unistock.devtools.services import MosquittoBroker
from unistock.server.app.server import UnistockServer

README = Path(__file__).resolve().parents[2] / "README.md"


def till_examples() -> list[str]:
    """Every python block of the README that talks to an agent's StoreIntake."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if "StoreIntakeStub" in b]


async def test_the_readme_till_examples_run_as_written(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, mqtt_server: UnistockServer
) -> None:
    examples = till_examples()
    assert len(examples) >= 2, "the README lost its till examples"
    agent, task = await start_agent(tmp_path, mosquitto_broker, store="s1")
    try:
        for code in examples:
            assert "agent.s1.lan:50061" in code
            code = code.replace("agent.s1.lan:50061", f"127.0.0.1:{agent.intake_port}")
            # The examples are synchronous grpc code, as a till's would be: run them in a thread.
            await asyncio.to_thread(exec, compile(code, "README.md", "exec"), {})
        await drained(agent)
        # The sale (1 unit), then the damaged return restocked: on_hand -1 + 1.
        assert await on_hand(mqtt_server, "SHOE-42") == 0
        [p] = await mqtt_server.inventory.levels([("SHOE-42", "s1")])
        assert p.non_sellable == 0
        assert p.version == 3
    finally:
        await stop_agent(agent, task)
