"""The edge agent's durable outbox: seq assignment, acks, rejections and crash safety."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from unistock.edge.outbox import (
    SCHEMA_VERSION,
    Outbox,
    OutboxError,
    RequestConflict,
    _fingerprint,
)
from unistock.v1 import inventory_pb2 as pb

SOURCE = "edge-store-042"


def sale(sku: str, quantity: int = 1) -> pb.Movement:
    """A till sale at store 042 (seq and source_id are the outbox's to set)."""
    movement = pb.Movement(sku=sku, location_id="store-042", type=pb.SALE, quantity=quantity)
    movement.occurred_at.GetCurrentTime()
    return movement


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "outbox.db", SOURCE)


def test_append_assigns_increasing_seqs_and_stamps_the_movements(outbox: Outbox) -> None:
    first = [sale("A"), sale("B")]
    assert outbox.append(first) == [1, 2]
    assert outbox.append([sale("C")]) == [3]
    assert outbox.append([]) == []
    # Updated in place so that the caller knows each movement's seq.
    assert [(m.source_id, m.seq) for m in first] == [(SOURCE, 1), (SOURCE, 2)]
    pending = outbox.pending()
    assert [(m.seq, m.sku, m.source_id) for m in pending] == [
        (1, "A", SOURCE),
        (2, "B", SOURCE),
        (3, "C", SOURCE),
    ]
    assert pending[0].occurred_at == first[0].occurred_at
    assert [m.seq for m in outbox.pending(after_seq=1, limit=1)] == [2]
    assert outbox.depth() == 3
    assert outbox.next_seq == 4


def test_an_incarnation_is_kept_in_the_file_and_a_new_file_gets_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    first = Outbox(path, "agent-s1", incarnation=True)
    source = first.source_id
    assert source.startswith("agent-s1.")
    assert len(source) == len("agent-s1.") + 8
    first.append([pb.Movement(sku="A", type=pb.SALE, quantity=1, location_id="s1")])
    first.close()
    reopened = Outbox(path, "agent-s1", incarnation=True)  # restart, or a restored backup
    assert reopened.source_id == source
    [m] = reopened.pending()
    assert (m.source_id, m.seq) == (source, 1)
    reopened.close()
    path.unlink()  # the file is lost: a new one must not reuse the server's seqs of the old one
    fresh = Outbox(path, "agent-s1", incarnation=True)
    assert fresh.source_id.startswith("agent-s1.")
    assert fresh.source_id != source
    fresh.close()
    with pytest.raises(OutboxError):
        Outbox(path, "agent-s2", incarnation=True)


def test_a_file_without_an_incarnation_keeps_its_plain_source(tmp_path: Path) -> None:
    Outbox(tmp_path / "o.sqlite", "agent-s1").close()  # made before incarnations existed
    assert Outbox(tmp_path / "o.sqlite", "agent-s1", incarnation=True).source_id == "agent-s1"


def test_ack_removes_everything_at_or_below_and_is_idempotent(outbox: Outbox) -> None:
    outbox.append([sale(f"S{i}") for i in range(10)])
    assert outbox.ack(4) == 4
    assert outbox.last_acked == 4
    assert [m.seq for m in outbox.pending()] == [5, 6, 7, 8, 9, 10]
    assert outbox.ack(4) == 0  # a redelivered ack
    assert outbox.ack(2) == 0  # a stale one never moves last_acked back
    assert outbox.last_acked == 4
    assert outbox.settled_through() == 4


def test_seqs_are_never_reused_after_the_outbox_drains_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, SOURCE) as outbox:
        outbox.append([sale("A"), sale("B"), sale("C")])
        outbox.ack(3)
        assert outbox.depth() == 0
    with Outbox(path, SOURCE) as reopened:
        assert reopened.last_acked == 3
        assert reopened.append([sale("D")]) == [4]
        assert reopened.settled_through() == 3


