"""A crash in the middle of a reservation's flush: holds are intents, the record is the commit.

The states a crash can leave in Redis are written directly with the real store and codec (a
flush is a pipeline of phases; a crash keeps a prefix of it):

* positions with holds, no record (crash after the positions phase of a new reservation):
  the holds are orphans, freed when the positions are activated;
* positions with holds and an ACTIVE record: a committed reservation, kept;
* a RELEASED record, positions still holding (crash after the first phase of a release):
  freed at activation;
* a record partly fulfilled, a position still holding the units taken: cut down to the record;
* a fulfilment whose record landed and whose position did not (F15, a kill -9 between the two
  writes): completed at activation, so the shipped units leave on_hand too.
"""

from __future__ import annotations

import time
from collections import defaultdict

import grpc
import pytest

from tests.faults.helpers import levels, sample
from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import RedisServer
from unistock.server.domain import (
    Line,
    Pickup,
    Position,
    Reservation,
    ReserveRequest,
    fulfil,
    reserve,
)
from unistock.server.persistence.codec import encode_position, encode_reservation
from unistock.server.persistence.group_commit import stage_position
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.rindex import index_write
from unistock.server.persistence.store import PartitionWrite, Phase, RedisStore
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

ORPHAN = [("SKU-O", "store-1"), ("SKU-O", "store-7")]
BACKED = [("SKU-B", "store-1"), ("SKU-B", "store-2")]
RELEASED = [("SKU-R", "store-3"), ("SKU-R", "store-9")]
PARTIAL = [("SKU-P", "store-4")]
ALL = ORPHAN + BACKED + RELEASED + PARTIAL
ON_HAND = 10
RETENTION_MS = str(7 * 86400 * 1000)
ORPHANS = "unistock_orphan_hold_units_total"


def positions_phase(ks: Keyspace, positions: list[Position]) -> Phase:
    phase: Phase = defaultdict(PartitionWrite)
    for p in positions:
        w = phase[ks.location_partition(p.location_id)]
        stage_position(ks, w, p, encode_position(p))
        w.locations.append(p.location_id)
    return phase


def record_phase(ks: Keyspace, r: Reservation) -> Phase:
    phase: Phase = defaultdict(PartitionWrite)
    keep = "0" if r.active else RETENTION_MS
    phase[ks.reservation_partition(r.reservation_id)].reservations.append(
        (
            r.reservation_id,
            encode_reservation(r),
            "",
            keep,
            [],
            index_write(ks, r, (), 0, int(keep)),
        )
    )
    return phase


def held(rid: str, keys: list[tuple[str, str]], qty: int) -> tuple[list[Position], Reservation]:
    """Fresh positions with ON_HAND units, and a reservation of qty on each (the domain's own)."""
    positions = {k: Position(k, on_hand=ON_HAND, version=1) for k in keys}
    request = ReserveRequest.build(rid, [Line(s, loc, qty) for s, loc in keys], pb.ORDER)
    made = reserve(request, positions, time.time())
    return list(positions.values()), made


def pickup_sale(
    till: str, key: tuple[str, str], quantity: int, reservation_id: str
) -> pb.MovementBatch:
    """A till's first SALE (seq 1) naming a reservation."""
    return pb.MovementBatch(
        source_id=till,
        movements=[
            pb.Movement(
                seq=1,
                sku=key[0],
                location_id=key[1],
                type=pb.SALE,
                quantity=quantity,
                reservation_id=reservation_id,
            )
        ],
    )


async def write_crash_states(url: str) -> None:
    ks = Keyspace()
    store = RedisStore.from_url(url, ks)
    try:
        await store.open()
        # 1. New reservation: positions phase landed, the record phase did not.
        orphan_pos, _ = held("r-orphan", ORPHAN, 3)
        await store.flush([positions_phase(ks, orphan_pos)])
        # 2. Committed: positions, then the ACTIVE record.
        backed_pos, backed = held("r-backed", BACKED, 2)
        await store.flush([positions_phase(ks, backed_pos), record_phase(ks, backed)])
        # 3. Release: the ending record (first phase) landed, the positions did not.
        released_pos, made = held("r-released", RELEASED, 4)
        await store.flush([positions_phase(ks, released_pos), record_phase(ks, made)])
        await store.flush([record_phase(ks, made.release())])
        # 4. Partial pickup: the shrunk record landed (2 of 3 taken), the position did not.
        partial_pos, made = held("r-partial", PARTIAL, 3)
        await store.flush([positions_phase(ks, partial_pos), record_phase(ks, made)])
        await store.flush([record_phase(ks, made.take([Line(*PARTIAL[0], 2)]))])
    finally:
        await store.close()


