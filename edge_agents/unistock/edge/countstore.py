"""Durable RFID count sessions of a store's edge agent, in SQLite (next to the outbox).

A store count runs for hours; an agent restart (update, crash, power cut) must neither lose it
nor forget which positions the counts in its stream covered, which decides the count a late till
sale is marked with (:class:`unistock.edge.counting.CountMarks`). What is kept, and when:

* ``count_session``: the session (count id, location, scope, start time on the agent's clock,
  ``running`` or ``stopped``, stop time, sales without EPC). Written at once (fsynced) at
  ``StartCount`` and at the stop. Each session has its own ``id``: a ``StartCount`` repeated with a
  running ``count_id`` replaces the session, and the EPC rows of the old one, still buffered or
  not, never mix with the new one's.
* ``count_epc``: the counted EPCs (EPC → SKU, the first read of a countable EPC only). Buffered
  in memory (:meth:`CountStore.counted`) and written in small transactions by
  :meth:`CountStore.flush`, which the agent runs every 0.5 s and before a stop appends its
  ``COUNT``\\ s. A crash loses at most the reads of the last flush interval: fixed readers re-read
  every tag many times a minute, and a handheld pass over the shelf is redone.
* ``count_sold``: the EPCs named by sales recorded during the session, and the session's
  ``sales_without_epc``: written at once (:meth:`CountStore.sale`), since a sale is a fact that
  must keep its unit out of the count.

* ``count_cover``: one row per ``COUNT`` in the agent's stream (location, SKU, count id, start),
  in stream order: what each count covered, written before its ``COUNT``\\ s are appended (in
  the transaction that marks a session stopping, or :meth:`CountStore.cover` for a ``COUNT``
  a device sent). The last :data:`~unistock.edge.counting.KEEP_PER_POSITION` per position are
  kept (:meth:`CountStore.covers`), whatever else is counted meanwhile. Files from before this
  table get its rows from their stopped sessions when opened: the scope, or for "every SKU
  seen" the SKUs of the counted EPCs, which is what the session emitted a ``COUNT`` for.

:meth:`CountStore.load` gives the running sessions and the last :data:`KEEP_STOPPED` stopped
ones (for a stop to complete after a crash, and for inspection); older stopped sessions are
deleted with their EPCs when a session stops. Marking late sales needs only ``count_cover``.

Same pragmas as the outbox (WAL, ``synchronous=FULL``). The API is synchronous and thread-safe;
the agent calls the writes through :func:`asyncio.to_thread`.
"""

from __future__ import annotations

import datetime
import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)

from unistock.edge.counting import KEEP_PER_POSITION, CountCover, CountSession, SkuLookup
from unistock.edge.outbox import _on_begin, _on_connect

__all__ = ["KEEP_STOPPED", "CountStore", "StoredSession"]

#: Stopped sessions kept in the file (a stop to complete after a crash, inspection). Which
#: count a late movement precedes is decided from ``count_cover``, kept per position instead.
KEEP_STOPPED = 16

#: ``PRAGMA user_version`` of a file whose stopped sessions have their ``count_cover`` rows.
SCHEMA_VERSION = 1

RUNNING = "running"
#: Its COUNTs are being appended: after a crash they are appended again at start (the server
#: drops a count_id it already applied), and meanwhile the session marks late sales as stopped.
STOPPING = "stopping"
STOPPED = "stopped"

_metadata = MetaData()

session_table = Table(
    "count_session",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("count_id", String, nullable=False, index=True),
    Column("location_id", String, nullable=False),
    # JSON list of the SKUs in scope, NULL for "every SKU seen".
    Column("scope", String, nullable=True),
    # ISO 8601 with offset, on the agent's clock (exact round trip, microseconds included).
    Column("started_at", String, nullable=False),
    Column("state", String(16), nullable=False),
    Column("stopped_at", Float, nullable=True),  # seconds since the epoch, agent clock
    Column("sales_without_epc", Integer, nullable=False, default=0),
    # AUTOINCREMENT: a replaced session's id is never given to the next one (plain rowids are
    # reused after the highest row is deleted), so its buffered EPCs cannot land in a new one.
    sqlite_autoincrement=True,
)