def test_reject_keeps_the_movement_for_the_back_office(outbox: Outbox) -> None:
    outbox.append([sale(f"S{i}") for i in range(5)])
    assert outbox.reject(2, pb.INVALID_FIELD, "movements[0].sku: empty") is True
    assert outbox.reject(2, pb.INVALID_FIELD, "again") is False  # rejections are final, once
    assert [m.seq for m in outbox.pending()] == [1, 3, 4, 5]
    (rejected,) = outbox.rejected()
    assert rejected.seq == 2
    assert rejected.reason == pb.INVALID_FIELD
    assert rejected.reason_name == "INVALID_FIELD"
    assert rejected.detail == "movements[0].sku: empty"
    assert rejected.movement is not None
    assert rejected.movement.sku == "S1"
    assert outbox.is_rejected(2)
    assert not outbox.is_rejected(3)
    assert outbox.settled_through() == 0  # seq 1 still pending


def test_an_ack_that_covers_its_own_rejections_keeps_their_payloads(outbox: Outbox) -> None:
    # A MovementAck's seq covers the movements it rejects: the rejections must be recorded
    # before the ack deletes the rows.
    outbox.append([sale(f"S{i}") for i in range(6)])
    removed = outbox.settle(5, [(3, pb.BAD_QUANTITY, "quantity"), (5, pb.WRONG_STORE, "loc")])
    assert removed == 5
    assert [(r.seq, r.reason, r.movement is not None) for r in outbox.rejected()] == [
        (3, pb.BAD_QUANTITY, True),
        (5, pb.WRONG_STORE, True),
    ]
    assert [m.seq for m in outbox.pending()] == [6]
    assert outbox.last_acked == 5
    # A rejection of a seq acknowledged earlier is not invented into the back-office list.
    outbox.settle(None, [(1, pb.INVALID_FIELD, "late")])
    assert [r.seq for r in outbox.rejected()] == [3, 5]


def test_a_rejection_past_last_acked_moves_settled_through(outbox: Outbox) -> None:
    outbox.append([sale("A"), sale("B"), sale("C")])
    outbox.ack(1)
    outbox.reject(2, pb.INVALID_FIELD)
    assert outbox.settled_through() == 2
    outbox.reject(3, pb.INVALID_FIELD)
    assert outbox.settled_through() == 3
    assert outbox.depth() == 0


def test_an_ack_beyond_the_assigned_seqs_moves_next_seq_above_it(outbox: Outbox) -> None:
    # The server knows seqs up to 100 for this source (the outbox file was lost and recreated):
    # new movements numbered 2.. would be dropped as duplicates, so numbering jumps past 100.
    outbox.append([sale("A")])
    outbox.ack(100)
    assert outbox.append([sale("B")]) == [101]


def test_depth_and_oldest_unacked_age(outbox: Outbox) -> None:
    assert outbox.depth() == 0
    assert outbox.oldest_unacked_age() is None
    before = time.time()
    outbox.append([sale("A"), sale("B")])
    age = outbox.oldest_unacked_age(now=before + 30)
    assert age is not None
    assert 29 <= age <= 30.5
    outbox.ack(2)
    assert outbox.oldest_unacked_age() is None


def test_an_outbox_file_belongs_to_one_source(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path, SOURCE).close()
    with pytest.raises(OutboxError):
        Outbox(path, "another-source")
    with pytest.raises(ValueError, match="source_id"):
        Outbox(tmp_path / "other.db", "")


def test_every_connection_runs_wal_and_synchronous_full(outbox: Outbox) -> None:
    # Several pooled connections (one per thread): each one must carry the pragmas.
    connections = [outbox._engine.connect() for _ in range(3)]
    try:
        for conn in connections:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    finally:
        for conn in connections:
            conn.close()


def test_schema(outbox: Outbox) -> None:
    engine = create_engine(f"sqlite:///{outbox.path}")
    try:
        with engine.connect() as conn:
            columns = {row[1] for row in conn.execute(text("PRAGMA table_info(movement)"))}
            meta = conn.execute(text("SELECT source_id, next_seq, last_acked FROM meta")).one()
    finally:
        engine.dispose()
    assert {"seq", "payload", "occurred_at", "state"} <= columns
    assert tuple(meta) == (SOURCE, 1, 0)


