"""WatchAvailability: snapshot by filter, then changes in version order; resume; slow subscribers."""

from __future__ import annotations

import asyncio
import gc
import sys
from collections.abc import AsyncIterator, Iterator

import grpc
import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest
from grpc import aio

from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import UnistockClient, Watcher
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb
from unistock.v1 import inventory_pb2_grpc as pb_grpc

Key = tuple[str, str]
Stream = AsyncIterator[pb.WatchAvailabilityResponse]

#: Generous deadline for anything the server should do "soon" (never asserted as a duration).
DEADLINE = 20.0

SKUS = ("W1", "W2", "W3")
LOCS = ("s1", "s2", "dc")
#: The positions that exist before each test watches: not the full cross product on purpose.
STOCK: dict[Key, int] = {
    ("W1", "s1"): 5,
    ("W1", "s2"): 6,
    ("W1", "dc"): 50,
    ("W2", "s1"): 2,
    ("W2", "dc"): 20,
    ("W3", "s2"): 9,
}


def receipts(source: str, stock: dict[Key, int], first_seq: int = 1) -> pb.MovementBatch:
    return pb.MovementBatch(
        source_id=source,
        movements=[
            pb.Movement(seq=i, sku=s, location_id=loc, type=pb.RECEIPT, quantity=q)
            for i, ((s, loc), q) in enumerate(stock.items(), first_seq)
        ],
    )


async def send(c: UnistockClient, *batches: pb.MovementBatch) -> list[pb.MovementAck]:
    acks = [a async for a in c.apply_movements(list(batches))]
    assert all(not a.rejections for a in acks), acks
    return acks


async def close(stream: Stream) -> None:
    """End a watch stream (client.watch returns an async generator)."""
    await stream.aclose()  # type: ignore[attr-defined]


async def next_msg(stream: Stream) -> pb.WatchAvailabilityResponse:
    async with asyncio.timeout(DEADLINE):
        return await anext(stream)


async def read_snapshot(stream: Stream) -> dict[Key, pb.StockLevel]:
    """Levels until snapshot_complete; each position at most once."""
    out: dict[Key, pb.StockLevel] = {}
    while True:
        msg = await next_msg(stream)
        for lvl in msg.levels:
            key = (lvl.sku, lvl.location_id)
            assert key not in out, f"{key} twice in the snapshot"
            out[key] = lvl
        if msg.snapshot_complete:
            return out


async def read_until(
    stream: Stream, done: dict[Key, int], seen: dict[Key, list[int]] | None = None
) -> list[pb.StockLevel]:
    """Every level received until each key of done reached at least its version."""
    got: list[pb.StockLevel] = []
    reached = dict.fromkeys(done, False)
    while not all(reached.values()):
        msg = await next_msg(stream)
        assert not msg.snapshot_complete
        for lvl in msg.levels:
            key = (lvl.sku, lvl.location_id)
            got.append(lvl)
            if seen is not None:
                seen.setdefault(key, []).append(lvl.version)
            if key in done and lvl.version >= done[key]:
                reached[key] = True
    return got


@pytest.fixture
async def stocked(backoffice: UnistockClient) -> dict[Key, pb.StockLevel]:
    await send(backoffice, receipts("wms", STOCK))
    levels = await backoffice.get_availability(keys=list(STOCK))
    return {(lv.sku, lv.location_id): lv for lv in levels}


@pytest.mark.parametrize(
    ("skus", "locs"),
    [
        (["W1"], []),
        ([], ["s1"]),
        (["W1", "W2"], ["s2", "dc"]),
        (["W3"], ["s1"]),  # matches nothing that exists
        ([], []),
        (["NOPE"], []),
    ],
    ids=["by-sku", "by-location", "both", "empty-match", "everything", "unknown-sku"],
)
async def test_snapshot_matches_filter(
    client: UnistockClient,
    stocked: dict[Key, pb.StockLevel],
    skus: list[str],
    locs: list[str],
) -> None:
    expected = {
        k: lv
        for k, lv in stocked.items()
        if (not skus or k[0] in skus) and (not locs or k[1] in locs)
    }
    stream = client.watch(skus, locs)
    try:
        assert await read_snapshot(stream) == expected
    finally:
        await close(stream)


