"""The ledger writer as its own process (`unistock-ledger`) beside a real server, Redis and
SQLite / PostgreSQL: every change once, across a kill -9 of the writer; it waits for a server
that has not created the keyspace yet; its exit codes; a gap left by the feed's cap is
reported; a consumer's trim never passes another consumer's cursor."""

from __future__ import annotations

import asyncio
import shlex
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.docs import commands, example
from tests.fixtures.ledger import LedgerProcess, rows_settle
from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, mv, send
from unistock.client import UnistockClient
from unistock.devtools.services import free_port
from unistock.server.actors.ledger import CONSUMER, LedgerWriter
from unistock.server.app.ledger import LedgerSettings
from unistock.server.app.server import UnistockServer
from unistock.server.app.settings import Settings
from unistock.server.metrics import LedgerMetrics
from unistock.server.persistence.feed import FeedReader
from unistock.server.persistence.ledger import MOVEMENT, RESERVATION, LedgerStore

SKUS = [f"SKU-{i}" for i in range(6)]
LOCS = ["s1", "s2", "dc-1"]


def movements(source: str, first: int, n: int) -> list:
    """n receipts and sales over SKUS x LOCS, seqs from first."""
    out = []
    for i in range(n):
        seq = first + i
        sku, loc = SKUS[seq % len(SKUS)], LOCS[seq % len(LOCS)]
        out.append(mv(seq, "RECEIPT" if seq % 3 else "SALE", sku, loc, 1 + seq % 4))
    return out


async def on_hands(c: UnistockClient) -> dict[tuple[str, str], int]:
    got = {}
    for sku in SKUS:
        for lv in await c.get_availability(sku=sku):
            got[(lv.sku, lv.location_id)] = lv.on_hand
    return got


def check_exactly_once(rows: list, sent: set[tuple[str, int]], levels: dict) -> None:
    """Every sent movement once, nothing else; invariant 9 per position."""
    moved = Counter((r.source_id, r.seq) for r in rows if r.kind == MOVEMENT)
    assert set(moved) == sent
    assert max(moved.values()) == 1
    sums: Counter[tuple[str, str]] = Counter()
    for r in rows:
        if r.on_hand_delta is not None:
            sums[(r.sku, r.location_id)] += r.on_hand_delta
    assert {k: v for k, v in sums.items() if v or k in levels} == levels


async def test_the_ledger_process_writes_every_change_once_across_a_kill(
    make_server: MakeServer, clean_redis_url: str, sql_url: str, tmp_path: Path
) -> None:
    srv = await make_server(clean_redis_url, database_url=sql_url)
    ledger = LedgerProcess(clean_redis_url, sql_url, tmp_path).start()
    sent: set[tuple[str, int]] = set()
    try:
        async with UnistockClient(target(srv), TOKENS["admin"]) as c:
            for k in range(4):
                first = 1 + 60 * k
                await send(c, batch("wms", *movements("wms", first, 60)))
                sent |= {("wms", s) for s in range(first, first + 60)}
                if k == 1:
                    ledger.kill()  # mid-stream: rows of the round in flight may be written
                if k == 2:  # or not, and its cursors may be behind them: written again
                    ledger.start()
            await c.reserve("o-1", [("SKU-1", "s2", 1)], kind="CLICK_AND_COLLECT", channel="web")
            await c.release("o-1")
            levels = await on_hands(c)
        rows = await rows_settle(sql_url, len(sent) + 2)
        check_exactly_once(rows, sent, levels)
        assert [r.transitions for r in rows if r.kind == RESERVATION] == ["CREATED", "RELEASED"]
        assert ledger.stop() == 0
        assert "stopped" in ledger.log_text()
    finally:
        ledger.kill()


