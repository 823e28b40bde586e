"""The examples of docs/client-library.md run as written against a real server (each saved
as a program in a directory laid out like a checkout after `make run`)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.client.test_readme_cli_examples import in_a_checkout
from tests.docs import example
from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

DEADLINE = 60


async def stock(srv: UnistockServer, seq: int, kind: int, units: int) -> None:
    """One movement of SHOE-42@store-7 from the source "docs"."""
    move = pb.Movement(seq=seq, sku="SHOE-42", location_id="store-7", type=kind, quantity=units)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        async for ack in c.apply_movements([pb.MovementBatch(source_id="docs", movements=[move])]):
            assert ack.applied == 1, ack


async def spawn(
    code: str, srv: UnistockServer, tmp_path: Path, script: Path | None = None
) -> asyncio.subprocess.Process:
    """The example's code as a program (script: one saved before, to run it again)."""
    script = script or in_a_checkout(code, srv, tmp_path, role="admin")
    return await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=script.parent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )  # fmt: skip


async def run(
    code: str, srv: UnistockServer, tmp_path: Path, script: Path | None = None
) -> list[str]:
    """The example's output lines; it must exit 0."""
    proc = await spawn(code, srv, tmp_path, script)
    async with asyncio.timeout(DEADLINE):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    return out.decode().splitlines()


async def test_connect_example(server: UnistockServer, tmp_path: Path) -> None:
    await stock(server, 1, pb.RECEIPT, 5)
    out = await run(example("client-connect").text, server, tmp_path)
    assert out[:3] == ["available 5", "held cart-123", "short SHOE-42 store-7 996"]
    assert out[3].startswith("not found: "), out
    assert "no-such-cart" in out[3], out
    assert len(out) == 4


async def test_retry_example(server: UnistockServer, tmp_path: Path) -> None:
    await stock(server, 1, pb.RECEIPT, 5)
    assert await run(example("client-retry").text, server, tmp_path) == [
        "locations 1",
        "unavailable, retryable: True",
    ]


async def test_watch_example(server: UnistockServer, tmp_path: Path) -> None:
    await stock(server, 1, pb.RECEIPT, 1)
    proc = await spawn(example("client-watch").text, server, tmp_path)
    assert proc.stdout is not None
    async with asyncio.timeout(DEADLINE):
        first = (await proc.stdout.readline()).decode().split()
        assert first == ["SHOE-42", "store-7", "1", "1"]
        await stock(server, 2, pb.SALE, 1)  # the watch sees it and the example stops
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["SHOE-42", "store-7", "0", "2"]


async def test_writer_example(server: UnistockServer, tmp_path: Path) -> None:
    out = await run(example("client-writer").text, server, tmp_path)
    assert out[:2] == ["recorded seq 1 new True", "applied 2 duplicates 0"]
    assert out[2].startswith("rejected seq 3 BAD_QUANTITY "), out
    assert "quantity" in out[2]
    assert len(out) == 3
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        (level,) = await c.get_availability(keys=[("SHOE-42", "dc-1")])
    assert (level.on_hand, level.version) == (38, 2)
    # Run again (same file, the caller retrying): the receipt is not recorded twice.
    again = await run(
        example("client-writer").text, server, tmp_path, tmp_path / "example" / "example.py"
    )
    assert again[0] == "recorded seq 1 new False"
    assert again[1] == "applied 0 duplicates 0"
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        (level,) = await c.get_availability(keys=[("SHOE-42", "dc-1")])
    assert (level.on_hand, level.version) == (38, 2)
