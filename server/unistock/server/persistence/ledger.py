"""The ledger in SQL (issue 11): every change of the change feed, written once.

Rows come from feed entries (`ledger_rows`) and are inserted with ON CONFLICT DO NOTHING on
their entry_key (a position change "p:<location>|<sku>:<version>", a reservation change
"r:<id>:<revision>"): writing the same entries again, after a crash between the SQL commit and
the feed cursor's save, adds nothing. SQLite or PostgreSQL, the schema by Alembic (0003).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from google.protobuf import json_format
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from unistock.server.domain import Transition
from unistock.server.persistence.codec import FeedRecord, ReservationFeedRecord
from unistock.server.persistence.sql import LEDGER
from unistock.storage.v1 import storage_pb2 as spb

#: ledger_entries.kind: an applied movement, a fulfilment's shipment, a reservation's
#: transitions, a transfer discrepancy (transfer_id, sku, location_id the destination, quantity
#: the units, reason the DiscrepancyKind's name, on_hand_delta NULL)
MOVEMENT, SHIPMENT, RESERVATION, TRANSFER = 1, 2, 3, 4
_NO_EXTRA = spb.FeedExtra()


def ledger_rows(
    feed_id: str, records: Sequence[FeedRecord | ReservationFeedRecord]
) -> list[dict[str, Any]]:
    """The ledger rows of one feed entry's changes."""
    rows: list[dict[str, Any]] = []
    for r in records:
        if isinstance(r, FeedRecord):
            x = r.extra or _NO_EXTRA  # its strings are "" (stored as NULL)
            rows.append(
                {
                    "entry_key": f"p:{r.location_id}|{r.sku}:{r.version}",
                    "feed_id": feed_id,
                    "kind": SHIPMENT if r.type is None else MOVEMENT,
                    "at_ms": r.at_ms,
                    "sku": r.sku,
                    "location_id": r.location_id,
                    "version": r.version,
                    "source_id": r.source_id or None,
                    "seq": r.seq or None,
                    "movement_type": None if r.type is None else int(r.type),
                    "quantity": r.quantity,
                    "on_hand_delta": r.on_hand_delta,
                    "on_hand": r.on_hand,
                    "available": r.available,
                    "variance": x.variance if r.extra is not None else None,
                    "count_id": x.count_id or None,
                    "transfer_id": x.transfer_id or None,
                    "reason": x.reason or None,
                    "reservation_id": x.reservation_id or None,
                }
            )
        else:
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
    return rows


#: Every column a row may set (rows are completed with None: one INSERT shape per batch).
_COLUMNS = [c.name for c in LEDGER.columns if c.name != "id"]


class LedgerStore:
    """Writes and reads ledger rows; every method is one transaction (raises SQLAlchemyError).
    Shares the master data's engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, rows: Sequence[dict[str, Any]]) -> int:
        """Insert rows not already there (by entry_key), in one transaction; returns how many
        were new."""
        if not rows:
            return 0
        insert = (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert
        full = [{c: row.get(c) for c in _COLUMNS} for row in rows]
        new = 0
        with self.engine.begin() as conn:
            for start in range(0, len(full), 500):
                stmt = insert(LEDGER).values(full[start : start + 500])
                stmt = stmt.on_conflict_do_nothing(index_elements=["entry_key"])
                new += len(conn.execute(stmt.returning(LEDGER.c.id)).all())
        return new

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
