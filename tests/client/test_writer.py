"""MovementWriter against a real server: durable before it returns, resent until acknowledged,
exactly once across kill -9 of the writer's process and restarts of the server."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest

from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import (
    FlushTimeout,
    MovementWriter,
    RequestConflict,
    UnistockClient,
    WriterFailed,
    WriterFileError,
    WriterLocked,
)
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

REPO = Path(__file__).resolve().parents[2]


def receipt(sku: str, quantity: int, location: str = "dc-1") -> pb.Movement:
    return pb.Movement(sku=sku, location_id=location, type=pb.RECEIPT, quantity=quantity)


async def on_hand(client: UnistockClient, sku: str, location: str = "dc-1") -> tuple[int, int]:
    """(on_hand, version) of a position."""
    (level,) = await client.get_availability(keys=[(sku, location)])
    return level.on_hand, level.version


async def test_records_assign_seqs_and_flush_applies(
    server: UnistockServer, tmp_path: Path
) -> None:
    async with (
        UnistockClient(target(server), TOKENS["backoffice"]) as c,
        MovementWriter(c, "wms-1", tmp_path / "w.db") as w,
    ):
        first = receipt("A", 5)
        got = [
            await w.record(first),
            await w.record(receipt("A", 2)),
            await w.record(receipt("B", 1)),
        ]
        assert [(r.seq, r.new) for r in got] == [(1, True), (2, True), (3, True)]
        assert (first.source_id, first.seq) == ("wms-1", 1)  # set on the caller's movement
        result = await w.flush(30)
        assert (result.applied, result.duplicates, result.rejected) == (3, 0, [])
        assert result.ok
        assert await w.pending() == 0
        assert await on_hand(c, "A") == (7, 2)
        # Nothing new since: an empty tally.
        assert (await w.flush(30)).applied == 0
    # Reopened: seqs go on after the last one, even though every row was deleted on ack.
    async with (
        UnistockClient(target(server), TOKENS["backoffice"]) as c,
        MovementWriter(c, "wms-1", tmp_path / "w.db") as w,
    ):
        assert (await w.record(receipt("A", 1))).seq == 4
        assert (await w.flush(30)).applied == 1
        assert await on_hand(c, "A") == (8, 3)


async def test_request_id_records_once(server: UnistockServer, tmp_path: Path) -> None:
    async with (
        UnistockClient(target(server), TOKENS["backoffice"]) as c,
        MovementWriter(c, "wms-1", tmp_path / "w.db") as w,
    ):
        one = await w.record(receipt("A", 5), request_id="grn-1")
        again = await w.record(receipt("A", 5), request_id="grn-1")
        assert (one.seq, one.new, again.seq, again.new) == (1, True, 1, False)
        with pytest.raises(RequestConflict, match="grn-1"):
            await w.record(receipt("A", 6), request_id="grn-1")
        assert (await w.flush(30)).applied == 1
        assert await on_hand(c, "A") == (5, 1)
    async with (
        UnistockClient(target(server), TOKENS["backoffice"]) as c,
        MovementWriter(c, "wms-1", tmp_path / "w.db") as w,
    ):  # remembered across restarts
        assert (await w.record(receipt("A", 5), request_id="grn-1")).new is False
        assert (await w.flush(30)).applied == 0
        assert await on_hand(c, "A") == (5, 1)


async def test_rejected_movement_is_kept_with_its_reason(
    server: UnistockServer, tmp_path: Path
) -> None:
    path = tmp_path / "w.db"
    async with (
        UnistockClient(target(server), TOKENS["backoffice"]) as c,
        MovementWriter(c, "wms-1", path) as w,
    ):
        await w.record(receipt("A", 4))
        bad = pb.Movement(sku="A", location_id="dc-1", type=pb.SALE, quantity=0)
        await w.record(bad)
        await w.record(receipt("A", 1))
        result = await w.flush(30)
        assert not result.ok
        assert (result.applied, result.duplicates) == (2, 0)
        (rej,) = result.rejected
        assert (rej.seq, rej.reason_name) == (2, "BAD_QUANTITY")
        assert "quantity" in rej.detail
        assert rej.movement is not None
        assert rej.movement.type == pb.SALE
        assert await on_hand(c, "A") == (5, 2)
    async with (
        UnistockClient(target(server), TOKENS["backoffice"]) as c,
        MovementWriter(c, "wms-1", path) as w,
    ):  # kept in the file, never sent again
        assert [(r.seq, r.reason_name) for r in await w.rejected()] == [(2, "BAD_QUANTITY")]
        assert await w.pending() == 0


async def test_one_writer_per_file(server: UnistockServer, tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    async with UnistockClient(target(server), TOKENS["backoffice"]) as c:
        async with MovementWriter(c, "wms-1", path):
            with pytest.raises(WriterLocked, match="already open in another MovementWriter"):
                async with MovementWriter(c, "wms-1", path):
                    pass
        # Released on close: the next one opens; another source is refused.
        async with MovementWriter(c, "wms-1", path):
            pass
        with pytest.raises(WriterFileError, match="'wms-1', not 'wms-2'"):
            async with MovementWriter(c, "wms-2", path):
                pass
        async with MovementWriter(c, "wms-1", path):  # the refusal let the lock go
            pass


async def test_refused_stream_fails_flush(server: UnistockServer, tmp_path: Path) -> None:
    async with (
        UnistockClient(target(server), TOKENS["channel"]) as c,  # role channel: no movements
        MovementWriter(c, "wms-1", tmp_path / "w.db") as w,
    ):
        await w.record(receipt("A", 1))
        with pytest.raises(WriterFailed, match="PERMISSION_DENIED"):
            await w.flush(30)
        assert await w.pending() == 1  # kept


async def test_server_down_while_recording(
    make_server: MakeServer, clean_redis_url: str, tmp_path: Path
) -> None:
    srv = await make_server(clean_redis_url)
    port = srv.grpc_port
    await srv.stop()
    async with (
        UnistockClient(f"127.0.0.1:{port}", TOKENS["backoffice"]) as c,
        MovementWriter(c, "wms-1", tmp_path / "w.db", max_retry_delay=0.5) as w,
    ):
        for q in (1, 2, 3):
            await w.record(receipt("A", q))  # durable locally: no server needed
        with pytest.raises(FlushTimeout) as err:
            await w.flush(0.5)
        assert err.value.pending == 3
        await make_server(clean_redis_url, grpc_port=port)
        result = await w.flush(60)
        assert (result.applied, result.duplicates) == (3, 0)
        assert await on_hand(c, "A") == (6, 3)


async def child(srv_target: str, path: Path, n: int, flush: bool) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.client.writer_child",
        srv_target,
        TOKENS["backoffice"],
        str(path),
        str(n),
        "1" if flush else "0",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
    )


async def read_records(proc: asyncio.subprocess.Process, k: int) -> dict[int, int]:
    """The first k "<i> <seq> <new>" lines: {i: seq}."""
    assert proc.stdout is not None
    seqs: dict[int, int] = {}
    async with asyncio.timeout(60):
        for _ in range(k):
            i, seq, _new = (await proc.stdout.readline()).split()
            seqs[int(i)] = int(seq)
    return seqs


async def finish(proc: asyncio.subprocess.Process, n: int) -> tuple[dict[int, int], dict[str, int]]:
    """Every record line of a run that flushes, and its FlushResult."""
    seqs = await read_records(proc, n)
    assert proc.stdout is not None
    async with asyncio.timeout(90):
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    return seqs, json.loads(out)


async def assert_each_applied_once(c: UnistockClient, n: int) -> None:
    for r in range(3):
        mine = [i for i in range(1, n + 1) if i % 3 == r]
        assert await on_hand(c, f"SKU-{r}") == (sum(mine), len(mine)), f"SKU-{r}"


@pytest.mark.parametrize("kill_after", [40, 130])
async def test_kill_9_mid_stream_then_rerun(
    server: UnistockServer, tmp_path: Path, kill_after: int
) -> None:
    n = 150
    path = tmp_path / "w.db"
    first = await child(target(server), path, n, flush=False)
    before = await read_records(first, kill_after)
    first.send_signal(signal.SIGKILL)  # some batches acked, some in flight, some unsent
    await first.wait()
    # The caller retries every line: those recorded keep their seq, none is recorded twice.
    seqs, result = await finish(await child(target(server), path, n, flush=True), n)
    assert all(seqs[i] == s for i, s in before.items())
    assert sorted(seqs.values()) == list(range(1, n + 1))
    assert result["rejected"] == 0
    async with UnistockClient(target(server), TOKENS["backoffice"]) as c:
        await assert_each_applied_once(c, n)
    assert result["applied"] + result["duplicates"] >= n - kill_after


async def test_kill_9_before_any_ack_then_server_up(
    make_server: MakeServer, clean_redis_url: str, tmp_path: Path
) -> None:
    n = 20
    path = tmp_path / "w.db"
    srv = await make_server(clean_redis_url)
    port = srv.grpc_port
    await srv.stop()  # recorded while the server is down: nothing can be acked
    first = await child(f"127.0.0.1:{port}", path, n, flush=True)
    await read_records(first, n)
    first.send_signal(signal.SIGKILL)
    await first.wait()
    srv = await make_server(clean_redis_url, grpc_port=port)
    seqs, result = await finish(await child(target(srv), path, n, flush=True), n)
    assert sorted(seqs.values()) == list(range(1, n + 1))
    assert result == {"applied": n, "duplicates": 0, "rejected": 0}
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as c:
        await assert_each_applied_once(c, n)
