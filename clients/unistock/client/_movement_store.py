"""The MovementWriter's file: movements waiting for the server's ack, in SQLite, one source.

Tables (SQLAlchemy Core; every call is one short transaction, fsynced before it returns):

* ``meta``: one row, the ``source_id`` and the ``next_seq`` to assign. ``next_seq`` only grows:
  acknowledged rows are deleted, so ``max(seq)`` would hand a seq out twice once the table
  drained, and the server would drop the second movement as a duplicate.
* ``movement(seq, payload)``: recorded and not yet acknowledged or rejected; ``payload`` is the
  serialized ``pb.Movement`` with its ``source_id`` and ``seq``.
* ``rejected(seq, payload, reason, detail, rejected_at)``: what the server refused, and why.
* ``request(request_id, seq, fingerprint, recorded_at)``: idempotency keys of ``record``
  calls, kept ``request_retention`` seconds, written in the movement's transaction.

Every connection runs ``journal_mode=WAL`` and ``synchronous=FULL`` (WAL with ``NORMAL`` may
lose the last commits on a power cut). A file lock (``<file>.lock``, ``flock``) keeps a second
writer out: two writers of one source would hand out the same seqs.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.pool import ConnectionPoolEntry

from unistock.v1 import inventory_pb2 as pb

__all__ = [
    "MovementStore",
    "RejectedMovement",
    "RequestConflict",
    "WriterFileError",
    "WriterLocked",
]

_metadata = MetaData()
meta_table = Table(
    "meta",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("source_id", String, nullable=False),
    Column("next_seq", Integer, nullable=False),
)
movement_table = Table(
    "movement",
    _metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("payload", LargeBinary, nullable=False),
)
rejected_table = Table(
    "rejected",
    _metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("payload", LargeBinary, nullable=True),
    Column("reason", Integer, nullable=False),
    Column("detail", String, nullable=False),
    Column("rejected_at", Float, nullable=False),
)
request_table = Table(
    "request",
    _metadata,
    Column("request_id", String, primary_key=True),
    Column("seq", Integer, nullable=False),
    Column("fingerprint", String, nullable=False),
    Column("recorded_at", Float, nullable=False, index=True),
)


class WriterFileError(RuntimeError):
    """The writer's file cannot be used (it belongs to another source_id)."""


class WriterLocked(WriterFileError):
    """Another MovementWriter (this process or another) has the file open."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(
            f"{path} is already open in another MovementWriter ({holder}; lock {path}.lock): "
            "a source has one writer, close that one first"
        )
        self.path = path
        self.holder = holder


class RequestConflict(ValueError):
    """A request_id already recorded for another movement."""

    def __init__(self, request_id: str, seq: int) -> None:
        super().__init__(
            f"request_id: {request_id!r} was already used for seq {seq} with another movement; "
            "use a new request_id for another movement"
        )
        self.request_id = request_id
        self.seq = seq


@dataclass(frozen=True, slots=True)
class RejectedMovement:
    """A movement the server refused: final, never sent again."""

    seq: int
    movement: pb.Movement | None
    """The movement as recorded (``None`` if the rejection named a seq no longer stored)."""
    reason: int
    """A ``pb.RejectReason`` value (see ``reason_name``)."""
    detail: str
    """The server's words, naming the field, e.g. ``"movements[0].quantity: must be >= 1"``."""
    rejected_at: float
    """Seconds since the epoch when the rejection arrived."""

    @property
    def reason_name(self) -> str:
        """``"BAD_QUANTITY"``..., or the number of a reason this build does not know."""
        try:
            return pb.RejectReason.Name(self.reason)  # type: ignore[arg-type]
        except ValueError:
            return str(self.reason)


def _fingerprint(movement: pb.Movement) -> str:
    """What a retried record() must repeat: the movement but its seq, source and time."""
    same = pb.Movement()
    same.CopyFrom(movement)
    same.ClearField("seq")
    same.ClearField("source_id")
    same.ClearField("occurred_at")
    return same.SerializeToString(deterministic=True).hex()


def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    dbapi_connection.isolation_level = None  # BEGIN is ours (see _on_begin)
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA busy_timeout=10000")
    finally:
        cursor.close()


def _on_begin(conn: Connection) -> None:
    # IMMEDIATE: take the write lock up front, never upgrade half way (SQLITE_BUSY).
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class _FileLock:
    """``flock(LOCK_EX | LOCK_NB)`` on ``<path>.lock``; the kernel drops it when we die."""

    def __init__(self, path: Path) -> None:
        self.path = path.with_name(path.name + ".lock")
        self._fd: int | None = None

    def acquire(self, target: Path) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raw = os.pread(fd, 4096, 0).decode(errors="replace")
            os.close(fd)
            try:
                info = json.loads(raw)
                holder = f"pid {info['pid']} on {info['host']}, since {info['since']}"
            except (ValueError, KeyError, TypeError):
                holder = "holder unknown"
            raise WriterLocked(target, holder) from None
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": now}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)
            os.close(fd)  # never unlinked: a new inode would let a third writer in


