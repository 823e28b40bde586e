"""The master-data schema on SQLite and on a real PostgreSQL: Alembic creates exactly the
tables the code queries, upgrading twice changes nothing, and the store round-trips."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from unistock.server.domain.masterdata import (
    Location,
    LocationType,
    Network,
    Product,
    StalePolicy,
)
from unistock.server.persistence.sql import METADATA, MIGRATIONS, MasterDataStore


def _alembic(conn: sa.Connection) -> Config:
    """Alembic's configuration for the project's migrations, on conn."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = conn
    return cfg


@contextlib.contextmanager
def upgraded_to(store: MasterDataStore, revision: str) -> Iterator[sa.Connection]:
    """A transaction on store's database, its schema upgraded to Alembic revision first."""
    with store.engine.begin() as conn:
        command.upgrade(_alembic(conn), revision)
        yield conn


def downgraded_to(store: MasterDataStore, revision: str) -> None:
    """store's database downgraded to Alembic revision, in one transaction."""
    with store.engine.begin() as conn:
        command.downgrade(_alembic(conn), revision)


def insert_web_network(conn: sa.Connection) -> None:
    """Location s1 in network web (channel web-shop, staleness limit 300 s), in plain SQL: the
    columns every revision has."""
    conn.execute(sa.text("INSERT INTO locations (location_id, type) VALUES ('s1', 1)"))
    conn.execute(
        sa.text(
            "INSERT INTO networks (network_id, channel, staleness_limit_s)"
            " VALUES ('web', 'web-shop', 300)"
        )
    )
    conn.execute(
        sa.text("INSERT INTO network_members (network_id, location_id) VALUES ('web', 's1')")
    )


def test_the_migrations_build_the_schema_the_code_uses(sql_url: str) -> None:
    store = MasterDataStore(sql_url)
    try:
        store.migrate()
        store.migrate()  # at every start-up: nothing to do the second time
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), METADATA)
        assert diff == []
    finally:
        store.close()


def test_upserts_replace_by_id_and_move_a_gtin(sql_url: str) -> None:
    store = MasterDataStore(sql_url)
    try:
        store.migrate()
        s1 = Location(
            "s1", LocationType.STORE, "Store 1", 48.1, 11.5, "store-1", True, False, True, 2
        )
        store.upsert_locations([s1, Location("dc", LocationType.WAREHOUSE)])
        store.upsert_locations([Location("s1", LocationType.STORE, "Store One")])
        store.upsert_networks([Network("web", ("dc", "s1"), "web", 60)])
        store.upsert_networks([Network("web", ("s1",), "web", 0)])
        store.upsert_networks([Network("app", ("dc",), "app", 60, StalePolicy.DISCOUNT, 40, 3)])
        store.upsert_products([Product("A", "04006381333931", "M", "42", "red")])
        store.upsert_products([Product("B", "04006381333931"), Product("A", "", "M", "43", "red")])
        store.set_safety_stock([("A", "s1", 3), ("B", "s1", 1)])
        store.set_safety_stock([("A", "s1", None), ("B", "s1", 4)])
        got = store.load()
        assert got.locations == [
            Location("dc", LocationType.WAREHOUSE),
            Location("s1", LocationType.STORE, "Store One"),
        ]
        assert got.networks == [
            Network("app", ("dc",), "app", 60, StalePolicy.DISCOUNT, 40, 3),
            Network("web", ("s1",), "web", 0),
        ]
        assert got.products == [Product("A", "", "M", "43", "red"), Product("B", "04006381333931")]
        assert got.safety_stock == [("B", "s1", 4)]
    finally:
        store.close()


def test_a_database_of_the_first_schema_upgrades_keeping_its_networks(sql_url: str) -> None:
    """A database created by revision 0001 (before stale policies) is upgraded at start-up:
    its networks keep excluding stale stores, as they did."""
    store = MasterDataStore(sql_url)
    try:
        with upgraded_to(store, "0001") as conn:
            insert_web_network(conn)
        store.migrate()
        assert store.load().networks == [
            Network("web", ("s1",), "web-shop", 300, StalePolicy.EXCLUDE, 0)
        ]
    finally:
        store.close()


def test_a_database_before_low_stock_thresholds_upgrades_with_none(sql_url: str) -> None:
    """A database of revision 0004 (before low_stock_threshold) upgrades at start-up: its
    locations get 0 (only out of / back in stock events), and a threshold set later is kept."""
    store = MasterDataStore(sql_url)
    try:
        with upgraded_to(store, "0004") as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO locations (location_id, type, default_safety_stock)"
                    " VALUES ('s1', 1, 2)"
                )
            )
        store.migrate()
        [s1] = store.load().locations
        assert (s1.default_safety_stock, s1.low_stock_threshold) == (2, 0)
        store.upsert_locations([Location("s1", LocationType.STORE, low_stock_threshold=5)])
        assert [loc.low_stock_threshold for loc in store.load().locations] == [5]
    finally:
        store.close()


def test_a_database_before_network_thresholds_upgrades_with_none_and_downgrades(
    sql_url: str,
) -> None:
    """A database of revision 0005 (before a network's low_stock_threshold) upgrades at
    start-up: its networks get 0 (only network out of / back in stock events), a threshold set
    later is stored and read back; downgrading to 0005 drops the column and keeps the networks
    and their members."""
    store = MasterDataStore(sql_url)
    try:
        with upgraded_to(store, "0005") as conn:
            insert_web_network(conn)
        store.migrate()
        assert store.load().networks == [Network("web", ("s1",), "web-shop", 300)]
        assert store.load().networks[0].low_stock_threshold == 0
        store.upsert_networks([Network("web", ("s1",), "web-shop", 300, low_stock_threshold=7)])
        assert [n.low_stock_threshold for n in store.load().networks] == [7]

        downgraded_to(store, "0005")
        with store.engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("networks")}
            assert "low_stock_threshold" not in columns
            assert "stale_discount_percent" in columns
            assert conn.execute(
                sa.text("SELECT network_id, channel, staleness_limit_s FROM networks")
            ).all() == [("web", "web-shop", 300)]
            assert conn.execute(
                sa.text("SELECT network_id, location_id FROM network_members")
            ).all() == [("web", "s1")]
    finally:
        store.close()


def test_downgrading_to_the_first_schema_keeps_the_master_data(sql_url: str) -> None:
    """Every downgrade down to 0001 drops its columns in place: locations, networks and their
    members stay (on SQLite, a downgrade that rebuilt networks or locations would delete the
    members through their foreign keys)."""
    store = MasterDataStore(sql_url)
    try:
        store.migrate()
        store.upsert_locations([Location("s1", LocationType.STORE, low_stock_threshold=2)])
        store.upsert_networks([Network("web", ("s1",), "web-shop", 300, low_stock_threshold=4)])
        downgraded_to(store, "0001")
        with store.engine.connect() as conn:
            assert conn.execute(sa.text("SELECT location_id FROM locations")).all() == [("s1",)]
            assert conn.execute(
                sa.text("SELECT network_id, channel, staleness_limit_s FROM networks")
            ).all() == [("web", "web-shop", 300)]
            assert conn.execute(
                sa.text("SELECT network_id, location_id FROM network_members")
            ).all() == [("web", "s1")]
        store.migrate()  # and up again
        assert store.load().networks == [Network("web", ("s1",), "web-shop", 300)]
    finally:
        store.close()
