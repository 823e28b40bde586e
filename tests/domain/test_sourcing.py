"""Sourcing rules (domain.sourcing), pure: ranking and splits."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from unistock.server.domain.sourcing import Candidate, Table, rank, split


def test_the_last_unit_of_a_store_is_the_last_choice_at_equal_distance() -> None:
    stock = {("A", "deep"): 9, ("A", "last"): 1, ("A", "mid"): 4}
    candidates = [Candidate(loc, 2.0) for loc in ("last", "deep", "mid")]
    ranked = rank([("A", 1)], candidates, lambda s, loc: stock.get((s, loc), 0))
    assert [o.location_id for o in ranked] == ["deep", "mid", "last"]
    assert [o.depth for o in ranked] == [8, 3, 0]


def test_covering_every_line_beats_distance() -> None:
    stock = {("A", "near"): 1, ("A", "far"): 1, ("B", "far"): 1}
    ranked = rank(
        [("A", 1), ("B", 1)],
        [Candidate("near", 1.0), Candidate("far", 50.0)],
        lambda s, loc: stock.get((s, loc), 0),
    )
    assert [(o.location_id, o.covers_all) for o in ranked] == [("far", True), ("near", False)]


lines_st = st.dictionaries(st.sampled_from("ABC"), st.integers(1, 5), min_size=1).map(
    lambda d: sorted(d.items())
)
stock_st = st.dictionaries(
    st.tuples(st.sampled_from("ABC"), st.sampled_from(["l1", "l2", "l3", "l4"])),
    st.integers(0, 5),
)
candidates_st = st.lists(
    st.builds(
        Candidate,
        st.sampled_from(["l1", "l2", "l3", "l4"]),
        st.one_of(st.none(), st.floats(0, 100)),
    ),
    unique_by=lambda c: c.location_id,
)


@given(lines_st, stock_st, candidates_st)
def test_ranking_and_split_properties(
    lines: list[tuple[str, int]], stock: dict[tuple[str, str], int], candidates: list[Candidate]
) -> None:
    def available(sku: str, loc: str) -> int:
        return stock.get((sku, loc), 0)

    ranked = rank(lines, candidates, available)
    # Every location that has any unit of the order is offered, once, with what it has.
    assert {o.location_id for o in ranked} == {
        c.location_id for c in candidates if any(available(s, c.location_id) for s, _ in lines)
    }
    covering = [o.covers_all for o in ranked]
    assert covering == sorted(covering, reverse=True)  # those covering everything first
    for o in ranked:
        assert o.covers_all == all(available(s, o.location_id) >= q for s, q in lines)
        assert all(0 < n <= dict(lines)[s] for s, n in o.lines)
    plan, covered = split(lines, ranked)
    got: dict[str, int] = {}
    for o in plan:
        for s, n in o.lines:
            got[s] = got.get(s, 0) + n
            assert n <= available(s, o.location_id)
    assert all(got.get(s, 0) <= q for s, q in lines)  # never more than wanted
    union = {s: sum(available(s, c.location_id) for c in candidates) for s, _ in lines}
    assert covered == all(union[s] >= q for s, q in lines)  # covers whenever together they can
    assert len({o.location_id for o in plan}) == len(plan)


LOCS = ["l1", "l2", "l3", "l4", "l5"]
stale_candidates_st = st.lists(
    st.builds(
        Candidate,
        st.sampled_from(LOCS),
        st.one_of(st.none(), st.sampled_from([0.0, 1.5, 7.0]), st.floats(0, 100)),
        st.booleans(),
    ),
    unique_by=lambda c: c.location_id,
)


@given(
    lines_st,
    st.dictionaries(st.tuples(st.sampled_from("ABC"), st.sampled_from(LOCS)), st.integers(0, 5)),
    stale_candidates_st,
    st.one_of(st.none(), st.integers(1, 6)),
)
def test_the_table_ranks_as_rank_does(
    lines: list[tuple[str, int]],
    stock: dict[tuple[str, str], int],
    candidates: list[Candidate],
    limit: int | None,
) -> None:
    """FindStock's arrays (every location a column, the non-candidates with no units) give
    the same options, in the same order, as `rank` over the candidates."""
    by_id = {c.location_id: c for c in candidates}
    units = np.array(
        [[stock.get((s, loc), 0) if loc in by_id else 0 for loc in LOCS] for s, _ in lines],
        dtype=np.int64,
    )
    distance = np.array(
        [np.nan if (c := by_id.get(loc)) is None or c.distance_km is None else c.distance_km
         for loc in LOCS],
        dtype=np.float64,
    )  # fmt: skip
    stale = np.array([loc in by_id and by_id[loc].stale for loc in LOCS], dtype=np.bool_)
    table = Table(lines, LOCS, units, distance, stale)

    def available(sku: str, loc: str) -> int:
        return stock.get((sku, loc), 0)

    assert table.ranked(limit) == rank(lines, candidates, available, limit)
    assert table.any_covers() == any(o.covers_all for o in rank(lines, candidates, available))
