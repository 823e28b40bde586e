"""Invariants 1-3 and 6 of the domain spec, checked after every step of random histories.

Two sources send movements to 2 SKUs x 2 locations, with their own increasing seq counters and
occasional re-deliveries; channels reserve (multi-line), release, fulfil (all, or partly with
a request_id, sometimes repeated), expire and pick up at the till, in any order. A plain-dict
reference model says what every number must be: a fulfilment takes its units off on_hand, and a
pickup reporting units a fulfilment already reported (or the other way round) changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from unistock.server.domain import (
    AdjustmentSign,
    InsufficientStock,
    ItemCondition,
    Line,
    Movement,
    MovementType,
    Outcome,
    Position,
    Reservation,
    ReservationConflict,
    ReservationKind,
    ReservationState,
    ReserveRequest,
    apply_movement,
    check_replay,
    fulfil,
    reserve,
)
from unistock.server.domain.position import RECENT_COUNTS

T = MovementType
KEYS = [(sku, loc) for sku in ("S1", "S2") for loc in ("L1", "L2")]
SOURCES = ("edge-A", "wms-B")
# Movements that change on_hand by a signed quantity (COUNT and pickups have their own rules).
PLAIN_TYPES = [
    T.SALE, T.RETURN, T.RECEIPT, T.ADJUSTMENT, T.TRANSFER_OUT, T.TRANSFER_IN, T.RESTOCK
]  # fmt: skip

keys_st = st.sampled_from(KEYS)
sources_st = st.sampled_from(SOURCES)


@dataclass
class PositionModel:
    """What a position must hold, per the spec."""

    last_count: int
    since_count: int = 0  # sum of signed movements applied after the last count
    applied: set[tuple[str, int]] = field(default_factory=set)
    max_seq: dict[str, int] = field(default_factory=dict)
    recent_counts: list[str] = field(default_factory=list)
    safety_stock: int = 0
    non_sellable: int = 0  # damaged / to inspect: never counted, never available

    @property
    def on_hand(self) -> int:
        return self.last_count + self.since_count

    def delivered(self, m: Movement) -> None:
        self.max_seq[m.source_id] = max(self.max_seq.get(m.source_id, 0), m.seq)

    def apply_once(self, m: Movement) -> None:
        ident = (m.source_id, m.seq)
        assert ident not in self.applied, f"{ident} applied twice"
        self.applied.add(ident)


class DomainMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.positions: dict[tuple[str, str], Position] = {}
        self.model: dict[tuple[str, str], PositionModel] = {}
        self.seq = dict.fromkeys(SOURCES, 0)
        self.history: list[Movement] = []  # every movement delivered, for re-delivery
        self.count_ids: dict[tuple[str, str], list[tuple[str, int]]] = {k: [] for k in KEYS}
        self.next_count = 0
        self.next_rid = 0
        self.now = 1_000_000.0
        self.records: dict[str, Reservation] = {}  # every reservation ever granted
        self.active: dict[str, dict[tuple[str, str], int]] = {}  # ACTIVE lines, per the model
        # Per (reservation, position): units a fulfilment reported that no pickup did yet, and
        # units a pickup took from the hold that no fulfilment reported yet.
        self.shipped_open: dict[tuple[str, tuple[str, str]], int] = {}
        self.sold_open: dict[tuple[str, tuple[str, str]], int] = {}
        self.fulfil_requests: dict[str, tuple[str, list[Line]]] = {}  # request_id -> (rid, lines)
        self.next_request = 0
        self.last_versions: dict[tuple[str, str], int] = {}

    # -- set-up --------------------------------------------------------------------------------

    @initialize(stock=st.lists(st.integers(0, 20), min_size=len(KEYS), max_size=len(KEYS)))
    def start(self, stock: list[int]) -> None:
        for key, on_hand in zip(KEYS, stock, strict=True):
            self.positions[key] = Position(key, on_hand=on_hand)
            self.model[key] = PositionModel(last_count=on_hand)
            self.last_versions[key] = 0

    # -- helpers -------------------------------------------------------------------------------

    def _next_seq(self, source: str, skip: int = 0) -> int:
        self.seq[source] += 1 + skip
        return self.seq[source]

    def _count(self, key: tuple[str, str], source: str, quantity: int, count_id: str) -> Movement:
        """A COUNT of key from source, under the source's next seq."""
        return Movement(
            source_id=source,
            seq=self._next_seq(source),
            sku=key[0],
            location_id=key[1],
            type=T.COUNT,
            quantity=quantity,
            count_id=count_id,
        )

    def _deliver(self, m: Movement) -> object:
        m.validate()
        p = self.positions[m.key]
        version = p.version
        res = p.apply(m)
        self.history.append(m)
        self.model[m.key].delivered(m)
        if res.outcome is Outcome.DUPLICATE:
            assert p.version == version
        else:
            assert p.version == version + 1
        if res.outcome is Outcome.APPLIED:
            assert res.at_risk == (p.reserved > 0 and p.on_hand < p.reserved)
        return res

    def _snapshot(self) -> object:
        return {
            k: (p.on_hand, p.reserved, p.safety_stock, p.version, p.marks, p.hold_items(), p.counts)
            for k, p in self.positions.items()
        }

    def _end_holds(self, rid: str, lines: tuple[Line, ...]) -> None:
        for ln in lines:
            p = self.positions[ln.key]
            held = self.active[rid][ln.key]
            assert p.held(rid) == held
            assert p.release(rid) == held
        del self.active[rid]

    # -- movements -----------------------------------------------------------------------------

    @rule(
        key=keys_st,
        source=sources_st,
        type_=st.sampled_from(PLAIN_TYPES),
        quantity=st.integers(1, 6),
        sign=st.sampled_from(AdjustmentSign),
        skip=st.integers(0, 2),
        count_ref=st.none() | st.integers(0, 10) | st.just(-1),
        damaged=st.booleans(),
    )
    def movement(
        self,
        key: tuple[str, str],
        source: str,
        type_: MovementType,
        quantity: int,
        sign: AdjustmentSign,
        skip: int,
        count_ref: int | None,
        damaged: bool,
    ) -> None:
        # damaged: a RETURN or an ADJUSTMENT of non-sellable units (RESTOCK moves them back)
        condition = (
            ItemCondition.NON_SELLABLE
            if damaged and type_ in (T.RETURN, T.ADJUSTMENT)
            else ItemCondition.SELLABLE
        )
        # count_ref: None = no count_id; -1 = a count not seen yet; n = the n-th count here
        count_id = ""
        if count_ref == -1:
            count_id = f"future-{self.next_count}"
        elif count_ref is not None and self.count_ids[key]:
            count_id = self.count_ids[key][count_ref % len(self.count_ids[key])][0]
        m = Movement(
            source_id=source,
            seq=self._next_seq(source, skip),
            sku=key[0],
            location_id=key[1],
            type=type_,
            quantity=quantity,
            count_id=count_id,
            transfer_id="TR-1" if type_ in (T.TRANSFER_OUT, T.TRANSFER_IN) else "",
            counterpart_location_id="elsewhere" if type_ is T.TRANSFER_OUT else "",
            reason="damage" if type_ is T.ADJUSTMENT else "",
            adjustment_sign=sign if type_ is T.ADJUSTMENT else None,
            condition=condition,
        )
        model = self.model[key]
        before_reserved = self.positions[key].reserved
        available = self.positions[key].available
        res = self._deliver(m)
        if condition is ItemCondition.NON_SELLABLE:
            # never on the counted shelf, never for sale: only non_sellable moves
            assert res.outcome is Outcome.APPLIED
            model.apply_once(m)
            model.non_sellable += m.signed_quantity
            assert self.positions[key].available == available
        elif count_id and count_id in model.recent_counts:
            assert res.outcome is Outcome.COUNT_CORRECTION
            assert res.variance == -m.signed_quantity
            if type_ is T.RESTOCK:  # the count saw the unit on the shelf; it left inspection
                model.non_sellable -= quantity
        else:
            assert res.outcome is Outcome.APPLIED
            model.apply_once(m)
            model.since_count += m.signed_quantity
            if type_ is T.RESTOCK:
                model.non_sellable -= quantity
        assert res.picked_up == 0
        assert self.positions[key].reserved == before_reserved

    @rule(key=keys_st, source=sources_st, quantity=st.integers(0, 15))
    def count(self, key: tuple[str, str], source: str, quantity: int) -> None:
        self.next_count += 1
        count_id = f"C{self.next_count}"
        m = self._count(key, source, quantity, count_id)
        model = self.model[key]
        on_hand_before = self.positions[key].on_hand
        res = self._deliver(m)
        assert res.outcome is Outcome.APPLIED
        assert res.variance == quantity - on_hand_before
        model.apply_once(m)
        model.last_count = quantity
        model.since_count = 0
        model.recent_counts = [*model.recent_counts, count_id][-RECENT_COUNTS:]
        self.count_ids[key].append((count_id, quantity))

    @precondition(lambda self: any(self.count_ids.values()))
    @rule(data=st.data(), source=sources_st)
    def count_sent_again(self, data: st.DataObject, source: str) -> None:
        """The same count (same count_id) under a new seq."""
        key = data.draw(st.sampled_from([k for k in KEYS if self.count_ids[k]]))
        count_id, quantity = data.draw(st.sampled_from(self.count_ids[key]))
        model = self.model[key]
        m = self._count(key, source, quantity, count_id)
        before = self._snapshot()[key]  # type: ignore[index]
        res = self._deliver(m)
        if count_id in model.recent_counts:
            assert res.outcome is Outcome.DUPLICATE
            after = self._snapshot()[key]  # type: ignore[index]
            # only the source's mark may move
            assert before[:4] == after[:4]
        else:
            # forgotten (older than RECENT_COUNTS counts): it is applied again, as a count
            assert res.outcome is Outcome.APPLIED
            model.apply_once(m)
            model.last_count = quantity
            model.since_count = 0
            model.recent_counts = [*model.recent_counts, count_id][-RECENT_COUNTS:]

    @precondition(lambda self: self.history)
    @rule(data=st.data())
    def redeliver(self, data: st.DataObject) -> None:
        """MQTT QoS 1 redelivery or an outbox replay: a movement seen before changes nothing."""
        m = data.draw(st.sampled_from(self.history))
        before = self._snapshot()
        res, new, mismatch = apply_movement(
            self.positions[m.key], m, self.records.get(m.reservation_id)
        )
        assert res.outcome is Outcome.DUPLICATE
        assert res.picked_up == 0
        assert new is None
        assert not mismatch
        assert self._snapshot() == before

    # -- reservations --------------------------------------------------------------------------

    @rule(
        lines=st.lists(
            st.tuples(keys_st, st.integers(1, 5)), min_size=1, max_size=3, unique_by=lambda t: t[0]
        ),
        kind=st.sampled_from(ReservationKind),
        ttl=st.sampled_from([0, 60, 600, 900]),
    )
    def reserve_lines(
        self, lines: list[tuple[tuple[str, str], int]], kind: ReservationKind, ttl: int
    ) -> None:
        self.next_rid += 1
        rid = f"R{self.next_rid}"
        request = ReserveRequest.build(
            rid, [Line(k[0], k[1], q) for k, q in lines], kind, ttl, channel="web"
        )
        available = {k: p.available for k, p in self.positions.items()}
        short = [(k, q) for k, q in lines if q > available[k]]
        before = self._snapshot()
        refused: InsufficientStock | None = None
        try:
            record = reserve(request, self.positions, self.now)
        except InsufficientStock as e:
            refused = e
        if refused is not None:
            assert short, "refused although every line fitted"
            assert [((s.sku, s.location_id), s.requested) for s in refused.lines] == short
            for s in refused.lines:
                assert s.available == available[(s.sku, s.location_id)]
                assert s.shortfall > 0
            assert self._snapshot() == before, "a refused reservation held something"
            return
        assert not short, f"granted beyond available: {short} (available {available})"
        for k, q in lines:
            assert self.positions[k].available == available[k] - q
            assert self.positions[k].available >= 0
        assert record.state is ReservationState.ACTIVE
        self.records[rid] = record
        self.active[rid] = dict(lines)

    @precondition(lambda self: self.records)
    @rule(data=st.data(), same=st.booleans())
    def reserve_replayed(self, data: st.DataObject, same: bool) -> None:
        """The same reservation_id again: same lines -> same record, others -> conflict."""
        rid = data.draw(st.sampled_from(sorted(self.records)))
        record = self.records[rid]
        original = record.lines if record.active and not record.fulfilled else None
        if same and original is not None:
            shuffled = data.draw(st.permutations(list(original)))
            request = ReserveRequest.build(rid, shuffled, record.kind)
            assert check_replay(record, request) is record
        else:
            bogus = [Line("S1", "L1", 10_000)]
            request = ReserveRequest.build(rid, bogus, record.kind)
            with pytest.raises(ReservationConflict):
                check_replay(record, request)

    def _active_rids(self) -> list[str]:
        return sorted(self.active)

    @precondition(lambda self: self.active)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self._active_rids()))
        record = self.records[rid].release()
        assert record.state is ReservationState.RELEASED
        assert record.release() is record
        self._end_holds(rid, self.records[rid].lines)
        self.records[rid] = record

    def _ship(self, rid: str, key: tuple[str, str], units: int) -> None:
        """The model of units leaving by fulfilment: hold and on_hand fall together."""
        self.active[rid][key] -= units
        if not self.active[rid][key]:
            del self.active[rid][key]
        self.model[key].since_count -= units
        self.shipped_open[rid, key] = self.shipped_open.get((rid, key), 0) + units

    def _fulfil(self, rid: str, lines: list[Line], request_id: str = "") -> None:
        record = self.records[rid]
        touched = {ln.key for ln in record.lines}
        available = {k: self.positions[k].available for k in touched}
        new = fulfil(record, self.positions, lines, request_id)
        for k in touched:  # invariant 6: goods leaving never make units available
            assert self.positions[k].available <= available[k], k
        if not lines:
            for ln in record.lines:
                self._ship(rid, ln.key, ln.quantity)
        else:
            for ln in lines:
                matched = min(ln.quantity, self.sold_open.get((rid, ln.key), 0))
                self.sold_open[rid, ln.key] = self.sold_open.get((rid, ln.key), 0) - matched
                if ln.quantity > matched:
                    self._ship(rid, ln.key, ln.quantity - matched)
        if rid in self.active and not self.active[rid]:
            del self.active[rid]
        assert new.active == (rid in self.active)
        if record.active and not new.active:
            assert new.state is ReservationState.FULFILLED
        elif not record.active:
            assert new.state is record.state  # matching a pickup's units ends nothing
        self.records[rid] = new

    @precondition(lambda self: self.active)
    @rule(data=st.data())
    def fulfil_all(self, data: st.DataObject) -> None:
        rid = data.draw(st.sampled_from(self._active_rids()))
        self._fulfil(rid, [])
        before = self._snapshot()
        assert fulfil(self.records[rid], self.positions) is self.records[rid], "not idempotent"
        assert self._snapshot() == before

    @precondition(lambda self: self.active or self.sold_open)
    @rule(data=st.data())
    def fulfil_partial(self, data: st.DataObject) -> None:
        """Part of a reservation shipped, with a request_id; the units may be ones a till
        already reported picked up (then nothing more leaves)."""
        rid = data.draw(st.sampled_from(sorted(self.records)))
        record = self.records[rid]
        open_units = {
            ln.key: (self.active.get(rid, {}).get(ln.key, 0), self.sold_open.get((rid, ln.key), 0))
            for ln in (*record.lines, *record.fulfilled)
        }
        candidates = [(k, held + sold) for k, (held, sold) in open_units.items() if held + sold]
        if not candidates:
            return
        chosen = data.draw(
            st.lists(st.sampled_from(candidates), min_size=1, unique_by=lambda c: c[0])
        )
        lines = [Line(k[0], k[1], data.draw(st.integers(1, most))) for k, most in chosen]
        needs_active = any(ln.quantity > self.sold_open.get((rid, ln.key), 0) for ln in lines)
        if needs_active and not record.active:
            return  # refused (ReservationNotActive): covered by the reservation unit tests
        self.next_request += 1
        request_id = f"F{self.next_request}"
        self._fulfil(rid, lines, request_id)
        self.fulfil_requests[request_id] = (rid, lines)

    @precondition(lambda self: self.fulfil_requests)
    @rule(data=st.data())
    def fulfil_partial_repeated(self, data: st.DataObject) -> None:
        """A fulfilment sent again (the answer was lost): nothing changes."""
        request_id = data.draw(st.sampled_from(sorted(self.fulfil_requests)))
        rid, lines = self.fulfil_requests[request_id]
        before = self._snapshot()
        assert fulfil(self.records[rid], self.positions, lines, request_id) is self.records[rid]
        assert self._snapshot() == before

    @rule(seconds=st.sampled_from([1, 30, 60, 300, 600, 900, 3600, 48 * 3600]))
    def advance_clock_and_expire(self, seconds: int) -> None:
        self.now += seconds
        for rid in sorted(self.records):
            record = self.records[rid]
            expired = record.expire(self.now)
            due = record.active and record.expires_at is not None and record.expires_at <= self.now
            assert (expired is not None) == due
            if expired is not None:
                assert expired.state is ReservationState.EXPIRED
                self._end_holds(rid, record.lines)
                self.records[rid] = expired

    @precondition(lambda self: self.records)
    @rule(
        data=st.data(),
        source=sources_st,
        extra=st.integers(-3, 2),
        before_count=st.booleans(),
    )
    def sale_picking_up(
        self, data: st.DataObject, source: str, extra: int, before_count: bool
    ) -> None:
        """A SALE naming a reservation (click & collect pickup), possibly of more than held.

        before_count: the till was offline and the pickup precedes the position's last count.
        """
        rid = data.draw(st.sampled_from(sorted(self.records)))
        record = self.records[rid]
        key = data.draw(st.sampled_from([ln.key for ln in record.lines]))
        held = self.active.get(rid, {}).get(key, 0)
        quantity = max(1, held + extra)
        model = self.model[key]
        count_id = model.recent_counts[-1] if before_count and model.recent_counts else ""
        m = Movement(
            source_id=source,
            seq=self._next_seq(source),
            sku=key[0],
            location_id=key[1],
            type=T.SALE,
            quantity=quantity,
            reservation_id=rid,
            count_id=count_id,
        )
        m.validate()
        p = self.positions[key]
        available = p.available
        res, new, mismatch = apply_movement(p, m, record)
        self.history.append(m)
        model.delivered(m)
        covered = min(quantity, self.shipped_open.get((rid, key), 0))
        picked = min(held, quantity - covered)
        if count_id:
            # the count already saw the units gone: on_hand stays, the hold is still consumed
            assert res.outcome is Outcome.COUNT_CORRECTION
            assert res.variance == quantity - covered
        else:
            assert res.outcome is Outcome.APPLIED
            model.apply_once(m)
            # the units physically left, reserved or not, except those a fulfilment reported
            model.since_count -= quantity - covered
            assert p.available <= available  # invariant 6
        assert res.at_risk == (self.positions[key].at_risk)
        assert res.picked_up == picked
        assert bool(mismatch) == (not picked and not covered)
        assert (new is None) == (not picked and not covered)
        if new is not None:
            self.shipped_open[rid, key] = self.shipped_open.get((rid, key), 0) - covered
            self.sold_open[rid, key] = self.sold_open.get((rid, key), 0) + picked
            if picked:
                self.active[rid][key] -= picked
                if not self.active[rid][key]:
                    del self.active[rid][key]
                if self.active[rid]:
                    assert new.state is ReservationState.ACTIVE
                else:
                    assert new.state is ReservationState.FULFILLED
                    del self.active[rid]
            self.records[rid] = new

    @rule(key=keys_st, units=st.integers(0, 5))
    def set_safety_stock(self, key: tuple[str, str], units: int) -> None:
        p = self.positions[key]
        version = p.version
        p.set_safety_stock(units)
        assert p.version == version + (units != self.model[key].safety_stock)
        self.model[key].safety_stock = units

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def conservation(self) -> None:
        """1. on_hand == last count + signed movements applied after it; each applied once."""
        for key, p in self.positions.items():
            model = self.model[key]
            assert p.on_hand == model.on_hand, key
            assert p.non_sellable == model.non_sellable
            assert p.negative == (model.on_hand < 0 or model.non_sellable < 0)
            for source in SOURCES:
                assert p.mark(source) == model.max_seq.get(source, 0)
            assert list(p.counts or ()) == model.recent_counts
            assert p.safety_stock == model.safety_stock

    @invariant()
    def reserved_is_sum_of_active_lines(self) -> None:
        """2. reserved == sum of ACTIVE reservation lines on the position == sum of holds."""
        for key, p in self.positions.items():
            from_model = sum(lines.get(key, 0) for lines in self.active.values())
            from_records = sum(r.held(key) for r in self.records.values())
            assert p.reserved == from_model == from_records, key
            assert p.reserved == sum(q for _, q in p.hold_items())
            assert all(q > 0 for _, q in p.hold_items())
            assert p.at_risk == (p.reserved > 0 and p.on_hand < p.reserved)
        for rid, record in self.records.items():
            assert record.active == (rid in self.active)
            if record.active:
                assert {ln.key: ln.quantity for ln in record.lines} == self.active[rid]

    @invariant()
    def available_never_negative(self) -> None:
        """3. available >= 0 (the 'never beyond available' half is checked in reserve_lines)."""
        for key, p in self.positions.items():
            model = self.model[key]
            expected = max(0, model.on_hand - p.reserved - model.safety_stock)
            assert p.available == expected >= 0

    @invariant()
    def versions_only_grow(self) -> None:
        for key, p in self.positions.items():
            assert p.version >= self.last_versions[key]
            self.last_versions[key] = p.version


DomainMachine.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestDomainInvariants = DomainMachine.TestCase
