"""RFID count sessions: the count is true at its position in the agent's ordered stream.

Cases from domain.md, "Counts and the movements around them".
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unistock.edge.catalogue import Catalogue
from unistock.edge.counting import (
    CountCover,
    CountMarks,
    CountResult,
    CountSession,
    ReadOutcome,
    on_agent_clock,
    precedes_count,
)
from unistock.edge.epc import encode_sgtin96, gtin_check_digit

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
COMPANY_PREFIX = "0614141"

# Item references (indicator digit first) → SKU; UNLISTED_ITEM is a valid GTIN the catalogue lacks.
ITEMS = {"012345": "SKU-A", "054321": "SKU-B", "011111": "SKU-C"}
UNLISTED_ITEM = "099999"


def gtin14(item_reference: str) -> str:
    body = item_reference[0] + COMPANY_PREFIX + item_reference[1:]
    return body + str(gtin_check_digit(body))


CATALOGUE = Catalogue({gtin14(ir): sku for ir, sku in ITEMS.items()})
ITEM_OF = {sku: ir for ir, sku in ITEMS.items()}


def tag(sku: str, serial: int) -> str:
    """The EPC of unit ``serial`` of ``sku``."""
    return encode_sgtin96(1, COMPANY_PREFIX, ITEM_OF[sku], serial)


def session(
    scope: frozenset[str] | None = None, started_at: datetime = T0, count_id: str = "CNT-1"
) -> CountSession:
    return CountSession(count_id, "STORE-1", scope, started_at, catalogue=CATALOGUE)


A = frozenset({"SKU-A"})


def precedes(occurred: datetime, s: CountSession, sku: str = "SKU-A") -> bool:
    """Whether a late movement of ``sku`` at the session's location is marked with ``s``."""
    return precedes_count(occurred, s, sku=sku, location_id="STORE-1")


def quantities(results: list[CountResult]) -> dict[str, int]:
    return {r.sku: r.quantity for r in results}


# -- reads ------------------------------------------------------------------------------------


def test_a_tag_read_50_times_counts_once() -> None:
    s = session()
    outcomes = [s.read(tag("SKU-A", 1), "R1", 1 + i % 4, T0) for i in range(50)]
    s.read(tag("SKU-A", 2), "R2", 1, T0)
    assert outcomes[0] is ReadOutcome.COUNTED
    assert set(outcomes[1:]) == {ReadOutcome.DUPLICATE}
    assert s.stop() == [
        CountResult("SKU-A", 2, frozenset({tag("SKU-A", 1), tag("SKU-A", 2)})),
    ]
    assert s.total_reads == 51
    assert s.reads_by_antenna == {
        ("R1", 1): 13,
        ("R1", 2): 13,
        ("R1", 3): 12,
        ("R1", 4): 12,
        ("R2", 1): 1,
    }


def test_epc_case_does_not_make_a_second_unit() -> None:
    s = session()
    assert s.read(tag("SKU-A", 7).lower(), "R1", 1, T0) is ReadOutcome.COUNTED
    assert s.read(tag("SKU-A", 7), "R1", 1, T0) is ReadOutcome.DUPLICATE
    [result] = s.stop()
    assert result.distinct_epcs == {tag("SKU-A", 7)}  # stored upper-case


def test_scope_skus_without_reads_count_zero_and_other_skus_are_ignored() -> None:
    s = session(scope=frozenset({"SKU-A", "SKU-B", "SKU-Z"}))
    s.read(tag("SKU-A", 1), "R1", 1, T0)
    assert s.read(tag("SKU-C", 1), "R1", 1, T0) is ReadOutcome.OUT_OF_SCOPE
    assert s.read(tag("SKU-C", 1), "R1", 1, T0) is ReadOutcome.OUT_OF_SCOPE
    assert s.stop() == [
        CountResult("SKU-A", 1, frozenset({tag("SKU-A", 1)})),
        CountResult("SKU-B", 0, frozenset()),
        CountResult("SKU-Z", 0, frozenset()),  # in scope but not in the catalogue: still 0
    ]
    assert s.out_of_scope_reads == 2


