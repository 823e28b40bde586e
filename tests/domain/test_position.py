"""Position: movements, idempotency, counts, holds, version."""

from __future__ import annotations

import pytest

from tests.domain.builders import KEY, T, mv
from unistock.server.domain import AdjustmentSign, Movement, MovementResult, Outcome, Position
from unistock.server.domain.position import RECENT_COUNTS


def pos(on_hand: int = 0, **kw: object) -> Position:
    return Position(KEY, on_hand=on_hand, **kw)  # type: ignore[arg-type]


# -- basics -----------------------------------------------------------------------------------


def test_new_position_defaults() -> None:
    p = Position(("S", "L"))
    assert (p.sku, p.location_id) == ("S", "L")
    assert (p.on_hand, p.reserved, p.safety_stock, p.version) == (0, 0, 0, 0)
    assert p.available == 0
    assert not p.negative
    assert not p.at_risk
    assert p.mark("any") == 0
    assert p.held("R") == 0
    assert p.hold_items() == ()
    assert "S" in repr(p)


def test_position_restored_from_snapshot() -> None:
    p = Position(
        KEY,
        on_hand=10,
        safety_stock=2,
        version=7,
        marks=(("a", 3), ("b", 9)),
        holds=(("R1", 2), ("R2", 3)),
        counts=("C1",),
    )
    assert p.reserved == 5
    assert p.available == 3
    assert (p.mark("a"), p.mark("b"), p.mark("c")) == (3, 9, 0)
    assert p.held("R1") == 2
    assert dict(p.hold_items()) == {"R1": 2, "R2": 3}
    assert p.apply(mv(seq=3, source_id="a")).outcome is Outcome.DUPLICATE
    res = p.apply(mv(T.SALE, 1, seq=1, source_id="x", count_id="C1"))
    assert res.outcome is Outcome.COUNT_CORRECTION


# -- each movement type -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("movement", "after"),
    [
        (mv(T.SALE, 3), 7),
        (mv(T.RETURN, 3), 13),
        (mv(T.RECEIPT, 3), 13),
        (mv(T.TRANSFER_OUT, 3), 7),
        (mv(T.TRANSFER_IN, 3), 13),
        (mv(T.ADJUSTMENT, 3, adjustment_sign=AdjustmentSign.INCREASE), 13),
        (mv(T.ADJUSTMENT, 3, adjustment_sign=AdjustmentSign.DECREASE), 7),
        (mv(T.COUNT, 4, count_id="C1"), 4),
        (mv(T.COUNT, 0, count_id="C1"), 0),
        (mv(T.COUNT, 25, count_id="C1"), 25),
    ],
)
def test_each_movement_type_effect(movement: Movement, after: int) -> None:
    p = pos(10)
    res = p.apply(movement.validate())
    assert res.outcome is Outcome.APPLIED
    assert p.on_hand == after
    assert p.version == 1
    assert p.mark("edge-1") == 1
    if movement.type is T.COUNT:
        assert res.variance == after - 10
    else:
        assert res.variance == 0
    assert res.picked_up == 0
    assert not res.at_risk


def test_sale_from_empty_goes_negative_and_is_flagged() -> None:
    p = pos(1)
    res = p.apply(mv(T.SALE, 3))
    assert res.outcome is Outcome.APPLIED
    assert p.on_hand == -2
    assert p.negative
    assert p.available == 0
    p.apply(mv(T.RECEIPT, 2, seq=2))
    assert p.on_hand == 0
    assert not p.negative


def test_transfer_out_then_in_conserves_units_across_positions() -> None:
    a, b = Position(("S", "A")), Position(("S", "B"))
    a.apply(mv(T.RECEIPT, 5, key=("S", "A")))
    a.apply(mv(T.TRANSFER_OUT, 2, seq=2, key=("S", "A"), transfer_id="T9"))
    assert a.on_hand == 3
    b.apply(mv(T.TRANSFER_IN, 2, seq=1, source_id="edge-B", key=("S", "B"), transfer_id="T9"))
    assert a.on_hand + b.on_hand == 5


# -- idempotency ------------------------------------------------------------------------------


