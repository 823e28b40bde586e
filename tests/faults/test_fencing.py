"""Fencing: a second server on the same Redis takes the partitions over (epochs bumped).

The first server's next write is refused by the flush script (FENCED): its flusher stops,
`wait()` returns and `failed` is True, and the refused write never reaches Redis. The second
server serves normally and never sees what the first tried to write after the takeover.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
import redis.asyncio as aioredis

from tests.faults.helpers import levels, movement_batch
from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import RedisServer
from unistock.server.persistence.keys import Keyspace
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

A = ("SKU-A", "store-1")
B = ("SKU-B", "store-2")


async def epochs(url: str) -> list[int]:
    ks = Keyspace()
    r = aioredis.Redis.from_url(url)
    try:
        values = await r.mget([ks.epoch(p) for p in range(ks.partitions)])
    finally:
        await r.aclose()
    return [int(v or 0) for v in values]


async def test_takeover_fences_the_first_server(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    first = await make_server(redis_server.url)
    before = await epochs(redis_server.url)
    async with UnistockClient(target(first), TOKENS["admin"], timeout=5, retry=None) as c1:
        seed = movement_batch("wms-1", [(1, "RECEIPT", *A, 10), (2, "RECEIPT", *B, 10)])
        assert [a.applied async for a in c1.apply_movements([seed])] == [2]
        await c1.reserve("r-1", [(*A, 2)], kind="ORDER")

        second = await make_server(redis_server.url)
        after = await epochs(redis_server.url)
        assert all(b > a for a, b in zip(before, after, strict=True))
        assert not first.failed

        # The first server's next writes: refused, never acknowledged as OK.
        with pytest.raises(UnistockClientError) as err:
            await c1.reserve("r-stale", [(*A, 5)], kind="ORDER")
        assert err.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        await asyncio.wait_for(first.wait(), timeout=10)
        assert first.failed
        assert first.commit.fenced is not None

    async with UnistockClient(target(second), TOKENS["admin"], retry=None) as c2:
        got = await levels(c2, [A, B])
        assert (got[A].on_hand, got[A].reserved) == (10, 2)
        assert (got[B].on_hand, got[B].reserved) == (10, 0)
        with pytest.raises(UnistockClientError) as err:
            await c2.get_reservation("r-stale")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        # The second serves normally: writes, reads, and the first's seq 3 is not a duplicate.
        [ack] = [
            a async for a in c2.apply_movements([movement_batch("wms-1", [(3, "RECEIPT", *B, 1)])])
        ]
        assert (ack.applied, ack.duplicates) == (1, 0)
        await c2.reserve("r-2", [(*A, 8)], kind="ORDER")
        assert (await c2.get_reservation("r-1")).state == pb.ACTIVE
        got = await levels(c2, [A, B])
        assert (got[A].reserved, got[A].available, got[B].on_hand) == (10, 0, 11)
    await second.stop()

    # What the first tried after the takeover is nowhere in Redis.
    third = await make_server(redis_server.url)
    async with UnistockClient(target(third), TOKENS["admin"], retry=None) as c3:
        got = await levels(c3, [A, B])
        assert (got[A].on_hand, got[A].reserved, got[B].on_hand) == (10, 10, 11)
        with pytest.raises(UnistockClientError) as err:
            await c3.get_reservation("r-stale")
        assert err.value.code == grpc.StatusCode.NOT_FOUND


async def test_writes_after_fencing_fail_fast(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    first = await make_server(redis_server.url)
    async with UnistockClient(target(first), TOKENS["admin"], timeout=2, retry=None) as c1:
        seed = movement_batch("wms-1", [(1, "RECEIPT", *A, 10)])
        assert [a.applied async for a in c1.apply_movements([seed])] == [1]
        await make_server(redis_server.url)
        with pytest.raises(UnistockClientError):
            await c1.reserve("r-stale", [(*A, 1)], kind="ORDER")
        await asyncio.wait_for(first.wait(), timeout=10)

        with pytest.raises(UnistockClientError) as err:
            await c1.reserve("r-later", [(*A, 1)], kind="ORDER")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE

        async def send_batch() -> None:
            # Bounded only so that the failure shows as a failure, not a hung run.
            async with asyncio.timeout(10):
                batch = movement_batch("wms-1", [(2, "RECEIPT", *A, 1)])
                async for ack in c1.apply_movements([batch]):
                    pytest.fail(f"a fenced server acknowledged a batch: {ack}")

        with pytest.raises(UnistockClientError) as err:
            await send_batch()
        assert err.value.code == grpc.StatusCode.UNAVAILABLE
