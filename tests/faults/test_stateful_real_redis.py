"""F12: random interleavings against the real server on a real Redis, checked against a model.

Rules: receipt, sale, return, damaged return and inspection, transfer shipments (new transfers
and further parcels), receipts (short, twice, before the shipment), closes, count, pickup (a SALE
naming a reservation), multi-line reserve (and its replay), release, fulfil, duplicate delivery
of an earlier batch, and restart of the server on the same Redis. After every step every level,
every reservation and every transfer must be what the model says: invariants 1 (conservation), 2
(reserved is the sum of ACTIVE lines), 3 (available never negative, never over-granted), 4
(transfers: shipped + unexpected = received + lost + in transit, and in_transit shown at the
destination), 6 (fulfilment lowers on_hand with reserved) and 7 (counts).

The state machine is synchronous (hypothesis drives it); async calls run on one dedicated event
loop for the whole test, and one private redis-server (AOF, fsync always) is emptied before each
example.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.faults.machines import RealServer, collect, run_machine
from unistock.client import UnistockClient, UnistockClientError
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

pytestmark = pytest.mark.slow

Key = tuple[str, str]
SKUS = ("S1", "S2")
LOCS = ("L1", "L2")
KEYS: list[Key] = [(s, loc) for s in SKUS for loc in LOCS]
SOURCE = "edge-A"
SIGN = {"RECEIPT": 1, "RETURN": 1, "SALE": -1, "TRANSFER_OUT": -1, "TRANSFER_IN": 1}

keys_st = st.sampled_from(KEYS)
qty_st = st.integers(min_value=1, max_value=6)


@dataclass
class TransferModel:
    src: str
    dst: str
    shipped: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    lost: Counter[str] = field(default_factory=Counter)
    closed: bool = False

    def in_transit(self, sku: str) -> int:
        return max(0, self.shipped[sku] - self.received[sku] - self.lost[sku])

    @property
    def skus(self) -> list[str]:
        return sorted(set(self.shipped) | set(self.received))


@dataclass
class ResModel:
    lines: dict[Key, int]  # units still held while ACTIVE
    request: list[tuple[str, str, int]]  # the original request, for replays
    state: int = pb.ACTIVE
    fulfilled: Counter[Key] = field(default_factory=Counter)
    #: Units FulfilReservation shipped that no SALE naming the reservation reported yet.
    shipped_open: Counter[Key] = field(default_factory=Counter)


class RealServerMachine(RealServer, RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.empty_redis()
        self.srv: UnistockServer | None = None
        self.client: UnistockClient | None = None
        self.run(self._start())
        self.on_hand: Counter[Key] = Counter()
        self.non_sellable: Counter[Key] = Counter()
        self.reservations: dict[str, ResModel] = {}
        self.transfers: dict[str, TransferModel] = {}
        self.seq = 0
        self.batches: list[pb.MovementBatch] = []
        self.next_id = 0
        self.steps_since_restart = 0

    # -- plumbing --------------------------------------------------------------------------

    def reserved(self, key: Key) -> int:
        return sum(r.lines.get(key, 0) for r in self.reservations.values() if r.state == pb.ACTIVE)

    def available(self, key: Key) -> int:
        return max(0, self.on_hand[key] - self.reserved(key))

    def send(self, movements: list[pb.Movement]) -> pb.MovementAck:
        for m in movements:
            self.seq += 1
            m.seq = self.seq
        batch = pb.MovementBatch(source_id=SOURCE, movements=movements)
        self.batches.append(batch)
        acks: list[pb.MovementAck] = self.run(collect(self.c.apply_movements([batch])))
        [ack] = acks
        assert not ack.rejections, ack
        assert (ack.applied, ack.duplicates) == (len(movements), 0)
        assert ack.sources[0].seq == self.seq
        return ack

    def active(self) -> list[str]:
        return [rid for rid, r in self.reservations.items() if r.state == pb.ACTIVE]

    # -- movements -------------------------------------------------------------------------

    @initialize(stock=st.lists(st.integers(min_value=0, max_value=25), min_size=4, max_size=4))
    def receive_stock(self, stock: list[int]) -> None:
        moves = [(k, q) for k, q in zip(KEYS, stock, strict=True) if q]
        if moves:
            self.send(
                [
                    pb.Movement(sku=k[0], location_id=k[1], type=pb.RECEIPT, quantity=q)
                    for k, q in moves
                ]
            )
        for k, q in moves:
            self.on_hand[k] += q

    @rule(
        moves=st.lists(
            st.tuples(st.sampled_from(["RECEIPT", "SALE", "RETURN"]), keys_st, qty_st),
            min_size=1,
            max_size=4,
        )
    )
    def movements(self, moves: list[tuple[str, Key, int]]) -> None:
        wire = [
            pb.Movement(sku=k[0], location_id=k[1], type=pb.MovementType.Value(kind), quantity=q)
            for kind, k, q in moves
        ]
        self.send(wire)
        for kind, k, q in moves:
            self.on_hand[k] += SIGN[kind] * q

    @rule(key=keys_st, q=qty_st, restocked=st.integers(min_value=0, max_value=6))
    def damaged_return_then_inspection(self, key: Key, q: int, restocked: int) -> None:
        """A damaged return (never available), then inspection: some units back to sale, the
        rest of what is damaged here written off (possibly more than the books hold)."""
        self.send(
            [pb.Movement(sku=key[0], location_id=key[1], type=pb.RETURN, quantity=q,
                         condition=pb.NON_SELLABLE)]
        )  # fmt: skip
        self.non_sellable[key] += q
        inspection = []
        if restocked:
            inspection.append(
                pb.Movement(sku=key[0], location_id=key[1], type=pb.RESTOCK, quantity=restocked)
            )
        written_off = self.non_sellable[key] - restocked
        if written_off > 0:
            inspection.append(
                pb.Movement(sku=key[0], location_id=key[1], type=pb.ADJUSTMENT,
                            quantity=written_off, adjustment_sign=pb.DECREASE, reason="damaged",
                            condition=pb.NON_SELLABLE)
            )  # fmt: skip
        if inspection:
            self.send(inspection)
        self.on_hand[key] += restocked
        self.non_sellable[key] -= restocked + max(written_off, 0)

    @rule(sku=st.sampled_from(SKUS), q=qty_st, forward=st.booleans(), data=st.data())
    def ship(self, sku: str, q: int, forward: bool, data: st.DataObject) -> None:
        """A TRANSFER_OUT: a new transfer, or a further parcel of one between the same places
        (possibly closed, possibly received before it was shipped)."""
        src, dst = LOCS if forward else LOCS[::-1]
        same = sorted(t for t, m in self.transfers.items() if (m.src, m.dst) == (src, dst))
        tid = data.draw(st.sampled_from([f"t-{self.seq + 1}", *same]), label="transfer")
        self.send(
            [pb.Movement(sku=sku, location_id=src, type=pb.TRANSFER_OUT, quantity=q,
                         transfer_id=tid, counterpart_location_id=dst)]
        )  # fmt: skip
        self.on_hand[(sku, src)] -= q
        t = self.transfers.setdefault(tid, TransferModel(src, dst))
        t.shipped[sku] += q
        t.closed = False

    @rule(sku=st.sampled_from(SKUS), q=qty_st, data=st.data())
    def receive(self, sku: str, q: int, data: st.DataObject) -> None:
        """A TRANSFER_IN at a transfer's destination: short, exact, twice, or of a transfer not
        shipped yet (then a later shipment from the other location may follow)."""
        new = f"t-{self.seq + 1}"
        tid = data.draw(st.sampled_from([new, *sorted(self.transfers)]), label="transfer")
        if tid == new:
            dst = data.draw(st.sampled_from(LOCS), label="destination")
            self.transfers[tid] = TransferModel(LOCS[1] if dst == LOCS[0] else LOCS[0], dst)
        t = self.transfers[tid]
        if data.draw(st.booleans(), label="same sku") and t.skus:
            sku = t.skus[0]
        self.send(
            [pb.Movement(sku=sku, location_id=t.dst, type=pb.TRANSFER_IN, quantity=q,
                         transfer_id=tid)]
        )  # fmt: skip
        self.on_hand[(sku, t.dst)] += q
        back = min(t.lost[sku], q)
        t.lost[sku] -= back
        t.received[sku] += q

    @precondition(lambda self: self.transfers)
    @rule(data=st.data())
    def close_transfer(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(self.transfers)), label="transfer")
        t = self.transfers[tid]
        self._settled()  # its shipments have reached the record
        closed = self.run(self.c.close_transfer(tid, t.dst))
        assert closed.state == pb.CLOSED
        if not t.closed:
            for sku in t.skus:
                t.lost[sku] += t.in_transit(sku)
            t.closed = True

    @rule(key=keys_st, counted=st.integers(min_value=0, max_value=15))
    def count(self, key: Key, counted: int) -> None:
        self.send(
            [
                pb.Movement(
                    sku=key[0],
                    location_id=key[1],
                    type=pb.COUNT,
                    quantity=counted,
                    count_id=f"c-{self.seq + 1}",
                )
            ]
        )
        self.on_hand[key] = counted

    @precondition(lambda self: self.batches)
    @rule(data=st.data())
    def duplicate_delivery(self, data: st.DataObject) -> None:
        batch = data.draw(st.sampled_from(self.batches), label="batch")
        [ack] = self.run(collect(self.c.apply_movements([batch])))
        assert (ack.applied, ack.duplicates) == (0, len(batch.movements)), ack

    @precondition(lambda self: self.active())
    @rule(data=st.data(), q=qty_st)
    def pickup(self, data: st.DataObject, q: int) -> None:
        rid = data.draw(st.sampled_from(self.active()), label="rid")
        r = self.reservations[rid]
        key = data.draw(st.sampled_from(sorted(r.lines)), label="line")
        self.send(
            [
                pb.Movement(
                    sku=key[0], location_id=key[1], type=pb.SALE, quantity=q, reservation_id=rid
                )
            ]
        )
        self.on_hand[key] -= q
        picked = min(q, r.lines[key])
        r.fulfilled[key] += picked
        r.lines[key] -= picked
        if r.lines[key] == 0:
            del r.lines[key]
        if not r.lines:
            r.state = pb.FULFILLED

    # -- reservations ----------------------------------------------------------------------

    @rule(
        lines=st.lists(
            st.tuples(keys_st, st.integers(min_value=1, max_value=5)),
            min_size=1,
            max_size=3,
            unique_by=lambda t: t[0],
        )
    )
    def reserve(self, lines: list[tuple[Key, int]]) -> None:
        rid = f"r-{self.next_id}"
        self.next_id += 1
        request = [(k[0], k[1], q) for k, q in lines]
        fits = all(q <= self.available(k) for k, q in lines)
        try:
            resp = self.run(self.c.reserve(rid, request, kind="ORDER"))
        except UnistockClientError as exc:
            refused: UnistockClientError | None = exc
        else:
            refused = None
        if refused is not None:
            assert not fits, f"refused although every line fits: {refused}"
            assert refused.code == grpc.StatusCode.FAILED_PRECONDITION, refused
            return
        assert fits, "granted beyond available"
        assert not resp.replayed
        assert resp.reservation.state == pb.ACTIVE
        self.reservations[rid] = ResModel(dict(lines), request)

    @precondition(lambda self: self.reservations)
    @rule(data=st.data())
    def replay_reserve(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(sorted(self.reservations)), label="rid")
        r = self.reservations[rid]
        resp = self.run(self.c.reserve(rid, r.request, kind="ORDER"))
        assert resp.replayed
        assert resp.reservation.state == r.state

    @precondition(lambda self: self.active())
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self.active()), label="rid")
        assert self.run(self.c.release(rid)).state == pb.RELEASED
        self.reservations[rid].state = pb.RELEASED

    @precondition(lambda self: self.active())
    @rule(data=st.data())
    def fulfil(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self.active()), label="rid")
        assert self.run(self.c.fulfil(rid)).state == pb.FULFILLED
        r = self.reservations[rid]
        r.fulfilled.update(r.lines)
        r.shipped_open.update(r.lines)
        for key, q in r.lines.items():  # the units left: on_hand falls with the hold
            self.on_hand[key] -= q
        r.state = pb.FULFILLED

    @precondition(lambda self: any(r.shipped_open for r in self.reservations.values()))
    @rule(data=st.data(), q=qty_st)
    def pickup_after_fulfil(self, data: st.DataObject, q: int) -> None:
        """The till reports units the order manager already reported shipped: they leave once."""
        rid = data.draw(
            st.sampled_from(sorted(k for k, r in self.reservations.items() if r.shipped_open)),
            label="rid",
        )
        r = self.reservations[rid]
        key = data.draw(st.sampled_from(sorted(r.shipped_open)), label="line")
        self.send(
            [
                pb.Movement(
                    sku=key[0], location_id=key[1], type=pb.SALE, quantity=q, reservation_id=rid
                )
            ]
        )
        covered = min(q, r.shipped_open[key])
        r.shipped_open[key] -= covered
        if not r.shipped_open[key]:
            del r.shipped_open[key]
        self.on_hand[key] -= q - covered

    # -- faults ----------------------------------------------------------------------------

    @precondition(lambda self: self.steps_since_restart >= 3)
    @rule()
    def restart(self) -> None:
        self.run(self._stop())
        self.run(self._start())
        self.steps_since_restart = 0

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def levels_match_the_model(self) -> None:
        self.steps_since_restart += 1
        got = {(lv.sku, lv.location_id): lv for lv in self.run(self.c.get_availability(keys=KEYS))}
        for k in KEYS:
            lv = got[k]
            want = (self.on_hand[k], self.reserved(k), self.available(k), self.non_sellable[k])
            assert (lv.on_hand, lv.reserved, lv.available, lv.non_sellable) == want, (k, lv)
            assert lv.negative == (self.on_hand[k] < 0 or self.non_sellable[k] < 0), (k, lv)
            assert lv.at_risk == (self.reserved(k) > 0 and self.on_hand[k] < self.reserved(k))
            assert lv.available >= 0

    def in_transit(self, key: Key) -> int:
        return sum(t.in_transit(key[0]) for t in self.transfers.values() if t.dst == key[1])

    def _transfers_as_modelled(self) -> bool:
        got = {(lv.sku, lv.location_id): lv for lv in self.run(self.c.get_availability(keys=KEYS))}
        if any(got[k].in_transit != self.in_transit(k) for k in KEYS):
            return False
        for tid, t in self.transfers.items():
            try:
                [rec] = self.run(self.c.get_transfer(tid))
            except UnistockClientError as exc:
                if exc.code != grpc.StatusCode.NOT_FOUND:
                    raise
                return False  # its first shipment is not applied yet
            lines = {ln.sku: ln for ln in rec.lines}
            for sku in t.skus:
                ln = lines.get(sku)
                want = (t.shipped[sku], t.received[sku], t.lost[sku], t.in_transit(sku))
                if ln is None or (ln.shipped, ln.received, ln.lost, ln.in_transit) != want:
                    return False
                assert ln.shipped + ln.unexpected == ln.received + ln.lost + ln.in_transit, rec
            if (rec.state == pb.CLOSED) != t.closed:
                return False
        return True

    def _settled(self) -> None:
        """Wait until every acknowledged TRANSFER_OUT reached its destination (its shipment is
        applied just after the ack) and the transfers are what the model says."""
        for _ in range(100):
            if self._transfers_as_modelled():
                return
            self.run(asyncio.sleep(0.05))
        got = self.run(self.c.get_availability(keys=KEYS))
        raise AssertionError(
            f"transfers differ from the model: {self.transfers} vs levels {got} and records "
            f"{[self.run(self.c.get_transfer(t)) for t in self.transfers]}"
        )

    @invariant()
    def transfers_match_the_model(self) -> None:
        self._settled()

    @invariant()
    def reservations_match_the_model(self) -> None:
        for rid, r in self.reservations.items():
            got = self.run(self.c.get_reservation(rid))
            assert got.state == r.state, (rid, got)
            if r.state == pb.ACTIVE:
                held = {(ln.sku, ln.location_id): ln.quantity for ln in got.lines}
                assert held == r.lines, (rid, got)
            done = {(ln.sku, ln.location_id): ln.quantity for ln in got.fulfilled}
            assert done == {k: v for k, v in r.fulfilled.items() if v}, (rid, got)


def test_stateful_against_real_redis(tmp_path_factory: pytest.TempPathFactory) -> None:
    run_machine(RealServerMachine, tmp_path_factory, "stateful", max_examples=25, steps=40)