def test_append_50k_in_one_transaction(outbox: Outbox) -> None:
    movements = [sale(f"SKU-{i % 997}") for i in range(50_000)]
    started = time.perf_counter()
    seqs = outbox.append(movements)
    elapsed = time.perf_counter() - started
    # Measured, not asserted: disks differ. Shown with `pytest -s` / in the report.
    print(f"\nappend of 50,000 movements: {elapsed:.3f} s ({50_000 / elapsed:,.0f}/s)")
    assert seqs == list(range(1, 50_001))
    assert outbox.depth() == 50_000
    assert [m.seq for m in outbox.pending(after_seq=49_998)] == [49_999, 50_000]


# The child appends batches forever and reports each committed append (and ack) on stdout;
# the parent SIGKILLs it at an arbitrary moment. sku == f"K{seq}" lets the parent check each
# stored payload against its seq.
_CHILD = textwrap.dedent(
    """
    import sys
    from unistock.edge.outbox import Outbox
    from unistock.v1 import inventory_pb2 as pb

    outbox = Outbox(sys.argv[1], sys.argv[2])
    batch = 0
    while True:
        base = outbox.next_seq
        movements = [
            pb.Movement(sku=f"K{base + i}", location_id="store-042", type=pb.SALE, quantity=1)
            for i in range(50)
        ]
        seqs = outbox.append(movements)
        print(f"appended {seqs[0]} {seqs[-1]}", flush=True)
        batch += 1
        if batch % 7 == 0:
            outbox.ack(seqs[-1] - 120)
            print(f"acked {seqs[-1] - 120}", flush=True)
    """
)


@pytest.mark.slow
def test_kill_9_between_append_and_ack_loses_nothing_and_reuses_no_seq(tmp_path: Path) -> None:
    cycles = 4
    path = tmp_path / "outbox.db"
    reported_max = 0
    reported_acked = 0
    for cycle in range(cycles):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path), SOURCE],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        appended_lines = 0
        # Kill at a different point in each cycle, while the child keeps appending.
        target = 20 + 9 * cycle
        try:
            for line in child.stdout:
                kind, *numbers = line.split()
                if kind == "appended":
                    first, last = int(numbers[0]), int(numbers[1])
                    assert first > reported_max, "a seq was assigned twice"
                    reported_max = last
                    appended_lines += 1
                else:
                    reported_acked = int(numbers[0])
                if appended_lines >= target:
                    os.kill(child.pid, signal.SIGKILL)
                    break
        finally:
            child.kill()
            child.wait()
            child.stdout.close()
        assert child.returncode == -signal.SIGKILL

        with Outbox(path, SOURCE) as outbox:
            assert outbox.last_acked >= reported_acked
            pending = outbox.pending(limit=1_000_000)
            seqs = [m.seq for m in pending]
            # Every reported append is there (or was acknowledged), nothing in between is
            # missing, and each payload is the one appended under that seq.
            assert seqs == list(range(outbox.last_acked + 1, outbox.last_acked + 1 + len(seqs)))
            assert (seqs[-1] if seqs else outbox.last_acked) >= reported_max
            assert all(m.sku == f"K{m.seq}" and m.source_id == SOURCE for m in pending)
            high = seqs[-1] if seqs else outbox.last_acked
            assert outbox.next_seq == high + 1
            # A commit the child did not get to report still counts as used.
            reported_max = high
            assert outbox.append([sale(f"K{high + 1}")]) == [high + 1]
            reported_max = high + 1


# ---- idempotent intake (request_id) ---------------------------------------------------------


