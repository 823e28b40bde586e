"""`unistock reservations` against a real server: a table, JSON, usage errors, --watch."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

from tests.client.test_cli import cli, server_args, spawn
from tests.client.test_readme_cli_examples import in_a_checkout, sh
from tests.docs import commands, example
from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

DEADLINE = 20.0


async def seeded(server: UnistockServer) -> UnistockClient:
    c = UnistockClient(target(server), TOKENS["admin"])
    batch = pb.MovementBatch(
        source_id="seed",
        movements=[
            pb.Movement(seq=1, sku="SHOE", location_id="store-2", type=pb.RECEIPT, quantity=9)
        ],
    )
    [ack] = [a async for a in c.apply_movements([batch])]
    assert not ack.rejections
    await c.reserve("cc-1", [("SHOE", "store-2", 1)], kind="CLICK_AND_COLLECT", customer_id="ann")
    await c.reserve("cart-1", [("SHOE", "store-2", 2)], channel="web", customer_id="bob")
    await c.release("cart-1")
    return c


async def test_table_and_json(server: UnistockServer) -> None:
    c = await seeded(server)
    try:
        rc, out, err = await cli(server, "reservations", "--location", "store-2")
        assert rc == 0, err
        assert "2 reservations" in out
        assert out.index("cc-1") < out.index("cart-1")  # oldest first
        assert "CLICK_AND_COLLECT" in out
        assert "SHOE@store-2:1" in out
        rc, out, _ = await cli(
            server, "reservations", "--location", "store-2", "--state", "ACTIVE", "--json"
        )
        assert rc == 0
        [only] = json.loads(out)
        assert only["reservationId"] == "cc-1"
        assert only["customerId"] == "ann"
        rc, out, _ = await cli(server, "reservations", "--customer", "bob", role="channel")
        assert rc == 0
        assert "cart-1" in out
        assert "RELEASED" in out
    finally:
        await c.close()


async def test_usage_errors_exit_2_and_refusals_exit_1(server: UnistockServer) -> None:
    rc, _, err = await cli(server, "reservations")
    assert rc == 2
    assert "--customer, --channel or --location" in err
    rc, _, err = await cli(server, "reservations", "--customer", "x", "--state", "DONE")
    assert rc == 2
    assert "--state" in err
    rc, _, err = await cli(server, "reservations", "--location", "bad id")
    assert rc == 1
    assert "INVALID_ARGUMENT" in err
    assert "location_id" in err


async def test_watch_prints_the_table_then_each_change(server: UnistockServer) -> None:
    c = await seeded(server)
    proc = await spawn(
        *server_args(server, "channel"),
        "reservations",
        "--location",
        "store-2",
        "--state",
        "ACTIVE",
        "--watch",
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        async with asyncio.timeout(DEADLINE):
            note = await proc.stderr.readline()
            assert b"watching" in note
        await c.fulfil("cc-1")
        table: list[bytes] = []
        async with asyncio.timeout(DEADLINE):
            while b"FULFILLED" not in (line := await proc.stdout.readline()):
                assert line, "the watch ended"
                table.append(line)
        assert b'"reservationId":"cc-1"' in line.replace(b" ", b"")
        # First the snapshot's table: the ACTIVE cc-1, not the released cart-1.
        assert b"1 reservation" in table[0]
        assert any(b"cc-1" in row for row in table)
        assert not any(b"cart-1" in row for row in table)
    finally:
        proc.send_signal(signal.SIGINT)
        rc = await asyncio.wait_for(proc.wait(), DEADLINE)
        await c.close()
    assert rc == 130


async def test_the_reservations_example_runs_as_written(server: UnistockServer) -> None:
    lines = commands(example("reservations-cli"))
    assert len(lines) == 6, lines
    outputs = []
    for command in lines[:-1]:  # the last one watches until Ctrl-C (tested above)
        rc, out, err = await sh(command, server)
        assert rc == 0, (command, err)
        outputs.append(out)
    assert "cc-2" in outputs[2]
    assert "ACTIVE" in outputs[2]
    assert "cc-2" in outputs[3]
    assert [r["reservationId"] for r in json.loads(outputs[4])] == ["cc-2"]
    assert lines[-1].endswith("--watch")


async def test_the_reservations_python_example_runs(server: UnistockServer, tmp_path: Path) -> None:
    script = in_a_checkout(example("reservations-python").text, server, tmp_path)
    c = await seeded(server)  # ann: cc-1 ACTIVE at store-2
    await c.reserve("done-1", [("SHOE", "store-2", 1)], customer_id="ann")
    await c.fulfil("done-1")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(script), cwd=script.parent, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None

        async def line() -> str:
            async with asyncio.timeout(DEADLINE):
                return (await proc.stdout.readline()).decode().strip()  # type: ignore[union-attr]

        assert [await line(), await line()] == ["cc-1 ACTIVE", "done-1 FULFILLED"]
        assert await line() == "cc-1 now"  # the watch's snapshot
        await c.fulfil("cc-1")
        assert await line() == "cc-1 ['FULFILLED']"
    finally:
        proc.kill()
        await proc.wait()
        await c.close()
