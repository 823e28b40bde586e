"""The agent's count store: count sessions survive a new store object on the same file."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.edge.test_counting import CATALOGUE, T0, precedes, tag
from unistock.edge.counting import (
    KEEP_PER_POSITION,
    CountCover,
    CountMarks,
    CountSession,
    ReadOutcome,
)
from unistock.edge.countstore import KEEP_STOPPED, CountStore, StoredSession


def fed(store: CountStore, key: int, session: CountSession, epcs: list[str]) -> None:
    """Reads into the session and, as the agent does, its counted EPCs into the store."""
    for e in epcs:
        if session.read(e, "r1", 1, T0) is ReadOutcome.COUNTED:
            sku = session.counted_sku(e)
            assert sku is not None
            store.counted(key, e, sku)


def only(store: CountStore) -> StoredSession:
    [stored] = store.load()
    return stored


def test_a_session_with_counted_and_sold_epcs_is_restored_equal(tmp_path: Path) -> None:
    path = tmp_path / "counts.sqlite"
    started = datetime(2025, 3, 1, 9, 0, 0, 123456, tzinfo=UTC)
    store = CountStore(path)
    scope = frozenset({"SKU-A", "SKU-B", "SKU-C"})
    key = store.start("CNT-1", "STORE-1", scope, started)
    original = CountSession("CNT-1", "STORE-1", scope, started, catalogue=CATALOGUE)
    on_shelf = [tag("SKU-A", s) for s in range(1, 6)] + [tag("SKU-B", 1), tag("SKU-B", 2)]
    fed(store, key, original, on_shelf * 3)  # every tag three times: counted once
    for sold in ([tag("SKU-A", 1).lower()], [tag("SKU-B", 9)], []):  # read, never read, none
        original.sale_recorded("SKU-A", sold)
        store.sale([key], sold)
    assert store.flush() == 7
    store.close()

    stored = only(CountStore(path))
    assert (stored.key, stored.count_id, stored.location_id) == (key, "CNT-1", "STORE-1")
    assert (stored.scope_skus, stored.started_at, stored.stopped) == (scope, started, False)
    assert len(stored.counted) == 7
    assert stored.sold == {tag("SKU-A", 1), tag("SKU-B", 9)}
    restored = stored.session(CATALOGUE)
    assert restored.sales_without_epc == original.sales_without_epc == 1
    # Reads after the restart: a tag already counted stays a duplicate, a new one counts.
    assert restored.read(tag("SKU-A", 2), "r1", 1, T0) is ReadOutcome.DUPLICATE
    assert original.read(tag("SKU-A", 2), "r1", 1, T0) is ReadOutcome.DUPLICATE
    assert restored.stop() == original.stop()
    assert {r.sku: r.quantity for r in restored.stop()} == {"SKU-A": 4, "SKU-B": 2, "SKU-C": 0}


def test_reads_not_flushed_are_not_on_disk(tmp_path: Path) -> None:
    """The documented loss window: counted EPCs are buffered until the next flush."""
    store = CountStore(tmp_path / "counts.sqlite")
    key = store.start("CNT-1", "STORE-1", None, T0)
    session = CountSession("CNT-1", "STORE-1", None, T0, catalogue=CATALOGUE)
    fed(store, key, session, [tag("SKU-A", 1)])
    assert only(CountStore(tmp_path / "counts.sqlite")).counted == {}
    store.flush()
    assert only(CountStore(tmp_path / "counts.sqlite")).counted == {tag("SKU-A", 1): "SKU-A"}


def test_starting_a_count_id_again_replaces_it_and_drops_the_old_buffered_reads(
    tmp_path: Path,
) -> None:
    store = CountStore(tmp_path / "counts.sqlite")
    old = store.start("CNT-1", "STORE-1", None, T0)
    store.counted(old, tag("SKU-A", 1), "SKU-A")
    store.flush()
    store.sale([old], [])
    store.counted(old, tag("SKU-A", 2), "SKU-A")  # still buffered when the count restarts
    new = store.start("CNT-1", "STORE-1", frozenset({"SKU-B"}), T0 + timedelta(minutes=1))
    store.counted(new, tag("SKU-B", 1), "SKU-B")
    assert store.flush() == 2
    stored = only(store)
    assert stored.key == new != old
    assert stored.counted == {tag("SKU-B", 1): "SKU-B"}
    assert (stored.sales_without_epc, stored.scope_skus) == (0, frozenset({"SKU-B"}))


def test_stopped_sessions_are_kept_and_pruned_beyond_the_last_16(
    tmp_path: Path,
) -> None:
    path = tmp_path / "counts.sqlite"
    store = CountStore(path)
    running = store.start("RUN", "STORE-1", None, T0)
    for n in range(KEEP_STOPPED + 4):
        key = store.start(f"CNT-{n}", "STORE-1", None, T0 + timedelta(hours=n))
        store.counted(key, tag("SKU-A", n), "SKU-A")
        store.sale([key, running], [tag("SKU-C", n)])
        store.flush()
        store.stopped(key, 1000.0 + n)
    store.close()

    loaded = CountStore(path).load()
    assert [s.count_id for s in loaded] == ["RUN"] + [f"CNT-{n}" for n in range(4, 20)]
    assert [s.stopped for s in loaded] == [False] + [True] * KEEP_STOPPED
    assert len(loaded[0].sold) == KEEP_STOPPED + 4  # the running session keeps all its sales
    latest = loaded[-1].session(CATALOGUE)
    assert latest.stopped
    assert latest.stop() == CountSession.restore(
        "CNT-19", "STORE-1", None, T0, catalogue=CATALOGUE, counted={tag("SKU-A", 19): "SKU-A"},
        sold=[tag("SKU-C", 19)], stopped=True,
    ).stop()  # fmt: skip
    assert precedes(T0 + timedelta(hours=19) - timedelta(seconds=1), latest)
    assert not precedes(T0 + timedelta(hours=19), latest)
    with sqlite3.connect(path) as db:  # the pruned sessions' EPCs are gone with them
        assert db.execute("SELECT count(*) FROM count_epc").fetchone() == (KEEP_STOPPED,)
        assert db.execute("SELECT count(*) FROM count_sold").fetchone() == (2 * KEEP_STOPPED + 4,)


def stopped_session(
    store: CountStore, count_id: str, scope: frozenset[str] | None, epcs: list[str], hour: int
) -> CountSession:
    """A session started at T0 + ``hour``, fed ``epcs``, stopped as the agent stops one."""
    started = T0 + timedelta(hours=hour)
    key = store.start(count_id, "STORE-1", scope, started)
    session = CountSession(count_id, "STORE-1", scope, started, catalogue=CATALOGUE)
    fed(store, key, session, epcs)
    session.stop()
    store.stopping(key, 1000.0 + hour, session.covers())
    store.stopped(key, 1000.0 + hour)
    return session


def test_what_each_count_covered_survives_a_restart_and_other_skus_counts(
    tmp_path: Path,
) -> None:
    """A count of SKU-A, then more counts of SKU-B than KEEP_STOPPED sessions: the file still
    says SKU-A was counted by CNT-A (marking a late sale of SKU-A with it), and keeps the last
    KEEP_PER_POSITION counts of SKU-B only."""
    path = tmp_path / "counts.sqlite"
    store = CountStore(path)
    stopped_session(store, "CNT-A", frozenset({"SKU-A"}), [tag("SKU-A", 1)], 0)
    for n in range(1, KEEP_STOPPED + 3):
        stopped_session(store, f"CNT-B{n}", None, [tag("SKU-B", n)], n)  # every SKU seen: B
    # A COUNT a device sent itself covers its position too.
    store.cover([CountCover("STORE-2", "SKU-A", "HH-1", T0)])
    store.close()

    reopened = CountStore(path)
    marks = CountMarks(reopened.covers())
    before = T0 - timedelta(minutes=1)
    assert marks.mark("SKU-A", "STORE-1", before) == "CNT-A"
    assert marks.mark("SKU-A", "STORE-2", before) == "HH-1"
    assert marks.mark("SKU-C", "STORE-1", before) == ""  # never counted
    last = KEEP_STOPPED + 2
    assert marks.mark("SKU-B", "STORE-1", before) == f"CNT-B{last}"
    assert marks.mark("SKU-B", "STORE-1", T0 + timedelta(hours=last - 1, minutes=1)) == (
        f"CNT-B{last}"
    )
    assert marks.mark("SKU-B", "STORE-1", T0 + timedelta(hours=last)) == ""
    kept_b = [c.count_id for c in reopened.covers() if c.sku == "SKU-B"]
    assert kept_b == [f"CNT-B{n}" for n in range(last - KEEP_PER_POSITION + 1, last + 1)]
    assert len(reopened.load()) == KEEP_STOPPED  # the sessions are pruned on their own


def test_a_file_from_before_count_cover_gets_it_from_its_stopped_sessions(
    tmp_path: Path,
) -> None:
    """An agent updated over a count store without count_cover: each stopped session covered
    its scope, or (every SKU seen) the SKUs of its counted EPCs; a running one covers nothing."""
    path = tmp_path / "counts.sqlite"
    store = CountStore(path)
    stopped_session(store, "CNT-1", frozenset({"SKU-A", "SKU-C"}), [tag("SKU-A", 1)], 0)
    stopped_session(store, "CNT-2", None, [tag("SKU-B", 1), tag("SKU-B", 2)], 1)
    running = store.start("CNT-3", "STORE-1", frozenset({"SKU-A"}), T0 + timedelta(hours=2))
    store.counted(running, tag("SKU-A", 2), "SKU-A")
    store.close()
    with sqlite3.connect(path) as db:  # what the file looked like before count_cover
        db.execute("DROP TABLE count_cover")
        db.execute("PRAGMA user_version = 0")

    migrated = CountStore(path).covers()
    assert [(c.count_id, c.sku, c.location_id, c.started_at) for c in migrated] == [
        ("CNT-1", "SKU-A", "STORE-1", T0),
        ("CNT-1", "SKU-C", "STORE-1", T0),
        ("CNT-2", "SKU-B", "STORE-1", T0 + timedelta(hours=1)),
    ]
    assert CountStore(path).covers() == migrated  # once only
