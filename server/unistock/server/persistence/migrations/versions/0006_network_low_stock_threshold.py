"""Networks: low_stock_threshold (units; a SKU whose network available is 1 to that many is low
on stock in the network: WatchEvents' NETWORK_LOW_STOCK). Existing networks get 0: only
NETWORK_OUT_OF_STOCK and NETWORK_BACK_IN_STOCK.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("networks") as batch:  # batch: SQLite cannot ALTER much in place
        batch.add_column(
            sa.Column("low_stock_threshold", sa.BigInteger, nullable=False, server_default="0")
        )


def downgrade() -> None:
    # In place (SQLite >= 3.35 drops a column), never by recreating the table: on SQLite that
    # drops the old networks table, and with foreign keys on (the server's connections) the
    # drop deletes its rows first, cascading to network_members: every member would be lost.
    with op.batch_alter_table("networks", recreate="never") as batch:
        batch.drop_column("low_stock_threshold")
