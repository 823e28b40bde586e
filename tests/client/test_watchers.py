"""Watcher, NetworkWatcher, EventWatcher and ReservationWatcher stay open across a server
kill -9 and restart:
each change is seen once, in version order, and nothing is missed (the server runs as a child
process on a private Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.faults.helpers import eventually
from tests.fixtures.server import TOKENS, ServerProcess
from unistock.client import (
    EventWatcher,
    NetworkWatcher,
    ReservationWatcher,
    UnavailableError,
    UnistockClient,
    UnistockClientError,
    Watcher,
)
from unistock.devtools.services import RedisServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

LOCS = [f"s-{i}" for i in range(3)]
ROUNDS = 30  # movements before the kill, and again after the restart


@asynccontextmanager
async def server(tmp_path: Path, redis: RedisServer) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(redis.url, tmp_path / "server")
    await asyncio.to_thread(proc.start)
    try:
        yield proc
    finally:
        proc.stop()


def quantity(seq: int) -> int:
    return 1 + seq % 5


def location(seq: int) -> str:
    return LOCS[seq % len(LOCS)]


async def receive(target: str, seqs: range, sku: str = "W") -> None:
    """RECEIPTs of sku (seq i: quantity(i) units at location(i)), one batch per movement."""
    # A server just started may look unreachable for a moment: a new channel shares the
    # connection (and its reconnect back-off) of the watcher's channel to the same address.
    for _ in range(100):
        try:
            return await _send(target, seqs, sku)
        except UnavailableError:
            await asyncio.sleep(0.2)
    raise AssertionError("the server never took the movements")


async def _send(target: str, seqs: range, sku: str) -> None:
    async with UnistockClient(target, TOKENS["backoffice"], retry=None) as bo:
        batches = (
            pb.MovementBatch(
                source_id="wms-1",
                movements=[
                    pb.Movement(
                        seq=i,
                        sku=sku,
                        location_id=location(i),
                        type=pb.RECEIPT,
                        quantity=quantity(i),
                    )
                ],
            )
            for i in seqs
        )
        async for ack in bo.apply_movements(batches):
            assert ack.applied + ack.duplicates == 1, ack  # sent again after UNAVAILABLE


async def kill_and_restart(proc: ServerProcess) -> None:
    proc.kill()
    await asyncio.to_thread(proc.start)


class Consumer:
    """Runs `async for item in watcher`, keeping every item and counting reconnects."""

    def __init__(self, make: Callable[[Callable[[UnistockClientError, float], None]], Any]) -> None:
        self.items: list[Any] = []
        self.retries = 0
        self.watcher = make(self._retry)
        self.task = asyncio.create_task(self._run())

    def _retry(self, _: UnistockClientError, __: float) -> None:
        self.retries += 1

    async def _run(self) -> None:
        async for item in self.watcher:
            self.items.append(item)

    async def stop(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def by_key(items: list[Any], key: Callable[[Any], Any]) -> Iterator[tuple[Any, list[Any]]]:
    keys = dict.fromkeys(key(i) for i in items)
    for k in keys:
        yield k, [i for i in items if key(i) == k]


def on_hand_after(loc: str, version: int) -> int:
    """on_hand of W@loc after its first `version` movements (one version per movement)."""
    mine = [i for i in range(1, 2 * ROUNDS + 1) if location(i) == loc]
    return sum(quantity(i) for i in mine[:version])


async def test_watcher_across_kill_9(tmp_path: Path, redis_server: RedisServer) -> None:
    async with (
        server(tmp_path, redis_server) as proc,
        UnistockClient(proc.target, TOKENS["channel"]) as ch,
    ):
        seen = Consumer(
            lambda on_retry: Watcher(ch, ["W", "M"], retry_delay=0.05, on_retry=on_retry)
        )
        await receive(proc.target, range(1, ROUNDS + 1))
        await eventually(lambda: _has(seen, ROUNDS))
        await kill_and_restart(proc)
        # A marker: once the watcher has it, it is connected again (changes of W after this
        # come on the resumed stream, not in a fresh snapshot).
        await receive(proc.target, range(1000, 1001), sku="M")
        await eventually(lambda: _marked(seen))
        await receive(proc.target, range(ROUNDS + 1, 2 * ROUNDS + 1))
        await eventually(lambda: _has(seen, 2 * ROUNDS))
        await seen.stop()
    assert seen.retries >= 1, "the watcher never lost its stream"
    ws = [lv for lv in seen.items if lv.sku == "W"]
    for (_, loc), levels in by_key(ws, lambda lv: (lv.sku, lv.location_id)):
        versions = [lv.version for lv in levels]
        assert versions == sorted(set(versions)), f"{loc}: repeated or out of order {versions}"
        assert all(lv.on_hand == on_hand_after(loc, lv.version) for lv in levels), loc
        assert versions[-1] == 2 * ROUNDS // len(LOCS)  # the last change of each came


async def _has(consumer: Consumer, movements: int) -> bool:
    """Whether the consumer's latest levels add up to the first `movements` movements."""
    latest = {lv.location_id: lv.version for lv in consumer.items if lv.sku == "W"}
    return sum(latest.values()) == movements


