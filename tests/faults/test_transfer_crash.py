"""F17 across crashes: a TRANSFER_OUT's shipment travels from its origin partition's outbox to
the transfer record at its destination in two writes; a crash between them, or anywhere else,
neither loses nor doubles a unit.

* crash state A: the origin position and its shipment in the outbox landed, no record yet
  (a crash right after the ack): the next server applies the shipment at start-up;
* crash state B: the record (and the destination's in_transit) already has the shipment, the
  outbox still holds it (a crash before its deletion landed): applied again, it counts once,
  even after the transfer was received short and closed;
* Redis refusing the destination's keys while the shipment is applied: retried, not fatal;
* kill -9 of a server process at random moments while a sender streams TRANSFER_OUTs and
  TRANSFER_INs and resends what was not acknowledged: every shipment counted exactly once.

Crash states are written directly with the real store and codec (as test_orphan_holds does).
"""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.faults.helpers import eventually, levels
from tests.fixtures.server import TOKENS, MakeServer, ServerProcess, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import RedisServer
from unistock.server.domain import Movement, MovementType, Position, Transfer, new_transfer
from unistock.server.persistence.codec import (
    encode_position,
    encode_shipment,
    encode_transfer,
    shipment_field,
    transfer_message,
)
from unistock.server.persistence.group_commit import stage_position
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.store import PartitionWrite, Phase, RedisStore
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

KS = Keyspace()
SKU = "CRATE"
ORIGIN = "dc-3"
DEST = "store-8"


def conserved(t: pb.Transfer) -> None:
    for ln in t.lines:
        assert ln.shipped + ln.unexpected == ln.received + ln.lost + ln.in_transit, t
        assert ln.in_transit == max(0, ln.shipped - ln.received - ln.lost), t
        assert ln.unexpected == max(0, ln.received - ln.shipped), t


async def outbox_size(url: str) -> int:
    """Shipments left in every partition's outbox."""
    r = aioredis.Redis.from_url(url)
    try:
        pipe = r.pipeline(transaction=False)
        for p in range(KS.partitions):
            pipe.hlen(KS.shipments(p))
        return sum(await pipe.execute())
    finally:
        await r.aclose()


def shipment(tid: str, qty: int, seq: int = 2) -> Movement:
    """The TRANSFER_OUT wms seq `seq` of qty units from ORIGIN to DEST."""
    return Movement(
        "wms",
        seq,
        SKU,
        ORIGIN,
        MovementType.TRANSFER_OUT,
        qty,
        transfer_id=tid,
        counterpart_location_id=DEST,
    )


def stage(phase: Phase, p: Position) -> PartitionWrite:
    w = phase[KS.location_partition(p.location_id)]
    stage_position(KS, w, p, encode_position(p))
    w.locations.append(p.location_id)
    return w


def shipped_from_origin(m: Movement, on_hand: int) -> Phase:
    """The first write of a TRANSFER_OUT: its origin position and, with it, its shipment."""
    origin = Position((SKU, ORIGIN), on_hand=on_hand, version=1)
    assert origin.apply(m).outcome.name == "APPLIED"
    phase: Phase = defaultdict(PartitionWrite)
    stage(phase, origin).shipments += (shipment_field(m), encode_shipment(m))
    return phase


def recorded_at_destination(t: Transfer, dest: Position) -> list[Phase]:
    """The second write: the index, then the record with the destination position."""
    index: Phase = defaultdict(PartitionWrite)
    index[KS.transfer_partition(t.transfer_id)].indexes.append(
        (KS.transfer_index(t.transfer_id), t.destination)
    )
    record: Phase = defaultdict(PartitionWrite)
    stage(record, dest).transfers.append(
        (KS.transfer(*t.key), encode_transfer(t), "|".join(t.key), [])
    )
    return [index, record]


async def write(url: str, phases: list[Phase]) -> None:
    store = RedisStore.from_url(url, KS)
    try:
        await store.open()
        await store.flush(phases)
    finally:
        await store.close()


