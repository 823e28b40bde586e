"""Starting store agents in end-to-end tests (real broker, real server)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from grpc import aio

from unistock.devtools.services import MosquittoBroker
from unistock.edge.agent import AgentSettings, StoreAgent
from unistock.intake.v1 import intake_pb2_grpc as ipb_grpc
from unistock.server.app.server import UnistockServer


def agent_settings(
    tmp_path: Path, mqtt_url: str, store: str = "s1", **overrides: Any
) -> AgentSettings:
    """Settings for a test agent: ephemeral ports, short ack timeout and status interval."""
    values: dict[str, Any] = {
        "store_id": store,
        "mqtt_url": mqtt_url,
        "data_dir": tmp_path / f"agent-{store}",
        "intake_port": 0,
        "metrics_port": 0,
        "ack_timeout": 2.0,
        "status_interval": 0.5,
    }
    values.update(overrides)
    return AgentSettings(**values)


#: The run() task of each agent started here: a crash of it must fail the test, not stall it.
_RUNS: dict[int, asyncio.Task[None]] = {}


async def start_agent(
    tmp_path: Path, broker: MosquittoBroker, store: str = "s1", **overrides: Any
) -> tuple[StoreAgent, asyncio.Task[None]]:
    """An entered agent and its run() task; stop both with stop_agent."""
    agent = await StoreAgent(agent_settings(tmp_path, broker.url, store, **overrides)).__aenter__()
    task = _RUNS[id(agent)] = asyncio.create_task(agent.run())
    return agent, task


async def stop_agent(agent: StoreAgent, task: asyncio.Task[None]) -> None:
    """Cancel an agent's run() task and close it."""
    _RUNS.pop(id(agent), None)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await agent.__aexit__(None, None, None)


async def drained(agent: StoreAgent, limit: float = 60) -> None:
    """Until the server acknowledged everything in the outbox (or the agent's run() died)."""
    run = _RUNS.get(id(agent))
    wait = asyncio.ensure_future(agent.wait_drained())
    try:
        await asyncio.wait({wait} | ({run} if run else set()), timeout=limit,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
    finally:
        wait.cancel()
    if run is not None and run.done():
        raise AssertionError("the agent's run() task ended") from run.exception()
    if not wait.done() or wait.cancelled():
        raise TimeoutError(f"outbox not drained after {limit} s: depth {agent.outbox.depth()}")


async def on_hand(srv: UnistockServer, sku: str, loc: str = "s1") -> int:
    """The server's on_hand of a position."""
    [p] = await srv.inventory.levels([(sku, loc)])
    return p.on_hand


@contextlib.asynccontextmanager
async def intake(agent: StoreAgent) -> AsyncIterator[ipb_grpc.StoreIntakeStub]:
    """A till's (or reader's) client of an agent's local StoreIntake service."""
    async with aio.insecure_channel(f"127.0.0.1:{agent.intake_port}") as ch:
        yield ipb_grpc.StoreIntakeStub(ch)


@contextlib.asynccontextmanager
async def agent_process(
    data_dir: Path, mqtt_url: str, *args: str, store: str = "s1", ready: bool = True
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A real ``unistock-edge-agent`` process (the CLI), killed at the end if still running.

    With ``ready`` (default), waits for its start line ("intake on port", broker, outbox) first.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "unistock.edge.cli", "--store-id", store, "--mqtt-url", mqtt_url,
        "--data-dir", str(data_dir), "--intake-port", "0", "--metrics-port", "0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={
            k: v
            for k, v in os.environ.items()
            if not k.startswith("UNISTOCK_") or k == "UNISTOCK_CONFIG"  # the test's own
        },
    )  # fmt: skip
    try:
        if ready:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
            # The start line says where it sends and where its outbox is (a newcomer who
            # started it from another directory had a second outbox and did not know it).
            assert "intake on port" in line, line
            assert (
                f"broker {mqtt_url}, outbox {(data_dir / f'outbox-{store}.sqlite').resolve()} (source agent-{store}."
                in line
            ), line
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


def metric(body: str, name: str) -> float:
    """One unlabelled sample of a Prometheus text exposition."""
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)
