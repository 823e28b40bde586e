"""Networks: what a stale member's units count for (stale_policy, stale_discount_percent).

Existing networks keep what they did: EXCLUDE (1), no discount.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("networks") as batch:  # batch: SQLite cannot ALTER much in place
        batch.add_column(
            sa.Column("stale_policy", sa.SmallInteger, nullable=False, server_default="1")
        )
        batch.add_column(
            sa.Column("stale_discount_percent", sa.SmallInteger, nullable=False, server_default="0")
        )


def downgrade() -> None:
    # In place (SQLite >= 3.35 drops a column), never by recreating the table: on SQLite that
    # drops the old table, and with foreign keys on (the server's connections) the drop
    # deletes its rows first, cascading to network_members (see 0006).
    with op.batch_alter_table("networks", recreate="never") as batch:
        batch.drop_column("stale_discount_percent")
        batch.drop_column("stale_policy")
