"""The docs' transfer example runs as written: each `.venv/bin/unistock` line of the block,
in a shell from the checkout, against a real server (its address and token given the way a
user would: UNISTOCK_TARGET and UNISTOCK_TOKEN), with what its comments promise."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
from pathlib import Path

from tests.docs import ROOT, commands, example
from tests.fixtures.server import TOKENS, target
from unistock.edge import cli as edge_cli
from unistock.edge import sim as edge_sim
from unistock.server.app.server import UnistockServer


def in_a_checkout(code: str, srv: UnistockServer, tmp_path: Path, role: str = "channel") -> Path:
    """A docs program saved as example.py in a directory laid out as a checkout after `make
    run` (var/dev-token holding role's token), talking to srv instead of localhost:50051."""
    assert "localhost:50051" in code
    here = tmp_path / "example"
    (here / "var").mkdir(parents=True)
    (here / "var" / "dev-token").write_text(TOKENS[role] + "\n")
    script = here / "example.py"
    script.write_text(code.replace("localhost:50051", target(srv)))
    return script


async def sh(command: str, srv: UnistockServer, cwd: Path = ROOT) -> tuple[int, str, str]:
    """Run command in a shell in cwd, as a user who set UNISTOCK_TARGET and UNISTOCK_TOKEN."""
    env = dict(os.environ, UNISTOCK_TARGET=target(srv), UNISTOCK_TOKEN=TOKENS["admin"])
    proc = await asyncio.create_subprocess_shell(
        command, cwd=cwd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_transfer_example_runs_as_written(server: UnistockServer) -> None:
    lines = commands(example("transfer"))
    assert len(lines) == 6, lines
    outputs = []
    for command in lines:
        assert command.startswith(".venv/bin/unistock "), command
        rc, out, err = await sh(command, server)
        assert rc == 0, (command, err)
        outputs.append(json.loads(out))
    _, _, level, _, transfer, closed = outputs
    assert (level["inTransit"], level.get("available", "0")) == ("5", "0")
    assert transfer["state"] == "IN_TRANSIT"
    assert transfer["lines"] == [
        {"sku": "SHOE-42", "shipped": "5", "received": "4", "inTransit": "1"}
    ]
    assert closed["state"] == "CLOSED"
    assert closed["lines"][0]["lost"] == "1"
    assert [d["kind"] for d in closed["discrepancies"]] == ["CLOSED_SHORT"]
    rc, out, err = await sh(lines[-1], server)  # again: no change
    assert (rc, json.loads(out)) == (0, closed), err


async def test_the_readme_quick_start_commands_run_as_written(server: UnistockServer) -> None:
    """The Quick start's unistock lines, in order (a newcomer runs them so): each exits 0."""
    cli = commands(example("quick-start"), ".venv/bin/unistock ")
    lines = [c for c in cli if " watch " not in c]  # watch runs until Ctrl-C
    assert [c.split()[1] for c in lines] == [
        "move", "move", "reserve", "get", "extend", "fulfil", "status"
    ]  # fmt: skip
    outs = {}
    for command in lines:
        rc, out, err = await sh(command, server)
        assert rc == 0, (command, err)
        outs[command.split()[1]] = out
    assert json.loads(outs["fulfil"])["state"] == "FULFILLED"
    assert "Unistock server" in outs["status"]


async def test_the_quick_start_watch_ends_with_130_on_ctrl_c(server: UnistockServer) -> None:
    """The Quick start's watch line: the snapshot, then live changes, until Ctrl-C (exit 130)."""
    [watch] = [c for c in commands(example("quick-start"), ".venv/bin/") if " watch " in c]
    rc, _, err = await sh(".venv/bin/unistock move backoffice 1 RECEIPT SHOE-42@store-7:3", server)
    assert rc == 0, err
    env = dict(os.environ, UNISTOCK_TARGET=target(server), UNISTOCK_TOKEN=TOKENS["admin"])
    proc = await asyncio.create_subprocess_shell(
        "exec " + watch, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        first = await proc.stdout.readline()
        assert b"SHOE-42" in first
        proc.send_signal(signal.SIGINT)
        await proc.communicate()
    assert proc.returncode == 130


def test_the_quick_start_store_lines_take_their_flags() -> None:
    """The agent and simulator lines of the Quick start: every flag exists and takes its value
    (they run against `make run`'s broker; the agent and simulator run in tests/edge)."""
    lines = commands(example("quick-start"))
    [agent] = [c for c in lines if c.startswith(".venv/bin/unistock-edge-agent ")]
    [sim] = [c for c in lines if c.startswith(".venv/bin/unistock-sim ")]
    settings = edge_cli.parse(shlex.split(agent.removesuffix("&"))[1:])
    assert settings.store_id == "store-7"
    args = edge_sim._parser().parse_args(shlex.split(sim)[1:])
    assert (args.stores, args.tills, args.duration) == (3, 2, 30)
