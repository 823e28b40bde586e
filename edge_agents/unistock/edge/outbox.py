"""Durable outbox of a store's movements, in SQLite.

A movement recorded at a till is a fact the server must eventually apply exactly once. The
edge agent therefore writes every movement here *before* anything is sent: once
:meth:`Outbox.append` returns, the movement has its ``seq`` and survives a ``kill -9`` of the
agent or a power cut. A movement leaves the outbox only when the server's own ``MovementAck``
covers its ``seq`` (:meth:`Outbox.ack`) or rejects it (:meth:`Outbox.reject`); an MQTT broker's
PUBACK never removes anything (see ``/work/shared/spec/contract.md``).

Schema (one file per source):

* ``movement(seq INTEGER PRIMARY KEY, payload BLOB, occurred_at, appended_at, state)``: the
  unacknowledged movements, ``payload`` being the serialized ``pb.Movement`` (with its
  ``source_id`` and ``seq`` set).
* ``meta``: one row with the ``source_id``, the ``next_seq`` to assign and the ``last_acked``
  seq. ``next_seq`` is what keeps seqs from ever being reused: rows are deleted on ack, so
  ``max(seq)`` alone would hand out an acknowledged seq again after the outbox drained, and the
  server would drop the new movement as a duplicate.
* ``rejected``: movements the server refused, with its reason, kept for the back office: the
  till or device and the ``request_id`` the movement came with, when it entered the outbox and
  when it was rejected, a ``number`` giving the order rejections were recorded in, and, once
  store staff marked it handled (:meth:`Outbox.resolve`), who did, when and why.
* ``request``: the idempotency keys of intake calls (``request_id``, chosen by the till) with
  the seq they got and a fingerprint of the movement, written in the same transaction as the
  movement (:meth:`Outbox.append_once`): a till's retry of a call whose answer it lost gets the
  original seq back instead of a second sale, across agent restarts and ``kill -9``. The table
  is bounded: keys older than ``request_retention`` (7 days) or more than ``max_requests``
  (200,000) seqs behind the newest are pruned on every append, so a till may retry a call for a
  week (or for the store's last 200,000 movements, whichever ends first).

The movement rows also keep the ``device_id`` (till, handheld) and the ``request_id`` of the
intake call, so that a rejection says which till to go to and which receipt it was.

Schema versions (``PRAGMA user_version``): 0 is a file written before versioning (no
``device_id``/``request_id`` on movements, no ``number``/``recorded_at``/resolution on
rejections); :data:`SCHEMA_VERSION` is today's. Opening an older file adds the missing columns
(all nullable) in one transaction and fills what can be recovered: the ``request_id`` of
pending and rejected movements from the ``request`` table, and rejection numbers in seq order
(rejections without a number, e.g. written by an older agent after a downgrade, are numbered
after the others whenever the file is opened).
An old file thus opens and keeps working; nothing is ever dropped.

Every connection runs ``PRAGMA journal_mode=WAL`` (readers never block the writer) and
``PRAGMA synchronous=FULL`` (in WAL mode ``NORMAL`` may lose the last commits on power loss).

The API is synchronous and each call is one short transaction; async callers wrap the calls in
:func:`asyncio.to_thread` (every commit is an fsync). The object is thread-safe.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Float,
    Integer,
    LargeBinary,
    MetaData,
    Row,
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

__all__ = ["Outbox", "OutboxError", "RejectedMovement", "RequestConflict", "reject_reason_name"]

_log = logging.getLogger(__name__)

#: State of every row in ``movement``: acknowledged rows are deleted and rejected ones moved to
#: ``rejected``, so a row that exists is waiting for the server. The column is kept so that a
#: later state (e.g. a movement held back until a count closes) needs no schema change.
STATE_PENDING = "pending"

_metadata = MetaData()

movement_table = Table(
    "movement",
    _metadata,
    # INTEGER PRIMARY KEY is SQLite's rowid: seq-ordered scans and range deletes are B-tree walks.
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("payload", LargeBinary, nullable=False),
    # Microseconds since the epoch at the source (the till's clock; informational only).
    Column("occurred_at", BigInteger, nullable=True),
    # Seconds since the epoch on the agent's clock when the movement entered the outbox: the
    # outbox's lag is measured with it, since a till's occurred_at may be hours old or skewed.
    Column("appended_at", Float, nullable=False),
    Column("state", String(16), nullable=False, default=STATE_PENDING),
    # The till or device that sent it, and the intake call's idempotency key ('' or NULL: none;
    # NULL in rows written before schema version 1).
    Column("device_id", String, nullable=True),
    Column("request_id", String, nullable=True),
)

meta_table = Table(
    "meta",
    _metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("source_id", String, nullable=False),
    Column("next_seq", Integer, nullable=False),
    Column("last_acked", Integer, nullable=False),
)

rejected_table = Table(
    "rejected",
    _metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    # NULL when the rejection named a seq that was no longer in the outbox.
    Column("payload", LargeBinary, nullable=True),
    Column("reason", Integer, nullable=False),
    Column("detail", String, nullable=False, default=""),
    Column("rejected_at", Float, nullable=False),
    # Order in which rejections were recorded (1, 2, ...): watches and pages follow it.
    Column("number", Integer, nullable=True, index=True),
    # From the movement row (NULL when it was no longer in the outbox, or older than version 1).
    Column("device_id", String, nullable=True),
    Column("request_id", String, nullable=True),
    # Seconds since the epoch (agent clock) when the movement entered the outbox.
    Column("recorded_at", Float, nullable=True),
    # Set once, by the first Outbox.resolve: seconds since the epoch, who, why.
    Column("resolved_at", Float, nullable=True),
    Column("resolved_by", String, nullable=True),
    Column("resolve_note", String, nullable=True),
)

request_table = Table(
    "request",
    _metadata,
    Column("request_id", String, primary_key=True),
    Column("seq", Integer, nullable=False, index=True),
    # JSON [type, sku, quantity, location_id, ...] of the movement (_fingerprint): a reused key
    # with another content is a till bug, refused rather than answered with the wrong receipt.
    Column("fingerprint", String, nullable=False),
    Column("recorded_at", Float, nullable=False, index=True),
)

_META_ID = 1
#: ``PRAGMA user_version`` of a file with today's tables (see the module docstring).
SCHEMA_VERSION = 1
#: Hex digits of an outbox incarnation (see Outbox: ``incarnation``).
_INCARNATION_HEX = 8


def _base_source(stored: str) -> str:
    """The source id an incarnation suffix was added to (``agent-s1`` of ``agent-s1.0a1b2c3d``)."""
    base, dot, suffix = stored.rpartition(".")
    if dot and len(suffix) == _INCARNATION_HEX and all(c in "0123456789abcdef" for c in suffix):
        return base
    return stored


#: Default retention of request ids (seconds) and maximum number of seqs they may lag behind.
REQUEST_RETENTION = 7 * 24 * 3600.0
MAX_REQUESTS = 200_000


class OutboxError(RuntimeError):
    """The outbox file cannot be used (e.g. it belongs to another source)."""


class RequestConflict(ValueError):
    """A ``request_id`` already recorded for a movement with another content."""

    def __init__(self, request_id: str, seq: int, recorded: str, given: str) -> None:
        super().__init__(
            f"request_id: {request_id!r} was already used for seq {seq} with another movement "
            f"(recorded [type, sku, quantity, location, ...] {recorded}, this request {given})"
        )
        self.request_id = request_id
        self.seq = seq


def _fingerprint(movement: pb.Movement) -> str:
    """What a retry with the same request_id must repeat: type, SKU, quantity, location, and
    the condition, transfer and counterpart location when set (each only when set, so that the
    fingerprints stored before they existed, for movements without them, hold byte for byte)."""
    what: list[object] = [
        pb.MovementType.Name(movement.type),
        movement.sku,
        movement.quantity,
        movement.location_id,
    ]
    if movement.condition not in (pb.ITEM_CONDITION_UNSPECIFIED, pb.SELLABLE):
        what.append(pb.ItemCondition.Name(movement.condition))
    # Tagged: a list position alone would not tell a transfer_id from a counterpart.
    if movement.transfer_id:
        what.append({"transfer_id": movement.transfer_id})
    if movement.counterpart_location_id:
        what.append({"counterpart": movement.counterpart_location_id})
    return json.dumps(what)


@dataclass(frozen=True, slots=True)
class RejectedMovement:
    """A movement the server refused, as kept for the store's back office."""

    seq: int
    movement: pb.Movement | None
    """As recorded (``None`` when the rejection named a seq no longer in the outbox)."""
    reason: int
    """A ``pb.RejectReason`` value."""
    detail: str
    rejected_at: float
    """Seconds since the epoch (agent clock) when the rejection was recorded."""
    number: int = 0
    """Order of the rejection among the outbox's rejections (1, 2, ...)."""
    device_id: str = ""
    """The till or device that sent the movement ('' when unknown)."""
    request_id: str = ""
    """The intake call's idempotency key ('' when none or unknown)."""
    recorded_at: float | None = None
    """Seconds since the epoch (agent clock) when the movement entered the outbox."""
    resolved_at: float | None = None
    """Seconds since the epoch when store staff marked it handled; ``None``: unresolved."""
    resolved_by: str = ""
    resolve_note: str = ""

    @property
    def reason_name(self) -> str:
        """The ``pb.RejectReason`` name, or the number if this build does not know it."""
        return reject_reason_name(self.reason)