def test_append_once_returns_the_first_seq_for_a_repeated_request_id(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path, SOURCE) as outbox:
        assert outbox.append_once(sale("A"), "t1/r1/1") == (1, True)
        assert outbox.append_once(sale("B"), "t1/r1/2") == (2, True)
        retry = sale("A")
        assert outbox.append_once(retry, "t1/r1/1") == (1, False)
        assert retry.seq == 0, "a replayed movement is not stamped"
        assert outbox.request_seq("t1/r1/1", sale("A")) == 1
        assert outbox.request_seq("t1/r1/9", sale("A")) is None
        assert outbox.ack(2) == 2  # the key outlives the movement's ack
    with Outbox(path, SOURCE) as reopened:  # and a restart
        assert reopened.append_once(sale("A"), "t1/r1/1") == (1, False)
        assert reopened.append_once(sale("C"), "t1/r1/3") == (3, True)
        assert [m.sku for m in reopened.pending()] == ["C"]


@pytest.mark.parametrize(
    "other",
    [
        sale("B"),
        sale("A", quantity=2),
        pb.Movement(sku="A", location_id="store-042", type=pb.RETURN, quantity=1),
        pb.Movement(sku="A", location_id="store-042-backroom", type=pb.SALE, quantity=1),
    ],
    ids=["sku", "quantity", "type", "location"],
)
def test_a_request_id_reused_for_another_movement_is_refused(
    outbox: Outbox, other: pb.Movement
) -> None:
    outbox.append_once(sale("A"), "t1/r1/1")
    with pytest.raises(RequestConflict, match=r"request_id: 't1/r1/1' was already used for seq 1"):
        outbox.append_once(other, "t1/r1/1")
    with pytest.raises(RequestConflict):
        outbox.request_seq("t1/r1/1", other)
    assert outbox.depth() == 1
    assert outbox.next_seq == 2


def transfer_out(transfer_id: str = "T-1", to: str = "store-017") -> pb.Movement:
    """A back office's shipment of 3 units of A from store 042 to another store."""
    return pb.Movement(
        sku="A",
        location_id="store-042",
        type=pb.TRANSFER_OUT,
        quantity=3,
        transfer_id=transfer_id,
        counterpart_location_id=to,
    )


@pytest.mark.parametrize(
    "other",
    [
        transfer_out(to="store-018"),
        transfer_out(transfer_id="T-2"),
        pb.Movement(sku="A", location_id="store-042", type=pb.TRANSFER_OUT, quantity=3),
        # The two ids swapped: tagged in the fingerprint, not told apart by position only.
        transfer_out(transfer_id="store-017", to="T-1"),
    ],
    ids=["counterpart", "transfer_id", "neither", "swapped"],
)
def test_a_request_id_reused_for_another_transfer_is_refused(
    outbox: Outbox, other: pb.Movement
) -> None:
    assert outbox.append_once(transfer_out(), "bo/T-1/out") == (1, True)
    assert outbox.append_once(transfer_out(), "bo/T-1/out") == (1, False)  # a true retry
    with pytest.raises(RequestConflict, match=r"'bo/T-1/out' was already used for seq 1"):
        outbox.append_once(other, "bo/T-1/out")
    with pytest.raises(RequestConflict):
        outbox.request_seq("bo/T-1/out", other)
    assert outbox.depth() == 1


def test_fingerprints_of_movements_without_the_newer_fields_are_unchanged(tmp_path: Path) -> None:
    """Keys recorded by an agent before condition, transfer_id and counterpart were part of the
    fingerprint still answer a retry: their fingerprints are the same bytes today."""
    assert _fingerprint(sale("A")) == '["SALE", "A", 1, "store-042"]'
    returned = pb.Movement(
        sku="A", location_id="store-042", type=pb.RETURN, quantity=2, condition=pb.SELLABLE
    )
    assert _fingerprint(returned) == '["RETURN", "A", 2, "store-042"]'
    damaged = pb.Movement(
        sku="A", location_id="store-042", type=pb.RETURN, quantity=2, condition=pb.NON_SELLABLE
    )
    assert _fingerprint(damaged) == '["RETURN", "A", 2, "store-042", "NON_SELLABLE"]'
    assert _fingerprint(transfer_out()) == (
        '["TRANSFER_OUT", "A", 3, "store-042", {"transfer_id": "T-1"}, '
        '{"counterpart": "store-017"}]'
    )
    # A key as an older agent stored it, in the file: its retry is still a replay.
    path = tmp_path / "outbox.db"
    with Outbox(path, SOURCE) as outbox:
        assert outbox.append([sale("A")]) == [1]
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO request (request_id, seq, fingerprint, recorded_at) "
                    """VALUES ('t1/r1/1', 1, '["SALE", "A", 1, "store-042"]', :now)"""
                ),
                {"now": time.time()},
            )
    finally:
        engine.dispose()
    with Outbox(path, SOURCE) as reopened:
        assert reopened.append_once(sale("A"), "t1/r1/1") == (1, False)
        assert reopened.depth() == 1