def test_no_scope_counts_every_sku_seen_and_only_those() -> None:
    s = session(scope=None)
    s.read(tag("SKU-C", 1), "R1", 1, T0)
    s.read(tag("SKU-A", 1), "R1", 1, T0)
    s.read(tag("SKU-A", 2), "R1", 1, T0)
    assert quantities(s.stop()) == {"SKU-A": 2, "SKU-C": 1}
    assert [r.sku for r in s.stop()] == ["SKU-A", "SKU-C"]  # sorted


def test_empty_scope_gives_no_results() -> None:
    s = session(scope=frozenset())
    assert s.read(tag("SKU-A", 1), "R1", 1, T0) is ReadOutcome.OUT_OF_SCOPE
    assert s.stop() == []


@pytest.mark.parametrize(
    "epc",
    [
        "31" + tag("SKU-A", 1)[2:],  # SSCC-96 header
        tag("SKU-A", 1)[:-1],  # truncated
        "E28011606000020D4AB1C2D3",  # a TID, not an EPC
        "not hex at all, 24 char!",
    ],
)
def test_undecodable_reads_are_tallied_not_raised(epc: str) -> None:
    s = session(scope=frozenset({"SKU-A"}))
    assert s.read(epc, "R1", 1, T0) is ReadOutcome.BAD
    assert s.read(epc, "R1", 1, T0) is ReadOutcome.BAD
    s.read(tag("SKU-A", 1), "R1", 1, T0)
    assert quantities(s.stop()) == {"SKU-A": 1}
    assert s.bad_reads == 2
    assert s.unknown_reads == 0


def test_gtins_missing_from_the_catalogue_are_tallied_and_listed() -> None:
    s = session()
    unlisted = encode_sgtin96(1, COMPANY_PREFIX, UNLISTED_ITEM, 1)
    assert s.read(unlisted, "R1", 1, T0) is ReadOutcome.UNKNOWN
    assert s.read(unlisted, "R1", 1, T0) is ReadOutcome.UNKNOWN
    s.read(tag("SKU-B", 1), "R1", 1, T0)
    assert quantities(s.stop()) == {"SKU-B": 1}
    assert s.unknown_reads == 2
    assert s.unknown_gtins == {gtin14(UNLISTED_ITEM)}


# -- sales during the session -----------------------------------------------------------------


@pytest.mark.parametrize("when", ["read before sale", "read after sale", "never read"])
def test_sale_naming_the_epc_during_the_session_is_not_counted(when: str) -> None:
    s = session(scope=frozenset({"SKU-A"}))
    sold = tag("SKU-A", 1)
    s.read(tag("SKU-A", 2), "R1", 1, T0)
    if when == "read before sale":
        s.read(sold, "R1", 1, T0)
    s.sale_recorded("SKU-A", [sold.lower()])
    if when == "read after sale":
        s.read(sold, "R9", 1, T0)  # e.g. a reader near the till sees the bag on its way out
    assert s.stop() == [CountResult("SKU-A", 1, frozenset({tag("SKU-A", 2)}))]
    assert s.sales_without_epc == 0


def test_sale_without_epc_does_not_reduce_the_count() -> None:
    # Nothing says whether the sold unit was read before it left; the count is what was read
    # minus what provably left.
    s = session(scope=frozenset({"SKU-A"}))
    s.read(tag("SKU-A", 1), "R1", 1, T0)
    s.read(tag("SKU-A", 2), "R1", 1, T0)
    s.sale_recorded("SKU-A", [])
    assert quantities(s.stop()) == {"SKU-A": 2}
    assert s.sales_without_epc == 1


def test_sale_excludes_the_epc_whatever_sku_the_till_says() -> None:
    s = session()
    s.read(tag("SKU-A", 1), "R1", 1, T0)
    s.sale_recorded("SKU-B", [tag("SKU-A", 1)])
    assert s.stop() == [CountResult("SKU-A", 0, frozenset())]  # seen, then provably gone


