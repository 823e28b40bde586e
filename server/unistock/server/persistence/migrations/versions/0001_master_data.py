"""Master data: locations, networks and their members, products, safety stock per position.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "locations",
        sa.Column("location_id", sa.String(128), primary_key=True),
        sa.Column("type", sa.SmallInteger, nullable=False),
        sa.Column("name", sa.String(256), nullable=False, server_default=""),
        sa.Column("latitude", sa.Float, nullable=True),
        sa.Column("longitude", sa.Float, nullable=True),
        sa.Column("store_id", sa.String(128), nullable=False, server_default=""),
        sa.Column("click_and_collect", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("ship_from_store", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("e_reservation", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("default_safety_stock", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.create_index("ix_locations_store_id", "locations", ["store_id"])
    op.create_table(
        "networks",
        sa.Column("network_id", sa.String(128), primary_key=True),
        sa.Column("channel", sa.String(256), nullable=False, server_default=""),
        sa.Column("staleness_limit_s", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_table(
        "network_members",
        sa.Column(
            "network_id",
            sa.String(128),
            sa.ForeignKey("networks.network_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column(
            "location_id",
            sa.String(128),
            sa.ForeignKey("locations.location_id"),
            primary_key=True,
        ),
    )
    op.create_table(
        "products",
        sa.Column("sku", sa.String(128), primary_key=True),
        sa.Column("gtin", sa.String(14), nullable=True, unique=True),
        sa.Column("model", sa.String(256), nullable=False, server_default=""),
        sa.Column("size", sa.String(256), nullable=False, server_default=""),
        sa.Column("colour", sa.String(256), nullable=False, server_default=""),
    )
    op.create_index("ix_products_model", "products", ["model"])
    op.create_table(
        "safety_stock",
        sa.Column("sku", sa.String(128), primary_key=True),
        sa.Column("location_id", sa.String(128), primary_key=True),
        sa.Column("units", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("safety_stock")
    op.drop_index("ix_products_model", "products")
    op.drop_table("products")
    op.drop_table("network_members")
    op.drop_table("networks")
    op.drop_index("ix_locations_store_id", "locations")
    op.drop_table("locations")