def test_same_seq_twice_is_duplicate() -> None:
    p = pos(10)
    m = mv(T.SALE, 2, seq=5)
    assert p.apply(m).outcome is Outcome.APPLIED
    before = (p.on_hand, p.version, p.marks)
    res = p.apply(m)
    assert res == MovementResult(Outcome.DUPLICATE)
    assert (p.on_hand, p.version, p.marks) == before


def test_same_seq_with_other_content_is_still_duplicate() -> None:
    p = pos(10)
    p.apply(mv(T.SALE, 2, seq=5))
    assert p.apply(mv(T.RECEIPT, 100, seq=5)).outcome is Outcome.DUPLICATE
    assert p.on_hand == 8


def test_lower_seq_is_duplicate() -> None:
    p = pos(10)
    p.apply(mv(T.SALE, 1, seq=10))
    for seq in (1, 5, 9, 10):
        assert p.apply(mv(T.RECEIPT, 7, seq=seq)).outcome is Outcome.DUPLICATE
    assert p.on_hand == 9
    assert p.version == 1
    assert p.mark("edge-1") == 10


def test_gaps_in_seq_are_fine() -> None:
    p = pos(0)
    for seq in (3, 7, 100):
        assert p.apply(mv(T.RECEIPT, 1, seq=seq)).outcome is Outcome.APPLIED
    assert p.on_hand == 3
    assert p.mark("edge-1") == 100


def test_several_sources_interleaved_have_independent_marks() -> None:
    p = pos(0)
    order = [("a", 1), ("b", 1), ("a", 2), ("c", 50), ("b", 2), ("a", 3), ("c", 51)]
    for src, seq in order:
        assert p.apply(mv(T.RECEIPT, 1, seq=seq, source_id=src)).outcome is Outcome.APPLIED
    assert p.on_hand == 7
    assert p.version == 7
    assert (p.mark("a"), p.mark("b"), p.mark("c")) == (3, 2, 51)
    # Redeliver all of them, interleaved differently: nothing changes.
    for src, seq in reversed(order):
        assert p.apply(mv(T.RECEIPT, 1, seq=seq, source_id=src)).outcome is Outcome.DUPLICATE
    assert p.on_hand == 7
    assert p.version == 7
    # A new source starting at seq 1 is not confused with another source's marks.
    assert p.apply(mv(T.SALE, 1, seq=1, source_id="d")).outcome is Outcome.APPLIED
    assert p.on_hand == 6


def test_marks_are_per_position() -> None:
    a, b = Position(("S", "A")), Position(("S", "B"))
    a.apply(mv(T.RECEIPT, 1, seq=5, key=("S", "A")))
    assert b.apply(mv(T.RECEIPT, 1, seq=3, key=("S", "B"))).outcome is Outcome.APPLIED


# -- counts -----------------------------------------------------------------------------------


def test_count_sets_on_hand_and_returns_variance() -> None:
    p = pos(10)
    res = p.apply(mv(T.COUNT, 7, count_id="C1"))
    assert res == MovementResult(Outcome.APPLIED, variance=-3)
    assert p.on_hand == 7
    res = p.apply(mv(T.COUNT, 12, seq=2, count_id="C2"))
    assert res.variance == 5
    assert p.on_hand == 12
    assert p.version == 2


def test_count_on_negative_position_fixes_it() -> None:
    p = pos(-4)
    res = p.apply(mv(T.COUNT, 2, count_id="C1"))
    assert res.variance == 6
    assert p.on_hand == 2
    assert not p.negative


def test_same_count_id_under_new_seq_changes_nothing() -> None:
    p = pos(10)
    p.apply(mv(T.COUNT, 7, seq=1, count_id="C1"))
    p.apply(mv(T.SALE, 2, seq=2))
    before = (p.on_hand, p.version, p.counts)
    res = p.apply(mv(T.COUNT, 7, seq=3, count_id="C1"))
    assert res == MovementResult(Outcome.DUPLICATE)
    assert (p.on_hand, p.version, p.counts) == before
    assert p.on_hand == 5
    # the seq is consumed, though: redelivering seq 3 is a plain duplicate
    assert p.mark("edge-1") == 3


