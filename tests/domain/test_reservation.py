"""Reservations: all-or-nothing reserve, replay, life cycle, fulfilment, reconciliation."""

from __future__ import annotations

import pytest

from unistock.server.domain import (
    DEFAULT_TTL,
    InsufficientStock,
    InvalidArgument,
    Line,
    Position,
    Reservation,
    ReservationConflict,
    ReservationKind,
    ReservationNotActive,
    ReservationState,
    ReserveRequest,
    Shortfall,
    check_replay,
    fingerprint,
    reconcile_holds,
    reserve,
)
from unistock.server.domain.reservation import check_reservation_id

K = ReservationKind
S = ReservationState
A1, A2, B1, B2 = ("A", "L1"), ("A", "L2"), ("B", "L1"), ("B", "L2")
NOW = 1_000_000.0


def positions(**on_hand: int) -> dict[tuple[str, str], Position]:
    """Positions A1, A2, B1, B2 with the given on_hand (default 10)."""
    keys = {"A1": A1, "A2": A2, "B1": B1, "B2": B2}
    return {k: Position(k, on_hand=on_hand.get(name, 10)) for name, k in keys.items()}


def req(
    rid: str = "R1",
    lines: list[Line] | None = None,
    kind: int = K.ORDER,
    ttl: int = 0,
) -> ReserveRequest:
    return ReserveRequest.build(rid, lines or [Line("A", "L1", 1)], kind, ttl)


def snapshot(ps: dict[tuple[str, str], Position]) -> dict[object, object]:
    return {k: (p.on_hand, p.reserved, p.version, p.hold_items()) for k, p in ps.items()}


def active(lines: list[Line], rid: str = "R1", expires_at: float | None = None) -> Reservation:
    ps = positions(A1=100, A2=100, B1=100, B2=100)
    r = reserve(req(rid, lines), ps, NOW)
    if expires_at is not None:
        r = r.extend(expires_at, NOW)
    return r


# -- ReserveRequest ---------------------------------------------------------------------------


def test_build_validates_fields() -> None:
    with pytest.raises(InvalidArgument) as ei:
        ReserveRequest.build("", [Line("A", "L1", 1)], K.CART)
    assert ei.value.field == "reservation_id"
    with pytest.raises(InvalidArgument) as ei:
        ReserveRequest.build("R|1", [Line("A", "L1", 1)], K.CART)
    assert ei.value.field == "reservation_id"
    for bad_kind in (0, 6, -1):
        with pytest.raises(InvalidArgument) as ei:
            ReserveRequest.build("R1", [Line("A", "L1", 1)], bad_kind)
        assert ei.value.field == "kind"
    with pytest.raises(InvalidArgument) as ei:
        ReserveRequest.build("R1", [], K.CART)
    assert ei.value.field == "lines"
    with pytest.raises(InvalidArgument) as ei:
        ReserveRequest.build("R1", [Line("A", "L1", 1), Line("A", "L1", 2)], K.CART)
    assert ei.value.field == "lines[1]"
    with pytest.raises(InvalidArgument) as ei:
        ReserveRequest.build("R1", [Line("A", "L1", 0)], K.CART)
    assert ei.value.field == "lines[0].quantity"
    assert check_reservation_id("R-1") == "R-1"
    with pytest.raises(InvalidArgument):
        check_reservation_id("")


@pytest.mark.parametrize("kind", list(ReservationKind))
def test_default_ttl_per_kind(kind: ReservationKind) -> None:
    r = req(kind=kind)
    assert r.kind is kind
    assert r.ttl_seconds == DEFAULT_TTL[kind]
    res = reserve(r, positions(), NOW)
    expected = None if DEFAULT_TTL[kind] is None else NOW + DEFAULT_TTL[kind]
    assert res.expires_at == expected


def test_default_ttl_values() -> None:
    assert DEFAULT_TTL[K.CART] == 15 * 60
    assert DEFAULT_TTL[K.E_RESERVATION] == 48 * 3600
    assert DEFAULT_TTL[K.CLICK_AND_COLLECT] is None
    assert DEFAULT_TTL[K.SHIP_FROM_STORE] is None
    assert DEFAULT_TTL[K.ORDER] is None
    assert set(DEFAULT_TTL) == set(ReservationKind)