def test_sale_with_several_epcs() -> None:
    s = session(scope=frozenset({"SKU-A", "SKU-B"}))
    for n in range(1, 6):
        s.read(tag("SKU-A", n), "R1", 1, T0)
        s.read(tag("SKU-B", n), "R1", 1, T0)
    s.sale_recorded("SKU-A", [tag("SKU-A", 1), tag("SKU-A", 2)])
    s.sale_recorded("SKU-B", (e for e in [tag("SKU-B", 5)]))
    assert quantities(s.stop()) == {"SKU-A": 3, "SKU-B": 4}


@given(
    shelf=st.sets(st.tuples(st.sampled_from(sorted(ITEM_OF)), st.integers(1, 40)), max_size=40),
    events=st.lists(
        st.tuples(st.sampled_from(["read", "sell"]), st.integers(0, 1000)), max_size=80
    ),
)
def test_count_equals_the_shelf_at_stop_when_every_sale_names_its_epc(
    shelf: set[tuple[str, int]], events: list[tuple[str, int]]
) -> None:
    """The domain promise: the count is true at its position in the stream (after the sales)."""
    on_shelf = {tag(sku, n) for sku, n in shelf}
    skus = {sku for sku, _ in shelf}
    s = session(scope=None)
    for action, pick in events:
        if not on_shelf:
            break
        epc = sorted(on_shelf)[pick % len(on_shelf)]
        if action == "read":
            s.read(epc, "R1", 1, T0)
        else:
            s.sale_recorded("?", [epc])
            on_shelf.discard(epc)
    for epc in sorted(on_shelf):  # the sweep finishes: every remaining tag is read at least once
        s.read(epc, "R2", 1, T0)
    results = s.stop()
    assert {r.sku for r in results} <= skus
    for r in results:
        assert r.quantity == len(r.distinct_epcs)
        assert r.distinct_epcs == {tag(sku, n) for sku, n in shelf if sku == r.sku} & on_shelf
    assert set().union(*(r.distinct_epcs for r in results)) == on_shelf


@given(
    reads=st.lists(st.tuples(st.sampled_from(sorted(ITEM_OF)), st.integers(1, 8)), max_size=40),
    sold=st.sets(st.tuples(st.sampled_from(sorted(ITEM_OF)), st.integers(1, 8)), max_size=8),
    rng=st.randoms(use_true_random=False),
)
def test_interleaving_of_reads_and_sales_does_not_matter(
    reads: list[tuple[str, int]], sold: set[tuple[str, int]], rng: random.Random
) -> None:
    events: list[tuple[str, tuple[str, int]]] = [("read", r) for r in reads] + [
        ("sell", u) for u in sold
    ]
    scope = frozenset({"SKU-A", "SKU-B"})
    expected = {
        sku: len({n for k, n in reads if k == sku} - {n for k, n in sold if k == sku})
        for sku in scope
    }
    for _ in range(3):
        rng.shuffle(events)
        s = session(scope=scope)
        for kind, (sku, n) in events:
            if kind == "read":
                s.read(tag(sku, n), "R1", 1, T0)
            else:
                s.sale_recorded(sku, [tag(sku, n)])
        assert quantities(s.stop()) == expected


# -- the same count sent twice ----------------------------------------------------------------


def test_stop_is_idempotent_and_late_input_changes_nothing() -> None:
    s = session(scope=frozenset({"SKU-A", "SKU-B"}))
    s.read(tag("SKU-A", 1), "R1", 1, T0)
    first = s.stop()
    assert s.stopped
    # Reader reports still in flight, and a sale that follows the COUNT in the stream.
    assert s.read(tag("SKU-A", 2), "R1", 1, T0) is ReadOutcome.LATE
    assert s.read(tag("SKU-B", 1), "R1", 1, T0) is ReadOutcome.LATE
    s.sale_recorded("SKU-A", [tag("SKU-A", 1)])
    second = s.stop()
    assert second == first
    assert second is not first  # callers may mutate their list without touching the session
    assert s.late_reads == 2
    # Resending the count emits the same count_id: that is what lets the server dedup it.
    assert {(s.count_id, r.sku, r.quantity) for r in first} == {
        (s.count_id, r.sku, r.quantity) for r in second
    }


