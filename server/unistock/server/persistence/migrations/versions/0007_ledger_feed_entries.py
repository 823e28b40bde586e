"""The ledger writes each feed entry once (ledger_feed) instead of each row once by entry_key;
the reservation index leaves out the rows that name no reservation.

Every change is in exactly one feed entry (the flush script appends a change only when the
stored state is older than it, in the same call as that state), so a table of the feed entries
written, inserted in the same transaction as their rows, makes the ledger exactly once as the
unique entry_key did: a feed entry read again after a crash between the SQL commit and the
cursor's save is skipped. entry_key stays (it names the change) without its unique index, which
was about a quarter of the SQLite writer's CPU per row (docs/performance.md, B11).

The entries of the rows already written are recorded with partition -1 (the ledger does not
know their partition): one of them read again, e.g. after a writer was killed between its SQL
commit and its cursor's save and the upgrade ran before it restarted, is skipped like any other.

ix_ledger_reservation_kind becomes partial (WHERE reservation_id IS NOT NULL): its lookups are
all `reservation_id = ...`, which both databases know to imply the condition.

On SQLite the unique constraint of 0003 is part of the table: the table is rebuilt (its rows
copied, ids kept); no foreign key refers to it. The downgrade restores both (it fails if two rows
have the same entry_key, which no writer makes).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_INDEXES = {
    "ix_ledger_position": ["location_id", "sku", "at_ms"],
    "ix_ledger_location_at": ["location_id", "at_ms"],
    "ix_ledger_sku_at": ["sku", "at_ms"],
    "ix_ledger_kind_at": ["kind", "at_ms"],
}
_PARTIAL = sa.text("reservation_id IS NOT NULL")
#: PostgreSQL's name of 0003's unique constraint (its default: <table>_<column>_key)
_UNIQUE = "ledger_entries_entry_key_key"


def _columns(unique: bool) -> list[sa.Column[Any]]:
    """ledger_entries' columns as 0003 made them, entry_key unique or not."""
    return [
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("entry_key", sa.String(300), nullable=False, unique=unique),
        sa.Column("feed_id", sa.String(40), nullable=False),
        sa.Column("kind", sa.SmallInteger, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
        sa.Column("sku", sa.String(128), nullable=True),
        sa.Column("location_id", sa.String(128), nullable=True),
        sa.Column("version", sa.BigInteger, nullable=True),
        sa.Column("source_id", sa.String(128), nullable=True),
        sa.Column("seq", sa.BigInteger, nullable=True),
        sa.Column("movement_type", sa.SmallInteger, nullable=True),
        sa.Column("quantity", sa.BigInteger, nullable=True),
        sa.Column("on_hand_delta", sa.BigInteger, nullable=True),
        sa.Column("on_hand", sa.BigInteger, nullable=True),
        sa.Column("available", sa.BigInteger, nullable=True),
        sa.Column("variance", sa.BigInteger, nullable=True),
        sa.Column("count_id", sa.String(128), nullable=True),
        sa.Column("transfer_id", sa.String(128), nullable=True),
        sa.Column("reason", sa.String(256), nullable=True),
        sa.Column("reservation_id", sa.String(128), nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=True),
        sa.Column("transitions", sa.String(200), nullable=True),
        sa.Column("state", sa.SmallInteger, nullable=True),
        sa.Column("channel", sa.String(256), nullable=True),
        sa.Column("customer_id", sa.String(256), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
    ]


def _rebuild_sqlite(unique: bool, partial: bool) -> None:
    """Copy ledger_entries into a table made anew (ids kept), with its indexes."""
    columns = _columns(unique)
    op.create_table("ledger_entries_rebuilt", *columns)
    names = ", ".join(c.name for c in columns)
    op.execute(
        f"INSERT INTO ledger_entries_rebuilt ({names}) SELECT {names} FROM ledger_entries"
    )  # (its indexes go with it)
    op.drop_table("ledger_entries")
    op.rename_table("ledger_entries_rebuilt", "ledger_entries")
    for name, cols in _INDEXES.items():
        op.create_index(name, "ledger_entries", cols)
    op.create_index(
        "ix_ledger_reservation_kind",
        "ledger_entries",
        ["reservation_id", "kind"],
        sqlite_where=_PARTIAL if partial else None,
    )


def upgrade() -> None:
    op.create_table(
        "ledger_feed",
        sa.Column("feed_id", sa.String(40), primary_key=True),
        sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
    )
    op.execute(
        "INSERT INTO ledger_feed (feed_id, partition) "
        "SELECT DISTINCT feed_id, -1 FROM ledger_entries"
    )
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(unique=False, partial=True)
        return
    op.drop_constraint(_UNIQUE, "ledger_entries", type_="unique")
    op.drop_index("ix_ledger_reservation_kind", "ledger_entries")
    op.create_index(
        "ix_ledger_reservation_kind",
        "ledger_entries",
        ["reservation_id", "kind"],
        postgresql_where=_PARTIAL,
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(unique=True, partial=False)
    else:
        op.create_unique_constraint(_UNIQUE, "ledger_entries", ["entry_key"])
        op.drop_index("ix_ledger_reservation_kind", "ledger_entries")
        op.create_index("ix_ledger_reservation_kind", "ledger_entries", ["reservation_id", "kind"])
    op.drop_table("ledger_feed")
