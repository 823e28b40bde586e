"""The `unistock` command line against a real server."""

from __future__ import annotations

import asyncio
import json
import sys

from tests.fixtures.server import TOKENS, target
from unistock.server.app.server import UnistockServer


async def cli(srv: UnistockServer, *args: str, role: str = "admin") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "unistock.client.cli",
        "--target",
        target(srv),
        "--token",
        TOKENS[role],
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_move_get_reserve_show(server: UnistockServer) -> None:
    rc, out, _ = await cli(server, "move", "backoffice", "1", "RECEIPT", "SHOE-42@store-7:3")
    assert rc == 0
    assert json.loads(out)["applied"] == 1
    rc, out, _ = await cli(
        server, "reserve", "hold-1", "SHOE-42@store-7:2", "--kind", "E_RESERVATION"
    )
    assert rc == 0
    assert json.loads(out)["reservation"]["state"] == "ACTIVE"
    rc, out, _ = await cli(server, "get", "SHOE-42")
    level = json.loads(out)
    assert (level["onHand"], level["reserved"], level["available"]) == ("3", "2", "1")
    rc, out, _ = await cli(server, "show", "hold-1")
    assert json.loads(out)["kind"] == "E_RESERVATION"


async def test_errors_exit_non_zero_with_the_reason(server: UnistockServer) -> None:
    rc, _, err = await cli(server, "reserve", "r", "SHOE-42@store-7:5", role="channel")
    assert rc == 1
    assert "FAILED_PRECONDITION" in err
    assert "SHOE-42@store-7" in err
    rc, _, err = await cli(server, "move", "s", "1", "RECEIPT", "X@y:1", role="channel")
    assert rc == 1
    assert "PERMISSION_DENIED" in err