class MovementStore:
    """The synchronous store behind MovementWriter (call it from a worker thread).

    Raises WriterLocked when another store has the file open, WriterFileError when the file
    was created for another source_id."""

    def __init__(self, path: Path, source_id: str, request_retention: float) -> None:
        if not source_id:
            raise ValueError("source_id must not be empty")
        self.path = path
        self.source_id = source_id
        self.request_retention = request_retention
        self._lock = _FileLock(path)
        self._lock.acquire(path)
        try:
            self._engine: Engine = create_engine(
                f"sqlite:///{path}", connect_args={"check_same_thread": False}
            )
            event.listen(self._engine, "connect", _on_connect)
            event.listen(self._engine, "begin", _on_begin)
            self._mutex = threading.Lock()
            _metadata.create_all(self._engine)
            self._check_meta()
        except BaseException:
            self._lock.release()
            raise

    def close(self) -> None:
        """Close the file and let the next writer in (safe twice)."""
        self._engine.dispose()
        self._lock.release()

    def _check_meta(self) -> None:
        with self._engine.begin() as conn:
            row = conn.execute(select(meta_table.c.source_id)).one_or_none()
            if row is None:
                conn.execute(insert(meta_table).values(id=1, source_id=self.source_id, next_seq=1))
            elif row.source_id != self.source_id:
                raise WriterFileError(
                    f"{self.path} holds the movements of source {row.source_id!r}, "
                    f"not {self.source_id!r}: use one file per source"
                )

    def append(self, movement: pb.Movement, request_id: str) -> tuple[int, bool]:
        """Store movement under the next seq (set on it, with source_id); ``(seq, True)``.
        With a request_id already recorded for the same movement: ``(its seq, False)`` and
        nothing stored; for another movement: RequestConflict."""
        now = time.time()
        fingerprint = _fingerprint(movement) if request_id else ""
        with self._mutex, self._engine.begin() as conn:
            if request_id:
                row = conn.execute(
                    select(request_table.c.seq, request_table.c.fingerprint).where(
                        request_table.c.request_id == request_id
                    )
                ).one_or_none()
                if row is not None:
                    if row.fingerprint != fingerprint:
                        raise RequestConflict(request_id, int(row.seq))
                    return int(row.seq), False
            seq = int(conn.execute(select(meta_table.c.next_seq)).scalar_one())
            conn.execute(update(meta_table).values(next_seq=seq + 1))
            movement.source_id = self.source_id
            movement.seq = seq
            conn.execute(
                insert(movement_table).values(seq=seq, payload=movement.SerializeToString())
            )
            if request_id:
                conn.execute(
                    insert(request_table).values(
                        request_id=request_id, seq=seq, fingerprint=fingerprint, recorded_at=now
                    )
                )
                conn.execute(
                    delete(request_table).where(
                        request_table.c.recorded_at < now - self.request_retention
                    )
                )
        return seq, True

    def pending(self, after: int, limit: int) -> list[pb.Movement]:
        """Up to limit stored movements with seq > after, in seq order."""
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(movement_table.c.payload)
                .where(movement_table.c.seq > after)
                .order_by(movement_table.c.seq)
                .limit(limit)
            ).all()
        return [pb.Movement.FromString(r.payload) for r in rows]

    def lowest_pending(self) -> int | None:
        """The lowest seq still waiting for the server, or None."""
        with self._engine.connect() as conn:
            low = conn.execute(select(func.min(movement_table.c.seq))).scalar_one()
        return None if low is None else int(low)

    def highest_recorded(self) -> int:
        """The last seq handed out (0: none)."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(meta_table.c.next_seq)).scalar_one()) - 1

    def count_pending(self) -> int:
        """How many movements wait for the server."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(movement_table)).scalar_one())

    def settle(
        self, seqs: Sequence[int], acked: int, rejections: Sequence[pb.Rejection]
    ) -> list[RejectedMovement]:
        """Apply one ack to the movements of its batch (seqs): each rejected one moves to
        ``rejected``, every other one with seq <= acked is deleted. Returns the rejections."""
        now = time.time()
        done = [s for s in seqs if s <= acked]
        out: list[RejectedMovement] = []
        with self._mutex, self._engine.begin() as conn:
            for rej in rejections:
                if rej.source_id not in ("", self.source_id) or rej.seq not in seqs:
                    continue
                payload = conn.execute(
                    select(movement_table.c.payload).where(movement_table.c.seq == rej.seq)
                ).scalar_one_or_none()
                if payload is None:
                    continue  # settled by an earlier ack (a resend)
                conn.execute(
                    insert(rejected_table)
                    .values(
                        seq=rej.seq,
                        payload=payload,
                        reason=int(rej.reason),
                        detail=rej.detail,
                        rejected_at=now,
                    )
                    .prefix_with("OR IGNORE")
                )
                conn.execute(delete(movement_table).where(movement_table.c.seq == rej.seq))
                out.append(
                    RejectedMovement(
                        rej.seq, pb.Movement.FromString(payload), rej.reason, rej.detail, now
                    )
                )
            if done:
                conn.execute(delete(movement_table).where(movement_table.c.seq.in_(done)))
        return out

    def rejected(self) -> list[RejectedMovement]:
        """Every rejected movement, by seq."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(rejected_table).order_by(rejected_table.c.seq)).all()
        return [
            RejectedMovement(
                int(r.seq),
                None if r.payload is None else pb.Movement.FromString(r.payload),
                int(r.reason),
                str(r.detail),
                float(r.rejected_at),
            )
            for r in rows
        ]