# -- movements around the count (the till offline from the agent) ------------------------------


def test_till_offline_sale_before_the_count_arriving_after_it_is_marked() -> None:
    """The till sold a unit at 08:50, lost its link, and reconnects after the 09:00 count."""
    shelf_before = {tag("SKU-A", n) for n in range(1, 11)}  # server on_hand = 10
    sold_offline = tag("SKU-A", 3)
    sold_at = T0 - timedelta(minutes=10)
    s = session(scope=frozenset({"SKU-A"}))
    for epc in sorted(shelf_before - {sold_offline}):  # the unit already left: not read
        s.read(epc, "R1", 1, T0 + timedelta(minutes=5))

    # Arriving while the session is open, it would simply go into the stream before the COUNT.
    assert not precedes(sold_at, s)
    [result] = s.stop()
    assert result.quantity == 9
    # Arriving after the COUNT: the count already reflects it, so it carries the count_id.
    assert precedes(sold_at, s)

    # What the server then does with it (domain.md): on_hand is set by the count, the variance
    # is recorded, and the marked sale only corrects the variance.
    on_hand, variance = 10, 0
    on_hand, variance = result.quantity, result.quantity - on_hand
    assert (on_hand, variance) == (9, -1)  # looks like shrinkage…
    variance += 1  # …until the marked sale explains it, without touching on_hand
    assert (on_hand, variance) == (9, 0)


@pytest.mark.parametrize(
    ("occurred", "marked"),
    [
        (T0 - timedelta(days=1), True),
        (T0 - timedelta(microseconds=1), True),
        (T0, False),  # at the start: treated as during the session, applied on top
        (T0 + timedelta(minutes=1), False),
        (T0 + timedelta(hours=3), False),
    ],
)
def test_precedence_rule_compares_with_started_at_after_stop(
    occurred: datetime, marked: bool
) -> None:
    s = session(scope=A)
    s.stop()
    assert precedes(occurred, s) is marked


def test_precedence_compares_instants_across_time_zones() -> None:
    s = session(scope=A)
    s.stop()
    paris = timezone(timedelta(hours=1))
    assert precedes(datetime(2025, 3, 1, 9, 59, tzinfo=paris), s)  # 08:59 UTC
    assert not precedes(datetime(2025, 3, 1, 10, 0, tzinfo=paris), s)


# -- which count a late movement is marked with (domain invariant 7) ---------------------------


def test_a_count_covers_only_the_skus_it_emitted_a_count_for_at_its_location() -> None:
    sold_at = T0 - timedelta(minutes=10)
    scoped = session(scope=frozenset({"SKU-A", "SKU-B"}))
    scoped.read(tag("SKU-C", 1), "R1", 1, T0)  # read, but out of scope
    scoped.stop()
    assert [precedes(sold_at, scoped, sku) for sku in ("SKU-A", "SKU-B", "SKU-C")] == [
        True,
        True,
        False,
    ]
    assert not precedes_count(sold_at, scoped, sku="SKU-A", location_id="STORE-2")
    # "Every SKU seen": only the SKUs read, even if every tag read was then sold.
    seen = session()
    seen.read(tag("SKU-B", 1), "R1", 1, T0)
    seen.sale_recorded("SKU-B", [tag("SKU-B", 1)])
    assert quantities(seen.stop()) == {"SKU-B": 0}
    assert [precedes(sold_at, seen, sku) for sku in ("SKU-A", "SKU-B")] == [False, True]
    assert [(c.sku, c.count_id) for c in seen.covers()] == [("SKU-B", "CNT-1")]


def counts_ab_then_b(first_start: datetime, second_start: datetime) -> CountMarks:
    """CNT-AB (SKU-A and SKU-B) then CNT-B (SKU-B), in that stream order, at STORE-1."""
    ab = session(scope=frozenset({"SKU-A", "SKU-B"}), started_at=first_start, count_id="CNT-AB")
    b = session(scope=frozenset({"SKU-B"}), started_at=second_start, count_id="CNT-B")
    ab.stop()
    b.stop()
    return CountMarks([*ab.covers(), *b.covers()])


