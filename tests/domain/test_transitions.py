"""What the change feed says happened to a reservation (issue 11): domain.transitions compares
a record with the one before it."""

from __future__ import annotations

from unistock.server.domain import (
    Line,
    Move,
    Position,
    ReservationKind,
    ReserveRequest,
    Transition,
    reserve,
    transitions,
)

NOW = 1_700_000_000.0


def made() -> tuple:  # type: ignore[type-arg]
    positions = {
        ("A", "s1"): Position(("A", "s1"), on_hand=10),
        ("A", "s2"): Position(("A", "s2"), on_hand=10),
    }
    request = ReserveRequest.build("r1", [Line("A", "s1", 3)], ReservationKind.ORDER, 3600)
    return reserve(request, positions, NOW), positions


def test_each_transition_is_named() -> None:
    r, _ = made()
    assert transitions(None, r) == [Transition.CREATED]
    longer = r.extend(NOW + 7200, NOW)
    assert transitions(r, longer) == [Transition.EXTENDED]
    part = r.fulfil([Line("A", "s1", 1)], "f1")
    assert transitions(r, part) == [Transition.PARTLY_FULFILLED]
    assert transitions(part, part.fulfil(request_id="f2")) == [Transition.FULFILLED]
    assert transitions(r, r.release()) == [Transition.RELEASED]
    expired = r.expire(NOW + 10**6)
    assert expired is not None
    assert transitions(r, expired) == [Transition.EXPIRED]
    moved = r.transfer([Move("A", "s1", "s2", 1)], "m1")
    assert transitions(r, moved) == [Transition.MOVED]
    assert transitions(r, r) == []  # nothing a reader cares about