def reject_reason_name(reason: int) -> str:
    """Return the ``pb.RejectReason`` name of ``reason``, or its number if unknown.

    A newer server may send a reason this build does not know (proto3 enums are open); that
    must not break ack handling.
    """
    try:
        return pb.RejectReason.Name(reason)  # type: ignore[arg-type]
    except ValueError:
        return str(reason)


def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    # Take transaction control away from the sqlite3 module (which would otherwise BEGIN lazily
    # and only before DML) so that the "begin" listener decides how each transaction starts.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        # The sender's thread and the ack handler's thread may write at the same moment.
        cursor.execute("PRAGMA busy_timeout=10000")
    finally:
        cursor.close()


def _on_begin(conn: Connection) -> None:
    # Writers take the write lock up front (IMMEDIATE): a deferred transaction that reads
    # next_seq and then upgrades to a writer could fail with SQLITE_BUSY half way through.
    mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
    conn.exec_driver_sql(f"BEGIN {mode}")


def _read_meta(conn: Connection) -> tuple[int, int]:
    """``(last_acked, next_seq)`` as the file has them."""
    row = conn.execute(select(meta_table.c.last_acked, meta_table.c.next_seq)).one()
    return int(row[0]), int(row[1])


def _pending_row(conn: Connection, seq: int) -> Row[Any, Any, Any, Any] | None:
    """The stored row (payload, device_id, request_id, appended_at) of pending ``seq``."""
    return conn.execute(
        select(
            movement_table.c.payload,
            movement_table.c.device_id,
            movement_table.c.request_id,
            movement_table.c.appended_at,
        ).where(movement_table.c.seq == seq)
    ).one_or_none()


