"""The commands docs/runbook.md gives on-call engineers run as written: a store's retained
agent status read from the broker with mosquitto_sub and decoded with protoc (the payload is
binary: without `-N` the newline mosquitto_sub adds broke the decoding)."""

from __future__ import annotations

import asyncio
import subprocess

from tests.docs import ROOT, example
from tests.edge.test_sender import mqtt_client
from unistock.devtools.services import MosquittoBroker
from unistock.edge.sender import status_topic
from unistock.v1 import inventory_pb2 as pb


async def test_the_agent_status_command_decodes_a_retained_status(
    mosquitto_broker: MosquittoBroker,
) -> None:
    status = pb.AgentStatus(
        store_id="store-7",
        source_id="agent-store-7.5e0c9a1f",
        state=pb.AgentStatus.ONLINE,
        outbox_depth=12,
        last_acked_seq=880,
        oldest_unacked_age_seconds=125.5,
        rejected_unresolved=1,
    )
    status.at.GetCurrentTime()
    async with mqtt_client(mosquitto_broker, "runbook-test") as client:
        await client.publish(
            status_topic("store-7"), status.SerializeToString(), qos=1, retain=True
        )
    command = (
        example("runbook-agent-status")
        .text.replace("BROKER", "127.0.0.1")
        .replace("PORT", str(mosquitto_broker.port))
        .replace("STORE", "store-7")
    )
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-o", "pipefail", "-c", command],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for line in (
        'store_id: "store-7"',
        "state: ONLINE",
        "outbox_depth: 12",
        "last_acked_seq: 880",
        "oldest_unacked_age_seconds: 125.5",
        "rejected_unresolved: 1",
    ):
        assert line in lines, done.stdout