@pytest.mark.parametrize("kind", list(ReservationKind))
def test_explicit_ttl_overrides_default(kind: ReservationKind) -> None:
    r = req(kind=kind, ttl=42)
    assert r.ttl_seconds == 42
    assert reserve(r, positions(), NOW).expires_at == NOW + 42


@pytest.mark.parametrize("ttl", [0, -5])
def test_non_positive_ttl_means_default(ttl: int) -> None:
    assert req(kind=K.CART, ttl=ttl).ttl_seconds == 15 * 60


# -- reserve ----------------------------------------------------------------------------------


def test_reserve_holds_every_line() -> None:
    ps = positions()
    r = reserve(
        ReserveRequest.build(
            "R1",
            [Line("A", "L1", 3), Line("B", "L2", 10)],
            K.CLICK_AND_COLLECT,
            channel="web",
            customer_id="c-1",
        ),
        ps,
        NOW,
    )
    assert r.state is S.ACTIVE
    assert r.active
    assert r.reservation_id == "R1"
    assert r.kind is K.CLICK_AND_COLLECT
    assert r.lines == (Line("A", "L1", 3), Line("B", "L2", 10))
    assert r.created_at == NOW
    assert r.expires_at is None
    assert (r.channel, r.customer_id) == ("web", "c-1")
    assert r.fulfilled == ()
    assert r.fingerprint == fingerprint(r.lines)
    assert r.held(A1) == 3
    assert r.held(B2) == 10
    assert r.held(A2) == 0
    assert ps[A1].held("R1") == 3
    assert ps[A1].reserved == 3
    assert ps[A1].available == 7
    assert ps[B2].available == 0
    assert ps[A2].reserved == 0
    assert ps[B1].reserved == 0
    assert (ps[A1].version, ps[B2].version, ps[A2].version) == (1, 1, 0)


def test_reserve_exactly_available_then_nothing_more() -> None:
    ps = positions(A1=2)
    ps[A1].set_safety_stock(1)
    reserve(req("R1", [Line("A", "L1", 1)]), ps, NOW)
    assert ps[A1].available == 0
    with pytest.raises(InsufficientStock) as ei:
        reserve(req("R2", [Line("A", "L1", 1)]), ps, NOW)
    assert ei.value.lines == [Shortfall("A", "L1", 1, 0)]


def test_reserve_all_or_nothing_lists_exactly_the_short_lines() -> None:
    ps = positions(A1=10, A2=2, B1=5, B2=0)
    ps[B1].hold("OTHER", 4)
    before = snapshot(ps)
    lines = [
        Line("A", "L1", 10),  # fits exactly
        Line("A", "L2", 3),  # short by 1
        Line("B", "L1", 2),  # short by 1 (5 - 4 held)
        Line("B", "L2", 1),  # short by 1
    ]
    with pytest.raises(InsufficientStock) as ei:
        reserve(req("R1", lines), ps, NOW)
    short = ei.value.lines
    assert short == [
        Shortfall("A", "L2", 3, 2),
        Shortfall("B", "L1", 2, 1),
        Shortfall("B", "L2", 1, 0),
    ]
    assert [s.shortfall for s in short] == [1, 1, 1]
    assert "A@L2" in str(ei.value)
    assert snapshot(ps) == before
    for p in ps.values():
        assert p.held("R1") == 0


def test_reserve_one_short_line_holds_nothing() -> None:
    ps = positions(A1=10, A2=10, B1=3)
    before = snapshot(ps)
    with pytest.raises(InsufficientStock) as ei:
        reserve(req("R1", [Line("A", "L1", 1), Line("A", "L2", 1), Line("B", "L1", 7)]), ps, NOW)
    assert ei.value.lines == [Shortfall("B", "L1", 7, 3)]
    assert ei.value.lines[0].shortfall == 4
    assert snapshot(ps) == before