def test_request_ids_are_pruned_by_age_and_by_count(tmp_path: Path) -> None:
    with Outbox(tmp_path / "count.db", SOURCE, max_requests=3) as outbox:
        for i in range(1, 6):
            outbox.append_once(sale("A"), f"r{i}")
        # Keys more than 3 seqs behind the newest are gone: r1 would record a new sale.
        assert [outbox.request_seq(f"r{i}", sale("A")) for i in range(1, 6)] == [
            None,
            None,
            3,
            4,
            5,
        ]
    with Outbox(tmp_path / "age.db", SOURCE, request_retention=0.0) as outbox:
        outbox.append_once(sale("A"), "old")
        time.sleep(0.01)  # recorded_at must be strictly older than the retention
        outbox.append_once(sale("A"), "new")
        assert outbox.request_seq("old", sale("A")) is None
        assert outbox.request_seq("new", sale("A")) == 2


def test_append_once_keeps_the_key_and_the_movement_in_one_transaction(tmp_path: Path) -> None:
    """A failure while writing the key leaves neither the movement nor the seq behind."""
    path = tmp_path / "outbox.db"
    with Outbox(path, SOURCE) as outbox:
        outbox.append_once(sale("A"), "r1")
        engine = create_engine(f"sqlite:///{path}")
        try:
            with engine.begin() as conn:  # a trigger that fails the key's insert
                conn.execute(
                    text(
                        "CREATE TRIGGER fail_key BEFORE INSERT ON request "
                        "WHEN NEW.request_id = 'r2' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
                    )
                )
        finally:
            engine.dispose()
        with pytest.raises(Exception, match="disk full"):
            outbox.append_once(sale("B"), "r2")
        assert [m.seq for m in outbox.pending()] == [1]
        assert outbox.next_seq == 2
        assert outbox.append_once(sale("C"), "r3") == (2, True)


def test_two_outbox_objects_on_one_file_never_hand_out_one_seq_twice(tmp_path: Path) -> None:
    # The agent's lock keeps a second process away (datalock); this is the second line of
    # defence: seqs come from meta.next_seq, read and incremented in the write transaction.
    path = tmp_path / "outbox.db"
    first, second = Outbox(path, SOURCE), Outbox(path, SOURCE)
    assert first.append([sale("A")]) == [1]
    assert first.ack(1) == 1  # acked and deleted: no row left to collide with
    assert second.append([sale("B")]) == [2]
    assert first.append([sale("C"), sale("D")]) == [3, 4]
    second.settle(4, [])
    assert first.append([sale("E")]) == [5]
    assert (first.last_acked, first.settled_through(), second.settled_through()) == (4, 4, 4)


