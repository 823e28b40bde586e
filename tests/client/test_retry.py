"""Idempotent calls retried across a server kill -9 and restart hold their units once;
non-idempotent ones are sent once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from tests.fixtures.server import TOKENS, ServerProcess
from unistock.client import (
    InvalidArgumentError,
    RetryPolicy,
    UnavailableError,
    UnistockClient,
    UnistockClientError,
)
from unistock.devtools.services import RedisServer
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

N = 120


def units(i: int) -> int:
    return 1 + i % 3


async def test_reserves_retried_across_kill_9_hold_once(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    proc = ServerProcess(redis_server.url, tmp_path / "server")
    await asyncio.to_thread(proc.start)
    try:
        async with UnistockClient(proc.target, TOKENS["backoffice"], retry=None) as bo:
            seed = pb.MovementBatch(
                source_id="wms-1",
                movements=[
                    pb.Movement(seq=1, sku="A", location_id="s-1", type=pb.RECEIPT, quantity=10**6)
                ],
            )
            assert [a.applied async for a in bo.apply_movements([seed])] == [1]
        done = 0
        enough = asyncio.Event()
        policy = RetryPolicy(deadline=120)
        async with UnistockClient(proc.target, TOKENS["channel"], timeout=5, retry=policy) as c:

            async def reserve(i: int) -> pb.ReserveResponse:
                nonlocal done
                resp = await c.reserve(f"r-{i}", [("A", "s-1", units(i))], kind="ORDER")
                done += 1
                if done >= 10:
                    enough.set()
                return resp

            calls = [asyncio.create_task(reserve(i)) for i in range(N)]
            await enough.wait()
            proc.kill()  # answers in flight are lost; some of those reserves were applied
            killed_at = done
            await asyncio.to_thread(proc.start)
            answers = await asyncio.gather(*calls)
            assert killed_at < N, "every reserve finished before the kill: nothing was retried"
            assert all(a.reservation.state == pb.ACTIVE for a in answers)
            (level,) = await c.get_availability(keys=[("A", "s-1")])
            assert level.reserved == sum(units(i) for i in range(N))
            # A caller retrying by hand is answered the same, and holds nothing more.
            again = await c.reserve("r-7", [("A", "s-1", units(7))], kind="ORDER")
            assert again.reservation.reservation_id == "r-7"
            (level,) = await c.get_availability(keys=[("A", "s-1")])
            assert level.reserved == sum(units(i) for i in range(N))

            # A partial fulfilment without request_id is not idempotent: sent once.
            proc.kill()
            async with asyncio.timeout(60):  # a hang here means it was retried (deadline 120)
                with pytest.raises(UnavailableError):
                    await c.fulfil("r-1", [("A", "s-1", 1)])
    finally:
        proc.stop()


class Flaky:
    """An attempt failing with the given errors first, then answering "ok"."""

    def __init__(self, *errors: UnistockClientError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def down() -> UnavailableError:
    return UnavailableError(grpc.StatusCode.UNAVAILABLE, "connection refused")


async def no_sleep(_: float) -> None:
    return None


async def test_policy_retries_only_retryable_errors_and_counts_attempts() -> None:
    flaky = Flaky(down(), down())
    assert await RetryPolicy().call(flaky, sleep=no_sleep) == "ok"
    assert flaky.calls == 3

    flaky = Flaky(down(), down())
    with pytest.raises(UnavailableError):
        await RetryPolicy(attempts=2).call(flaky, sleep=no_sleep)
    assert flaky.calls == 2

    flaky = Flaky(down())
    with pytest.raises(UnavailableError):
        await RetryPolicy(attempts=1).call(flaky, sleep=no_sleep)  # 1: retries disabled
    assert flaky.calls == 1

    flaky = Flaky(InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "sku: empty"))
    with pytest.raises(InvalidArgumentError):
        await RetryPolicy().call(flaky, sleep=no_sleep)
    assert flaky.calls == 1


async def test_policy_backs_off_with_jitter_up_to_its_bound() -> None:
    pauses: list[float] = []

    async def record(pause: float) -> None:
        pauses.append(pause)

    policy = RetryPolicy(initial_backoff=0.1, max_backoff=0.4, multiplier=2.0, attempts=7)
    with pytest.raises(UnavailableError):
        await policy.call(Flaky(*(down() for _ in range(10))), sleep=record)
    bounds = [0.1, 0.2, 0.4, 0.4, 0.4, 0.4]
    assert len(pauses) == len(bounds)
    assert all(0 <= p <= b for p, b in zip(pauses, bounds, strict=True))

    with pytest.raises(UnavailableError):  # a deadline already spent: no retry
        await RetryPolicy(deadline=0).call(Flaky(down()), sleep=record)


def test_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="multiplier"):
        RetryPolicy(multiplier=0.5)