def test_reserve_on_negative_or_at_risk_position() -> None:
    ps = positions(A1=-3)
    with pytest.raises(InsufficientStock) as ei:
        reserve(req("R1", [Line("A", "L1", 1)]), ps, NOW)
    assert ei.value.lines[0].available == 0
    assert ei.value.lines[0].shortfall == 1


def test_two_channels_never_both_get_the_last_unit() -> None:
    ps = positions(A1=1)
    reserve(req("web", [Line("A", "L1", 1)]), ps, NOW)
    with pytest.raises(InsufficientStock):
        reserve(req("app", [Line("A", "L1", 1)]), ps, NOW)
    assert ps[A1].reserved == 1


# -- replay -----------------------------------------------------------------------------------


def test_check_replay_same_lines_in_other_order() -> None:
    ps = positions()
    lines = [Line("A", "L1", 1), Line("B", "L2", 2), Line("A", "L2", 3)]
    r = reserve(req("R1", lines), ps, NOW)
    again = req("R1", list(reversed(lines)))
    assert check_replay(r, again) is r
    assert fingerprint(lines) == fingerprint(list(reversed(lines)))


@pytest.mark.parametrize(
    "other",
    [
        [Line("A", "L1", 2)],
        [Line("A", "L2", 1)],
        [Line("B", "L1", 1)],
        [Line("A", "L1", 1), Line("B", "L1", 1)],
    ],
)
def test_check_replay_other_lines_conflict(other: list[Line]) -> None:
    r = reserve(req("R1", [Line("A", "L1", 1)]), positions(), NOW)
    with pytest.raises(ReservationConflict) as ei:
        check_replay(r, req("R1", other))
    assert ei.value.reservation_id == "R1"


def test_check_replay_after_partial_fulfilment_still_matches_original() -> None:
    lines = [Line("A", "L1", 3), Line("B", "L1", 2)]
    r = active(lines).fulfil([Line("A", "L1", 1)])
    assert check_replay(r, req("R1", lines)) is r


def test_fingerprint_is_unambiguous() -> None:
    assert fingerprint([Line("A", "L1", 11)]) != fingerprint([Line("A", "L11", 1)])
    assert fingerprint([Line("A", "L1", 1), Line("B", "L1", 2)]) != fingerprint(
        [Line("A", "L1", 2), Line("B", "L1", 1)]
    )
    assert len(fingerprint([Line("A", "L1", 1)])) == 16


# -- release / expire / extend ----------------------------------------------------------------


def test_release_active_then_idempotent() -> None:
    r = active([Line("A", "L1", 2)])
    rel = r.release()
    assert rel.state is S.RELEASED
    assert not rel.active
    assert rel.held(A1) == 0
    assert rel.revision == r.revision + 1
    assert rel.release() is rel


@pytest.mark.parametrize("state", [S.FULFILLED, S.EXPIRED])
def test_release_ended_is_refused(state: ReservationState) -> None:
    r = active([Line("A", "L1", 2)]).ended(state)
    with pytest.raises(ReservationNotActive) as ei:
        r.release()
    assert ei.value.reservation_id == "R1"
    assert ei.value.state == state.name


def test_expire_only_when_due_and_active() -> None:
    r = reserve(req(kind=K.CART), positions(), NOW)
    assert r.expires_at == NOW + 900
    assert r.expire(NOW) is None
    assert r.expire(NOW + 899.999) is None
    e = r.expire(NOW + 900)
    assert e is not None
    assert e.state is S.EXPIRED
    assert e.held(A1) == 0
    assert r.expire(NOW + 10_000) is not None
    assert e.expire(NOW + 10_000) is None  # already ended
    assert r.release().expire(NOW + 10_000) is None
    assert r.fulfil().expire(NOW + 10_000) is None


def test_expire_never_without_ttl() -> None:
    r = reserve(req(kind=K.ORDER), positions(), NOW)
    assert r.expires_at is None
    assert r.expire(NOW + 10**9) is None


