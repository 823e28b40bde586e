"""WatchEvents end to end: each event type emitted, filters, resuming, retention, a slow
subscriber (real Redis, in-process server)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import grpc
import pytest
from grpc import aio

from tests.client.test_cli import server_args, spawn
from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import EventWatcher, UnistockClient
from unistock.devtools.services import free_port
from unistock.server.api.auth import TokenStore
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb
from unistock.v1 import inventory_pb2_grpc as pb_grpc

#: Generous deadline for anything the server should do "soon" (never asserted as a duration).
DEADLINE = 20.0
E = pb.InventoryEvent


class Events:
    """A WatchEvents stream read event by event."""

    def __init__(self, srv: UnistockServer | str, role: str = "backoffice", **request: Any) -> None:
        self.channel = aio.insecure_channel(srv if isinstance(srv, str) else target(srv))
        stub = pb_grpc.InventoryServiceStub(self.channel)
        self.call = stub.WatchEvents(
            pb.WatchEventsRequest(**request),
            metadata=(("authorization", f"Bearer {TOKENS[role]}"),),
        )
        self._buffer: list[pb.InventoryEvent] = []
        #: start_after_event_id of the stream's first message ("" until it came)
        self.start = ""

    async def started(self) -> str:
        """Until the first message: from then on, every later change comes as an event."""
        async with asyncio.timeout(DEADLINE):
            while not self.start:
                await self._read()
        return self.start

    async def _read(self) -> None:
        msg = await self.call.read()
        assert msg is not aio.EOF, "stream ended"
        if msg.start_after_event_id:
            assert not self.start, "start_after_event_id twice"
            assert not msg.events
            self.start = msg.start_after_event_id
        self._buffer.extend(msg.events)

    async def next(self) -> pb.InventoryEvent:
        async with asyncio.timeout(DEADLINE):
            while not self._buffer:
                await self._read()
        return self._buffer.pop(0)

    async def take(self, n: int) -> list[pb.InventoryEvent]:
        return [await self.next() for _ in range(n)]

    async def until(self, kind: int, **fields: Any) -> list[pb.InventoryEvent]:
        """Events up to and including the first of type kind with these field values."""
        out = []
        while True:
            ev = await self.next()
            out.append(ev)
            if ev.type == kind and all(getattr(ev, k) == v for k, v in fields.items()):
                return out

    async def nothing_more(self, srv: UnistockServer) -> None:
        """No event is pending for this stream once the deriver has caught up."""
        await caught_up(srv)
        await asyncio.sleep(0.2)  # let the stream deliver what the last round published
        assert not self._buffer, self._buffer

    async def close(self) -> None:
        self.call.cancel()
        await self.channel.close()


async def caught_up(server: UnistockServer) -> None:
    """Until the deriver has derived everything flushed so far."""
    assert server.events is not None
    await server.commit.barrier()
    async with asyncio.timeout(DEADLINE):
        while await server.events.drain_once():
            pass


_SEQ: dict[str, int] = {}


async def move(
    c: UnistockClient, kind: int, sku: str, loc: str, qty: int, source: str = "till", **kw: Any
) -> None:
    seq = _SEQ[source] = _SEQ.get(source, 0) + 1
    batch = pb.MovementBatch(
        source_id=source,
        movements=[
            pb.Movement(seq=seq, sku=sku, location_id=loc, type=kind, quantity=qty, **kw)  # type: ignore[arg-type]
        ],
    )
    acks = [a async for a in c.apply_movements([batch])]
    assert not any(a.rejections for a in acks), acks


@pytest.fixture(autouse=True)
def _fresh_seqs() -> None:
    _SEQ.clear()


async def test_levels_counts_and_negative_stock(
    server: UnistockServer,
    backoffice: UnistockClient,
    admin: UnistockClient,
    client: UnistockClient,
) -> None:
    await admin.upsert_locations(
        [apb.Location(location_id="s1", type=apb.STORE, low_stock_threshold=3)]
    )
    ev = Events(server, types=[pb.LOW_STOCK, pb.OUT_OF_STOCK, pb.BACK_IN_STOCK])
    counts = Events(server, types=[pb.COUNT_VARIANCE, pb.NEGATIVE_STOCK])
    await caught_up(server)
    await move(backoffice, pb.RECEIPT, "A", "s1", 10)
    [back] = await ev.take(1)
    assert (back.type, back.sku, back.location_id, back.available) == (
        pb.BACK_IN_STOCK, "A", "s1", 10,
    )  # fmt: skip
    await move(backoffice, pb.SALE, "A", "s1", 6)  # 4 left: above 3
    await move(backoffice, pb.SALE, "A", "s1", 1)  # 3: low
    [low] = await ev.take(1)
    assert (low.type, low.available, low.on_hand) == (pb.LOW_STOCK, 3, 3)
    # A reservation takes the rest: out of stock without any movement.
    await client.reserve("r-out", [("A", "s1", 3)])
    [out] = await ev.take(1)
    assert (out.type, out.available, out.on_hand) == (pb.OUT_OF_STOCK, 0, 3)
    await client.release("r-out")
    [low_again] = await ev.take(1)
    assert (low_again.type, low_again.available) == (pb.LOW_STOCK, 3)
    # A count: variance -1 (on_hand 3 -> 2), with its count id.
    await move(backoffice, pb.COUNT, "A", "s1", 2, count_id="C-1")
    [variance] = await counts.take(1)
    assert (variance.type, variance.count_id, variance.quantity, variance.on_hand) == (
        pb.COUNT_VARIANCE, "C-1", -1, 2,
    )  # fmt: skip
    # A sale of more than there is: negative stock (and out of stock).
    await move(backoffice, pb.SALE, "A", "s1", 5)
    [negative] = await counts.take(1)
    assert (negative.type, negative.on_hand, negative.quantity, negative.seq) == (
        pb.NEGATIVE_STOCK, -3, 5, 5,
    )  # fmt: skip
    [gone] = await ev.take(1)
    assert gone.type == pb.OUT_OF_STOCK
    await ev.nothing_more(server)
    await counts.nothing_more(server)
    ids = [e.event_id for e in (back, low, out, low_again, variance, negative, gone)]
    assert len(set(ids)) == len(ids)
    await ev.close()
    await counts.close()


async def test_reservation_events(make_server: MakeServer, clean_redis_url: str) -> None:
    srv = await make_server(clean_redis_url, expiry_interval_s=0.1)
    async with (
        UnistockClient(target(srv), TOKENS["backoffice"]) as bo,
        UnistockClient(target(srv), TOKENS["channel"]) as ch,
    ):
        ev = Events(srv, role="channel")
        await caught_up(srv)
        await move(bo, pb.RECEIPT, "B", "s1", 5)
        await move(bo, pb.RECEIPT, "B", "s2", 5)
        await ev.until(pb.BACK_IN_STOCK, location_id="s2")
        # Click & collect: ready at its store on creation.
        await ch.reserve("cc-1", [("B", "s1", 2)], kind="CLICK_AND_COLLECT", customer_id="cu")
        [ready] = await ev.take(1)
        assert (ready.type, ready.reservation_id, ready.location_id, ready.sku) == (
            pb.READY_FOR_PICKUP, "cc-1", "s1", "B",
        )  # fmt: skip
        assert [(ln.sku, ln.location_id, ln.quantity) for ln in ready.lines] == [("B", "s1", 2)]
        # Moved to another store: moved, then ready there.
        await ch.transfer_reservation("cc-1", "mv-1", [("B", "s1", "s2", 2)])
        moved, ready2 = await ev.take(2)
        assert (moved.type, moved.reservation_id) == (pb.RESERVATION_MOVED, "cc-1")
        assert [(ln.location_id, ln.quantity) for ln in moved.lines] == [("s2", 2)]
        assert (ready2.type, ready2.location_id) == (pb.READY_FOR_PICKUP, "s2")
        # A till sells 3 naming it: it held 2 there, so 1 was not picked up from it.
        await move(bo, pb.SALE, "B", "s2", 3, reservation_id="cc-1")
        mismatch = (await ev.until(pb.RESERVATION_PICKUP_MISMATCH))[-1]
        assert (mismatch.reservation_id, mismatch.location_id, mismatch.quantity) == (
            "cc-1", "s2", 1,
        )  # fmt: skip
        # A count leaves a cart at risk: which reservation, which line.
        risks = Events(srv, role="channel", types=[pb.RESERVATION_AT_RISK])
        await risks.started()
        await ch.reserve("cart-1", [("B", "s1", 4)], kind="CART")
        await move(bo, pb.COUNT, "B", "s1", 1, count_id="C-9")
        got = await ev.until(pb.RESERVATION_AT_RISK)
        risk = got[-1]
        assert (risk.reservation_id, risk.sku, risk.location_id, risk.on_hand) == (
            "cart-1", "B", "s1", 1,
        )  # fmt: skip
        assert [(ln.sku, ln.location_id, ln.quantity) for ln in risk.lines] == [("B", "s1", 4)]
        # A further sale while it stays below reserved: no new one (taken below, not kept).
        await move(bo, pb.SALE, "B", "s1", 1)
        [only] = await risks.take(1)
        assert only.reservation_id == "cart-1"
        await risks.nothing_more(srv)
        await risks.close()
        # A hold that runs out: expired.
        await ch.reserve("short", [("B", "s2", 1)], ttl_seconds=1)
        expired = (await ev.until(pb.RESERVATION_EXPIRED))[-1]
        assert expired.reservation_id == "short"
        assert [(ln.location_id, ln.quantity) for ln in expired.lines] == [("s2", 1)]
        await ev.close()


async def counts(c: UnistockClient, n: int, loc: str = "s1", sku: str = "K") -> None:
    """n COUNTs of one position alternating 5 and 7 units, count ids C<seq>: n COUNT_VARIANCE
    events (and one BACK_IN_STOCK at the position's first)."""
    for _ in range(n):
        seq = _SEQ.get("counter", 0) + 1
        await move(c, pb.COUNT, sku, loc, 5 if seq % 2 else 7, source="counter", count_id=f"C{seq}")


async def test_filters(
    server: UnistockServer, backoffice: UnistockClient, admin: UnistockClient
) -> None:
    await admin.upsert_locations(
        [apb.Location(location_id=loc, type=apb.STORE) for loc in ("s1", "s2", "s3")]
    )
    await admin.upsert_networks([apb.Network(network_id="north", location_ids=["s1", "s2"])])
    by_sku = Events(server, skus=["X"])
    by_loc = Events(server, location_ids=["s3"])
    by_net = Events(server, networks=["north"], types=[pb.BACK_IN_STOCK])
    both = Events(server, skus=["Y"], location_ids=["s2"])
    await caught_up(server)
    for sku in ("X", "Y"):
        for loc in ("s1", "s2", "s3"):
            await move(backoffice, pb.RECEIPT, sku, loc, 1)
    await move(backoffice, pb.COUNT, "Y", "s2", 3, count_id="C1")
    got = {name: [] for name in ("sku", "loc", "net", "both")}  # type: dict[str, list[Any]]
    for name, stream, n in (
        (("sku", by_sku, 4)),
        ("loc", by_loc, 2),
        ("net", by_net, 4),
        ("both", both, 2),
    ):
        got[name] = [(e.type, e.sku, e.location_id) for e in await stream.take(n)]
        await stream.nothing_more(server)
    B, V = pb.BACK_IN_STOCK, pb.COUNT_VARIANCE
    # The SKU's network level in north too (its first stock), after s1's.
    net_back = (pb.NETWORK_BACK_IN_STOCK, "X", "")
    assert got["sku"][0] == (B, "X", "s1")
    assert [e for e in got["sku"] if e != net_back] == [
        (B, "X", "s1"),
        (B, "X", "s2"),
        (B, "X", "s3"),
    ]
    assert net_back in got["sku"]
    assert got["loc"] == [(B, "X", "s3"), (B, "Y", "s3")]
    assert got["net"] == [(B, "X", "s1"), (B, "X", "s2"), (B, "Y", "s1"), (B, "Y", "s2")]
    assert got["both"] == [(B, "Y", "s2"), (V, "Y", "s2")]
    for s in (by_sku, by_loc, by_net, both):
        await s.close()


@pytest.mark.parametrize(
    ("request_fields", "code", "names"),
    [
        ({"types": [99]}, grpc.StatusCode.INVALID_ARGUMENT, "types[0]"),
        ({"skus": ["a b"]}, grpc.StatusCode.INVALID_ARGUMENT, "skus[0]"),
        ({"networks": ["nowhere"]}, grpc.StatusCode.NOT_FOUND, "nowhere"),
        ({"after_event_id": "yesterday"}, grpc.StatusCode.INVALID_ARGUMENT, "after_event_id"),
    ],
)
async def test_bad_requests(
    server: UnistockServer, request_fields: dict[str, Any], code: grpc.StatusCode, names: str
) -> None:
    ev = Events(server, **request_fields)
    with pytest.raises(aio.AioRpcError) as err:
        await ev.next()
    assert err.value.code() == code
    assert names in (err.value.details() or "")
    await ev.close()


async def test_resume_exactly_after_the_last_event_across_a_restart(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    """F20 in process: read some, leave, the server stops and starts again, more changes;
    resuming with the last event_id gives exactly what a reader from the start sees after it."""
    V = [pb.COUNT_VARIANCE]
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
        first = Events(srv, after_event_id="0-0", types=V)
        await counts(bo, 10)
        seen = await first.take(6)
        await first.close()
        await counts(bo, 4)
    await srv.stop()
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
        await counts(bo, 5)
        await caught_up(srv)
        everything = Events(srv, after_event_id="0-0", types=V)
        full = await everything.take(19)
        await everything.nothing_more(srv)
        resumed = Events(srv, after_event_id=seen[-1].event_id, types=V)
        rest = await resumed.take(13)
        await resumed.nothing_more(srv)
    assert full[:6] == seen
    assert rest == full[6:]
    assert [e.count_id for e in full] == [f"C{i}" for i in range(1, 20)]
    assert len({e.event_id for e in full}) == 19
    await everything.close()
    await resumed.close()


async def test_no_resume_point_means_from_now(
    server: UnistockServer, backoffice: UnistockClient
) -> None:
    await counts(backoffice, 3)
    await caught_up(server)
    now = Events(server)
    start = await now.started()
    await counts(backoffice, 1)
    [only] = await now.take(1)
    assert (only.type, only.count_id) == (pb.COUNT_VARIANCE, "C4")
    assert only.event_id > start  # (same length here: ids of one run, one millisecond scale)
    await now.nothing_more(server)
    await now.close()
    # Resuming from the first message's point (no event received): the same event.
    again = Events(server, after_event_id=start)
    assert await again.take(1) == [only]
    await again.close()


async def test_resuming_before_discarded_events_is_out_of_range(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    assert srv.events is not None
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
        await counts(bo, 3)
        await caught_up(srv)
        kept = Events(srv, after_event_id="0-0")
        await kept.take(4)  # 3 variances and the first count's BACK_IN_STOCK
        await kept.close()
        srv.events.log.retention_s = 0.001
        await asyncio.sleep(0.01)
        await srv.events.log.trim(int(time.time() * 1000))
        ev = Events(srv, after_event_id="0-0")
        with pytest.raises(aio.AioRpcError) as err:
            await ev.next()
        assert err.value.code() == grpc.StatusCode.OUT_OF_RANGE
        assert "discarded" in (err.value.details() or "")
        await ev.close()


async def test_a_slow_subscriber_is_cut_and_resumes_without_loss(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url, events_max_pending=5)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
        slow = Events(srv, types=[pb.COUNT_VARIANCE])
        await slow.started()  # subscribed, reading nothing more for now
        n = 1500
        batch = pb.MovementBatch(
            source_id="counter",
            movements=[
                pb.Movement(
                    seq=i + 1, sku="K", location_id="s1", type=pb.COUNT,
                    quantity=5 if i % 2 == 0 else 7, count_id=f"C{i}",
                )
                for i in range(n)
            ],
        )  # fmt: skip
        acks = [a async for a in bo.apply_movements([batch])]
        assert not any(a.rejections for a in acks)
        await caught_up(srv)
        received = 0
        last = slow.start
        code = None
        while code is None:
            try:
                last = (await slow.next()).event_id
                received += 1
            except aio.AioRpcError as exc:
                code = exc.code()
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert received < n
        await slow.close()
        again = Events(srv, after_event_id=last, types=[pb.COUNT_VARIANCE])
        rest = await again.take(n - received)
        await again.nothing_more(srv)
        assert rest[-1].count_id == f"C{n - 1}"
        await again.close()


async def test_deriving_again_after_a_crash_adds_no_duplicate(
    server: UnistockServer, backoffice: UnistockClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deriver dies between storing a round's events and saving its cursor: the next
    round derives the same events with the same ids, which the streams refuse."""
    deriver = server.events
    assert deriver is not None
    await caught_up(server)
    real_save = server.store.save_feed_cursor

    async def crash(*_: object) -> None:
        raise RuntimeError("killed before the cursor was saved")

    # The deriver's background task must not run meanwhile: only this test's rounds.
    for task in server._tasks:
        if task.get_name() == "events":
            task.cancel()
    await counts(backoffice, 4)
    await server.commit.barrier()
    deriver.save_every = 0  # every round saves
    monkeypatch.setattr(server.store, "save_feed_cursor", crash)
    with pytest.raises(RuntimeError):
        await deriver.drain_once()
    stored = await deriver.log.read((0, 0), (1 << 62, 0), 1000)
    assert len(stored) == 5  # 4 variances and the first count's BACK_IN_STOCK
    monkeypatch.setattr(server.store, "save_feed_cursor", real_save)
    deriver._cursor = None  # a new process: the cursor as saved
    while await deriver.drain_once():
        pass
    again = await deriver.log.read((0, 0), (1 << 62, 0), 1000)
    assert again == stored


async def test_the_client_event_watcher_resumes_by_itself(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    """EventWatcher: cut for falling behind (a bound of 5 events), then the server restarts
    (same address); it yields every event once, in order."""
    port = free_port()
    srv = await make_server(clean_redis_url, grpc_port=port, events_max_pending=5)
    n = 600
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
        watcher = EventWatcher(bo, types=["COUNT_VARIANCE"], after_event_id="0-0")
        got: list[pb.InventoryEvent] = []
        events = aiter(watcher)
        await counts(bo, 1)
        async with asyncio.timeout(DEADLINE):
            got.append(await anext(events))
        await counts(bo, n - 1)  # meanwhile this reader reads nothing: it is cut
        await caught_up(srv)
        async with asyncio.timeout(DEADLINE):
            while len(got) < n:
                got.append(await anext(events))
        assert srv.event_hub is not None
        dropped = srv.event_hub.metrics.dropped._value.get()
        reading = asyncio.create_task(anext(events))  # across the restart
        await srv.stop()
        srv = await make_server(clean_redis_url, grpc_port=port)
        await counts(bo, 3)
        async with asyncio.timeout(DEADLINE):
            got.append(await reading)
            while len(got) < n + 3:
                got.append(await anext(events))
    assert dropped >= 1
    assert [e.count_id for e in got] == [f"C{i}" for i in range(1, n + 4)]


async def test_the_cli_prints_events_as_json_lines(
    server: UnistockServer, backoffice: UnistockClient
) -> None:
    """`unistock events`: the resume point first, then each event, until interrupted; the
    example in docs/integration-channels.md."""
    await counts(backoffice, 2)
    await caught_up(server)
    proc = await spawn(*server_args(server), "events", "--type", "COUNT_VARIANCE", "--after", "0-0")
    assert proc.stdout is not None
    lines = []
    async with asyncio.timeout(DEADLINE):
        for _ in range(3):
            lines.append(json.loads(await proc.stdout.readline()))
    proc.send_signal(signal.SIGINT)
    await proc.communicate()
    assert proc.returncode == 130
    assert lines[0] == {"startAfterEventId": "0-0"}
    assert [(e["type"], e["countId"], e["quantity"]) for e in lines[1:]] == [
        ("COUNT_VARIANCE", "C1", "5"),
        ("COUNT_VARIANCE", "C2", "2"),
    ]
    # Every field of the event, zeros too: a reader of "available" finds it on each line.
    assert all({"available", "onHand", "network"} <= e.keys() for e in lines[1:])
    bad = await spawn(*server_args(server), "events", "--after", "garbage")
    _, err = await bad.communicate()
    assert bad.returncode == 2
    assert b"--after: not an event id: 'garbage'" in err


async def test_the_cli_without_after_starts_now_and_resumes_across_a_restart(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    """`unistock events` as the first example of docs/integration-channels.md runs it (no --after: from now); the
    server stops and starts again on its port: the CLI resumes after the last event it printed,
    with a note on stderr, and prints each event once. A server that cannot be reached at the
    start is exit 1."""
    port = free_port()
    srv = await make_server(clean_redis_url, grpc_port=port)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
        await counts(bo, 1)  # before the stream: not printed
        await caught_up(srv)
        proc = await spawn(*server_args(srv), "events", "--type", "COUNT_VARIANCE")
        assert proc.stdout is not None
        assert proc.stderr is not None
        async with asyncio.timeout(DEADLINE):
            start = json.loads(await proc.stdout.readline())
            await counts(bo, 1)  # C2
            first = json.loads(await proc.stdout.readline())
    assert set(start) == {"startAfterEventId"}
    assert first["countId"] == "C2"
    await srv.stop()
    srv = await make_server(clean_redis_url, grpc_port=port)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
        await counts(bo, 1)  # C3, made after the restart
        async with asyncio.timeout(DEADLINE):
            again = json.loads(await proc.stdout.readline())
            note = await proc.stderr.readline()
    proc.send_signal(signal.SIGINT)
    out, _ = await proc.communicate()
    assert proc.returncode == 130
    assert again["countId"] == "C3"
    assert out == b""  # nothing printed twice (no second start line, no C2 again)
    assert b"resuming after event " + first["eventId"].encode() in note, note
    # Started again with other tokens (e.g. configured since): not resumable;
    # exit 1, saying where to resume.
    proc = await spawn(*server_args(srv), "events", "--type", "COUNT_VARIANCE", "--after", "0-0")
    assert proc.stdout is not None
    async with asyncio.timeout(DEADLINE):
        for _ in range(4):  # the start line, C1, C2, C3
            last = json.loads(await proc.stdout.readline())
    await srv.stop()
    other = TokenStore()
    other.add("another-admin-token-0123456789", "admin")
    srv = await make_server(clean_redis_url, other, grpc_port=port)
    async with asyncio.timeout(DEADLINE):
        _, err = await proc.communicate()
    assert proc.returncode == 1, err
    assert b"UNAUTHENTICATED" in err
    assert f"run again with --after {last['eventId']}".encode() in err, err
    await srv.stop()
    gone = await spawn("--target", f"127.0.0.1:{port}", "--token", "x", "events")
    _, err = await gone.communicate()
    assert gone.returncode == 1, err
    assert b"UNAVAILABLE" in err


async def test_transfer_short_and_discrepant(
    server: UnistockServer, backoffice: UnistockClient, admin: UnistockClient
) -> None:
    from tests.server.test_api import batch, mv, send
    from tests.server.test_transfers import into, out, shipped

    ev = Events(server, types=[pb.TRANSFER_SHORT, pb.TRANSFER_DISCREPANT])
    await caught_up(server)
    await send(backoffice, batch("wms", mv(1, "RECEIPT", "BOOT-42", "dc-1", 20)))
    await send(backoffice, batch("dc", out(1, 5, "t-1", "s1")))
    await shipped(backoffice, "t-1", 5)  # applied to the record a moment after the ack
    await send(backoffice, batch("till", into(1, 3, "t-1", "s1")))
    await admin.close_transfer("t-1", "s1")
    [short] = await ev.take(1)
    assert (short.type, short.transfer_id, short.sku, short.location_id, short.quantity) == (
        pb.TRANSFER_SHORT, "t-1", "BOOT-42", "s1", 2,
    )  # fmt: skip
    await send(backoffice, batch("till", into(2, 1, "t-1", "s1")))  # found: after the close
    await send(backoffice, batch("till", into(3, 4, "t-2", "s1")))  # never shipped
    found, early = await ev.take(2)
    assert (found.type, found.quantity, found.source_id, found.seq) == (
        pb.TRANSFER_DISCREPANT, 1, "till", 2,
    )  # fmt: skip
    assert "after it was closed short" in found.detail
    assert (early.type, early.transfer_id, early.quantity) == (pb.TRANSFER_DISCREPANT, "t-2", 4)
    assert "before it was shipped" in early.detail
    await ev.nothing_more(server)
    await ev.close()