def test_same_count_id_from_another_source_changes_nothing() -> None:
    p = pos(10)
    p.apply(mv(T.COUNT, 7, count_id="C1", source_id="rfid"))
    p.apply(mv(T.RECEIPT, 1, source_id="wms"))
    assert p.apply(mv(T.COUNT, 7, count_id="C1", source_id="other")).outcome is Outcome.DUPLICATE
    assert p.on_hand == 8


@pytest.mark.parametrize(
    ("movement", "delta"),
    [
        (mv(T.SALE, 2, seq=2, count_id="C1"), -2),
        (mv(T.RETURN, 2, seq=2, count_id="C1"), 2),
        (mv(T.RECEIPT, 2, seq=2, count_id="C1"), 2),
        (mv(T.TRANSFER_OUT, 2, seq=2, count_id="C1"), -2),
        (mv(T.TRANSFER_IN, 2, seq=2, count_id="C1"), 2),
        (mv(T.ADJUSTMENT, 2, seq=2, count_id="C1", adjustment_sign=AdjustmentSign.DECREASE), -2),
        (mv(T.ADJUSTMENT, 2, seq=2, count_id="C1", adjustment_sign=AdjustmentSign.INCREASE), 2),
    ],
)
def test_movement_preceding_applied_count_is_a_count_correction(
    movement: Movement, delta: int
) -> None:
    p = pos(10)
    p.apply(mv(T.COUNT, 6, seq=1, count_id="C1"))
    version = p.version
    res = p.apply(movement.validate())
    assert res.outcome is Outcome.COUNT_CORRECTION
    assert res.variance == -delta
    assert res.picked_up == 0
    assert p.on_hand == 6
    # the position's state changed (the source's mark), so its version moves and it is written
    assert p.version == version + 1
    # the seq was consumed: redelivery is a duplicate, not a second correction
    assert p.mark("edge-1") == 2
    assert p.apply(movement).outcome is Outcome.DUPLICATE


def test_count_correction_from_another_source() -> None:
    """The till that was offline is its own source: its movement still names the count."""
    p = pos(10)
    p.apply(mv(T.COUNT, 6, seq=40, source_id="agent", count_id="C1"))
    res = p.apply(mv(T.SALE, 1, seq=1, source_id="till-3", count_id="C1"))
    assert res == MovementResult(Outcome.COUNT_CORRECTION, variance=1)
    assert p.on_hand == 6


def test_movement_with_unknown_count_id_applies_normally() -> None:
    p = pos(10)
    p.apply(mv(T.COUNT, 6, seq=1, count_id="C1"))
    res = p.apply(mv(T.SALE, 2, seq=2, count_id="C2"))
    assert res.outcome is Outcome.APPLIED
    assert p.on_hand == 4
    # ...and when C2 then arrives, it supersedes it (sets on_hand to the count)
    res = p.apply(mv(T.COUNT, 5, seq=3, count_id="C2"))
    assert res == MovementResult(Outcome.APPLIED, variance=1)
    assert p.on_hand == 5


def test_recent_counts_bound() -> None:
    assert RECENT_COUNTS >= 1
    p = pos(0)
    seq = 0
    for i in range(RECENT_COUNTS + 1):
        seq += 1
        p.apply(mv(T.COUNT, 10 + i, seq=seq, count_id=f"C{i}"))
    assert p.counts is not None
    assert len(p.counts) == RECENT_COUNTS
    assert "C0" not in p.counts
    on_hand = p.on_hand
    # the newest RECENT_COUNTS count ids are still recognised
    for i in range(1, RECENT_COUNTS + 1):
        seq += 1
        res = p.apply(mv(T.SALE, 1, seq=seq, count_id=f"C{i}"))
        assert res.outcome is Outcome.COUNT_CORRECTION
        assert p.on_hand == on_hand
    # the oldest one is forgotten: a movement naming it applies normally
    seq += 1
    assert p.apply(mv(T.SALE, 1, seq=seq, count_id="C0")).outcome is Outcome.APPLIED
    assert p.on_hand == on_hand - 1


