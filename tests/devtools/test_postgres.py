"""Tests for the managed PostgreSQL clusters and the SQL fixtures (``sql_url`` & co.)."""

from __future__ import annotations

import concurrent.futures
import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from unistock.devtools.services import (
    PostgresServer,
    ServiceError,
    ensure_postgres_bindir,
    find_postgres_bindir,
)


@pytest.fixture
def pg_data_dir(postgres_root: Path) -> Iterator[Path]:
    """A data dir for a second, test-made cluster (removed afterwards)."""
    path = Path(tempfile.mkdtemp(prefix="pg-", dir=postgres_root))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited (an unreaped zombie counts as exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(b")") + 2 :].split()[0] in (b"Z", b"X")


def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


def _write(url: str, *values: int) -> None:
    engine = _engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE IF NOT EXISTS stock (qty INTEGER NOT NULL)"))
        for value in values:
            conn.execute(sa.text("INSERT INTO stock (qty) VALUES (:q)"), {"q": value})
    engine.dispose()


def _read(url: str) -> list[int]:
    engine = _engine(url)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT qty FROM stock ORDER BY qty")).scalars().all()
    engine.dispose()
    return list(rows)


def _setting(url: str, name: str) -> str:
    engine = _engine(url)
    with engine.connect() as conn:
        value = conn.execute(sa.text("SELECT current_setting(:n)"), {"n": name}).scalar_one()
    engine.dispose()
    return str(value)


def test_find_postgres_bindir() -> None:
    bindir = ensure_postgres_bindir(allow_install=False)
    assert bindir == find_postgres_bindir()
    assert (bindir / "initdb").is_file()
    assert (bindir / "postgres").is_file()


