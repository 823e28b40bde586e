"""The journeys for channel engineers (docs/integration-channels.md) run as written: its Python block saved as
journeys.py and run with the checkout's interpreter against a real server (its address and
token given as a user would: UNISTOCK_TARGET and UNISTOCK_TOKEN), printing exactly what the
docs say it prints; a second run applies nothing twice and stops where the docs say."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.docs import example
from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer


def journeys() -> tuple[str, list[str]]:
    return example("journeys").text, example("journeys-output").text.splitlines()


async def run(srv: UnistockServer, script: Path) -> tuple[int, str, str]:
    env = dict(os.environ, UNISTOCK_TARGET=target(srv), UNISTOCK_TOKEN=TOKENS["admin"])
    proc = await asyncio.create_subprocess_exec(
        sys.executable, script.name, cwd=script.parent, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_journeys_run_as_written(server: UnistockServer, tmp_path: Path) -> None:
    program, printed = journeys()
    script = tmp_path / "journeys.py"
    script.write_text(program)
    rc, out, err = await run(server, script)
    assert rc == 0, (out, err)
    assert out.splitlines() == printed
    before = await levels(server)
    rc, out, err = await run(server, script)  # again: nothing applied twice, stops at step 2
    assert (rc, out, err.strip()) == (
        1,
        "web: 0 BOOT-42 at 3 locations\n",  # the DC's unit is cart-9's now
        "no BOOT-42 near store-1 now (sold by a run before this one?)",
    )
    assert await levels(server) == before


async def levels(srv: UnistockServer) -> list[tuple[str, str, int, int]]:
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        got = await c.get_availability(sku="BOOT-42")
    return sorted((lv.sku, lv.location_id, lv.on_hand, lv.reserved) for lv in got)