def test_extend() -> None:
    r = reserve(req(kind=K.CART), positions(), NOW)
    later = r.extend(NOW + 3600, NOW + 10)
    assert later.expires_at == NOW + 3600
    assert later.expire(NOW + 901) is None
    assert later.revision == r.revision + 1
    for past in (NOW + 10, NOW):
        with pytest.raises(InvalidArgument) as ei:
            r.extend(past, NOW + 10)
        assert ei.value.field == "expires_at"
    # a reservation without a TTL can be given one
    o = reserve(req(kind=K.ORDER), positions(), NOW).extend(NOW + 5, NOW)
    assert o.expire(NOW + 5) is not None
    with pytest.raises(ReservationNotActive):
        r.release().extend(NOW + 3600, NOW)


# -- fulfil -----------------------------------------------------------------------------------


def test_fulfil_all() -> None:
    r = active([Line("A", "L1", 2), Line("B", "L1", 1)])
    f = r.fulfil()
    assert f.state is S.FULFILLED
    assert set(f.fulfilled) == {Line("A", "L1", 2), Line("B", "L1", 1)}
    assert f.held(A1) == 0
    assert f.fulfil() is f  # retry is a no-op
    with pytest.raises(ReservationNotActive):
        f.fulfil([Line("A", "L1", 1)])
    with pytest.raises(ReservationNotActive):
        f.release()


def test_fulfil_partial_then_rest() -> None:
    r = active([Line("A", "L1", 3), Line("B", "L1", 2)])
    p1 = r.fulfil([Line("A", "L1", 1)])
    assert p1.state is S.ACTIVE
    assert p1.lines == (Line("A", "L1", 2), Line("B", "L1", 2))
    assert p1.fulfilled == (Line("A", "L1", 1),)
    assert p1.held(A1) == 2
    p2 = p1.fulfil([Line("B", "L1", 2)])
    assert p2.state is S.ACTIVE
    assert p2.lines == (Line("A", "L1", 2),)
    assert p2.held(B1) == 0
    p3 = p2.fulfil([Line("A", "L1", 2)])
    assert p3.state is S.FULFILLED
    assert set(p3.fulfilled) == {Line("A", "L1", 3), Line("B", "L1", 2)}
    assert p3.held(A1) == 0
    assert r.revision < p1.revision < p2.revision < p3.revision


def test_fulfil_partial_several_lines_at_once_to_completion() -> None:
    r = active([Line("A", "L1", 3), Line("B", "L1", 2)])
    f = r.fulfil([Line("B", "L1", 2), Line("A", "L1", 3)])
    assert f.state is S.FULFILLED


def test_fulfil_all_after_partial_fulfils_the_remainder() -> None:
    r = active([Line("A", "L1", 3)]).fulfil([Line("A", "L1", 1)])
    f = r.fulfil()
    assert f.state is S.FULFILLED
    assert f.fulfilled == (Line("A", "L1", 3),)


def test_fulfil_more_than_held_names_the_line() -> None:
    r = active([Line("A", "L1", 3), Line("B", "L1", 2)])
    with pytest.raises(InvalidArgument) as ei:
        r.fulfil([Line("A", "L1", 1), Line("B", "L1", 3)])
    assert ei.value.field == "lines[1].quantity"
    r2 = r.fulfil([Line("A", "L1", 2)])
    with pytest.raises(InvalidArgument) as ei:
        r2.fulfil([Line("A", "L1", 2)])
    assert ei.value.field == "lines[0].quantity"


def test_fulfil_line_not_in_reservation() -> None:
    r = active([Line("A", "L1", 3)])
    with pytest.raises(InvalidArgument) as ei:
        r.fulfil([Line("A", "L1", 1), Line("A", "L2", 1)])
    assert ei.value.field == "lines[1]"
    # a line fully fulfilled earlier holds nothing more to fulfil
    r2 = active([Line("A", "L1", 3), Line("B", "L1", 1)]).fulfil([Line("B", "L1", 1)])
    with pytest.raises(InvalidArgument) as ei:
        r2.fulfil([Line("B", "L1", 1)])
    assert ei.value.field == "lines[0].quantity"


@pytest.mark.parametrize("state", [S.RELEASED, S.EXPIRED])
def test_fulfil_ended_is_refused(state: ReservationState) -> None:
    r = active([Line("A", "L1", 3)]).ended(state)
    with pytest.raises(ReservationNotActive):
        r.fulfil()
    with pytest.raises(ReservationNotActive):
        r.fulfil([Line("A", "L1", 1)])


