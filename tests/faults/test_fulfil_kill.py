"""F15 with the server process killed (kill -9) between the two reports of the same units:
FulfilReservation and the till's SALE naming the reservation, in either order, each sent twice
(the second after a restart, as a client that never saw the answer would): on_hand and reserved
fall by the fulfilled units exactly once, and available never rises."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faults.helpers import levels, movement_batch
from tests.fixtures.server import TOKENS, ServerProcess
from unistock.client import UnistockClient
from unistock.devtools.services import RedisServer
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

KEY = ("PARKA", "store-4")
SALE = pb.MovementBatch(
    source_id="till-4",
    movements=[
        pb.Movement(
            seq=1, sku=KEY[0], location_id=KEY[1], type=pb.SALE, quantity=2, reservation_id="sfs-9"
        )
    ],
)


async def state(proc: ServerProcess) -> tuple[int, int, int]:
    async with UnistockClient(proc.target, TOKENS["admin"]) as c:
        lv = (await levels(c, [KEY]))[KEY]
        return lv.on_hand, lv.reserved, lv.available


async def report(proc: ServerProcess, which: str) -> None:
    async with UnistockClient(proc.target, TOKENS["admin"]) as c:
        if which == "fulfil":
            assert (await c.fulfil("sfs-9")).state == pb.FULFILLED
        else:
            [ack] = [a async for a in c.apply_movements([SALE])]
            assert ack.applied + ack.duplicates == 1
            assert not ack.notices


@pytest.mark.parametrize("first", ["fulfil", "sale"])
async def test_fulfil_and_sale_each_twice_across_kill_9(
    tmp_path: Path, redis_server: RedisServer, first: str
) -> None:
    second = "sale" if first == "fulfil" else "fulfil"
    proc = ServerProcess(redis_server.url, tmp_path / "server")
    try:
        proc.start()
        async with UnistockClient(proc.target, TOKENS["admin"]) as c:
            seed = movement_batch("wms-4", [(1, "RECEIPT", *KEY, 5)])
            assert [a.applied async for a in c.apply_movements([seed])] == [1]
            await c.reserve("sfs-9", [(*KEY, 2)], kind="SHIP_FROM_STORE")
        assert await state(proc) == (5, 2, 3)
        for step in (first, first, second, second):
            await report(proc, step)
            proc.kill()  # kill -9 right after the answer
            proc.start()
            assert await state(proc) == (3, 0, 3), step
    finally:
        proc.kill()