def test_concurrent_appends_from_two_outbox_objects_never_share_a_seq(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    outboxes = [Outbox(path, SOURCE), Outbox(path, SOURCE)]
    seqs: list[list[int]] = [[], []]

    def till(i: int) -> None:
        for n in range(60):
            got = outboxes[i].append([sale(f"T{i}-{n}")])
            seqs[i].extend(got)
            if n % 3 == 0:
                outboxes[i].settle(got[-1], [])  # acks delete rows: seqs must not come back

    threads = [threading.Thread(target=till, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = seqs[0] + seqs[1]
    assert len(every) == 120
    assert sorted(every) == list(range(1, 121)), "each seq handed out exactly once"


# ---- rejections: who sent them, resolution, listing, schema migration -----------------------


def test_a_rejection_keeps_the_till_and_request_id_it_came_with(outbox: Outbox) -> None:
    before = time.time()
    outbox.append([sale("A")], device_id="till-1")
    seq, _ = outbox.append_once(sale("B"), "till-2/r7/1", device_id="till-2")
    outbox.append([sale("C")])  # e.g. a COUNT the agent made itself: no device
    outbox.settle(
        3, [(1, pb.WRONG_STORE, "a"), (seq, pb.WRONG_STORE, "b"), (3, pb.BAD_QUANTITY, "")]
    )
    by_seq = {r.seq: r for r in outbox.rejected()}
    assert (by_seq[1].device_id, by_seq[1].request_id) == ("till-1", "")
    assert (by_seq[2].device_id, by_seq[2].request_id) == ("till-2", "till-2/r7/1")
    assert (by_seq[3].device_id, by_seq[3].request_id) == ("", "")
    assert [by_seq[s].number for s in (1, 2, 3)] == [1, 2, 3]
    recorded = by_seq[2].recorded_at
    assert recorded is not None
    assert before <= recorded <= by_seq[2].rejected_at
    assert by_seq[2].resolved_at is None


def test_resolve_is_once_and_idempotent(outbox: Outbox) -> None:
    outbox.append([sale("A"), sale("B")], device_id="till-1")
    outbox.settle(2, [(1, pb.WRONG_STORE, "x"), (2, pb.WRONG_STORE, "y")])
    assert outbox.unresolved()[0] == 2
    first = outbox.resolve(1, "ana", "entered again at s1", now=1000.0)
    assert first is not None
    assert (first.resolved_at, first.resolved_by, first.resolve_note) == (
        1000.0,
        "ana",
        "entered again at s1",
    )
    again = outbox.resolve(1, "bob", "other", now=2000.0)
    assert again == first  # the first resolution stands
    assert outbox.resolve(99, "ana") is None  # not a rejection
    count, latest = outbox.unresolved()
    assert count == 1
    assert latest == outbox.rejected()[1].rejected_at
    outbox.resolve(2, "ana")
    assert outbox.unresolved() == (0, None)


def test_rejections_are_listed_newest_first_filtered_and_paged(outbox: Outbox) -> None:
    outbox.append([sale(f"S{i}") for i in range(6)], device_id="till-1")
    outbox.append([sale("T")], device_id="till-2")
    outbox.settle(7, [(s, pb.WRONG_STORE, "") for s in (2, 4, 5, 6, 7)])
    outbox.resolve(4, "ana")
    assert [r.seq for r in outbox.rejections()] == [7, 6, 5, 4, 2]
    assert [r.seq for r in outbox.rejections(unresolved_only=True)] == [7, 6, 5, 2]
    assert [r.seq for r in outbox.rejections(device_id="till-1")] == [6, 5, 4, 2]
    page = outbox.rejections(limit=2)
    assert [r.seq for r in page] == [7, 6]
    assert [r.seq for r in outbox.rejections(limit=2, before_number=page[-1].number)] == [5, 4]
    assert [r.seq for r in outbox.rejections(after_number=3, newest_first=False)] == [6, 7]
    assert outbox.rejections(since=time.time() + 60) == []
    assert outbox.last_rejection_number() == 5


#: The tables of an outbox file written before schema versioning (user_version 0), verbatim.
OLD_SCHEMA = """
CREATE TABLE movement (seq INTEGER NOT NULL, payload BLOB NOT NULL, occurred_at BIGINT,
    appended_at FLOAT NOT NULL, state VARCHAR(16) NOT NULL, PRIMARY KEY (seq));
CREATE TABLE meta (id INTEGER NOT NULL, source_id VARCHAR NOT NULL, next_seq INTEGER NOT NULL,
    last_acked INTEGER NOT NULL, PRIMARY KEY (id));
CREATE TABLE rejected (seq INTEGER NOT NULL, payload BLOB, reason INTEGER NOT NULL,
    detail VARCHAR NOT NULL, rejected_at FLOAT NOT NULL, PRIMARY KEY (seq));
CREATE TABLE request (request_id VARCHAR NOT NULL, seq INTEGER NOT NULL,
    fingerprint VARCHAR NOT NULL, recorded_at FLOAT NOT NULL, PRIMARY KEY (request_id));
CREATE INDEX ix_request_recorded_at ON request (recorded_at);
CREATE INDEX ix_request_seq ON request (seq);
"""


def test_an_outbox_file_of_the_old_schema_opens_migrated_and_keeps_working(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.executescript(OLD_SCHEMA)
    now = time.time()
    a, b, c = sale("A"), sale("B"), sale("C")
    for seq, m in ((1, a), (2, b), (3, c)):
        m.source_id, m.seq = SOURCE, seq
    old.executemany(
        "INSERT INTO movement (seq, payload, occurred_at, appended_at, state) "
        "VALUES (?, ?, NULL, ?, 'pending')",
        [(2, b.SerializeToString(), now), (3, c.SerializeToString(), now)],
    )
    old.execute("INSERT INTO meta VALUES (1, ?, 4, 0)", (SOURCE,))
    old.execute(
        "INSERT INTO rejected VALUES (1, ?, ?, 'location s2', ?)",
        (a.SerializeToString(), pb.WRONG_STORE, now - 60),
    )
    old.executemany(
        "INSERT INTO request VALUES (?, ?, ?, ?)",
        [("till-1/r1/1", 1, _fingerprint(a), now), ("till-1/r2/1", 2, _fingerprint(b), now)],
    )
    old.commit()
    old.close()

    with Outbox(path, SOURCE) as outbox:
        # The old rejection is listed, numbered, its request_id recovered from the request table.
        [first] = outbox.rejections()
        assert (first.seq, first.number, first.request_id, first.device_id) == (
            1,
            1,
            "till-1/r1/1",
            "",
        )
        assert first.recorded_at is None
        assert first.resolved_at is None
        # Pending movements go on; their rejection carries the recovered request_id too.
        assert [m.seq for m in outbox.pending()] == [2, 3]
        outbox.settle(3, [(2, pb.WRONG_STORE, "location s2")])
        assert [(r.seq, r.number, r.request_id) for r in outbox.rejections()] == [
            (2, 2, "till-1/r2/1"),
            (1, 1, "till-1/r1/1"),
        ]
        assert outbox.append([sale("D")], device_id="till-9") == [4]
        assert outbox.resolve(1, "ana") is not None
        assert outbox.unresolved()[0] == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    with Outbox(path, SOURCE) as reopened:  # opening a migrated file again changes nothing
        assert [r.number for r in reopened.rejections()] == [2, 1]
        assert reopened.rejections()[1].resolved_by == "ana"


def test_rejections_an_older_agent_wrote_are_numbered_after_the_others(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    with Outbox(path, SOURCE) as outbox:
        outbox.append([sale("A"), sale("B"), sale("C")])
        outbox.settle(1, [(1, pb.WRONG_STORE, "")])
    # An older agent (downgrade) rejects seqs 3 then 2 without numbering them.
    with sqlite3.connect(path) as conn:
        for seq in (3, 2):
            conn.execute("DELETE FROM movement WHERE seq = ?", (seq,))
            conn.execute(
                "INSERT INTO rejected (seq, payload, reason, detail, rejected_at) "
                "VALUES (?, NULL, ?, '', ?)",
                (seq, pb.WRONG_STORE, time.time()),
            )
    with Outbox(path, SOURCE) as upgraded:
        assert [(r.seq, r.number) for r in upgraded.rejections()] == [(3, 3), (2, 2), (1, 1)]
        assert [r.seq for r in upgraded.rejections(after_number=1, newest_first=False)] == [2, 3]