@pytest.mark.parametrize(
    ("sku", "minutes", "marked"),
    [
        ("SKU-A", -5, "CNT-AB"),  # before both: CNT-B did not count SKU-A
        ("SKU-B", -5, "CNT-B"),  # before both: the latest that covered SKU-B
        ("SKU-A", 30, ""),  # after CNT-AB: applies on top of it
        ("SKU-B", 30, "CNT-B"),  # between them: only CNT-B reflects it
        ("SKU-B", 90, ""),  # after both
        ("SKU-C", -5, ""),  # never counted
    ],
)
def test_a_late_movement_is_marked_with_the_latest_count_that_covered_it_if_before_it(
    sku: str, minutes: int, marked: str
) -> None:
    marks = counts_ab_then_b(T0, T0 + timedelta(hours=1))
    assert marks.mark(sku, "STORE-1", T0 + timedelta(minutes=minutes)) == marked
    assert marks.mark(sku, "STORE-2", T0 + timedelta(minutes=minutes)) == ""


def test_overlapping_counts_a_sale_after_the_second_to_start_and_before_the_first() -> None:
    """CNT-AB is emitted first but started later than CNT-B (overlapping counts). A sale of
    SKU-B between the two starts happened before CNT-AB, but on_hand rests on CNT-B, which
    started before the sale (its unit was on the shelf): it applies on top, unmarked."""
    marks = counts_ab_then_b(T0 + timedelta(hours=1), T0)
    assert marks.mark("SKU-B", "STORE-1", T0 + timedelta(minutes=30)) == ""
    assert marks.mark("SKU-B", "STORE-1", T0 - timedelta(minutes=30)) == "CNT-B"
    assert marks.mark("SKU-A", "STORE-1", T0 + timedelta(minutes=30)) == "CNT-AB"


def test_count_marks_keep_the_latest_counts_of_each_position_whatever_else_is_counted() -> None:
    def cover(sku: str, n: int) -> CountCover:
        return CountCover("STORE-1", sku, f"CNT-{sku}-{n}", T0 + timedelta(hours=n))

    marks = CountMarks([cover("SKU-A", 0)], keep=2)
    assert marks.add([cover("SKU-B", n) for n in range(1, 40)]) != []
    assert marks.mark("SKU-A", "STORE-1", T0 - timedelta(seconds=1)) == "CNT-SKU-A-0"
    assert [c.count_id for c in marks if c.sku == "SKU-B"] == ["CNT-SKU-B-38", "CNT-SKU-B-39"]
    # The same COUNT sent again (a device resending it) stands from when it was first counted.
    again = CountCover("STORE-1", "SKU-A", "CNT-SKU-A-0", T0 + timedelta(days=1))
    assert marks.add([again]) == []
    assert marks.mark("SKU-A", "STORE-1", T0 + timedelta(minutes=1)) == ""
    with pytest.raises(ValueError, match="timezone-aware"):
        marks.mark("SKU-A", "STORE-1", datetime(2025, 3, 1, 8, 0))


# -- a till whose clock is off: its times are put on the agent's clock --------------------------

SLOW, FAST = timedelta(hours=-2), timedelta(hours=2)


@pytest.mark.parametrize("skew", [SLOW, FAST, timedelta(0)])
def test_till_times_on_the_agent_clock_keep_their_distance_in_the_past(skew: timedelta) -> None:
    """A sale 10 min before the count, sent 30 min later: 10 min before the count, whatever the
    till's clock says, as long as the till says when it sent it."""
    stopped_at = T0 + timedelta(minutes=20)  # when the agent received it (its clock)
    sold = T0 - timedelta(minutes=10)
    occurred = on_agent_clock(sold + skew, stopped_at, sent_at=stopped_at + skew)
    assert occurred == sold
    s = session(scope=A)
    s.stop()
    assert precedes(occurred, s)