async def _marked(consumer: Consumer) -> bool:
    return any(lv.sku == "M" for lv in consumer.items)


async def test_network_watcher_across_kill_9(tmp_path: Path, redis_server: RedisServer) -> None:
    async with server(tmp_path, redis_server) as proc:
        async with UnistockClient(proc.target, TOKENS["admin"]) as admin:
            await admin.upsert_locations(
                [apb.Location(location_id=loc, type=apb.STORE) for loc in LOCS]
            )
            await admin.upsert_networks([apb.Network(network_id="web", location_ids=LOCS)])
        async with UnistockClient(proc.target, TOKENS["channel"]) as ch:
            seen = Consumer(
                lambda on_retry: NetworkWatcher(
                    ch, ["web"], ["W", "M"], retry_delay=0.05, on_retry=on_retry
                )
            )
            total = sum(quantity(i) for i in range(1, 2 * ROUNDS + 1))
            await receive(proc.target, range(1, ROUNDS + 1))
            half = sum(quantity(i) for i in range(1, ROUNDS + 1))
            await eventually(lambda: _available(seen, half))
            await kill_and_restart(proc)
            await receive(proc.target, range(1000, 1001), sku="M")  # connected again once seen
            await eventually(lambda: _marked(seen))
            await receive(proc.target, range(ROUNDS + 1, 2 * ROUNDS + 1))
            await eventually(lambda: _available(seen, total))
            (level,) = await ch.get_network_availability("web", ["W"])
            await seen.stop()
    assert seen.retries >= 1, "the watcher never lost its stream"
    ws = [lv for lv in seen.items if lv.sku == "W"]
    versions = [lv.version for lv in ws]
    assert versions == sorted(set(versions)), versions
    assert (ws[-1].available, ws[-1].version) == (level.available, level.version)
    # Units only arrive: every level seen is one the network went through, never a step back.
    available = [lv.available for lv in ws]
    assert available == sorted(available)


async def _available(consumer: Consumer, units: int) -> bool:
    ws = [lv for lv in consumer.items if lv.sku == "W"]
    return bool(ws) and ws[-1].available == units


async def test_event_watcher_across_kill_9(tmp_path: Path, redis_server: RedisServer) -> None:
    async def counts(target: str, seqs: range) -> None:
        """COUNTs of K@s1 alternating 5 and 7 units (count ids C<seq>): one variance each."""
        for _ in range(100):  # a server just started may look unreachable for a moment
            try:
                return await send_counts(target, seqs)
            except UnavailableError:
                await asyncio.sleep(0.2)
        raise AssertionError("the server never took the counts")

    async def send_counts(target: str, seqs: range) -> None:
        async with UnistockClient(target, TOKENS["backoffice"], retry=None) as bo:
            movements = [
                pb.Movement(
                    seq=i, sku="K", location_id="s1", type=pb.COUNT,
                    quantity=5 if i % 2 else 7, count_id=f"C{i}",
                )
                for i in seqs
            ]  # fmt: skip
            batch = pb.MovementBatch(source_id="counter", movements=movements)
            acks = [a async for a in bo.apply_movements([batch])]
            assert [a.applied + a.duplicates for a in acks] == [len(movements)]

    async with (
        server(tmp_path, redis_server) as proc,
        UnistockClient(proc.target, TOKENS["backoffice"]) as bo,
    ):
        seen = Consumer(
            lambda on_retry: EventWatcher(
                bo, types=["COUNT_VARIANCE"], after_event_id="0-0", retry_delay=0.05,
                on_retry=on_retry,
            )
        )  # fmt: skip
        await counts(proc.target, range(1, 41))
        await eventually(lambda: _events(seen, 40))
        await counts(proc.target, range(41, 241))  # the deriver is busy with these when killed
        await kill_and_restart(proc)
        await counts(proc.target, range(241, 301))
        await eventually(lambda: _events(seen, 300), within=60)
        await seen.stop()
    assert seen.retries >= 1, "the watcher never lost its stream"
    assert [e.count_id for e in seen.items] == [f"C{i}" for i in range(1, 301)]
    assert len({e.event_id for e in seen.items}) == 300


