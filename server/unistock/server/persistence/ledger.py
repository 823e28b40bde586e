"""The ledger in SQL (issue 11): every change of the change feed, written once.

Rows come from feed entries (`position_rows`, `ledger_rows`), each named by its entry_key (a
position change "p:<location>|<sku>:<version>", a reservation change "r:<id>:<revision>", a
transfer discrepancy "t:<destination>|<transfer_id>:<revision>:<n>"). They are written a feed
entry at a time, with the entry's row in ledger_feed, in one transaction: each change is in
exactly one feed entry (the flush script appends a change only when the stored state is older,
in the same call), so writing the same entries again, after a crash between the SQL commit and
the feed cursor's save, adds nothing. (Until 0007 a unique index on entry_key did that, per
row: a quarter of the SQLite writer's CPU.) SQLite or PostgreSQL, the schema by Alembic (0003,
0004, 0007).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from google.protobuf import json_format
from sqlalchemy.engine import Engine

from unistock.server.domain import DiscrepancyKind, Transition
from unistock.server.persistence import codec
from unistock.server.persistence.codec import (
    AnyFeedRecord,
    NetworkLevelFeedRecord,
    ReservationFeedRecord,
    StoreStatusFeedRecord,
    TransferFeedRecord,
)
from unistock.server.persistence.sql import LEDGER, LEDGER_FEED
from unistock.storage.v1 import storage_pb2 as spb

#: ledger_entries.kind: an applied movement, a fulfilment's shipment, a reservation's
#: transitions, a transfer discrepancy (transfer_id, sku, location_id the destination, quantity
#: the units, reason the DiscrepancyKind's name, on_hand_delta NULL)
MOVEMENT, SHIPMENT, RESERVATION, TRANSFER = 1, 2, 3, 4


def ledger_rows(feed_id: str, records: Sequence[AnyFeedRecord]) -> list[dict[str, Any]]:
    """The ledger rows of a feed entry's changes other than its positions' (`position_rows`
    reads those straight from the entry's bytes): reservation transitions and transfer
    discrepancies. Store status and network level class changes, which change no quantity, have
    none: they are events' business."""
    rows: list[dict[str, Any]] = []
    for r in records:
        if isinstance(r, StoreStatusFeedRecord | NetworkLevelFeedRecord):
            continue
        if isinstance(r, TransferFeedRecord):
            rows += [
                {
                    "entry_key": f"t:{r.destination}|{r.transfer_id}:{r.revision}:{i}",
                    "feed_id": feed_id,
                    "kind": TRANSFER,
                    "at_ms": r.at_ms,
                    "sku": d.sku,
                    "location_id": r.destination,
                    "version": r.revision,
                    "source_id": d.source_id or None,
                    "seq": d.seq or None,
                    "quantity": d.quantity,
                    "transfer_id": r.transfer_id,
                    "reason": DiscrepancyKind(d.kind).name,
                }
                for i, d in enumerate(r.discrepancies)
            ]
        elif isinstance(r, ReservationFeedRecord):
            res = r.reservation
            rows.append(
                {
                    "entry_key": f"r:{r.reservation_id}:{r.revision}",
                    "feed_id": feed_id,
                    "kind": RESERVATION,
                    "at_ms": r.at_ms,
                    "reservation_id": r.reservation_id,
                    "revision": r.revision,
                    "transitions": ",".join(Transition(t).name for t in r.transitions),
                    "state": int(res.state),
                    "channel": res.channel or None,
                    "customer_id": res.customer_id or None,
                    "detail": json_format.MessageToJson(res, indent=None),
                }
            )
        else:  # a position's change: position_rows reads those
            raise ValueError(f"ledger_rows takes no {type(r).__name__} (see position_rows)")
    return rows


#: The columns a position change's row (movement or shipment) sets, first in COLUMNS.
POSITION_COLUMNS: tuple[str, ...] = (
    "entry_key", "feed_id", "kind", "at_ms", "sku", "location_id", "version", "source_id",
    "seq", "movement_type", "quantity", "on_hand_delta", "on_hand", "available", "variance",
    "count_id", "transfer_id", "reason", "reservation_id",
)  # fmt: skip
#: The other columns (a position change's row has them NULL).
_REST_COLUMNS = (
    "revision", "transitions", "state", "channel", "customer_id", "detail",
)  # fmt: skip
_REST = (None,) * len(_REST_COLUMNS)
#: Every column a row may set, in the order of a row's values.
COLUMNS = POSITION_COLUMNS + _REST_COLUMNS
assert set(COLUMNS) == {c.name for c in LEDGER.columns} - {"id"}, "ledger.COLUMNS is stale"
_FIXED = codec._FEED_FIXED  # the feed's binary form, read here at full speed
_read_varint = codec._read_varint


def position_rows(feed_id: str, entry: bytes) -> tuple[list[tuple[Any, ...]], list[AnyFeedRecord]]:
    """A feed entry's position changes as rows (values of COLUMNS), read straight from its
    bytes (the ledger writer's hot loop: ~3x faster than decode_feed + ledger_rows), and its
    other changes (reservation transitions) decoded for `ledger_rows`, which come after them
    in the entry."""
    rows: list[tuple[Any, ...]] = []
    others: list[AnyFeedRecord] = []
    unpack, size = _FIXED.unpack_from, _FIXED.size
    pos, end = 0, len(entry)
    while pos < end:
        start = pos
        kind = entry[pos]
        n, pos = _read_varint(entry, pos + 1)
        key = entry[pos : pos + n].decode()
        pos += n
        count, pos = _read_varint(entry, pos)
        if kind != codec.FEED_POSITION:
            after = codec._skip_changes(entry, pos, count)
            others += codec.decode_feed(entry[start:after])
            pos = after
            continue
        location_id, _, sku = key.partition("|")
        prefix = f"p:{key}:"
        for _ in range(count):
            version, at_ms, seq, qty, delta, on_hand, available, mtype, flags = unpack(entry, pos)
            pos += size
            n = entry[pos]
            source_id = entry[pos + 1 : pos + 1 + n].decode() if n else None
            pos += 1 + n
            x = None
            if flags & codec.FEED_EXTRA:
                n, pos = _read_varint(entry, pos)
                x = spb.FeedExtra.FromString(entry[pos : pos + n])
                pos += n
            if mtype == codec.LEVEL:  # a level change (no quantity changed): not a row
                continue
            shipped = mtype == codec.FULFILMENT
            rows.append(
                (
                    prefix + str(version), feed_id, SHIPMENT if shipped else MOVEMENT, at_ms,
                    sku, location_id, version, source_id, seq or None,
                    None if shipped else mtype, qty, delta, on_hand, available,
                    None if x is None else x.variance,
                    x.count_id or None if x else None, x.transfer_id or None if x else None,
                    x.reason or None if x else None, x.reservation_id or None if x else None,
                    *_REST,
                )
            )  # fmt: skip
    return rows, others


#: A feed entry to write: (partition, feed id, its rows as values of COLUMNS).
FeedEntry = tuple[int, str, Sequence[tuple[Any, ...]]]

_NAMES = ", ".join(COLUMNS)
_SQLITE_INSERT = f"INSERT INTO ledger_entries ({_NAMES}) VALUES ({', '.join('?' * len(COLUMNS))})"
#: Without ON CONFLICT: a second writer that wrote the same entry meanwhile fails the
#: transaction (it is tried again, and skips the entry then).
_SQLITE_FEED_INSERT = "INSERT INTO ledger_feed (feed_id, partition) VALUES (?, ?)"
#: Feed ids looked up per statement (SQLite allows 32,766 parameters).
_LOOKUP_CHUNK = 1000


def _written(cursor: Any, entries: Sequence[FeedEntry], param: str) -> set[tuple[int, str]]:
    """The (partition, feed id) of entries already in ledger_feed (one written before 0007,
    partition -1, counts for every partition)."""
    ids = sorted({feed_id for _, feed_id, _ in entries})
    found: set[tuple[int, str]] = set()
    for i in range(0, len(ids), _LOOKUP_CHUNK):
        chunk = ids[i : i + _LOOKUP_CHUNK]
        cursor.execute(
            "SELECT partition, feed_id FROM ledger_feed "
            f"WHERE feed_id IN ({', '.join([param] * len(chunk))})",
            chunk,
        )
        found.update((int(p), f) for p, f in cursor.fetchall())
    return {(p, f) for p, f, _ in entries if (p, f) in found or (-1, f) in found}


def _copy_postgres(raw: Any, entries: Sequence[FeedEntry]) -> int:
    """COPY the rows of the entries not already written into the ledger (in their order), and
    the entries into ledger_feed; the rows inserted (psycopg 3, inside the caller's
    transaction)."""
    with raw.cursor() as cursor:
        done = _written(cursor, entries, "%s")
        new = [e for e in entries if (e[0], e[1]) not in done]
        inserted = 0
        with cursor.copy(f"COPY ledger_entries ({_NAMES}) FROM STDIN") as copy:
            for _, _, rows in new:
                for v in rows:
                    copy.write_row(v)
                inserted += len(rows)
        with cursor.copy("COPY ledger_feed (feed_id, partition) FROM STDIN") as copy:
            for p, feed_id, _ in new:
                copy.write_row((feed_id, p))
        return inserted


class LedgerStore:
    """Writes and reads ledger rows; every method is one transaction (raises SQLAlchemyError).
    Shares the master data's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, rows: Sequence[dict[str, Any]], partition: int = 0) -> int:
        """Insert rows as the feed entries of a partition that their feed_id names (an entry's
        rows together, in the order of its first), those entries not already written, in one
        transaction; returns how many rows were new."""
        entries: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            entries.setdefault(row["feed_id"], []).append(tuple(row.get(c) for c in COLUMNS))
        return self.write_entries([(partition, f, vs) for f, vs in entries.items()])

    def write_entries(self, entries: Sequence[FeedEntry]) -> int:
        """Insert the rows of the feed entries (e.g. from `position_rows`) not already written
        (by partition and feed id, in ledger_feed), in this order (ids follow it), and record
        those entries, in one transaction; returns how many rows were new. At the driver's
        level, not row by row through SQLAlchemy (the ledger must keep up with B1's load,
        docs/performance.md, B11): SQLite executemany; PostgreSQL COPY."""
        if not entries:
            return 0
        with self.engine.begin() as conn:
            raw = conn.connection.driver_connection
            if self.engine.dialect.name == "postgresql":
                return _copy_postgres(raw, entries)
            cursor = raw.cursor()  # type: ignore[union-attr]
            try:
                done = _written(cursor, entries, "?")
                new = [e for e in entries if (e[0], e[1]) not in done]
                values = [v for _, _, rows in new for v in rows]
                if values:
                    cursor.executemany(_SQLITE_INSERT, values)
                if new:
                    cursor.executemany(_SQLITE_FEED_INSERT, [(f, p) for p, f, _ in new])
                return len(values)
            finally:
                cursor.close()

    def prune_feed(self, cursors: dict[int, int]) -> int:
        """Forget the written feed entries of ledger_feed that no writer reads again: per
        partition, those from before the millisecond of its saved cursor (cursors: partition ->
        ms of its cursor's feed id; a writer reads again only what is after its cursors); the
        entries recorded before 0007 (partition -1) from before the oldest cursor of a
        partition read from. Returns how many. Feed ids compare as text: "<ms>-<n>" with
        13-digit milliseconds (2001 to 2286) sort by ms."""
        read = {p: ms for p, ms in cursors.items() if len(str(ms)) == 13}
        if not read:
            return 0
        col = LEDGER_FEED.c
        n = 0
        with self.engine.begin() as conn:
            for p, ms in sorted({**read, -1: min(read.values())}.items()):
                result = conn.execute(
                    sa.delete(LEDGER_FEED).where(col.partition == p, col.feed_id < f"{ms}-")
                )
                n += int(result.rowcount or 0)
        return n

    def history(self, location_id: str, sku: str = "", limit: int = 1000) -> list[sa.Row[Any]]:
        """A position's (or a location's) entries, oldest first."""
        query = sa.select(LEDGER).where(LEDGER.c.location_id == location_id)
        if sku:
            query = query.where(LEDGER.c.sku == sku)
        with self.engine.connect() as conn:
            return list(conn.execute(query.order_by(LEDGER.c.at_ms, LEDGER.c.id).limit(limit)))

    def count(self) -> int:
        """Rows in the ledger."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(LEDGER)).scalar_one())
