"""No reply, refusal or version reveals a change before it is durable (issue 8, item 1.3).

Redis is frozen (SIGSTOP) while a change is being written, answers are asked for meanwhile,
then Redis and the server crash (kill -9 of the frozen Redis: the change never reached it) and
come back. Every answer given before the crash must still be true after it: so while the change
is in flight, questions about what it touches wait (here: until their deadline) instead of
answering from memory. Questions about quiet positions are answered at once.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from tests.faults.helpers import levels, movement_batch
from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import RedisServer
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

HELD = ("SKU-H", "store-1")  # r-held holds its only unit; a release of it is in flight
LAST = ("SKU-L", "store-2")  # one unit; a Reserve of it is in flight
QUIET = ("SKU-Q", "store-3")  # nothing in flight
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


async def refused_transiently(call: object) -> grpc.StatusCode:
    """The call fails with a transient code (it waited), never with an answer."""
    with pytest.raises(UnistockClientError) as err:
        await call  # type: ignore[misc]
    assert err.value.code in TRANSIENT, (err.value.code, err.value.details)
    return err.value.code


async def test_answers_wait_for_the_change_they_reveal(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    srv = await make_server(redis_server.url, redis_timeout_s=30.0)
    async with UnistockClient(target(srv), TOKENS["admin"], timeout=30, retry=None) as c:
        seed = movement_batch(
            "wms-1", [(1, "RECEIPT", *HELD, 1), (2, "RECEIPT", *LAST, 1), (3, "RECEIPT", *QUIET, 5)]
        )
        assert [a.applied async for a in c.apply_movements([seed])] == [3]
        await c.reserve("r-held", [(*HELD, 1)], kind="ORDER")
        before = await levels(c, [HELD, LAST, QUIET])
        # Known not to exist, so that the reserve below needs no read: it is stuck in its flush.
        with pytest.raises(UnistockClientError):
            await c.get_reservation("r-last")

        redis_server.pause()
        release = asyncio.create_task(c.release("r-held"))
        reserve = asyncio.create_task(c.reserve("r-last", [(*LAST, 1)], kind="ORDER"))
        await asyncio.sleep(0.3)  # both turns ran; their flush cannot finish
        assert not release.done()
        assert not reserve.done()

        async with UnistockClient(target(srv), TOKENS["admin"], timeout=0.5, retry=None) as short:
            # A fulfil of the reservation being released: not "it is RELEASED" yet.
            await refused_transiently(short.fulfil("r-held"))
            await refused_transiently(short.get_reservation("r-held"))
            # The levels the release and the reserve changed: not revealed yet.
            await refused_transiently(short.get_availability(keys=[HELD]))
            await refused_transiently(short.get_availability(keys=[LAST]))
            # Another reserve of the last unit: not refused for lack of stock yet.
            await refused_transiently(short.reserve("r-other", [(*LAST, 1)], kind="ORDER"))
            # A repeat of the reserve in flight: not answered "replayed" yet.
            await refused_transiently(short.reserve("r-last", [(*LAST, 1)], kind="ORDER"))
            # A quiet position is answered at once.
            [quiet] = await short.get_availability(keys=[QUIET])
            assert (quiet.on_hand, quiet.version) == (5, before[QUIET].version)

        # The crash: the frozen Redis never got the writes, the server dies with them.
        redis_server.kill()
        await srv.stop(grace=0.2)
        for task in (release, reserve):
            with pytest.raises(UnistockClientError):
                await task
    redis_server.start()

    srv2 = await make_server(redis_server.url)
    async with UnistockClient(target(srv2), TOKENS["admin"], timeout=10, retry=None) as c:
        after = await levels(c, [HELD, LAST, QUIET])
        # Nothing was answered about the lost changes, and what was answered is still true.
        for key in (HELD, LAST, QUIET):
            got, was = after[key], before[key]
            assert (got.on_hand, got.reserved, got.version) == (
                was.on_hand,
                was.reserved,
                was.version,
            ), key
        assert (await c.get_reservation("r-held")).state == pb.ACTIVE
        with pytest.raises(UnistockClientError) as err:
            await c.get_reservation("r-last")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        # A version is never reused for another state: the next change is the next version.
        await c.release("r-held")
        assert (await levels(c, [HELD]))[HELD].version == before[HELD].version + 1
