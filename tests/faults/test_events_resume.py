"""F20: an event subscriber disconnecting and resuming with its last event_id across a server
restart (SIGTERM, and kill -9 while the deriver is busy): no event missed, none delivered twice.

The server runs as a child process on a private Redis (AOF, fsync always). A subscriber reads
part of the events, leaves; the server is stopped or killed and started again; more changes
are made; the subscriber resumes after its last event_id and must receive exactly the events a
reader from the very start sees after that id.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.server import TOKENS, ServerProcess
from tests.server.test_events import Events
from unistock.client import UnistockClient
from unistock.devtools.services import RedisServer
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

V = [pb.COUNT_VARIANCE]


async def count_burst(target: str, first: int, n: int) -> None:
    """n COUNTs of one position (alternating 5 and 7 units), count ids C<seq>, seqs from
    first, in one batch: n COUNT_VARIANCE events."""
    movements = [
        pb.Movement(
            seq=seq, sku="K", location_id="s1", type=pb.COUNT,
            quantity=5 if seq % 2 else 7, count_id=f"C{seq}",
        )
        for seq in range(first, first + n)
    ]  # fmt: skip
    async with UnistockClient(target, TOKENS["backoffice"]) as c:
        acks = [
            a
            async for a in c.apply_movements(
                [pb.MovementBatch(source_id="counter", movements=movements)]
            )
        ]
    assert not any(a.rejections for a in acks), acks


@pytest.mark.parametrize("how", ["sigterm", "kill -9"])
async def test_resume_after_a_server_restart(
    tmp_path: Path, redis_server: RedisServer, how: str
) -> None:
    proc = ServerProcess(redis_server.url, tmp_path / "server").start()
    try:
        await count_burst(proc.target, 1, 40)
        first = Events(proc.target, after_event_id="0-0", types=V)
        seen = await first.take(15)
        await first.close()
        await count_burst(proc.target, 41, 400)  # the deriver is busy with these when killed
        if how == "sigterm":
            assert proc.terminate() == 0
        else:
            proc.kill()
        proc.start()
        await count_burst(proc.target, 441, 60)
        everything = Events(proc.target, after_event_id="0-0", types=V)
        full = await everything.take(500)
        resumed = Events(proc.target, after_event_id=seen[-1].event_id, types=V)
        rest = await resumed.take(485)
        # Nothing more for either: one more change shows what comes next for both.
        await count_burst(proc.target, 501, 1)
        [after_full] = await everything.take(1)
        [after_rest] = await resumed.take(1)
        await everything.close()
        await resumed.close()
    finally:
        proc.stop()
    assert [e.count_id for e in full] == [f"C{i}" for i in range(1, 501)]
    assert len({e.event_id for e in full}) == 500
    assert full[:15] == seen
    assert rest == full[15:]
    assert after_full == after_rest
    assert after_full.count_id == "C501"
