"""The docs' transfer example runs as written: each `.venv/bin/unistock` line of the block,
in a shell from the checkout, against a real server (its address and token given the way a
user would: UNISTOCK_TARGET and UNISTOCK_TOKEN), with what its comments promise."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from tests.docs import ROOT, commands, example
from tests.fixtures.server import TOKENS, target
from unistock.server.app.server import UnistockServer


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
    assert [c.split()[1] for c in lines] == ["move", "reserve", "get", "extend", "fulfil"]
    for command in lines:
        rc, out, err = await sh(command, server)
        assert rc == 0, (command, err)
    assert json.loads(out)["state"] == "FULFILLED"
