"""A position's cost is bounded whatever the number of sources (issue 8, item 2.6).

A position keeps at most MAX_MARKS sources' marks itself; the others are spilled (written beside
it, read back when their source sends again). Random deliveries from many sources, re-deliveries,
"flushes" (what the group commit writes: the encoded position and its pending spills) and
reloads (decode the stored value, restore a needed mark from the stored spills, as the actor
does) must apply every (source_id, seq) exactly once, with a stored value of bounded size.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.domain.builders import mv
from unistock.server.domain import MovementType, Outcome, Position
from unistock.server.domain.position import MAX_MARKS
from unistock.server.persistence.codec import decode_position, encode_position

KEY = ("SKU-1", "STORE-1")


class Stored:
    """What Redis would hold: the position's value and the spilled-marks hash."""

    def __init__(self, p: Position) -> None:
        self.value = encode_position(p)
        self.spilled: dict[str, int] = {}

    def flush(self, p: Position) -> None:
        self.value = encode_position(p)
        written = dict(p.spill or {})
        for source, seq in written.items():
            self.spilled[source] = max(seq, self.spilled.get(source, 0))
        p.spilled_written(written)

    def load(self) -> Position:
        return decode_position(KEY, self.value)


def deliver(p: Position, stored: Stored, source: str, seq: int) -> Outcome:
    if p.needs_mark(source):
        p.restore_mark(source, stored.spilled.get(source, 0))
    return p.apply(mv(MovementType.RECEIPT, 1, seq=seq, source_id=source, key=KEY)).outcome


def test_a_thousand_sources_keep_the_stored_position_small() -> None:
    p = Position(KEY)
    stored = Stored(p)
    for i in range(1000):
        assert deliver(p, stored, f"src-{i:04d}", 1) is Outcome.APPLIED
        stored.flush(p)
    assert p.on_hand == 1000
    assert len(p.marks) == MAX_MARKS
    assert len(stored.value) < 1024
    assert len(stored.spilled) == 1000 - MAX_MARKS
    # Every one of them again, from a reloaded position: all duplicates.
    p = stored.load()
    for i in range(1000):
        assert deliver(p, stored, f"src-{i:04d}", 1) is Outcome.DUPLICATE
    assert p.on_hand == 1000


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("new"), st.integers(0, 39)),  # source's next movement
            st.tuples(st.just("again"), st.integers(0, 39)),  # re-delivery of an earlier one
            st.just(("flush",)),
            st.just(("reload",)),  # crash: only what was flushed survives
        ),
        max_size=150,
    )
)
def test_every_movement_applies_once_however_many_sources(steps: list[tuple]) -> None:  # type: ignore[type-arg]
    p = Position(KEY)
    stored = Stored(p)
    sent: dict[str, int] = {}  # source -> highest seq sent
    durable: set[tuple[str, int]] = set()  # applied and flushed
    applied: set[tuple[str, int]] = set()  # applied since the last flush too
    for step in steps:
        if step[0] == "flush":
            stored.flush(p)
            durable = set(applied)
        elif step[0] == "reload":
            p = stored.load()
            applied = set(durable)
        else:
            source = f"src-{step[1]}"
            if step[0] == "new" or source not in sent:
                sent[source] = sent.get(source, 0) + 1
            seq = sent[source]
            outcome = deliver(p, stored, source, seq)
            assert (outcome is Outcome.DUPLICATE) == ((source, seq) in applied)
            applied.add((source, seq))
        assert p.on_hand == len(applied)
        assert len(p.marks) <= MAX_MARKS
        assert len(stored.value) < 2048
