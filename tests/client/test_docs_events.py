"""The events examples of docs/integration-channels.md run as written against a real server:
the `unistock events` block (a stream started in the background, then the movement and the
click & collect reservation, the event printed as the block's sample shows, resuming after it,
the network events of the web shop), and the EventWatcher program."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path

from tests.client.test_readme_cli_examples import in_a_checkout, sh
from tests.docs import ROOT, commands, example
from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

DEADLINE = 30


async def start(command: str, srv: UnistockServer) -> asyncio.subprocess.Process:
    """command in a shell from the checkout, as a user who set UNISTOCK_TARGET and
    UNISTOCK_TOKEN, its output piped."""
    env = dict(os.environ, UNISTOCK_TARGET=target(srv), UNISTOCK_TOKEN=TOKENS["admin"])
    return await asyncio.create_subprocess_shell(
        "exec " + command, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def line(proc: asyncio.subprocess.Process) -> dict[str, object]:
    assert proc.stdout is not None
    async with asyncio.timeout(DEADLINE):
        got: dict[str, object] = json.loads(await proc.stdout.readline())
    return got


async def interrupted(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(DEADLINE):
        await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode


def shown(sample: str) -> dict[str, str]:
    """The fields a sample line of the block shows, but its ids (another run's) and "..."."""
    fields = re.findall(r'"(\w+)": "([^"]*)"', sample)
    return {k: v for k, v in fields if v != "..." and k != "eventId"}


async def test_the_events_cli_example_runs_as_written(server: UnistockServer) -> None:
    block = example("events-cli")
    lines = commands(block)
    samples = [ln[2:] for ln in block.text.splitlines() if ln.startswith("# {")]
    assert len(lines) == 5, lines
    assert len(samples) == 2, samples
    assert lines[0].endswith("&")
    background = await start(lines[0].removesuffix("&"), server)
    start_line = await line(background)
    assert set(start_line) == set(json.loads(samples[0]))  # {"startAfterEventId": ...}
    for command in lines[1:3]:
        rc, _, err = await sh(command, server)
        assert rc == 0, (command, err)
    event = await line(background)
    assert {k: v for k, v in event.items() if k in shown(samples[1])} == shown(samples[1])
    assert await interrupted(background) == 130
    # Resume exactly after that event: the id in the block is a sample, ours is the one printed.
    [sample_id] = re.findall(r'"eventId": "([^"]+)"', samples[1])
    assert sample_id in lines[3]
    resumed = await start(lines[3].replace(sample_id, str(event["eventId"])), server)
    assert await line(resumed) == {"startAfterEventId": event["eventId"]}
    assert await interrupted(resumed) == 130
    # The web shop's network levels changing class: a network web, a unit, then none.
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await c.upsert_locations(
            [apb.Location(location_id="store-7", type=apb.STORE, has_position=True)]
        )
        await c.upsert_networks([apb.Network(network_id="web", location_ids=["store-7"])])
    network = await start(lines[4], server)
    assert set(await line(network)) == {"startAfterEventId"}
    rc, _, err = await sh(".venv/bin/unistock reserve cc-9 SHOE-42@store-7:3", server)
    assert rc == 0, err
    types = [(await line(network))["type"]]  # the network's first stock may come first
    while types[-1] != "NETWORK_OUT_OF_STOCK":
        types.append((await line(network))["type"])
    assert set(types) <= {"NETWORK_BACK_IN_STOCK", "NETWORK_OUT_OF_STOCK"}, types
    assert await interrupted(network) == 130


async def test_the_event_watcher_example_runs(server: UnistockServer, tmp_path: Path) -> None:
    script = in_a_checkout(example("event-watcher").text, server, tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=script.parent, stdout=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with UnistockClient(target(server), TOKENS["admin"]) as c:
            # The watcher starts from now: sell out store-7 until it has seen it.
            printed = asyncio.ensure_future(proc.stdout.readline())
            seq = 0
            async with asyncio.timeout(DEADLINE):
                while not printed.done():
                    for movement_type in (pb.RECEIPT, pb.SALE):
                        seq += 1
                        move = pb.Movement(seq=seq, sku="SHOE-42", location_id="store-7",
                                           type=movement_type, quantity=1)  # fmt: skip
                        async for _ in c.apply_movements(
                            [pb.MovementBatch(source_id="docs", movements=[move])]
                        ):
                            pass
                    await asyncio.wait([printed], timeout=0.5)
        event_id, kind, sku, available = printed.result().decode().split()
        assert (kind, sku, available) == ("OUT_OF_STOCK", "SHOE-42", "0")
        assert re.fullmatch(r"\d+-\d+", event_id)
    finally:
        proc.kill()
        await proc.wait()