def test_count_at_risk_reported() -> None:
    p = pos(10)
    p.hold("R1", 5)
    res = p.apply(mv(T.COUNT, 3, count_id="C1"))
    assert res.outcome is Outcome.APPLIED
    assert res.at_risk
    assert p.at_risk
    assert p.available == 0
    assert p.reserved == 5


# -- sales that pick up reservations ----------------------------------------------------------


def test_sale_with_reservation_consumes_hold() -> None:
    p = pos(10)
    p.hold("R1", 3)
    p.hold("R2", 2)
    assert p.available == 5
    v = p.version
    res = p.apply(mv(T.SALE, 2, reservation_id="R1"))
    assert res == MovementResult(Outcome.APPLIED, picked_up=2)
    assert p.on_hand == 8
    assert p.held("R1") == 1
    assert p.reserved == 3
    assert p.available == 5  # a pickup does not change what can be promised
    assert p.version == v + 1
    res = p.apply(mv(T.SALE, 1, seq=2, reservation_id="R1"))
    assert res.picked_up == 1
    assert p.held("R1") == 0
    assert dict(p.hold_items()) == {"R2": 2}


def test_sale_of_more_than_held_picks_up_the_hold_only() -> None:
    p = pos(10)
    p.hold("R1", 2)
    res = p.apply(mv(T.SALE, 5, reservation_id="R1"))
    assert res.picked_up == 2
    assert p.on_hand == 5
    assert p.reserved == 0
    assert p.holds is None
    assert p.available == 5


def test_sale_naming_unknown_reservation_is_a_plain_sale() -> None:
    p = pos(10)
    p.hold("R1", 2)
    res = p.apply(mv(T.SALE, 1, reservation_id="R-unknown"))
    assert res == MovementResult(Outcome.APPLIED, picked_up=0)
    assert p.on_hand == 9
    assert p.reserved == 2


def test_duplicate_pickup_consumes_nothing_more() -> None:
    p = pos(10)
    p.hold("R1", 3)
    m = mv(T.SALE, 1, reservation_id="R1")
    p.apply(m)
    assert p.apply(m).outcome is Outcome.DUPLICATE
    assert p.held("R1") == 2
    assert p.on_hand == 9


def test_pickup_preceding_a_count_still_consumes_the_hold() -> None:
    p = pos(10)
    p.hold("R1", 2)
    # the shopper collected 2 units at an offline till; the count then saw 8 on the shelf
    p.apply(mv(T.COUNT, 8, seq=1, source_id="agent", count_id="C1"))
    res = p.apply(mv(T.SALE, 2, seq=1, source_id="till", reservation_id="R1", count_id="C1"))
    assert res.outcome is Outcome.COUNT_CORRECTION
    assert res.variance == 2
    assert p.on_hand == 8
    assert res.picked_up == 2
    assert p.reserved == 0
    assert not res.at_risk


def test_pickup_preceding_a_count_that_left_it_at_risk() -> None:
    p = pos(10)
    p.hold("R1", 3)
    p.hold("R2", 4)
    p.apply(mv(T.COUNT, 5, seq=1, source_id="agent", count_id="C1"))
    assert p.at_risk
    res = p.apply(mv(T.SALE, 2, seq=1, source_id="till", reservation_id="R1", count_id="C1"))
    assert res.outcome is Outcome.COUNT_CORRECTION
    assert res.picked_up == 2
    assert p.on_hand == 5
    assert p.reserved == 5
    assert not res.at_risk


def test_negative_position_without_reservations_is_not_at_risk() -> None:
    p = pos(1)
    res = p.apply(mv(T.SALE, 3))
    assert p.negative
    assert p.reserved == 0
    assert not res.at_risk
    assert not p.at_risk


# -- at risk, negative, available -------------------------------------------------------------