async def test_changes_follow_the_snapshot_in_version_order(
    client: UnistockClient, backoffice: UnistockClient, stocked: dict[Key, pb.StockLevel]
) -> None:
    w1 = client.watch(["W1"])
    s2 = client.watch([], ["s2"])
    everything = client.watch()
    try:
        snaps = [await read_snapshot(s) for s in (w1, s2, everything)]
        assert [len(s) for s in snaps] == [3, 2, 6]

        # A change s2 does not match (W2@s1), then one on W1@s1 (not s2), then W1@s2 (both).
        await send(backoffice, receipts("wms-2", {("W2", "s1"): 1}))
        await client.reserve("r-w", [("W1", "s1", 2)])
        await send(
            backoffice,
            receipts("wms-3", {("W1", "s2"): 4}),
        )
        v = {k: lv.version for k, lv in stocked.items()}

        # W1 watcher: W1@s1 then W1@s2, never W2.
        got = await read_until(
            w1, {("W1", "s1"): v["W1", "s1"] + 1, ("W1", "s2"): v["W1", "s2"] + 1}
        )
        assert [(lv.sku, lv.location_id) for lv in got] == [("W1", "s1"), ("W1", "s2")]
        assert (got[0].on_hand, got[0].reserved, got[0].available) == (5, 2, 3)
        assert (got[1].on_hand, got[1].available) == (10, 10)

        # s2 watcher: the first thing it gets is W1@s2 (the earlier changes did not match it).
        got = await read_until(s2, {("W1", "s2"): v["W1", "s2"] + 1})
        assert [(lv.sku, lv.location_id, lv.on_hand) for lv in got] == [("W1", "s2", 10)]

        # Everything: all three, in the order they were made.
        got = await read_until(
            everything,
            {
                ("W2", "s1"): v["W2", "s1"] + 1,
                ("W1", "s1"): v["W1", "s1"] + 1,
                ("W1", "s2"): v["W1", "s2"] + 1,
            },
        )
        assert [(lv.sku, lv.location_id) for lv in got] == [
            ("W2", "s1"),
            ("W1", "s1"),
            ("W1", "s2"),
        ]

        # Many changes to one position: versions only increase, and the last one is current.
        key = ("W1", "dc")
        for i in range(20):
            await client.reserve(f"r-dc-{i}", [("W1", "dc", 1)])
            if i % 3 == 0:
                await client.release(f"r-dc-{i}")
        [final] = await client.get_availability(keys=[key])
        seen: dict[Key, list[int]] = {}
        got = await read_until(w1, {key: final.version}, seen)
        versions = seen[key]
        assert versions == sorted(set(versions)), versions  # strictly increasing
        assert versions[-1] == final.version
        assert got[-1] == final
        assert final.reserved == 20 - 7
    finally:
        for s in (w1, s2, everything):
            await close(s)


async def test_resume_with_known_versions(
    client: UnistockClient, backoffice: UnistockClient, stocked: dict[Key, pb.StockLevel]
) -> None:
    known = {k: lv.version for k, lv in stocked.items()}
    # A client that has everything gets an empty snapshot.
    stream = client.watch(known_versions=known)
    try:
        assert await read_snapshot(stream) == {}
    finally:
        await close(stream)

    # Two positions move on while the client is away; a third is new.
    await client.reserve("r-away", [("W2", "dc", 3)])
    await send(backoffice, receipts("wms-away", {("W3", "s2"): 1, ("W3", "dc"): 7}))
    current = {
        (lv.sku, lv.location_id): lv
        for lv in await client.get_availability(keys=[*STOCK, ("W3", "dc")])
    }
    stream = client.watch(known_versions=known)
    try:
        snap = await read_snapshot(stream)
    finally:
        await close(stream)
    assert snap == {k: current[k] for k in (("W2", "dc"), ("W3", "s2"), ("W3", "dc"))}

    # A version the client claims to have beyond the server's skips the position too; the
    # filter still applies.
    ahead = {**known, ("W2", "dc"): 10_000}
    stream = client.watch(["W2", "W3"], known_versions=ahead)
    try:
        snap = await read_snapshot(stream)
    finally:
        await close(stream)
    assert set(snap) == {("W3", "s2"), ("W3", "dc")}


async def test_watcher_resumes_after_being_cut(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url, watch_max_pending=10)
    async with (
        UnistockClient(target(srv), TOKENS["backoffice"]) as bo,
        UnistockClient(target(srv), TOKENS["channel"]) as ch,
    ):
        await send(bo, receipts("wms", {("R", f"loc-{i:02d}"): 1 for i in range(5)}))
        watcher = Watcher(ch, skus=["R"], retry_delay=0.05)
        versions: dict[Key, list[int]] = {}
        snapshot_seen = asyncio.Event()

        async def consume() -> None:
            async for lvl in watcher:
                versions.setdefault((lvl.sku, lvl.location_id), []).append(lvl.version)
                if len(versions) == 5:
                    snapshot_seen.set()

        task = asyncio.create_task(consume())
        try:
            async with asyncio.timeout(DEADLINE):
                await snapshot_seen.wait()
            # 50 positions changed in one batch (one group commit): more than the 10 a watcher
            # may lag behind, so its stream is cut and the Watcher reconnects with its versions.
            stock = {("R", f"loc-{i:02d}"): 2 for i in range(50)}
            await send(bo, receipts("wms", stock, first_seq=100))
            expected = {
                (lv.sku, lv.location_id): lv for lv in await ch.get_availability(keys=list(stock))
            }
            async with asyncio.timeout(DEADLINE):
                while watcher.levels != expected:  # noqa: ASYNC110 (polling a plain dict)
                    await asyncio.sleep(0.02)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        dropped = srv.metrics.registry.get_sample_value("unistock_watch_subscribers_dropped_total")
        assert dropped is not None
        assert dropped >= 1  # it really was cut and had to resume
        assert watcher.levels[("R", "loc-00")].on_hand == 3
        assert watcher.levels[("R", "loc-49")].on_hand == 2
        for key, vs in versions.items():
            assert vs == sorted(set(vs)), (key, vs)