@pytest.mark.parametrize("skew", [SLOW, FAST])
def test_live_sale_after_the_count_from_a_skewed_till_applies_on_top(skew: timedelta) -> None:
    s = session(scope=A)  # started at T0
    s.stop()
    now = T0 + timedelta(minutes=30)  # the till sells and sends at once, after the count
    occurred = on_agent_clock(now + skew, now, sent_at=now + skew)
    assert occurred == now
    assert not precedes(occurred, s)
    # Without sent_at the till's clock is trusted: 2 h slow, its sale after the count looks as if
    # it happened before it (the agent cannot tell it from a till that was offline) — why tills
    # with a clock they cannot keep synchronised must send sent_at. 2 h fast is bounded by the
    # agent's receive time, which is after the count.
    assert precedes(on_agent_clock(now + skew, now), s) is (skew == SLOW)


def test_till_time_is_never_after_the_agent_received_it() -> None:
    received = T0
    assert on_agent_clock(T0 + FAST, received) == received
    assert on_agent_clock(T0 - timedelta(seconds=5), received) == T0 - timedelta(seconds=5)
    # A till whose clock jumped between the sale and the send cannot push it into the future.
    assert on_agent_clock(T0, received, sent_at=T0 - timedelta(minutes=1)) == received


def test_on_agent_clock_rejects_naive_times() -> None:
    naive = datetime(2025, 3, 1, 9, 0)
    with pytest.raises(ValueError, match="occurred_at"):
        on_agent_clock(naive, T0)
    with pytest.raises(ValueError, match="sent_at"):
        on_agent_clock(T0, T0, sent_at=naive)


@pytest.mark.parametrize("skew", [timedelta(hours=-2), timedelta(hours=2)])
def test_clock_off_by_two_hours_changes_nothing(skew: timedelta) -> None:
    def run(
        agent_clock_offset: timedelta, reader_offset: timedelta
    ) -> tuple[list[CountResult], list[bool]]:
        start = T0 + agent_clock_offset
        s = session(scope=frozenset({"SKU-A", "SKU-B"}), started_at=start)
        for n in range(1, 6):
            # Reader timestamps may lie before the session start or hours after it: ignored.
            s.read(tag("SKU-A", n), "R1", 1, start + reader_offset + timedelta(seconds=n))
        s.sale_recorded("SKU-A", [tag("SKU-A", 2)])
        s.sale_recorded("SKU-A", [])
        results = s.stop()
        # Till movements stamped by the same (skewed) agent clock.
        marks = [precedes(start + timedelta(minutes=m), s) for m in (-30, -1, 0, 1, 30)]
        return results, marks

    baseline = run(timedelta(0), timedelta(0))
    assert run(skew, timedelta(0)) == baseline  # the whole agent clock is off
    assert run(timedelta(0), skew) == baseline  # only the readers' clocks are off
    assert quantities(baseline[0]) == {"SKU-A": 4, "SKU-B": 0}
    assert baseline[1] == [True, True, False, False, False]


# -- construction -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("count_id", "location_id", "started_at", "problem"),
    [
        ("", "STORE-1", T0, "count_id"),
        ("CNT-1", "", T0, "location_id"),
        ("CNT-1", "STORE-1", datetime(2025, 3, 1, 9, 0), "timezone-aware"),
    ],
)
def test_rejects_bad_construction(
    count_id: str, location_id: str, started_at: datetime, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        CountSession(count_id, location_id, None, started_at, catalogue=CATALOGUE)


def test_precedes_count_rejects_naive_times() -> None:
    s = session(scope=A)
    s.stop()
    with pytest.raises(ValueError, match="timezone-aware"):
        precedes(datetime(2025, 3, 1, 8, 0), s)


def test_session_keeps_its_identity_for_the_count_movements() -> None:
    s = session(scope=frozenset({"SKU-A"}), count_id="CNT-42")
    assert (s.count_id, s.location_id, s.started_at) == ("CNT-42", "STORE-1", T0)
    assert not s.stopped
    t = T0 + timedelta(seconds=3)
    s.read(tag("SKU-A", 1), "R1", 1, t)
    assert s.last_read_at == t
