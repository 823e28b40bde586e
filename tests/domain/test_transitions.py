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


def test_expiring_soon_once_per_expiry() -> None:
    """warn: only an ACTIVE record whose expiry is in (now, now + within] and not yet warned
    for it; an extension makes it eligible again."""
    r, _ = made()  # expires at NOW + 3600
    assert r.warn(NOW, 3599) is None  # not within the window yet
    warned = r.warn(NOW, 3600)
    assert warned is not None
    assert (warned.warned_expires_at, warned.revision) == (NOW + 3600, r.revision + 1)
    assert transitions(r, warned) == [Transition.EXPIRING_SOON]
    assert warned.warn(NOW + 10, 3600) is None  # once per expiry
    assert warned.warn(NOW + 3600, 900) is None  # due: expired, not warned
    assert r.release().warn(NOW, 3600) is None  # not ACTIVE
    longer = warned.extend(NOW + 7200, NOW)
    assert transitions(warned, longer) == [Transition.EXTENDED]  # no warning with it
    assert longer.warn(NOW, 3600) is None
    again = longer.warn(NOW + 3600, 3600)
    assert again is not None
    assert transitions(longer, again) == [Transition.EXPIRING_SOON]
    expired = again.expire(NOW + 7200)
    assert expired is not None
    assert transitions(again, expired) == [Transition.EXPIRED]
    no_expiry = ReserveRequest.build("r2", [Line("A", "s1", 1)], ReservationKind.ORDER)
    _, positions = made()
    assert reserve(no_expiry, positions, NOW).warn(NOW, 10**9) is None
