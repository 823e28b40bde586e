"""Master data in SQL (SQLAlchemy 2 Core): SQLite in the data directory by default, PostgreSQL
with UNISTOCK_DATABASE_URL. The schema is created and upgraded by Alembic at start-up
(persistence/migrations). Calls are synchronous and short; the server runs them in a thread.

Master data changes rarely and is read all the time: the server loads it whole at start-up and
serves it from memory (actors.masterdata); every write goes here first, in one transaction.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from unistock.server.domain.masterdata import (
    Location,
    LocationType,
    Network,
    Product,
    StalePolicy,
)

_T = TypeVar("_T")
METADATA = sa.MetaData()

LOCATIONS = sa.Table(
    "locations",
    METADATA,
    sa.Column("location_id", sa.String(128), primary_key=True),
    sa.Column("type", sa.SmallInteger, nullable=False),
    sa.Column("name", sa.String(256), nullable=False, server_default=""),
    sa.Column("latitude", sa.Float, nullable=True),
    sa.Column("longitude", sa.Float, nullable=True),
    sa.Column("store_id", sa.String(128), nullable=False, server_default="", index=True),
    sa.Column("click_and_collect", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("ship_from_store", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("e_reservation", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("default_safety_stock", sa.BigInteger, nullable=False, server_default="0"),
    # 0005
    sa.Column("low_stock_threshold", sa.BigInteger, nullable=False, server_default="0"),
)
NETWORKS = sa.Table(
    "networks",
    METADATA,
    sa.Column("network_id", sa.String(128), primary_key=True),
    sa.Column("channel", sa.String(256), nullable=False, server_default=""),
    sa.Column("staleness_limit_s", sa.Integer, nullable=False, server_default="0"),
    sa.Column("stale_policy", sa.SmallInteger, nullable=False, server_default="1"),
    sa.Column("stale_discount_percent", sa.SmallInteger, nullable=False, server_default="0"),
    # 0006
    sa.Column("low_stock_threshold", sa.BigInteger, nullable=False, server_default="0"),
)
MEMBERS = sa.Table(
    "network_members",
    METADATA,
    sa.Column(
        "network_id",
        sa.String(128),
        sa.ForeignKey("networks.network_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column(
        "location_id", sa.String(128), sa.ForeignKey("locations.location_id"), primary_key=True
    ),
)
PRODUCTS = sa.Table(
    "products",
    METADATA,
    sa.Column("sku", sa.String(128), primary_key=True),
    sa.Column("gtin", sa.String(14), nullable=True, unique=True),
    sa.Column("model", sa.String(256), nullable=False, server_default="", index=True),
    sa.Column("size", sa.String(256), nullable=False, server_default=""),
    sa.Column("colour", sa.String(256), nullable=False, server_default=""),
)
SAFETY_STOCK = sa.Table(
    "safety_stock",
    METADATA,
    sa.Column("sku", sa.String(128), primary_key=True),
    sa.Column("location_id", sa.String(128), primary_key=True),
    sa.Column("units", sa.BigInteger, nullable=False),
)

#: The ledger (issue 11): every change of the change feed, exactly once: each change is in one
#: feed entry, whose rows are written with that entry's LEDGER_FEED row (persistence.ledger).
#: entry_key names the change (a position change "p:<location>|<sku>:<version>", a reservation
#: change "r:<id>:<revision>", a transfer discrepancy "t:<destination>|<transfer_id>:<rev>:<n>");
#: unique, but not indexed since 0007 (the index cost a quarter of the writer's CPU per row).
LEDGER = sa.Table(
    "ledger_entries",
    METADATA,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("entry_key", sa.String(300), nullable=False),
    sa.Column("feed_id", sa.String(40), nullable=False),
    # 1 a movement, 2 a fulfilment's shipment, 3 a reservation's transitions, 4 a transfer
    # discrepancy (persistence.ledger)
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
    # the reservation after its transitions (JSON of unistock.v1.Reservation)
    sa.Column("detail", sa.Text, nullable=True),
    sa.Index("ix_ledger_position", "location_id", "sku", "at_ms"),
    sa.Index("ix_ledger_location_at", "location_id", "at_ms"),
    # 0004: a SKU's history everywhere; KPIs over a time range (by kind, then time); a
    # reservation's entries, and its RESERVATION entries alone (KPIs: a pickup's channel);
    # 0007: that one partial, without the rows naming no reservation (most movements)
    sa.Index("ix_ledger_sku_at", "sku", "at_ms"),
    sa.Index("ix_ledger_kind_at", "kind", "at_ms"),
    sa.Index(
        "ix_ledger_reservation_kind",
        "reservation_id",
        "kind",
        sqlite_where=sa.text("reservation_id IS NOT NULL"),
        postgresql_where=sa.text("reservation_id IS NOT NULL"),
    ),
)
#: The feed entries whose rows are in the ledger (0007), written in the same transaction as
#: their rows: a feed entry read again (after a crash between the SQL commit and the feed
#: cursor's save) is skipped. A partition's stream ids are unique; partition -1: an entry
#: written before 0007, of a partition not recorded (see the migration).
LEDGER_FEED = sa.Table(
    "ledger_feed",
    METADATA,
    sa.Column("feed_id", sa.String(40), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True, autoincrement=False),
)

MIGRATIONS = pathlib.Path(__file__).with_name("migrations")


def default_url(data_dir: pathlib.Path) -> str:
    """The embedded default: an SQLite file in the data directory."""
    return f"sqlite:///{(data_dir / 'unistock.db').resolve()}"


@dataclass(frozen=True, slots=True)
class MasterSnapshot:
    """Everything stored, as loaded at start-up."""

    locations: list[Location]
    networks: list[Network]
    products: list[Product]
    #: (sku, location_id, units) of every position with its own safety stock
    safety_stock: list[tuple[str, str, int]]


class MasterDataStore:
    """Reads and writes master data; every method is one transaction (raises SQLAlchemyError)."""

    def __init__(self, url: str) -> None:
        self.url = url
        postgres = sa.engine.make_url(url).get_backend_name() == "postgresql"
        self.engine: Engine = sa.create_engine(
            url,
            # A pooled connection that died with its server (a PostgreSQL restart) is replaced
            # before use, not failed on.
            pool_pre_ping=True,
            connect_args={"connect_timeout": 5} if postgres else {},
        )
        if self.engine.dialect.name == "sqlite":
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)

    def close(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def migrate(self) -> None:
        """Create or upgrade the schema to the newest Alembic revision."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")

    # -- reads ---------------------------------------------------------------------------------

    def load(self) -> MasterSnapshot:
        """Every location, network, product and position safety stock."""
        with self.engine.connect() as conn:
            members: dict[str, list[str]] = {}
            for row in conn.execute(sa.select(MEMBERS).order_by(MEMBERS.c.location_id)):
                members.setdefault(row.network_id, []).append(row.location_id)
            return MasterSnapshot(
                locations=[
                    _location(r)
                    for r in conn.execute(sa.select(LOCATIONS).order_by(LOCATIONS.c.location_id))
                ],
                networks=[
                    Network(
                        r.network_id,
                        tuple(members.get(r.network_id, ())),
                        r.channel,
                        r.staleness_limit_s,
                        StalePolicy(r.stale_policy),
                        r.stale_discount_percent,
                        r.low_stock_threshold,
                    )
                    for r in conn.execute(sa.select(NETWORKS).order_by(NETWORKS.c.network_id))
                ],
                products=[
                    Product(r.sku, r.gtin or "", r.model, r.size, r.colour)
                    for r in conn.execute(sa.select(PRODUCTS).order_by(PRODUCTS.c.sku))
                ],
                safety_stock=[
                    (r.sku, r.location_id, r.units) for r in conn.execute(sa.select(SAFETY_STOCK))
                ],
            )

    # -- writes --------------------------------------------------------------------------------

    def upsert_locations(self, locations: Sequence[Location]) -> None:
        """Create or replace locations by id, in one transaction."""
        rows = [
            {
                "location_id": loc.location_id,
                "type": int(loc.type),
                "name": loc.name,
                "latitude": loc.latitude,
                "longitude": loc.longitude,
                "store_id": loc.store_id,
                "click_and_collect": loc.click_and_collect,
                "ship_from_store": loc.ship_from_store,
                "e_reservation": loc.e_reservation,
                "default_safety_stock": loc.default_safety_stock,
                "low_stock_threshold": loc.low_stock_threshold,
            }
            for loc in locations
        ]
        with self.engine.begin() as conn:
            self._upsert(conn, LOCATIONS, rows, ["location_id"])

    def upsert_networks(self, networks: Sequence[Network]) -> None:
        """Create or replace networks by id, members included, in one transaction."""
        with self.engine.begin() as conn:
            self._upsert(
                conn,
                NETWORKS,
                [
                    {
                        "network_id": n.network_id,
                        "channel": n.channel,
                        "staleness_limit_s": n.staleness_limit,
                        "stale_policy": int(n.stale_policy),
                        "stale_discount_percent": n.stale_discount_percent,
                        "low_stock_threshold": n.low_stock_threshold,
                    }
                    for n in networks
                ],
                ["network_id"],
            )
            ids = [n.network_id for n in networks]
            for chunk in _chunks(ids, 500):
                conn.execute(sa.delete(MEMBERS).where(MEMBERS.c.network_id.in_(chunk)))
            rows = [
                {"network_id": n.network_id, "location_id": loc}
                for n in networks
                for loc in n.location_ids
            ]
            if rows:
                conn.execute(sa.insert(MEMBERS), rows)

    def upsert_products(self, products: Sequence[Product]) -> None:
        """Create or replace products by SKU, in one transaction."""
        rows = [
            {
                "sku": p.sku,
                "gtin": p.gtin or None,
                "model": p.model,
                "size": p.size,
                "colour": p.colour,
            }
            for p in products
        ]
        with self.engine.begin() as conn:
            # A GTIN moving from one SKU to another within the batch: free it first.
            skus = [p.sku for p in products]
            gtins = [p.gtin for p in products if p.gtin]
            for chunk in _chunks(gtins, 500):
                conn.execute(
                    sa.update(PRODUCTS)
                    .where(PRODUCTS.c.gtin.in_(chunk), PRODUCTS.c.sku.not_in(skus))
                    .values(gtin=None)
                )
            for chunk in _chunks(skus, 500):
                conn.execute(sa.update(PRODUCTS).where(PRODUCTS.c.sku.in_(chunk)).values(gtin=None))
            self._upsert(conn, PRODUCTS, rows, ["sku"])

    def set_safety_stock(self, positions: Sequence[tuple[str, str, int | None]]) -> None:
        """(sku, location_id, units, or None to clear) of positions, in one transaction."""
        with self.engine.begin() as conn:
            cleared = [(s, loc) for s, loc, u in positions if u is None]
            for sku, loc in cleared:
                conn.execute(
                    sa.delete(SAFETY_STOCK).where(
                        SAFETY_STOCK.c.sku == sku, SAFETY_STOCK.c.location_id == loc
                    )
                )
            rows = [
                {"sku": s, "location_id": loc, "units": u}
                for s, loc, u in positions
                if u is not None
            ]
            self._upsert(conn, SAFETY_STOCK, rows, ["sku", "location_id"])

    def _upsert(
        self,
        conn: Connection,
        table: sa.Table,
        rows: Sequence[Mapping[str, object]],
        keys: list[str],
    ) -> None:
        if not rows:
            return
        insert = (postgresql if self.engine.dialect.name == "postgresql" else sqlite).insert
        for chunk in _chunks(rows, 500):
            stmt = insert(table).values(chunk)
            stmt = stmt.on_conflict_do_update(
                index_elements=keys,
                set_={c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys},
            )
            conn.execute(stmt)


def _location(r: sa.Row[object]) -> Location:
    return Location(
        r.location_id,
        LocationType(r.type),
        r.name,
        r.latitude,
        r.longitude,
        r.store_id,
        r.click_and_collect,
        r.ship_from_store,
        r.e_reservation,
        r.default_safety_stock,
        r.low_stock_threshold,
    )


def _chunks(items: Sequence[_T], n: int) -> Iterable[Sequence[_T]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


#: PRAGMA cache_size of every SQLite connection, KiB.
SQLITE_CACHE_KIB = 32 * 1024


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    # A page cache of up to 32 MiB per connection (SQLite's default: 2 MiB), taken as used:
    # the ledger's indexes take each row at one place per position or SKU, and with the pages
    # of those places cached the writer reads fewer back (docs/performance.md, B11). Durability unchanged.
    cursor.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
    cursor.close()