async def test_holds_without_an_active_record_are_freed_at_activation(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    await write_crash_states(redis_server.url)
    srv = await make_server(redis_server.url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        got = await levels(c, ALL)
        for key in ALL:
            assert got[key].on_hand == ON_HAND, key
        for key in ORPHAN + RELEASED:
            assert (got[key].reserved, got[key].available) == (0, ON_HAND), key
        for key in BACKED:
            assert (got[key].reserved, got[key].available) == (2, ON_HAND - 2), key
        assert got[PARTIAL[0]].reserved == 1
        assert sample(srv.metrics.registry, ORPHANS) == 3 * 2 + 4 * 2 + 2

        with pytest.raises(UnistockClientError) as err:
            await c.get_reservation("r-orphan")
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert (await c.get_reservation("r-backed")).state == pb.ACTIVE
        assert (await c.get_reservation("r-released")).state == pb.RELEASED
        partial = await c.get_reservation("r-partial")
        assert [(ln.sku, ln.location_id, ln.quantity) for ln in partial.lines] == [(*PARTIAL[0], 1)]

        # The freed units are really free: the whole stock can be promised again, and the
        # committed reservation still works.
        await c.reserve("r-new", [(*k, ON_HAND) for k in ORPHAN + RELEASED], kind="ORDER")
        with pytest.raises(UnistockClientError) as err:
            await c.reserve("r-too-much", [(*BACKED[0], ON_HAND - 1)], kind="ORDER")
        assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert (await c.release("r-backed")).state == pb.RELEASED
        # The orphan's id was never committed: it can be used for a new reservation.
        resp = await c.reserve("r-orphan", [(*BACKED[0], 1)], kind="ORDER")
        assert not resp.replayed
    await srv.stop()

    # The reconciliation was written: a new server has nothing left to free.
    srv2 = await make_server(redis_server.url)
    async with UnistockClient(target(srv2), TOKENS["admin"]) as c:
        got = await levels(c, ALL)
        assert sample(srv2.metrics.registry, ORPHANS) == 0
        for key in ORPHAN + RELEASED:
            assert (got[key].reserved, got[key].available) == (ON_HAND, 0), key
        assert got[BACKED[0]].reserved == 1  # r-orphan's new line
        assert got[BACKED[1]].reserved == 0
        assert got[PARTIAL[0]].reserved == 1


PICKUP = ("SKU-K", "store-5")


async def test_pickup_resent_after_crash_is_counted_once(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    # A till sold 2 of the 3 units of r-pickup (SALE till-1 seq 1 naming it). The server wrote
    # the shrunk record (ending records go first) and crashed before the position: the SALE
    # was never acknowledged, so the till sends it again.
    ks = Keyspace()
    store = RedisStore.from_url(redis_server.url, ks)
    try:
        await store.open()
        pos, made = held("r-pickup", [PICKUP], 3)
        await store.flush([positions_phase(ks, pos), record_phase(ks, made)])
        taken = made.pickup(PICKUP, 2, 0, Pickup("till-1", 1))  # as the server records it
        await store.flush([record_phase(ks, taken)])
    finally:
        await store.close()

    srv = await make_server(redis_server.url)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        sale = pickup_sale("till-1", PICKUP, 2, "r-pickup")
        [ack] = [a async for a in c.apply_movements([sale])]
        assert ack.applied == 1
        [level] = await c.get_availability(keys=[PICKUP])
        r = await c.get_reservation("r-pickup")
        assert level.on_hand == ON_HAND - 2
        assert r.state == pb.ACTIVE, pb.ReservationState.Name(r.state)
        assert [(ln.quantity) for ln in r.lines] == [1]
        assert [(ln.quantity) for ln in r.fulfilled] == [2]
        assert level.reserved == 1


SHIPPED = ("SKU-F", "store-6")


@pytest.mark.parametrize("partial", [True, False])
async def test_fulfilment_recorded_before_its_position_is_completed_at_activation(
    make_server: MakeServer, redis_server: RedisServer, partial: bool
) -> None:
    """F15 with a crash between the two writes: the fulfilled record (written first) landed,
    the position did not. At activation the shipped units leave hold and on_hand together;
    the till's SALE naming the reservation afterwards changes nothing more."""
    ks = Keyspace()
    store = RedisStore.from_url(redis_server.url, ks)
    try:
        await store.open()
        [pos], made = held("r-ship", [SHIPPED], 3)
        await store.flush([positions_phase(ks, [pos]), record_phase(ks, made)])
        lines = [Line(*SHIPPED, 2)] if partial else []
        done = fulfil(made, {SHIPPED: Position(SHIPPED, holds=(("r-ship", 3),))}, lines, "f-1")
        await store.flush([record_phase(ks, done)])  # the first phase only: then the crash
    finally:
        await store.close()

    shipped = 2 if partial else 3
    for attempt in range(2):  # the second server finds it all written
        srv = await make_server(redis_server.url)
        async with UnistockClient(target(srv), TOKENS["admin"]) as c:
            [level] = await c.get_availability(keys=[SHIPPED])
            assert (level.on_hand, level.reserved) == (ON_HAND - shipped, 3 - shipped)
            assert level.available == ON_HAND - 3  # never rose
            assert sample(srv.metrics.registry, "unistock_fulfilment_units_reconciled_total") == (
                shipped if attempt == 0 else 0
            )
            if attempt == 0:
                # the order manager, who got no answer, retries: nothing more leaves
                again = await c.fulfil(
                    "r-ship", lines=[(*SHIPPED, 2)] if partial else [], request_id="f-1"
                )
                assert again.state == (pb.ACTIVE if partial else pb.FULFILLED)
                sale = pickup_sale("till-9", SHIPPED, shipped, "r-ship")
                [ack] = [a async for a in c.apply_movements([sale])]
                assert ack.applied == 1
                assert not ack.notices
                [level] = await c.get_availability(keys=[SHIPPED])
                assert level.on_hand == ON_HAND - shipped
        await srv.stop()