def _insert_rejection(
    conn: Connection,
    seq: int,
    pending: Row[Any, Any, Any, Any] | None,
    reason: int,
    detail: str,
    now: float,
) -> None:
    """Record the rejection of ``seq``, with what its pending row (if any) knew."""
    number = conn.execute(select(func.max(rejected_table.c.number))).scalar_one() or 0
    conn.execute(
        insert(rejected_table).values(
            seq=seq,
            payload=None if pending is None else pending.payload,
            reason=int(reason),
            detail=detail,
            rejected_at=now,
            number=int(number) + 1,
            device_id=None if pending is None else pending.device_id,
            request_id=None if pending is None else pending.request_id,
            recorded_at=None if pending is None else pending.appended_at,
        )
    )


def _migrate(conn: Connection) -> None:
    """Bring a file of an older schema version to :data:`SCHEMA_VERSION` (same transaction)."""
    version = int(conn.exec_driver_sql("PRAGMA user_version").scalar_one())
    if version >= SCHEMA_VERSION:
        return
    for table in (movement_table, rejected_table):
        have = {row[1] for row in conn.exec_driver_sql(f"PRAGMA table_info({table.name})")}
        for column in table.columns:
            if column.name not in have:
                kind = column.type.compile(dialect=conn.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {column.name} {kind}")
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_rejected_number ON rejected (number)")
    for name in ("movement", "rejected"):  # the keys the request table still remembers
        conn.exec_driver_sql(
            f"UPDATE {name} SET request_id = (SELECT request.request_id FROM request "
            f"WHERE request.seq = {name}.seq) WHERE request_id IS NULL"
        )
    conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _number_rejections(conn: Connection) -> None:
    """Number the rejections without a number (an older file's, or ones an older agent wrote
    into a newer file), after the others, in seq order."""
    t = rejected_table
    unnumbered = conn.execute(select(t.c.seq).where(t.c.number.is_(None)).order_by(t.c.seq))
    seqs = list(unnumbered.scalars())
    if not seqs:
        return
    top = int(conn.execute(select(func.max(t.c.number))).scalar_one() or 0)
    for n, seq in enumerate(seqs, start=top + 1):
        conn.execute(update(t).where(t.c.seq == seq).values(number=n))


def _rejected_movement(row: Row[Any]) -> RejectedMovement:
    return RejectedMovement(
        seq=int(row.seq),
        movement=None if row.payload is None else pb.Movement.FromString(row.payload),
        reason=int(row.reason),
        detail=str(row.detail),
        rejected_at=float(row.rejected_at),
        number=int(row.number or 0),
        device_id=row.device_id or "",
        request_id=row.request_id or "",
        recorded_at=None if row.recorded_at is None else float(row.recorded_at),
        resolved_at=None if row.resolved_at is None else float(row.resolved_at),
        resolved_by=row.resolved_by or "",
        resolve_note=row.resolve_note or "",
    )


def _to_micros(movement: pb.Movement) -> int | None:
    if not movement.HasField("occurred_at"):
        return None
    ts = movement.occurred_at
    return int(ts.seconds) * 1_000_000 + int(ts.nanos) // 1_000


class Outbox:
    """The durable, seq-assigning outbox of one source (one store edge agent).

    Args:
        path: the SQLite file (created with its tables if missing).
        source_id: the ``source_id`` stamped on every movement; an existing file created for
            another source is refused, since mixing two sources' seqs in one file would lose
            movements.
        request_retention: seconds a ``request_id`` is remembered (:meth:`append_once`).
        max_requests: a ``request_id`` is also forgotten once its seq is this many seqs behind
            the newest one, which bounds the table whatever the rate of calls.
        incarnation: give a new file its own source: ``source_id`` plus ``.`` and 8 random hex
            digits, kept in the file (:attr:`source_id` is then the stored one). The server keeps
            each source's progress; an outbox that was lost and created anew under the same
            source would start again at seq 1, and every new movement up to the old progress
            would be taken for a duplicate and dropped. A file restored from a backup keeps its
            incarnation: its old movements are those the server knows, but movements recorded
            after the restore would reuse seqs the server has already seen, so never restore
            an outbox; start from an empty one.
    """

    def __init__(
        self,
        path: Path | str,
        source_id: str,
        *,
        request_retention: float = REQUEST_RETENTION,
        max_requests: int = MAX_REQUESTS,
        incarnation: bool = False,
    ) -> None:
        if not source_id:
            raise ValueError("source_id must not be empty")
        if incarnation and len(source_id) > 128 - 1 - _INCARNATION_HEX:
            raise ValueError(f"source_id: at most {127 - _INCARNATION_HEX} characters")
        self.path = Path(path)
        self.source_id = source_id
        self._incarnation = incarnation
        self.request_retention = request_retention
        self.max_requests = max_requests
        self._engine: Engine = create_engine(
            f"sqlite:///{self.path}",
            # Calls arrive from asyncio.to_thread workers; the lock below serialises writers.
            connect_args={"check_same_thread": False},
        )
        event.listen(self._engine, "connect", _on_connect)
        event.listen(self._engine, "begin", _on_begin)
        self._write_lock = threading.Lock()
        _metadata.create_all(self._engine)
        # A cache that only skips the write of a stale ack: it may lag another writer's acks
        # (then a write is done for nothing), never run ahead of the file.
        self._last_acked = self._load_meta()

    # ---- lifecycle -------------------------------------------------------------------------

    def _writer(self) -> Connection:
        return self._engine.connect().execution_options(sqlite_begin="IMMEDIATE")

    def _load_meta(self) -> int:
        """Create or check the meta row; the last acked seq."""
        with self._write_lock, self._writer() as conn, conn.begin():
            _migrate(conn)
            _number_rejections(conn)
            row = conn.execute(
                select(meta_table.c.source_id, meta_table.c.next_seq, meta_table.c.last_acked)
            ).one_or_none()
            if row is None:
                if self._incarnation:
                    self.source_id = f"{self.source_id}.{secrets.token_hex(_INCARNATION_HEX // 2)}"
                conn.execute(
                    insert(meta_table).values(
                        id=_META_ID, source_id=self.source_id, next_seq=1, last_acked=0
                    )
                )
                return 0
            if self._incarnation and _base_source(row.source_id) == self.source_id:
                self.source_id = row.source_id
            if row.source_id != self.source_id:
                raise OutboxError(
                    f"{self.path} is the outbox of source {row.source_id!r}, not {self.source_id!r}"
                )
            # next_seq is authoritative, but never trust it to be below a seq that exists: a
            # reused seq would be dropped by the server as a duplicate.
            highest = max(
                conn.execute(select(func.max(movement_table.c.seq))).scalar_one() or 0,
                conn.execute(select(func.max(rejected_table.c.seq))).scalar_one() or 0,
                int(row.last_acked),
            )
            next_seq = max(int(row.next_seq), highest + 1)
            if next_seq != row.next_seq:
                conn.execute(update(meta_table).values(next_seq=next_seq))
            return int(row.last_acked)

    def close(self) -> None:
        """Release the database connections (the data is already durable)."""
        self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- writes ----------------------------------------------------------------------------

    def append(self, movements: Sequence[pb.Movement], *, device_id: str = "") -> list[int]:
        """Assign the next seqs to ``movements`` and store them durably, in one transaction.

        Each movement is updated in place (``source_id`` and ``seq`` set) so that the caller
        sees its seq. When this returns the movements are on disk (fsynced): a sale recorded
        at a till is safe from then on. ``device_id`` (the till or device that sent them) is
        kept with them, for their rejection if the server refuses one.

        Returns:
            The seqs assigned, in the order of ``movements`` (strictly increasing).
        """
        if not movements:
            return []
        with self._write_lock, self._writer() as conn, conn.begin():
            first, next_seq = self._insert(conn, movements, time.time(), device_id)
        return list(range(first, next_seq))

    def append_once(
        self, movement: pb.Movement, request_id: str, *, device_id: str = ""
    ) -> tuple[int, bool]:
        """Append ``movement`` unless ``request_id`` was already recorded: an idempotent intake.

        ``device_id`` and ``request_id`` are kept with the movement (see :meth:`append`).

        The key and the movement are written in one transaction, so a crash either keeps both
        or neither: there is no moment where a retry could append the movement twice.

        Returns:
            ``(seq, appended)``: the seq given now (``True``), or the seq the first call with
            this ``request_id`` got (``False``, nothing appended; ``movement`` is not touched).

        Raises:
            RequestConflict: ``request_id`` was recorded for a movement with another type, SKU,
                quantity, location, condition, transfer_id or counterpart_location_id.
        """
        if not request_id:
            raise ValueError("request_id must not be empty")
        fingerprint = _fingerprint(movement)
        now = time.time()
        with self._write_lock, self._writer() as conn, conn.begin():
            seq = self._recorded_seq(conn, request_id, fingerprint)
            if seq is not None:
                return seq, False
            first, next_seq = self._insert(conn, [movement], now, device_id, request_id)
            conn.execute(
                insert(request_table).values(
                    request_id=request_id, seq=first, fingerprint=fingerprint, recorded_at=now
                )
            )
            conn.execute(
                delete(request_table).where(
                    (request_table.c.recorded_at < now - self.request_retention)
                    | (request_table.c.seq < next_seq - self.max_requests)
                )
            )
        return first, True

    def request_seq(self, request_id: str, movement: pb.Movement) -> int | None:
        """The seq ``request_id`` got if it is recorded (for ``movement``), else ``None``.

        A read-only check an intake makes before its side effects; :meth:`append_once` decides.

        Raises:
            RequestConflict: as :meth:`append_once`.
        """
        with self._engine.connect() as conn:
            return self._recorded_seq(conn, request_id, _fingerprint(movement))

    def _recorded_seq(self, conn: Connection, request_id: str, fingerprint: str) -> int | None:
        row = conn.execute(
            select(request_table.c.seq, request_table.c.fingerprint).where(
                request_table.c.request_id == request_id
            )
        ).one_or_none()
        if row is None:
            return None
        if row.fingerprint != fingerprint:
            raise RequestConflict(request_id, int(row.seq), str(row.fingerprint), fingerprint)
        return int(row.seq)

    def _insert(
        self,
        conn: Connection,
        movements: Sequence[pb.Movement],
        now: float,
        device_id: str = "",
        request_id: str = "",
    ) -> tuple[int, int]:
        """Insert ``movements`` from ``next_seq`` on, in ``conn``'s (IMMEDIATE) transaction.

        ``next_seq`` is read from the file inside the transaction, never from memory: the
        write lock taken by BEGIN IMMEDIATE makes the read and the increment one step, so even
        two writers on one file (two Outbox objects, two processes) never hand out one seq
        twice. (The agent also refuses to run twice on one outbox: unistock.edge.datalock.)

        Returns:
            ``(first seq, new next_seq)``.
        """
        first = int(conn.execute(select(meta_table.c.next_seq)).scalar_one())
        rows: list[dict[str, Any]] = []
        for offset, movement in enumerate(movements):
            movement.source_id = self.source_id
            movement.seq = first + offset
            rows.append(
                {
                    "seq": first + offset,
                    "payload": movement.SerializeToString(),
                    "occurred_at": _to_micros(movement),
                    "appended_at": now,
                    "state": STATE_PENDING,
                    "device_id": device_id,
                    "request_id": request_id,
                }
            )
        next_seq = first + len(rows)
        conn.execute(insert(movement_table), rows)
        conn.execute(update(meta_table).values(next_seq=next_seq))
        return first, next_seq

    def ack(self, seq: int) -> int:
        """Remove every movement with ``seq`` at or below ``seq``: the server holds them durably.

        Returns:
            The number of movements removed.
        """
        return self.settle(seq, ())

    def reject(self, seq: int, reason: int, detail: str = "") -> bool:
        """Move the movement ``seq`` to the ``rejected`` table: the server refused it for good.

        Args:
            seq: the rejected movement.
            reason: a ``pb.RejectReason`` value.
            detail: the server's human-readable detail.

        Returns:
            Whether a pending movement was moved (``False`` for a repeated rejection).
        """
        return self.settle(None, [(seq, reason, detail)]) > 0

    def set_aside(self, seq: int, stand_in: pb.Movement, reason: int, detail: str) -> bool:
        """Reject ``seq`` on the agent's side, and leave ``stand_in`` pending under its seq.

        For a movement the agent cannot send (too large to publish): the original goes to the
        ``rejected`` table with ``reason`` and ``detail`` for the back office, and ``stand_in``
        (a movement the server rejects) replaces its payload in ``movement``, so that the seq is
        still sent and the server, which applies a source's seqs without gaps, moves past it.
        The server's ack or rejection of the stand-in then settles the seq as usual (the
        agent's own rejection record is kept). One transaction.

        Returns:
            Whether ``seq`` was pending (and was set aside).
        """
        stand_in.source_id = self.source_id
        stand_in.seq = seq
        with self._write_lock, self._writer() as conn, conn.begin():
            pending = _pending_row(conn, seq)
            if pending is None:
                return False
            conn.execute(delete(rejected_table).where(rejected_table.c.seq == seq))
            _insert_rejection(conn, seq, pending, reason, detail, time.time())
            conn.execute(
                update(movement_table)
                .where(movement_table.c.seq == seq)
                .values(payload=stand_in.SerializeToString())
            )
        return True

    def settle(self, acked_seq: int | None, rejections: Iterable[tuple[int, int, str]]) -> int:
        """Apply one server ack: record its rejections, then remove everything it covers.

        Both happen in one transaction, rejections first: a ``MovementAck``'s seq also covers
        the movements it rejects, so deleting first would lose the rejected payloads that the
        back office needs.

        Args:
            acked_seq: the highest seq the server holds durably, or ``None``.
            rejections: ``(seq, reason, detail)`` of each rejected movement.

        Returns:
            The number of movements that left the outbox (acknowledged or rejected).
        """
        rejections = [r for r in rejections if r[0] > 0]
        if (acked_seq is None or acked_seq <= self._last_acked) and not rejections:
            # A redelivered or stale ack: skip the write (and its fsync).
            return 0
        now = time.time()
        removed = 0
        with self._write_lock:
            with self._writer() as conn, conn.begin():
                # The file's values, not the cached ones: another writer may have moved them.
                last_acked, next_seq = _read_meta(conn)
                for seq, reason, detail in rejections:
                    pending = _pending_row(conn, seq)
                    already = conn.execute(
                        select(rejected_table.c.seq).where(rejected_table.c.seq == seq)
                    ).scalar_one_or_none()
                    if pending is None and (already is not None or seq <= last_acked):
                        continue  # repeated rejection, or of a movement already acknowledged
                    if already is None:
                        _insert_rejection(conn, seq, pending, reason, detail, now)
                    removed += conn.execute(
                        delete(movement_table).where(movement_table.c.seq == seq)
                    ).rowcount
                if acked_seq is not None and acked_seq > last_acked:
                    removed += conn.execute(
                        delete(movement_table).where(movement_table.c.seq <= acked_seq)
                    ).rowcount
                    last_acked = acked_seq
                    if acked_seq >= next_seq:
                        # The server knows seqs this outbox never assigned: the file was lost or
                        # restored from an old copy. New movements must continue above them, or the
                        # server would drop them as duplicates.
                        _log.warning(
                            "server acked seq %d of %s but the outbox only assigned up to %d; "
                            "continuing at %d",
                            acked_seq,
                            self.source_id,
                            next_seq - 1,
                            acked_seq + 1,
                        )
                        next_seq = acked_seq + 1
                    conn.execute(
                        update(meta_table).values(last_acked=last_acked, next_seq=next_seq)
                    )
            self._last_acked = last_acked
        return removed

    # ---- reads -----------------------------------------------------------------------------

    def pending(self, after_seq: int = 0, *, limit: int = 1000) -> list[pb.Movement]:
        """Return up to ``limit`` unacknowledged movements with ``seq > after_seq``, in seq order."""
        with self._engine.connect() as conn:
            payloads = conn.execute(
                select(movement_table.c.payload)
                .where(movement_table.c.seq > after_seq)
                .order_by(movement_table.c.seq)
                .limit(limit)
            ).scalars()
            return [pb.Movement.FromString(p) for p in payloads]

    def settled_through(self) -> int:
        """Return the highest seq below which nothing is pending (acknowledged or rejected).

        Unlike :attr:`last_acked` this also moves past rejected movements.
        """
        # One statement, one snapshot: the lowest pending seq and next_seq must come from one
        # state, or a movement appended in between would count as settled and never be sent.
        lowest = select(func.min(movement_table.c.seq)).scalar_subquery()
        with self._engine.connect() as conn:
            row = conn.execute(select(lowest, meta_table.c.next_seq)).one()
        return (int(row[1]) if row[0] is None else int(row[0])) - 1

    def depth(self) -> int:
        """Return the number of movements waiting for the server's ack."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(movement_table)).scalar_one())

    def oldest_unacked_age(self, now: float | None = None) -> float | None:
        """Return how long (s) the oldest pending movement has waited, ``None`` if none waits.

        Args:
            now: seconds since the epoch (default: ``time.time()``).
        """
        with self._engine.connect() as conn:
            appended = conn.execute(
                select(movement_table.c.appended_at).order_by(movement_table.c.seq).limit(1)
            ).scalar_one_or_none()
        if appended is None:
            return None
        return max(0.0, (time.time() if now is None else now) - float(appended))

    def is_rejected(self, seq: int) -> bool:
        """Return whether ``seq`` is recorded as rejected by the server."""
        with self._engine.connect() as conn:
            return (
                conn.execute(
                    select(rejected_table.c.seq).where(rejected_table.c.seq == seq)
                ).scalar_one_or_none()
                is not None
            )

    def rejected(self) -> list[RejectedMovement]:
        """Return the movements the server rejected, in seq order (for the back office)."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(rejected_table).order_by(rejected_table.c.seq)).all()
        return [_rejected_movement(row) for row in rows]

    def rejections(
        self,
        *,
        unresolved_only: bool = False,
        device_id: str = "",
        since: float | None = None,
        before_number: int | None = None,
        after_number: int | None = None,
        limit: int | None = None,
        newest_first: bool = True,
    ) -> list[RejectedMovement]:
        """Return rejections in the order they were recorded (newest first by default).

        Args:
            unresolved_only: only those no one has resolved (:meth:`resolve`).
            device_id: only those of this till or device ('' = all).
            since: only those rejected at or after this time (seconds since the epoch).
            before_number: only those with a smaller :attr:`RejectedMovement.number` (paging).
            after_number: only those with a larger number (a watch's new ones).
            limit: at most this many.
            newest_first: order by number descending (else ascending).
        """
        t = rejected_table
        query = select(t)
        if unresolved_only:
            query = query.where(t.c.resolved_at.is_(None))
        if device_id:
            query = query.where(t.c.device_id == device_id)
        if since is not None:
            query = query.where(t.c.rejected_at >= since)
        if before_number is not None:
            query = query.where(t.c.number < before_number)
        if after_number is not None:
            query = query.where(t.c.number > after_number)
        query = query.order_by(t.c.number.desc() if newest_first else t.c.number)
        if limit is not None:
            query = query.limit(limit)
        with self._engine.connect() as conn:
            return [_rejected_movement(row) for row in conn.execute(query).all()]

    def last_rejection_number(self) -> int:
        """The :attr:`RejectedMovement.number` of the latest rejection (0 if none)."""
        with self._engine.connect() as conn:
            return int(conn.execute(select(func.max(rejected_table.c.number))).scalar_one() or 0)

    def unresolved(self) -> tuple[int, float | None]:
        """``(count, rejected_at of the latest)`` of the rejections no one has resolved.

        The time is seconds since the epoch, ``None`` when none is unresolved.
        """
        t = rejected_table
        with self._engine.connect() as conn:
            row = conn.execute(
                select(func.count(), func.max(t.c.rejected_at)).where(t.c.resolved_at.is_(None))
            ).one()
        return int(row[0]), None if row[1] is None else float(row[1])

    def resolve(
        self, seq: int, by: str, note: str = "", *, now: float | None = None
    ) -> RejectedMovement | None:
        """Mark the rejection of ``seq`` handled by store staff (``by``, with a ``note``).

        Idempotent: the first resolution is kept; resolving again changes nothing and returns
        the rejection as first resolved.

        Args:
            now: seconds since the epoch (default: ``time.time()``).

        Returns:
            The rejection after the call, or ``None`` if ``seq`` is not a rejected movement.
        """
        t = rejected_table
        with self._write_lock, self._writer() as conn, conn.begin():
            conn.execute(
                update(t)
                .where((t.c.seq == seq) & t.c.resolved_at.is_(None))
                .values(
                    resolved_at=time.time() if now is None else now,
                    resolved_by=by,
                    resolve_note=note,
                )
            )
            row = conn.execute(select(t).where(t.c.seq == seq)).one_or_none()
        return None if row is None else _rejected_movement(row)

    def _meta(self) -> tuple[int, int]:
        with self._engine.connect() as conn:
            return _read_meta(conn)

    @property
    def last_acked(self) -> int:
        """The highest seq the server has acknowledged as durable (0 before the first ack).

        Read from the file, like :attr:`next_seq`: what another writer did is included.
        """
        return self._meta()[0]

    @property
    def next_seq(self) -> int:
        """The seq the next appended movement will get."""
        return self._meta()[1]