async def test_it_waits_for_the_server_to_create_the_keyspace(
    make_server: MakeServer, clean_redis_url: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = LedgerProcess(clean_redis_url, url, tmp_path / "l")
    ledger.spawn()
    try:
        for _ in range(100):
            if "waiting for the server" in ledger.log_text():
                break
            await asyncio.sleep(0.05)
        assert "waiting for the server to create it" in ledger.log_text()
        srv = await make_server(clean_redis_url, database_url=url)
        async with UnistockClient(target(srv), TOKENS["admin"]) as c:
            await send(c, batch("wms", *movements("wms", 1, 10)))
        rows = await rows_settle(url, 10)
        assert len(rows) == 10
    finally:
        ledger.kill()


def run_ledger(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unistock.server.app.ledger", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_exit_codes(tmp_path: Path) -> None:
    bad = run_ledger("--ledger-batch", "0")
    assert bad.returncode == 2
    assert "--ledger-batch: 1 to 10000, got 0" in bad.stderr
    assert run_ledger("--no-such-flag").returncode == 2
    for flags, says in (
        (("--log-level", "LOUD"), "--log-level: one of DEBUG"),
        (("--redis-url", "notaurl"), "--redis-url: a redis://"),
        (("--database-url", "nonsense://x"), "--database-url: Can't load plugin"),
        (("--ledger-metrics-port", "99999"), "--ledger-metrics-port: 0 to 65535"),
        (("--redis-timeout-s", "0"), "--redis-timeout-s: above 0"),
    ):
        bad = run_ledger(*flags)
        assert bad.returncode == 2, flags
        assert says in bad.stderr.splitlines()[-1], bad.stderr
    down = run_ledger(  # its metrics on a free port: 9466 may be a running `make run`'s
        "--redis-url", "redis://127.0.0.1:1/0", "--data-dir", str(tmp_path),
        "--ledger-metrics-port", str(free_port()),
    )  # fmt: skip
    assert down.returncode == 1
    assert "unistock-ledger: cannot start: --redis-url:" in down.stderr
    with socket.socket() as taken:  # the port is checked first, before Redis and SQL
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        busy = run_ledger("--redis-url", "redis://127.0.0.1:1/0", "--ledger-metrics-port", port)
    assert busy.returncode == 1
    assert "cannot start: --ledger-metrics-port: cannot listen on" in busy.stderr


async def writer(srv: UnistockServer, metrics: LedgerMetrics) -> LedgerWriter:
    feed = FeedReader(srv.store.client, srv.store.keyspace, CONSUMER)
    return LedgerWriter(feed, LedgerStore(srv.master.store.engine), metrics)


async def test_a_gap_left_by_the_cap_is_reported(
    server: UnistockServer, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = LedgerMetrics()
    w = await writer(server, metrics)
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await send(c, batch("wms", mv(1, "RECEIPT", "A", "s1", 5)))
        assert await w.drain_once() == 1
        await send(c, batch("wms", mv(2, "RECEIPT", "A", "s1", 1)))
        p = server.store.keyspace.location_partition("s1")
        await server.store.client.xtrim(server.store.keyspace.feed(p), maxlen=0)  # the cap
        await send(c, batch("wms", mv(3, "RECEIPT", "A", "s1", 2)))
    assert await w.drain_once() == 1
    lost = metrics.feed_lost.labels(CONSUMER)._value.get()
    assert lost == 1
    assert "trimmed by the feed's cap before the ledger read them" in caplog.text
    assert await w.drain_once() == 0  # reported once
    assert metrics.feed_lost.labels(CONSUMER)._value.get() == 1
    seqs = [r.seq for r in w._ledger.history("s1", "A")]
    assert sorted(seqs) == [1, 3]
    # A gap with nothing after it yet: reported once, the cursor moves past it.
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await send(c, batch("wms", mv(4, "RECEIPT", "A", "s1", 1)))
        await server.store.client.xtrim(server.store.keyspace.feed(p), maxlen=0)
        assert await w.drain_once() == 0
        assert await w.drain_once() == 0
        assert metrics.feed_lost.labels(CONSUMER)._value.get() == 2
        await send(c, batch("wms", mv(5, "RECEIPT", "A", "s1", 1)))
    again = await writer(server, metrics)  # a restart: the gap is not reported again
    assert await again.drain_once() == 1
    assert metrics.feed_lost.labels(CONSUMER)._value.get() == 2


async def test_a_consumer_never_trims_past_another_ones_cursor(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    # slow and fast only (no ledger registered, no events deriver)
    server = await make_server(clean_redis_url, feed_consumers="", events=0)
    ks = server.store.keyspace
    feed = ks.feed(ks.location_partition("s1"))
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await send(c, batch("wms", mv(1, "RECEIPT", "A", "s1", 5)))
        slow = FeedReader(server.store.client, ks, "slow")
        await slow.commit(await slow.read())  # slow has the first entry
        await send(c, batch("wms", mv(2, "RECEIPT", "A", "s1", 5)))
        await send(c, batch("wms", mv(3, "RECEIPT", "A", "s1", 5)))
        fast = FeedReader(server.store.client, ks, "fast")
        got = await fast.read()
        assert len(got.entries) == 2
        await fast.commit(got)  # fast has all: trimmed behind slow only
    assert await server.store.client.xlen(feed) == 2
    slow = FeedReader(server.store.client, ks, "slow")
    again = await slow.read()
    assert [at for _, at, _ in again.entries] == [at for _, at, _ in got.entries]
    assert not again.lost
    await slow.commit(again)
    assert await server.store.client.xlen(feed) == 0


async def test_the_feed_fill_ratio(make_server: MakeServer, clean_redis_url: str) -> None:
    """unistock_feed_fill_ratio: the fullest partition's stream over --feed-max-entries."""
    srv = await make_server(clean_redis_url, feed_max_entries=1000)
    assert srv.store.feed_max_entries == 1000
    assert await srv.sample_feed() == 0
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        for seq in range(1, 6):  # five flushes of s1's partition, one of s2's
            await send(c, batch("wms", mv(seq, "RECEIPT", "A", "s1", 1)))
        await send(c, batch("wms", mv(6, "RECEIPT", "A", "s2", 1)))
    assert await srv.sample_feed() == 5 / 1000
    assert srv.metrics.feed_fill._value.get() == 5 / 1000


async def test_the_server_keeps_the_feed_for_the_ledger_before_it_first_runs(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    """--feed-consumers (default "ledger"): registered at the server's start, so that another
    consumer trimming behind itself (the events deriver) cannot pass a ledger writer that has
    not run yet; with --feed-consumers "" nothing is kept for it."""
    for consumers, kept in (("ledger", [1, 2]), ("", [])):
        srv = await make_server(clean_redis_url, feed_consumers=consumers, events=0)
        async with UnistockClient(target(srv), TOKENS["admin"]) as c:
            for seq in (1, 2):
                await send(c, batch(f"wms-{consumers}", mv(seq, "RECEIPT", "A", "s1", 1)))
        fast = FeedReader(srv.store.client, srv.store.keyspace, "fast")
        await fast.commit(await fast.read())  # trims behind the slowest registered consumer
        metrics = LedgerMetrics()
        w = await writer(srv, metrics)
        await w.drain_once()
        seqs = [r.seq for r in w._ledger.history("s1", "A") if r.source_id == f"wms-{consumers}"]
        assert seqs == kept
        assert metrics.feed_lost.labels(CONSUMER)._value.get() == 0
        await srv.stop()
        redis = Redis.from_url(clean_redis_url)
        await redis.flushdb()
        await redis.aclose()


async def test_a_second_writer_stands_by_until_the_first_stops(
    make_server: MakeServer, clean_redis_url: str, tmp_path: Path
) -> None:
    """One writer at a time (a lease): a second one started by mistake stands by, says so
    instead of "ready", reports no false gap, and takes over (then "ready") when the first
    stops."""
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    srv = await make_server(clean_redis_url, database_url=url)
    first = LedgerProcess(clean_redis_url, url, tmp_path / "a").start()  # "ready": it holds it
    second = LedgerProcess(clean_redis_url, url, tmp_path / "b")
    second.spawn()
    try:
        for _ in range(400):
            if "unistock-ledger standing by" in second.log_text():
                break
            await asyncio.sleep(0.05)
        assert first.proc is not None
        holder = f"{socket.gethostname()}:{first.proc.pid}"
        assert f"unistock-ledger standing by: {holder} holds the lease" in second.log_text()
        assert "another ledger writer holds the lease" in second.log_text()
        async with UnistockClient(target(srv), TOKENS["admin"]) as c:
            await send(c, batch("wms", *movements("wms", 1, 30)))
            assert len(await rows_settle(url, 30)) == 30
            assert "unistock-ledger ready" not in second.log_text()
            assert first.stop() == 0  # it gives the lease up: the second writes
            await send(c, batch("wms", *movements("wms", 31, 30)))
            rows = await rows_settle(url, 60, wait=30)
        assert sorted(r.seq for r in rows) == list(range(1, 61))
        assert "lease taken: writing" in second.log_text()
        assert "unistock-ledger ready: 64 partitions of 'us'" in second.log_text()
        assert "standing by" not in first.log_text()
        for w in (first, second):
            assert "trimmed by the feed's cap" not in w.log_text()
    finally:
        first.kill()
        second.kill()


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (("--feed-consumers", "a b"), "--feed-consumers: 'a b' is not a consumer name"),
        (("--feed-consumers", ","), "--feed-consumers: '' is not a consumer name"),
        (("--watch-max-pending", "0"), "--watch-max-pending: at least 1"),
        (("--events-max-pending", "0"), "--events-max-pending: at least 1"),
        (("--log-level", "LOUD"), "--log-level: one of"),
        (("--grpc-port", "70000"), "--grpc-port: 0 to 65535"),
    ],
)
def test_server_flags_refused(
    flags: tuple[str, str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        Settings.parse(list(flags), env={})
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
    assert Settings.parse(["--feed-consumers", " ledger , audit-2 "], env={}).consumers == [
        "ledger",
        "audit-2",
    ]


async def test_the_lag_shows_while_sql_is_down(server: UnistockServer, tmp_path: Path) -> None:
    """unistock_ledger_lag_seconds grows while rounds fail (a locked SQLite here), instead of
    staying at its last value."""
    import sqlite3

    from unistock.server.persistence.sql import MasterDataStore

    url = f"sqlite:///{tmp_path / 'locked.db'}"
    sql = MasterDataStore(url)
    sql.migrate()
    metrics = LedgerMetrics()
    feed = FeedReader(server.store.client, server.store.keyspace, "locked")
    w = LedgerWriter(feed, LedgerStore(sql.engine), metrics)
    await feed.register()
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await send(c, batch("wms", mv(1, "RECEIPT", "A", "s1", 5)))
    await asyncio.sleep(0.3)
    lock = sqlite3.connect(tmp_path / "locked.db", timeout=0)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Exception, match="locked"):
            await w.drain_once()
        assert metrics.ledger_lag._value.get() >= 0.3
    finally:
        lock.rollback()
        lock.close()
    assert await w.drain_once() == 1
    assert metrics.ledger_lag._value.get() == 0
    sql.close()


async def test_unregister_stops_keeping_the_feed_for_the_ledger(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url, events=0)  # registers "ledger"
    ks = srv.store.keyspace
    feed = ks.feed(ks.location_partition("s1"))
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        for seq in (1, 2, 3):
            await send(c, batch("wms", mv(seq, "RECEIPT", "A", "s1", 1)))
    fast = FeedReader(srv.store.client, ks, "fast")
    await fast.commit(await fast.read())
    assert await srv.store.client.xlen(feed) == 3  # kept for the ledger, which never ran
    done = await asyncio.to_thread(run_ledger, "--redis-url", clean_redis_url, "--unregister")
    assert done.returncode == 0, done.stderr
    assert "'ledger' unregistered from 64 partitions" in done.stdout
    assert await srv.store.client.xlen(feed) == 0  # trimmed behind fast, the one left
    assert await srv.store.client.hget(ks.feed_cursors(0), "ledger") is None
    again = await asyncio.to_thread(run_ledger, "--redis-url", clean_redis_url, "--unregister")
    assert "unregistered from 0 partitions" in again.stdout


def test_the_docs_ledger_command_line_is_accepted() -> None:
    """The `unistock-ledger` command line of docs/design.md: every flag exists and takes its
    value (the writer itself runs in the tests above)."""
    [line] = commands(example("ledger-command"))
    program, *argv = shlex.split(line)
    assert program == "unistock-ledger"
    s = LedgerSettings.parse(argv)
    assert (s.redis_url, s.database_url) == (
        "redis://127.0.0.1:6379/0",
        "postgresql+psycopg://unistock@db/unistock",
    )