def wire(m: Movement) -> pb.MovementBatch:
    return pb.MovementBatch(
        source_id=m.source_id,
        movements=[
            pb.Movement(
                seq=m.seq,
                sku=m.sku,
                location_id=m.location_id,
                type=int(m.type),  # type: ignore[arg-type]
                quantity=m.quantity,
                transfer_id=m.transfer_id,
                counterpart_location_id=m.counterpart_location_id,
            )
        ],
    )


async def level(c: UnistockClient, loc: str) -> tuple[int, int, int]:
    lv = (await levels(c, [(SKU, loc)]))[(SKU, loc)]
    return lv.on_hand, lv.in_transit, lv.available


# -- crash state A -----------------------------------------------------------------------------


async def test_shipment_left_in_the_outbox_is_applied_at_start(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    url = redis_server.url
    m = shipment("T-A", 4)
    await write(url, [shipped_from_origin(m, on_hand=10)])
    assert await outbox_size(url) == 1

    srv = await make_server(url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:

        async def applied() -> bool:
            [t] = await c.get_transfer("T-A")
            return t.lines[0].shipped == 4 and await outbox_size(url) == 0

        await eventually(applied, within=10, interval=0.05)
        [t] = await c.get_transfer("T-A")
        conserved(t)
        assert (t.origin_location_id, t.destination_location_id) == (ORIGIN, DEST)
        assert (t.state, t.lines[0].in_transit, list(t.discrepancies)) == (pb.IN_TRANSIT, 4, [])
        assert await level(c, DEST) == (0, 4, 0)
        assert await level(c, ORIGIN) == (6, 0, 6)
        # The sender never saw its ack and sends it again: a duplicate, no second shipment
        # (a later one of another transfer, applied in order after it, shows nothing came).
        [ack] = [a async for a in c.apply_movements([wire(m)])]
        assert (ack.applied, ack.duplicates) == (0, 1)
        [ack] = [a async for a in c.apply_movements([wire(shipment("T-A2", 1, seq=3))])]
        assert ack.applied == 1

        async def marker() -> bool:
            return bool(await c.get_transfer("T-A2"))

        await eventually(marker, within=10, interval=0.05)
        assert await c.get_transfer("T-A") == [t]
        assert await level(c, DEST) == (0, 5, 0)
        assert await level(c, ORIGIN) == (5, 0, 5)
    await srv.stop()
    assert await outbox_size(url) == 0

    srv = await make_server(url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        assert await c.get_transfer("T-A") == [t]
        assert await level(c, DEST) == (0, 5, 0)


# -- crash state B -----------------------------------------------------------------------------


@pytest.mark.parametrize("then", ["in_transit", "received_short_and_closed"])
async def test_shipment_already_on_its_record_counts_once(
    make_server: MakeServer, redis_server: RedisServer, then: str
) -> None:
    """The record applied the shipment (and maybe more happened since: received short, then
    closed); the outbox still has it. Applied again at start-up, it changes nothing, and the
    entry is deleted."""
    url = redis_server.url
    m = shipment("T-B", 4)
    t, delta = new_transfer("T-B", DEST).ship(SKU, 4, ORIGIN, m.source_id, m.seq)
    dest = Position((SKU, DEST))
    dest.transit(delta)
    if then != "in_transit":
        receipt = Movement("till-8", 1, SKU, DEST, MovementType.TRANSFER_IN, 3, transfer_id="T-B")
        dest.apply(receipt)
        t, delta = t.receive(SKU, 3, "", receipt.source_id, receipt.seq)
        dest.transit(delta)
        t, deltas = t.close()
        dest.transit(deltas[SKU])
    assert t.has_applied("wms", 2)
    await write(url, [shipped_from_origin(m, on_hand=10), *recorded_at_destination(t, dest)])
    assert await outbox_size(url) == 1
    want = transfer_message(t)
    expected = (0, 4, 0) if then == "in_transit" else (3, 0, 3)

    for attempt in range(2):
        srv = await make_server(url)
        async with UnistockClient(target(srv), TOKENS["admin"]) as c:

            async def emptied() -> bool:
                return await outbox_size(url) == 0

            await eventually(emptied, within=10, interval=0.05)
            assert await c.get_transfer("T-B") == [want], attempt
            assert await c.get_transfer("T-B", DEST) == [want]
            conserved(want)
            assert await level(c, DEST) == expected
            assert await level(c, ORIGIN) == (6, 0, 6)
        await srv.stop()
    if then != "in_transit":
        assert [d.kind for d in want.discrepancies] == [pb.CLOSED_SHORT]  # no SHIPPED_AFTER_CLOSE


# -- a read failing while a shipment is applied ------------------------------------------------


async def test_a_failed_read_of_the_destination_is_retried(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    """Redis refuses, for half a second, every key of the destination's partition (as an
    outage there would: reads fail; the origin partition is untouched, so the TRANSFER_OUT is
    written and acknowledged). Once Redis answers again the shipment must reach its record;
    the server must not have given up (it did before 387f734). The failure is Redis's own
    (an ACL on key patterns), not an injected one."""
    url = redis_server.url
    dest = DEST
    barred = KS.location_partition(dest)
    assert barred not in {KS.location_partition(ORIGIN), KS.source_partition("wms")}
    srv = await make_server(url)
    r = aioredis.Redis.from_url(url)
    try:
        async with UnistockClient(target(srv), TOKENS["admin"]) as c:
            receipt = Movement("wms", 1, SKU, ORIGIN, MovementType.RECEIPT, 10)
            [ack] = [a async for a in c.apply_movements([wire(receipt)])]
            assert ack.applied == 1
            allowed = ["~" + KS.meta] + [
                f"~us:{{p{p}}}:*" for p in range(KS.partitions) if p != barred
            ]
            await r.execute_command("ACL", "SETUSER", "default", "resetkeys", *allowed)
            [ack] = [a async for a in c.apply_movements([wire(shipment("T-R", 4))])]
            assert ack.applied == 1
            await asyncio.sleep(0.5)
            await r.execute_command("ACL", "SETUSER", "default", "allkeys")
            assert not srv.failed, "the server gave up on a passing Redis failure"

            async def arrived() -> bool:
                return await level(c, dest) == (0, 4, 0) and await outbox_size(url) == 0

            await eventually(arrived, within=5, interval=0.1)
            assert not srv.failed
    finally:
        await r.execute_command("ACL", "SETUSER", "default", "allkeys")
        await r.aclose()


# -- kill -9 while transfers flow --------------------------------------------------------------

SKUS = ["SKU-A", "SKU-B"]
DESTS = ["s-0", "s-1", "s-2"]
RECEIPT = 100_000
ROUNDS = 4
TRANSFERS_PER_ROUND = 45


@dataclass
class Sent:
    """A transfer the sender made: shipped qty of sku to dest; received (0: no TRANSFER_IN)."""

    tid: str
    sku: str
    dest: str
    qty: int
    received: int = 0


class Sender:
    """Builds the batches of each round: TRANSFER_OUTs from ORIGIN (source wms-out, one or two
    transfers a batch) and TRANSFER_INs of some of them (source wms-in), short, exact or over."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.transfers: list[Sent] = []
        self.seqs = {"wms-out": 0, "wms-in": 0}

    def _mv(self, source: str, **fields: object) -> pb.Movement:
        self.seqs[source] += 1
        return pb.Movement(seq=self.seqs[source], **fields)  # type: ignore[arg-type]

    def round(self, n: int) -> list[pb.MovementBatch]:
        rng = self.rng
        made: list[Sent] = []
        out: list[pb.MovementBatch] = []
        while len(made) < TRANSFERS_PER_ROUND:
            moves = []
            for _ in range(rng.choice((1, 1, 2))):
                t = Sent(
                    f"T{n}-{len(made)}", rng.choice(SKUS), rng.choice(DESTS), rng.randint(1, 9)
                )
                made.append(t)
                moves.append(
                    self._mv(
                        "wms-out",
                        sku=t.sku,
                        location_id=ORIGIN,
                        type=pb.TRANSFER_OUT,
                        quantity=t.qty,
                        transfer_id=t.tid,
                        counterpart_location_id=t.dest,
                    )
                )
            out.append(pb.MovementBatch(source_id="wms-out", movements=moves))
            # receive one of the last few shipped (the latest may not be on its record yet)
            pending = [t for t in made[-4:] if not t.received]
            if pending and rng.random() < 0.7:
                t = rng.choice(pending)
                t.received = max(1, t.qty + rng.choice((-2, -1, 0, 0, 0, 1)))
                rcv = self._mv(
                    "wms-in",
                    sku=t.sku,
                    location_id=t.dest,
                    type=pb.TRANSFER_IN,
                    quantity=t.received,
                    transfer_id=t.tid,
                    counterpart_location_id=ORIGIN,
                )
                out.append(pb.MovementBatch(source_id="wms-in", movements=[rcv]))
        self.transfers += made
        return out


async def stream_until_killed(
    proc: ServerProcess, batches: Sequence[pb.MovementBatch], kill_after: int, delay: float
) -> int:
    """Stream batches on one ApplyMovements stream; kill -9 the server `delay` s after the
    kill_after-th ack. Returns how many batches were acknowledged (a prefix: acks are in order)."""
    acks = 0
    enough = asyncio.Event()

    async def produce() -> AsyncIterator[pb.MovementBatch]:
        for b in batches:
            yield b
        await asyncio.Event().wait()  # the stream ends with the kill

    async def killer() -> None:
        await enough.wait()
        await asyncio.sleep(delay)
        proc.kill()

    kill_task = asyncio.create_task(killer())
    try:
        async with UnistockClient(proc.target, TOKENS["backoffice"], timeout=None) as c:
            try:
                async for ack in c.apply_movements(produce()):
                    assert not ack.rejections, ack
                    assert ack.sources[0].seq == batches[acks].movements[-1].seq
                    acks += 1
                    if acks >= kill_after:
                        enough.set()
            except UnistockClientError:
                assert enough.is_set(), "the stream failed before the kill"
            else:
                raise AssertionError("the stream outlived the kill")
    finally:
        enough.set()
        await kill_task
    return acks


async def resend(target_: str, batches: Sequence[pb.MovementBatch]) -> tuple[int, int]:
    """Send batches on one stream until all are acknowledged: (applied, duplicates)."""
    applied = duplicates = 0
    async with UnistockClient(target_, TOKENS["backoffice"], timeout=None) as c:
        n = 0
        async for ack in c.apply_movements(list(batches)):
            assert not ack.rejections, ack
            assert ack.applied + ack.duplicates == len(batches[n].movements)
            applied += ack.applied
            duplicates += ack.duplicates
            n += 1
        assert n == len(batches)
    return applied, duplicates


async def check_final(c: UnistockClient, url: str, sent: list[Sent]) -> None:
    """Every shipment once; in_transit at each destination the sum of its records'; origin
    on_hand the receipt less what left; conservation on every line; each discrepancy once."""
    records: dict[str, pb.Transfer] = {}

    async def settled() -> bool:
        if await outbox_size(url):
            return False
        for t in sent:
            [records[t.tid]] = await c.get_transfer(t.tid)
        return all(records[t.tid].lines[0].shipped == t.qty for t in sent)

    await eventually(settled, within=30, interval=0.2)
    keys = [(s, loc) for s in SKUS for loc in [ORIGIN, *DESTS]]
    got = await levels(c, keys)
    in_transit: dict[tuple[str, str], int] = defaultdict(int)
    on_hand: dict[tuple[str, str], int] = defaultdict(int)
    for t in sent:
        r = records[t.tid]
        conserved(r)
        assert (r.origin_location_id, r.destination_location_id) == (ORIGIN, t.dest), r
        [ln] = r.lines
        assert (ln.sku, ln.shipped, ln.received, ln.lost) == (t.sku, t.qty, t.received, 0), r
        in_transit[t.sku, t.dest] += ln.in_transit
        on_hand[t.sku, t.dest] += ln.received
        movements = [(d.source_id, d.seq) for d in r.discrepancies]
        assert len(movements) == len(set(movements)), r  # each recorded once
        kinds = [d.kind for d in r.discrepancies]
        if t.received > t.qty:
            assert kinds in ([pb.OVER_RECEIVED], [pb.RECEIVED_BEFORE_SHIPPED]), r
        else:  # only a receipt applied before its shipment reached the record
            assert kinds in ([], [pb.RECEIVED_BEFORE_SHIPPED]), r
        want_state = pb.RECEIVED if t.received == t.qty else pb.IN_TRANSIT
        assert r.state == want_state, r
    for sku in SKUS:
        gone = sum(t.qty for t in sent if t.sku == sku)
        lv = got[sku, ORIGIN]
        assert (lv.on_hand, lv.in_transit) == (RECEIPT - gone, 0), lv
        for dest in DESTS:
            lv = got[sku, dest]
            assert lv.in_transit == in_transit[sku, dest], lv
            assert lv.on_hand == on_hand[sku, dest], lv
            assert lv.available == lv.on_hand, lv  # never counts in_transit


async def test_kill_9_while_transfers_flow(tmp_path: Path, redis_server: RedisServer) -> None:
    rng = random.Random(917)
    url = redis_server.url
    proc = ServerProcess(url, tmp_path / "server")
    sender = Sender(rng)
    everything: list[pb.MovementBatch] = []
    kills_mid_stream = 0
    keys = [(s, loc) for s in SKUS for loc in [ORIGIN, *DESTS]]
    try:
        proc.start()
        seed = pb.MovementBatch(
            source_id="wms",
            movements=[
                pb.Movement(seq=i, sku=s, location_id=ORIGIN, type=pb.RECEIPT, quantity=RECEIPT)
                for i, s in enumerate(SKUS, 1)
            ],
        )
        assert await resend(proc.target, [seed]) == (len(SKUS), 0)
        for n in range(ROUNDS):
            batches = sender.round(n)
            everything += batches
            kill_after = rng.randint(1, len(batches) - 1)
            acked = await stream_until_killed(
                proc, batches, kill_after, delay=rng.choice((0.0, 0.001, 0.005, 0.02))
            )
            kills_mid_stream += acked < len(batches)
            proc.start()
            # The sender resends what was not acknowledged, in order, with the same seqs.
            await resend(proc.target, batches[acked:])
        # One more kill right after everything was acknowledged (shipments possibly still in
        # the outbox), then a restart that must apply what is left.
        proc.kill()
        proc.start()
        async with UnistockClient(proc.target, TOKENS["admin"]) as c:
            await check_final(c, url, sender.transfers)
            before = await levels(c, keys)
        # Everything re-sent once more: all duplicates, nothing moves.
        total = sum(len(b.movements) for b in everything)
        assert await resend(proc.target, everything) == (0, total)
        async with UnistockClient(proc.target, TOKENS["admin"]) as c:
            await check_final(c, url, sender.transfers)
            assert await levels(c, keys) == before
        assert kills_mid_stream >= ROUNDS // 2, "the kills all came after the last ack"
        # and some kills left shipments in the outbox for the next process to apply
        assert "transfer shipments left by a crash" in proc.log_path.read_text()
    finally:
        proc.stop()
        if proc.log_path.exists():
            log = proc.log_path.read_text()
            assert "Traceback" not in log, log[-3000:]