def test_sale_below_reserved_is_at_risk_not_an_error() -> None:
    p = pos(3)
    p.hold("R1", 3)
    res = p.apply(mv(T.SALE, 1))
    assert res.outcome is Outcome.APPLIED
    assert res.at_risk
    assert p.at_risk
    assert p.on_hand == 2
    assert p.reserved == 3
    assert p.available == 0
    res = p.apply(mv(T.SALE, 5, seq=2))
    assert p.on_hand == -3
    assert p.negative
    assert res.at_risk
    res = p.apply(mv(T.RECEIPT, 10, seq=3))
    assert not res.at_risk
    assert not p.at_risk
    assert p.available == 4


def test_on_hand_equal_reserved_is_not_at_risk() -> None:
    p = pos(3)
    p.hold("R1", 3)
    assert not p.at_risk
    assert p.available == 0


@pytest.mark.parametrize(
    ("on_hand", "reserved", "safety", "available"),
    [(10, 0, 0, 10), (10, 3, 2, 5), (10, 8, 2, 0), (10, 8, 5, 0), (-5, 0, 0, 0), (0, 0, 3, 0)],
)
def test_available(on_hand: int, reserved: int, safety: int, available: int) -> None:
    p = Position(KEY, on_hand=on_hand, safety_stock=safety, holds=(("R", reserved),))
    assert p.reserved == reserved
    assert p.available == available
    assert p.available >= 0
    assert p.fits(available)
    assert not p.fits(available + 1)


# -- version ----------------------------------------------------------------------------------


def test_version_increments_by_one_per_applied_change_only() -> None:
    p = pos(10)
    steps: list[tuple[object, int]] = [
        (lambda: p.apply(mv(T.SALE, 1, seq=1)), 1),
        (lambda: p.apply(mv(T.SALE, 1, seq=1)), 0),  # duplicate
        (lambda: p.apply(mv(T.COUNT, 5, seq=2, count_id="C1")), 1),
        (lambda: p.apply(mv(T.COUNT, 5, seq=3, count_id="C1")), 0),  # same count
        (lambda: p.apply(mv(T.SALE, 1, seq=4, count_id="C1")), 1),  # correction: mark moved
        (lambda: p.hold("R1", 2), 1),
        (lambda: p.apply(mv(T.SALE, 1, seq=5, reservation_id="R1")), 1),
        (lambda: p.release("R1", 0), 0),
        (lambda: p.release("R-none"), 0),
        (lambda: p.release("R1"), 1),
        (lambda: p.release("R1"), 0),
        (lambda: p.set_safety_stock(2), 1),
        (lambda: p.set_safety_stock(2), 0),
        (lambda: p.set_safety_stock(0), 1),
    ]
    for i, (step, inc) in enumerate(steps):
        before = p.version
        step()  # type: ignore[operator]
        assert p.version == before + inc, f"step {i}"


# -- holds ------------------------------------------------------------------------------------


def test_hold_and_release() -> None:
    p = pos(10)
    p.hold("R1", 3)
    p.hold("R2", 4)
    assert p.reserved == 7
    assert p.available == 3
    assert p.release("R1") == 3
    assert p.reserved == 4
    assert p.held("R1") == 0
    assert p.release("R1") == 0  # idempotent
    assert p.reserved == 4


def test_hold_same_reservation_twice_adds() -> None:
    p = pos(10)
    p.hold("R1", 3)
    p.hold("R1", 2)
    assert p.held("R1") == 5
    assert p.reserved == 5


def test_release_partial() -> None:
    p = pos(10)
    p.hold("R1", 5)
    assert p.release("R1", 2) == 2
    assert p.held("R1") == 3
    assert p.reserved == 3
    assert p.release("R1", 10) == 3  # more than held frees what is held
    assert p.held("R1") == 0
    assert p.reserved == 0
    assert p.holds is None
    assert p.release("R1", 1) == 0


def test_release_unknown_on_empty_position() -> None:
    p = pos(10)
    assert p.release("nope") == 0
    assert p.release("nope", 3) == 0
    assert p.version == 0


def test_set_safety_stock() -> None:
    p = pos(10)
    p.hold("R1", 3)
    p.set_safety_stock(4)
    assert p.safety_stock == 4
    assert p.available == 3
    p.set_safety_stock(100)
    assert p.available == 0
    assert not p.at_risk  # safety stock does not put reservations at risk
    p.set_safety_stock(0)
    assert p.available == 7
