"""Transfer records (issue 9 item 3, invariant 4, F17 at the domain level): units are
conserved after any sequence of shipments, receipts (twice, short, early, late) and closes,
delivered any number of times; every discrepancy is recorded once; the in_transit changes a
record reports add up to its in_transit (what the destination position shows)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unistock.server.domain import (
    DiscrepancyKind,
    InvalidArgument,
    Movement,
    MovementType,
    Transfer,
    TransferState,
    new_transfer,
)


def fresh() -> Transfer:
    return new_transfer("T-1", "store-2")


def test_short_receipt_closed_records_the_loss_once() -> None:
    t, d1 = fresh().ship("SKU", 5, "dc", "wms", 1)
    t, d2 = t.receive("SKU", 4, "", "till", 1)
    assert (d1, d2, t.state, t.in_transit("SKU")) == (5, -4, TransferState.IN_TRANSIT, 1)
    closed, deltas = t.close()
    assert deltas == {"SKU": -1}
    line = closed.line("SKU")
    assert (line.shipped, line.received, line.lost, line.in_transit) == (5, 4, 1, 0)
    assert closed.state is TransferState.CLOSED
    assert [d.kind for d in closed.discrepancies] == [DiscrepancyKind.CLOSED_SHORT]
    again, none = closed.close()
    assert (again, none) == (closed, {})  # closing twice records nothing more


def test_received_before_shipped_heals_when_the_shipment_arrives() -> None:
    t, d = fresh().receive("SKU", 3, "dc", "till", 1)
    assert (d, t.line("SKU").unexpected, t.state) == (0, 3, TransferState.IN_TRANSIT)
    assert [x.kind for x in t.discrepancies] == [DiscrepancyKind.RECEIVED_BEFORE_SHIPPED]
    t, d = t.ship("SKU", 3, "dc", "wms", 7)
    assert (d, t.line("SKU").unexpected, t.in_transit("SKU")) == (0, 0, 0)
    assert t.state is TransferState.RECEIVED
    assert t.origin == "dc"


def test_received_twice_is_an_over_receipt_with_the_excess() -> None:
    t, _ = fresh().ship("SKU", 2, "dc", "wms", 1)
    t, _ = t.receive("SKU", 2, "", "till", 1)
    assert t.state is TransferState.RECEIVED
    t, d = t.receive("SKU", 2, "", "till", 2)  # the same parcel scanned in again
    assert (d, t.line("SKU").unexpected) == (0, 2)
    [over] = t.discrepancies
    assert (over.kind, over.quantity, over.seq) == (DiscrepancyKind.OVER_RECEIVED, 2, 2)


def test_a_movement_delivered_again_changes_nothing() -> None:
    t, _ = fresh().ship("SKU", 2, "dc", "wms", 1)
    again, d = t.ship("SKU", 2, "dc", "wms", 1)
    assert (again, d) == (t, 0)
    t, _ = t.receive("SKU", 5, "", "till", 1)
    again, d = t.receive("SKU", 5, "", "till", 1)
    assert (again, d) == (t, 0)
    assert len(t.discrepancies) == 1


def test_late_receipt_after_close_turns_lost_units_back() -> None:
    t, _ = fresh().ship("SKU", 5, "dc", "wms", 1)
    t, _ = t.receive("SKU", 3, "", "till", 1)
    t, _ = t.close()
    t, d = t.receive("SKU", 2, "", "till", 2)
    line = t.line("SKU")
    assert (d, line.received, line.lost, line.unexpected) == (0, 5, 0, 0)
    assert t.discrepancies[-1].kind is DiscrepancyKind.RECEIVED_AFTER_CLOSE


def test_shipping_to_a_closed_transfer_opens_it_again() -> None:
    t, _ = fresh().ship("SKU", 1, "dc", "wms", 1)
    t, _ = t.receive("SKU", 1, "", "till", 1)
    t, _ = t.close()
    t, d = t.ship("SKU", 2, "dc", "wms", 2)
    assert (d, t.state, t.in_transit("SKU")) == (2, TransferState.IN_TRANSIT, 2)
    assert t.discrepancies[-1].kind is DiscrepancyKind.SHIPPED_AFTER_CLOSE


@pytest.mark.parametrize(
    ("movement", "field"),
    [
        (Movement("s", 1, "SKU", "dc", MovementType.TRANSFER_OUT, 1, transfer_id="T"), "counterpart_location_id"),
        (
            Movement(
                "s", 1, "SKU", "dc", MovementType.TRANSFER_OUT, 1, transfer_id="T",
                counterpart_location_id="dc",
            ),
            "counterpart_location_id",
        ),
        (
            Movement("s", 1, "SKU", "dc", MovementType.SALE, 1, counterpart_location_id="s2"),
            "counterpart_location_id",
        ),
        (
            Movement(
                "s", 1, "SKU", "dc", MovementType.TRANSFER_OUT, 1, counterpart_location_id="s2"
            ),
            "transfer_id",
        ),
        (
            Movement(
                "s", 1, "SKU", "dc", MovementType.TRANSFER_IN, 1, transfer_id="T",
                counterpart_location_id="bad id",
            ),
            "counterpart_location_id",
        ),
    ],
)  # fmt: skip
def test_transfer_movements_are_validated_naming_the_field(movement: Movement, field: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        movement.validate("movements[0].")
    assert info.value.field == "movements[0]." + field


def test_a_transfer_in_needs_no_counterpart() -> None:
    m = Movement("s", 1, "SKU", "s2", MovementType.TRANSFER_IN, 1, transfer_id="T")
    assert m.validate() is m


SKUS = st.sampled_from(["A", "B"])
STEP = st.one_of(
    st.tuples(st.just("ship"), SKUS, st.integers(1, 5), st.integers(1, 6)),
    st.tuples(st.just("receive"), SKUS, st.integers(1, 5), st.integers(1, 6)),
    st.tuples(st.just("close"), SKUS, st.just(0), st.just(0)),
)


@given(st.lists(STEP, max_size=30))
def test_units_are_conserved_and_discrepancies_recorded_once(
    steps: list[tuple[str, str, int, int]],
) -> None:
    """Any sequence, each movement delivered up to twice (seq reuse = the same movement): per
    SKU shipped + unexpected = received + lost + in_transit; the reported in_transit changes
    sum to in_transit; a movement's discrepancies are recorded by its first delivery only."""
    t = fresh()
    shown: Counter[str] = Counter()  # what the destination position shows
    sent: dict[tuple[str, int], tuple[str, int]] = {}  # (source, seq) -> (sku, qty) as first sent
    for op, sku, qty, seq in steps:
        if op == "close":
            t, deltas = t.close()
            shown.update(deltas)
            continue
        source = "wms" if op == "ship" else "till"
        sku, qty = sent.setdefault((source, seq), (sku, qty))  # a redelivery is identical
        before = len(t.discrepancies)
        was = t
        if op == "ship":
            t, delta = t.ship(sku, qty, "dc", source, seq)
        else:
            t, delta = t.receive(sku, qty, "", source, seq)
        if was.has_applied(source, seq):
            assert (t, delta) == (was, 0)
        shown[sku] += delta
        assert all(d.seq == seq for d in t.discrepancies[before:])
        for ln in t.lines:
            assert ln.shipped + ln.unexpected == ln.received + ln.lost + ln.in_transit
            assert ln.in_transit >= 0
            assert ln.lost >= 0
            assert shown[ln.sku] == ln.in_transit
    causes = [(d.kind, d.source_id, d.seq, d.sku) for d in t.discrepancies if d.source_id]
    assert len(causes) == len(set(causes))
    if t.closed:
        assert all(ln.in_transit == 0 for ln in t.lines)
