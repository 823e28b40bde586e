"""Indexes of the ledger's read side (LedgerService): a SKU's history at every location, and
KPIs over a time range (entries of a kind in a time range).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_ledger_sku_at", "ledger_entries", ["sku", "at_ms"])
    op.create_index("ix_ledger_kind_at", "ledger_entries", ["kind", "at_ms"])


def downgrade() -> None:
    op.drop_index("ix_ledger_kind_at", "ledger_entries")
    op.drop_index("ix_ledger_sku_at", "ledger_entries")