epc_table = Table(
    "count_epc",
    _metadata,
    Column("session", Integer, nullable=False),
    Column("epc", String, nullable=False),
    Column("sku", String, nullable=False),
    PrimaryKeyConstraint("session", "epc"),
)

sold_table = Table(
    "count_sold",
    _metadata,
    Column("session", Integer, nullable=False),
    Column("epc", String, nullable=False),
    PrimaryKeyConstraint("session", "epc"),
)

cover_table = Table(
    "count_cover",
    _metadata,
    # Stream order of the COUNTs (AUTOINCREMENT: never reused after a prune).
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("location_id", String, nullable=False),
    Column("sku", String, nullable=False),
    Column("count_id", String, nullable=False),
    Column("started_at", String, nullable=False),  # ISO 8601 with offset, agent clock
    UniqueConstraint("location_id", "sku", "count_id"),
    sqlite_autoincrement=True,
)


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A count session as kept in the file."""

    key: int
    """The session's row id (``count_id`` may be reused by a later ``StartCount``)."""
    count_id: str
    location_id: str
    scope_skus: frozenset[str] | None
    started_at: datetime.datetime
    stopped: bool
    """Stopped or stopping: it no longer takes reads, and late sales before it are marked."""
    stopping: bool
    """Stopped while its COUNTs were being appended: they must be appended (again)."""
    stopped_at: float | None
    sales_without_epc: int
    counted: dict[str, str] = field(default_factory=dict)
    sold: frozenset[str] = frozenset()

    def session(self, catalogue: SkuLookup) -> CountSession:
        """The :class:`CountSession` again, with its counted and sold EPCs."""
        return CountSession.restore(
            self.count_id,
            self.location_id,
            self.scope_skus,
            self.started_at,
            catalogue=catalogue,
            counted=self.counted,
            sold=self.sold,
            sales_without_epc=self.sales_without_epc,
            stopped=self.stopped,
        )