def test_private_cluster_serves_sqlalchemy(postgres_server: PostgresServer) -> None:
    srv = postgres_server
    assert srv.url == f"postgresql+psycopg://postgres@127.0.0.1:{srv.port}/postgres"
    url = srv.create_database("inventory")
    assert url == srv.url_for("inventory")
    _write(url, 3, 1, 2)
    assert _read(url) == [1, 2, 3]

    # Durable by default, loopback only, socket in the cluster dir, C messages.
    assert _setting(url, "fsync") == "on"
    assert _setting(url, "synchronous_commit") == "on"
    assert _setting(url, "listen_addresses") == "127.0.0.1"
    assert _setting(url, "unix_socket_directories") == str(srv.pgdata)
    assert (srv.pgdata / f".s.PGSQL.{srv.port}").is_socket()
    hba = [
        line.split()
        for line in (srv.pgdata / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert hba == [
        ["local", "all", "all", "trust"],
        ["host", "all", "all", "127.0.0.1/32", "trust"],
    ]

    # Never root: as root the cluster belongs to the unprivileged postgres account.
    expected_owner = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    assert srv.pgdata.owner() == expected_owner
    assert pwd.getpwuid(os.stat(f"/proc/{srv.pid}").st_uid).pw_name == expected_owner

    srv.drop_database("inventory")
    with pytest.raises(sa.exc.OperationalError, match="inventory"):
        _read(url)


def test_create_database_refuses_names_needing_quotes(pg_data_dir: Path) -> None:
    srv = PostgresServer(pg_data_dir)  # the names are checked before connecting
    with pytest.raises(ValueError, match="database name"):
        srv.create_database('x"; DROP DATABASE postgres; --')
    with pytest.raises(ValueError, match="database name"):
        srv.url_for("Inventory")


def test_kill_9_and_restart_keeps_committed_data(postgres_server: PostgresServer) -> None:
    srv = postgres_server
    url = srv.create_database("crash")
    _write(url, 1)
    port, pid = srv.port, srv.pid
    assert pid is not None

    # An open transaction holds uncommitted work in a backend when the crash comes.
    open_tx = psycopg.connect(
        host="127.0.0.1", port=srv.port, user=srv.superuser, dbname="crash", autocommit=False
    )
    open_tx.execute("INSERT INTO stock (qty) VALUES (99)")
    backend = open_tx.execute("SELECT pg_backend_pid()").fetchone()
    assert backend is not None

    srv.kill()
    assert not srv.is_running
    assert srv.pid is None
    assert _gone(pid)
    assert _gone(backend[0])  # backends die with the postmaster
    open_tx.close()

    srv.restart()
    assert srv.port == port
    assert srv.pid != pid
    assert _read(url) == [1]  # committed data kept, the open transaction is gone
    assert "database system was interrupted" in srv.log_tail(40)
    _write(url, 2)
    assert _read(url) == [1, 2]

    assert srv.stop() == 0
    assert srv.stop() == 0  # idempotent
    srv.start()
    assert _read(url) == [1, 2]


def test_pause_freezes_open_connections_until_resume(postgres_server: PostgresServer) -> None:
    srv = postgres_server
    conn = srv.connect()
    assert conn.execute("SELECT 1").fetchone() == (1,)
    srv.pause()
    assert srv.is_paused
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        answer = pool.submit(lambda: conn.execute("SELECT 2").fetchone())
        # Paused: the backend answers nothing (no timing is asserted: only that it is
        # still pending once the wait is over).
        with pytest.raises(concurrent.futures.TimeoutError):
            answer.result(timeout=0.5)
        srv.resume()
        assert not srv.is_paused
        assert answer.result(timeout=60) == (2,)
    conn.close()
    _write(srv.url, 5)
    assert _read(srv.url) == [5]


def test_stop_while_paused_ends_open_sessions(postgres_server: PostgresServer) -> None:
    conn = postgres_server.connect()
    postgres_server.pause()
    # A fast shutdown: it does not wait for the open session to end.
    assert postgres_server.stop(timeout=30) == 0
    assert not postgres_server.is_running
    with pytest.raises(psycopg.OperationalError):
        conn.execute("SELECT 1")
    conn.close()


def test_two_clusters_on_different_ports(
    postgres_server: PostgresServer, pg_data_dir: Path
) -> None:
    with PostgresServer(pg_data_dir) as other:
        assert other.port != postgres_server.port
        _write(postgres_server.url, 1)
        _write(other.url, 2)
        assert _read(postgres_server.url) == [1]
        assert _read(other.url) == [2]

        # The same data dir cannot be served twice.
        with pytest.raises(ServiceError, match="already used"):
            PostgresServer(pg_data_dir).start()


def test_fresh_database_per_test(postgres_url: str) -> None:
    assert str(sa.make_url(postgres_url).database).startswith(f"test_{os.getpid()}_")
    engine = _engine(postgres_url)
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()
    # The shared cluster is for throwaway data: fsync is explicitly off there.
    assert _setting(postgres_url, "fsync") == "off"
    _write(postgres_url, 7)
    assert _read(postgres_url) == [7]


def test_start_failure_reports_log(pg_data_dir: Path) -> None:
    srv = PostgresServer(pg_data_dir, settings={"no_such_setting": 1})
    with pytest.raises(ServiceError, match="no_such_setting"):
        srv.start()
    assert not srv.is_running


def test_sql_url_runs_on_both_backends(sql_url: str, request: pytest.FixtureRequest) -> None:
    backend = sa.make_url(sql_url).get_backend_name()
    assert backend == request.node.callspec.params["sql_url"]
    engine = _engine(sql_url)
    assert sa.inspect(engine).get_table_names() == []
    metadata = sa.MetaData()
    stock = sa.Table(
        "stock",
        metadata,
        sa.Column("sku", sa.String(32), primary_key=True),
        sa.Column("qty", sa.Integer, nullable=False),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(stock), [{"sku": "A-1", "qty": 3}, {"sku": "B-2", "qty": 5}])
    with engine.begin() as conn:
        conn.execute(sa.update(stock).where(stock.c.sku == "A-1").values(qty=stock.c.qty - 1))
    with engine.connect() as conn:
        assert conn.execute(sa.select(stock.c.sku, stock.c.qty).order_by(stock.c.sku)).all() == [
            ("A-1", 2),
            ("B-2", 5),
        ]
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.insert(stock).values(sku="A-1", qty=1))
    engine.dispose()
