"""The ledger (issue 11): every change of the change feed, exactly once by entry_key.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ledger_entries",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
        sa.Column("entry_key", sa.String(300), nullable=False, unique=True),
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
    )
    op.create_index("ix_ledger_position", "ledger_entries", ["location_id", "sku", "at_ms"])
    op.create_index("ix_ledger_location_at", "ledger_entries", ["location_id", "at_ms"])
    op.create_index("ix_ledger_reservation", "ledger_entries", ["reservation_id"])


def downgrade() -> None:
    op.drop_table("ledger_entries")