async def _events(consumer: Consumer, n: int) -> bool:
    assert len(consumer.items) <= n, "more events than changes"
    return len(consumer.items) == n


class _GatedClient:
    """The real client, except that every WatchReservations after the first waits for `gate`:
    the test decides when the watcher may reconnect, so changes happen while it is away."""

    def __init__(self, client: UnistockClient) -> None:
        self.client = client
        self.gate = asyncio.Event()
        self.opened = 0

    async def watch_reservations(self, **kw: Any) -> AsyncIterator[pb.WatchReservationsResponse]:
        self.opened += 1
        if self.opened > 1:
            await self.gate.wait()
        async for msg in self.client.watch_reservations(**kw):
            yield msg

    async def get_reservation(self, reservation_id: str) -> pb.Reservation:
        return await self.client.get_reservation(reservation_id)


async def test_reservation_watcher_across_kill_9(tmp_path: Path, redis_server: RedisServer) -> None:
    async with server(tmp_path, redis_server) as proc:
        await receive(proc.target, range(1, 10))  # W at s-1 (10 units), s-2, s-0
        async with UnistockClient(proc.target, TOKENS["channel"]) as ch:
            gated = _GatedClient(ch)
            seen = Consumer(
                lambda on_retry: ReservationWatcher(
                    gated,  # type: ignore[arg-type]
                    customer_id="ann",
                    states=["ACTIVE"],
                    retry_delay=0.05,
                    on_retry=on_retry,
                )
            )
            for rid in ("r1", "r2", "r3"):
                await ch.reserve(rid, [("W", "s-1", 1)], kind="CART", customer_id="ann")
            await eventually(lambda: _states(seen, 3))
            await kill_and_restart(proc)
            await eventually(lambda: _retried(seen))
            # While the watcher is away: r1 released (it leaves the ACTIVE filter), r2 extended.
            async with UnistockClient(proc.target, TOKENS["channel"]) as again:
                await again.release("r1")
                await again.extend("r2", 3600)
            gated.gate.set()
            await eventually(lambda: _states(seen, 5))
            await ch.release("r3")  # on the new stream: a live change with its transition
            await eventually(lambda: _states(seen, 6))
            await asyncio.sleep(0.5)  # nothing else may come
            await seen.stop()
    names = pb.ReservationState.Name
    got = {
        rid: [(names(u.reservation.state), list(u.transitions)) for u in updates]
        for rid, updates in by_key(seen.items, lambda u: u.reservation.reservation_id)
    }
    created = [pb.ReservationUpdate.CREATED]
    assert got["r1"] == [("ACTIVE", created), ("RELEASED", [])]  # caught up, coalesced
    assert got["r2"] == [("ACTIVE", created), ("ACTIVE", [])]  # its new expiry, caught up
    assert got["r3"] == [("ACTIVE", created), ("RELEASED", [pb.ReservationUpdate.RELEASED])]
    r2 = [u.reservation for u in seen.items if u.reservation.reservation_id == "r2"]
    assert r2[1].expires_at.seconds > r2[0].expires_at.seconds


async def _states(consumer: Consumer, n: int) -> bool:
    return len(consumer.items) >= n


async def _retried(consumer: Consumer) -> bool:
    return consumer.retries >= 1
