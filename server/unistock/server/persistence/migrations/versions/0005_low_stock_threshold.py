"""Locations: low_stock_threshold (units; a position there with 1 to that many available is
low on stock: WatchEvents' LOW_STOCK). Existing locations get 0: only out of / back in stock.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("locations") as batch:  # batch: SQLite cannot ALTER much in place
        batch.add_column(
            sa.Column("low_stock_threshold", sa.BigInteger, nullable=False, server_default="0")
        )


def downgrade() -> None:
    # In place (SQLite >= 3.35 drops a column), never by recreating the table: on SQLite that
    # drops the old table, and with foreign keys on (the server's connections) the drop
    # deletes its rows first, cascading to network_members (see 0006).
    with op.batch_alter_table("locations", recreate="never") as batch:
        batch.drop_column("low_stock_threshold")