class CountStore:
    """The count sessions of one store agent, in their own SQLite file.

    Args:
        path: the SQLite file (created with its tables if missing).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._engine: Engine = create_engine(
            f"sqlite:///{self.path}", connect_args={"check_same_thread": False}
        )
        event.listen(self._engine, "connect", _on_connect)
        event.listen(self._engine, "begin", _on_begin)
        _metadata.create_all(self._engine)
        with self._writer() as conn, conn.begin():
            if conn.exec_driver_sql("PRAGMA user_version").scalar_one() < SCHEMA_VERSION:
                _covers_of_old_sessions(conn)
                conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")
        # Held across a whole write (a flush: from taking the buffer to its commit), so that a
        # flush returning means every read buffered before it is on disk, even if a concurrent
        # flush took them.
        self._write_lock = threading.Lock()
        # Held only to add to or take the buffer (the event loop must not wait for an fsync).
        self._buffer_lock = threading.Lock()
        self._buffer: list[dict[str, object]] = []

    def _writer(self) -> Connection:
        return self._engine.connect().execution_options(sqlite_begin="IMMEDIATE")

    def close(self) -> None:
        """Release the database connections (buffered reads not flushed are dropped)."""
        self._engine.dispose()

    # ---- writes ----------------------------------------------------------------------------

    def start(
        self,
        count_id: str,
        location_id: str,
        scope_skus: frozenset[str] | None,
        started_at: datetime.datetime,
    ) -> int:
        """Store a new running session, replacing any session with that ``count_id``.

        Returns:
            The new session's key, for :meth:`counted`, :meth:`sale` and :meth:`stopped`.
        """
        scope = None if scope_skus is None else json.dumps(sorted(scope_skus))
        with self._write_lock, self._writer() as conn, conn.begin():
            old = select(session_table.c.id).where(session_table.c.count_id == count_id)
            _delete_sessions(conn, [int(k) for k in conn.execute(old).scalars()])
            key = conn.execute(
                insert(session_table).values(
                    count_id=count_id,
                    location_id=location_id,
                    scope=scope,
                    started_at=started_at.isoformat(),
                    state=RUNNING,
                    sales_without_epc=0,
                )
            ).inserted_primary_key
            assert key is not None
            return int(key[0])

    def counted(self, key: int, epc: str, sku: str) -> None:
        """Buffer a counted EPC of session ``key`` (written by the next :meth:`flush`)."""
        with self._buffer_lock:
            self._buffer.append({"session": key, "epc": epc.upper(), "sku": sku})

    def flush(self) -> int:
        """Write the buffered counted EPCs in one transaction; returns how many were taken.

        EPCs of a session replaced or deleted meanwhile are dropped.
        """
        with self._write_lock:
            with self._buffer_lock:
                rows, self._buffer = self._buffer, []
            if not rows:
                return 0
            with self._writer() as conn, conn.begin():
                keys = {row["session"] for row in rows}
                live = set(
                    conn.execute(
                        select(session_table.c.id).where(session_table.c.id.in_(keys))
                    ).scalars()
                )
                kept = [row for row in rows if row["session"] in live]
                if kept:
                    conn.execute(epc_table.insert().prefix_with("OR IGNORE"), kept)
            return len(rows)

    def sale(self, keys: Iterable[int], epcs: Iterable[str]) -> None:
        """A sale recorded during the sessions ``keys``: its EPCs, or one more sale without EPC."""
        keys = list(keys)
        named = sorted({epc.upper() for epc in epcs})
        if not keys:
            return
        with self._write_lock, self._writer() as conn, conn.begin():
            if named:
                conn.execute(
                    sold_table.insert().prefix_with("OR IGNORE"),
                    [{"session": k, "epc": e} for k in keys for e in named],
                )
            else:
                conn.execute(
                    update(session_table)
                    .where(session_table.c.id.in_(keys))
                    .values(sales_without_epc=session_table.c.sales_without_epc + 1)
                )

    def stopping(self, key: int, stopped_at: float, covers: Iterable[CountCover] = ()) -> None:
        """Write the buffered EPCs, mark session ``key`` stopping and keep what its COUNTs
        cover (:meth:`CountSession.covers`), in one transaction.

        Call it before appending the session's COUNTs: from then on a restart completes the
        stop (see STOPPING) rather than resuming the count, and late sales are marked with it.
        """
        self.flush()
        with self._write_lock, self._writer() as conn, conn.begin():
            conn.execute(
                update(session_table)
                .where(session_table.c.id == key)
                .values(state=STOPPING, stopped_at=stopped_at)
            )
            _add_covers(conn, covers)

    def cover(self, covers: Iterable[CountCover]) -> None:
        """Keep what COUNTs about to be appended cover (a COUNT a device sent itself)."""
        with self._write_lock, self._writer() as conn, conn.begin():
            _add_covers(conn, covers)

    def stopped(self, key: int, stopped_at: float, keep: int = KEEP_STOPPED) -> None:
        """Mark session ``key`` stopped and delete the stopped sessions before the last ``keep``."""
        with self._write_lock, self._writer() as conn, conn.begin():
            conn.execute(
                update(session_table)
                .where(session_table.c.id == key)
                .values(state=STOPPED, stopped_at=stopped_at)
            )
            stale = (
                select(session_table.c.id)
                .where(session_table.c.state == STOPPED)
                .order_by(session_table.c.stopped_at.desc(), session_table.c.id.desc())
                .offset(keep)
            )
            _delete_sessions(conn, [int(k) for k in conn.execute(stale).scalars()])

    # ---- reads -----------------------------------------------------------------------------

    def covers(self) -> list[CountCover]:
        """What the COUNTs in the stream covered, in stream order (for :class:`CountMarks`)."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(cover_table).order_by(cover_table.c.id)).all()
        return [
            CountCover(
                row.location_id,
                row.sku,
                row.count_id,
                datetime.datetime.fromisoformat(row.started_at),
            )
            for row in rows
        ]

    def load(self) -> list[StoredSession]:
        """The running sessions (in start order), then the stopped ones (in stop order)."""
        with self._engine.connect() as conn:
            counted: dict[int, dict[str, str]] = {}
            for row in conn.execute(select(epc_table)):
                counted.setdefault(row.session, {})[row.epc] = row.sku
            sold: dict[int, set[str]] = {}
            for row in conn.execute(select(sold_table)):
                sold.setdefault(row.session, set()).add(row.epc)
            rows = conn.execute(
                select(session_table).order_by(
                    session_table.c.state == STOPPED,
                    session_table.c.stopped_at,
                    session_table.c.id,
                )
            ).all()
        return [
            StoredSession(
                key=row.id,
                count_id=row.count_id,
                location_id=row.location_id,
                scope_skus=None if row.scope is None else frozenset(json.loads(row.scope)),
                started_at=datetime.datetime.fromisoformat(row.started_at),
                stopped=row.state != RUNNING,
                stopping=row.state == STOPPING,
                stopped_at=row.stopped_at,
                sales_without_epc=row.sales_without_epc,
                counted=counted.get(row.id, {}),
                sold=frozenset(sold.get(row.id, ())),
            )
            for row in rows
        ]