@pytest.mark.parametrize("quantity", [0, -2])
def test_fulfil_non_positive_quantity_is_refused(quantity: int) -> None:
    r = active([Line("A", "L1", 3)])
    with pytest.raises(InvalidArgument) as ei:
        r.fulfil([Line("B", "L1", 1), Line("A", "L1", quantity)])
    assert ei.value.field == "lines[1].quantity"


def test_fulfil_duplicate_lines_are_refused() -> None:
    """Checked one by one they would fit; together they exceed what is held."""
    r = active([Line("A", "L1", 3)])
    with pytest.raises(InvalidArgument) as ei:
        r.fulfil([Line("A", "L1", 2), Line("A", "L1", 2)])
    assert ei.value.field == "lines[1]"


def test_take_from_pickup() -> None:
    r = active([Line("A", "L1", 3), Line("B", "L1", 1)])
    t = r.take([Line("A", "L1", 3)])
    assert t.state is S.ACTIVE
    assert t.lines == (Line("B", "L1", 1),)
    t2 = t.take([Line("B", "L1", 1)])
    assert t2.state is S.FULFILLED


# -- reconcile_holds --------------------------------------------------------------------------


def test_reconcile_holds() -> None:
    ps = positions(A1=20)
    p = ps[A1]
    live = reserve(req("LIVE", [Line("A", "L1", 2)]), ps, NOW)
    partial = reserve(req("PART", [Line("A", "L1", 4)]), ps, NOW).fulfil([Line("A", "L1", 3)])
    released = reserve(req("REL", [Line("A", "L1", 1)]), ps, NOW).release()
    expired = reserve(req("EXP", [Line("A", "L1", 1)], K.CART), ps, NOW).expire(NOW + 10**6)
    fulfilled = reserve(req("FUL", [Line("A", "L1", 1)]), ps, NOW).fulfil()
    p.hold("ORPHAN", 5)  # crash between hold and record
    other = reserve(req("OTHER", [Line("B", "L1", 1)]), ps, NOW)
    p.hold("OTHER", 1)  # a record that has no line on this position
    assert p.reserved == 2 + 4 + 1 + 1 + 1 + 5 + 1
    records: dict[str, Reservation | None] = {
        "LIVE": live,
        "PART": partial,
        "REL": released,
        "EXP": expired,
        "FUL": fulfilled,
        "ORPHAN": None,
        "OTHER": other,
    }
    v = p.version
    freed, shipped = reconcile_holds(p, records)
    assert freed == 1 + 1 + 5 + 1  # released, expired, orphan, no line here
    # fulfilments the records have and the position had not: units left the shelf too
    assert shipped == 3 + 1
    assert p.on_hand == 20 - 4
    assert dict(p.hold_items()) == {"LIVE": 2, "PART": 1}
    assert p.reserved == 3
    assert p.version > v
    assert ps[B1].held("OTHER") == 1  # other positions are untouched
    # a second pass changes nothing
    v = p.version
    assert reconcile_holds(p, records) == (0, 0)
    assert p.version == v
    assert p.on_hand == 16


def test_reconcile_holds_missing_key_is_missing_record() -> None:
    p = Position(A1, on_hand=10)
    p.hold("GONE", 3)
    assert reconcile_holds(p, {}) == (3, 0)
    assert p.reserved == 0


def test_reconcile_holds_never_grows_a_hold() -> None:
    ps = positions()
    r = reserve(req("R1", [Line("A", "L1", 4)]), ps, NOW)
    ps[A1].release("R1", 3)  # position written before the record
    assert reconcile_holds(ps[A1], {"R1": r}) == (0, 0)
    assert ps[A1].held("R1") == 1


def test_times_are_kept_to_the_millisecond() -> None:
    r = reserve(req(kind=K.CART), positions(), 1000.123456)
    assert r.created_at == 1000.123
    assert r.expires_at == 1900.123
    assert r.extend(2000.98765, 1000.2).expires_at == 2000.988