def _update_batches(
    n_batches: int, per_batch: int, positions: int, sku_pad: str, first_seq: int = 1
) -> Iterator[pb.MovementBatch]:
    seq = first_seq
    for b in range(n_batches):
        movements = []
        for i in range(per_batch):
            p = (b * per_batch + i) % positions
            movements.append(
                pb.Movement(
                    seq=seq,
                    sku=f"SLOW-{p:05d}-{sku_pad}",
                    location_id=f"loc-{p % 50:02d}",
                    type=pb.RECEIPT,
                    quantity=1,
                )
            )
            seq += 1
        yield pb.MovementBatch(source_id="wms-slow", movements=movements)


async def test_subscriber_that_never_reads_is_bounded(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    max_pending, positions, per_batch, n_batches = 1000, 5000, 1000, 100
    pad = "x" * 117  # 128-character SKUs: big messages, so that buffering them all would show
    srv: UnistockServer = await make_server(clean_redis_url, watch_max_pending=max_pending)
    proc = psutil.Process()
    async with (
        UnistockClient(target(srv), TOKENS["backoffice"]) as bo,
        aio.insecure_channel(target(srv)) as raw,
    ):
        # Warm up with the same load before the subscriber arrives (every position resident,
        # the ApplyMovements window of in-flight batches filled), so that what the process
        # grows by afterwards is what the subscriber costs, not the positions or the pipeline.
        warm_batches = 70
        warm = _update_batches(warm_batches, per_batch, positions, pad)
        acks = [a async for a in bo.apply_movements(warm)]
        assert sum(a.applied for a in acks) == warm_batches * per_batch

        stub = pb_grpc.InventoryServiceStub(raw)
        call = stub.WatchAvailability(
            pb.WatchAvailabilityRequest(),
            metadata=(("authorization", f"Bearer {TOKENS['channel']}"),),
        )
        async with asyncio.timeout(DEADLINE):
            while not srv.hub._all:  # noqa: ASYNC110 (the server's set, no event to wait on)
                await asyncio.sleep(0.01)
        [sub] = srv.hub._all

        gc.collect()
        rss_before = proc.memory_info().rss
        largest = 0
        applied = 0
        updates = _update_batches(
            n_batches, per_batch, positions, pad, first_seq=warm_batches * per_batch + 1
        )
        async for ack in bo.apply_movements(updates):
            applied += ack.applied
            largest = max([largest, len(sub.pending)] + [len(s.pending) for s in srv.hub._all])
        gc.collect()
        rss_growth = proc.memory_info().rss - rss_before
        assert applied == n_batches * per_batch  # 100k updates went through

        # (a) The buffer never held more than max_pending positions, and the stream was cut.
        assert largest <= max_pending
        assert sub.overflowed
        assert not sub.pending
        assert sub not in srv.hub._all
        dropped = srv.metrics.registry.get_sample_value("unistock_watch_subscribers_dropped_total")
        assert dropped == 1

        # (b) Memory. The server buffers an update as the bytes of its serialised level; 100k
        # of them buffered would need at least 100k * sys.getsizeof(entry) (~18 MB: the bytes
        # objects alone, without the dict, tuples and versions around them, nor what gRPC
        # would queue). The whole process (server and both clients) must grow by less than
        # half of that: what it keeps is a bounded buffer, not the stream of updates.
        one = sys.getsizeof(
            pb.WatchAvailabilityResponse(
                levels=[
                    pb.StockLevel(
                        sku=f"SLOW-00000-{pad}",
                        location_id="loc-00",
                        on_hand=100,
                        available=100,
                        version=100,
                    )
                ]
            ).SerializeToString()
        )
        all_buffered = n_batches * per_batch * one
        assert all_buffered > 15_000_000
        assert rss_growth < all_buffered // 2, (rss_growth, all_buffered)

        # The subscriber, reading at last, gets what was sent before the cut, then
        # RESOURCE_EXHAUSTED (its cue to resume with known_versions).
        async def drain() -> None:
            async for _ in call:
                pass

        with pytest.raises(aio.AioRpcError) as err:
            await asyncio.wait_for(drain(), DEADLINE)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