def _delete_sessions(conn: Connection, keys: list[int]) -> None:
    if not keys:
        return
    for table in (epc_table, sold_table):
        conn.execute(delete(table).where(table.c.session.in_(keys)))
    conn.execute(delete(session_table).where(session_table.c.id.in_(keys)))


def _add_covers(
    conn: Connection, covers: Iterable[CountCover], keep: int = KEEP_PER_POSITION
) -> None:
    """Insert covers (one already kept stays as it was) and prune beyond ``keep`` per position."""
    rows = [
        {
            "location_id": c.location_id,
            "sku": c.sku,
            "count_id": c.count_id,
            "started_at": c.started_at.isoformat(),
        }
        for c in covers
    ]
    if not rows:
        return
    conn.execute(cover_table.insert().prefix_with("OR IGNORE"), rows)
    rank = (
        func.row_number()
        .over(
            partition_by=(cover_table.c.location_id, cover_table.c.sku),
            order_by=cover_table.c.id.desc(),
        )
        .label("rank")
    )
    ranked = select(cover_table.c.id, rank).subquery()
    stale = select(ranked.c.id).where(ranked.c.rank > keep)
    conn.execute(delete(cover_table).where(cover_table.c.id.in_(stale)))


def _covers_of_old_sessions(conn: Connection) -> None:
    """``count_cover`` rows for the stopped sessions of a file from before that table, in stop
    order: a session covered its scope, or with "every SKU seen" the SKUs it counted EPCs of
    (what :meth:`CountSession.stop` emits a COUNT for)."""
    sessions = conn.execute(
        select(session_table)
        .where(session_table.c.state != RUNNING)
        .order_by(session_table.c.stopped_at, session_table.c.id)
    ).all()
    for row in sessions:
        if row.scope is not None:
            skus = sorted(json.loads(row.scope))
        else:
            seen = select(epc_table.c.sku).where(epc_table.c.session == row.id).distinct()
            skus = sorted(conn.execute(seen).scalars())
        started_at = datetime.datetime.fromisoformat(row.started_at)
        _add_covers(
            conn, [CountCover(row.location_id, sku, row.count_id, started_at) for sku in skus]
        )
