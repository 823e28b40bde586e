"""AdminService.GetServerStatus with real Redis, mosquitto and a real edge agent process.

The agent records a movement while no server ingests MQTT, publishes its (retained) status
with that movement in its outbox, and is then frozen (SIGSTOP): the server started after it
hears the retained status (outbox depth 1, never acked) and nothing else, so the store goes
stale for its network. Movements sent over gRPC give the change feed entries that the ledger
consumer (registered by the server, no ledger process running) has not read.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import grpc
import pytest
import redis.asyncio as aioredis
from grpc import aio

from tests.docs import example
from tests.edge.test_network_staleness_e2e import LIMIT, web_with
from tests.fixtures.server import TOKENS, MakeServer, start_mqtt_server, target
from tests.server.test_api import batch, mv, send
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import MosquittoBroker
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.intake.v1 import intake_pb2_grpc as ipb_grpc
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

PARTITIONS = 8
DOC = Path(__file__).resolve().parents[2] / "docs" / "unistock-status.md"


def doc_example() -> Any:
    """The `waiting_stores` function of the Python example in docs/unistock-status.md."""
    namespace: dict[str, Any] = {}
    exec(compile(example("status-waiting-stores").text, str(DOC), "exec"), namespace)
    return namespace["waiting_stores"]


async def frozen_agent_with_backlog(
    tmp_path: Path, broker: MosquittoBroker
) -> AsyncIterator[pb.AgentStatus]:
    """A real unistock-edge-agent process for store s1 that recorded one movement nobody
    acked, published its status saying so and was then stopped (SIGSTOP); yields that status.
    """
    log = tmp_path / "agent.log"
    with log.open("wb") as err:  # the child keeps its own descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "unistock.edge.cli", "--store-id", "s1",
            "--mqtt-url", broker.url, "--data-dir", str(tmp_path / "agent"),
            "--intake-port", "0", "--metrics-port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=err,
            # The test's own settings only (the suite's UNISTOCK_CONFIG: no user config file).
            env={
                k: v for k, v in os.environ.items()
                if not k.startswith("UNISTOCK_") or k == "UNISTOCK_CONFIG"
            },
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        started = re.search(r"intake on port (\d+)", line)
        if started is None:
            raise AssertionError(f"the agent did not start: {log.read_text()}")
        port = int(started[1])
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="status-spy") as spy:
            await spy.subscribe("unistock/v1/stores/s1/status", qos=1)
            async with aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                await ipb_grpc.StoreIntakeStub(ch).RecordMovement(
                    ipb.RecordMovementRequest(
                        movement=pb.Movement(sku="JACKET", type=pb.RECEIPT, quantity=5),
                        request_id="goods-in-1",
                    )
                )
            async with asyncio.timeout(60):  # the agent's next status (every 10 s)
                async for message in spy.messages:
                    status = pb.AgentStatus.FromString(message.payload)
                    if status.state == pb.AgentStatus.ONLINE and status.outbox_depth:
                        break
        proc.send_signal(signal.SIGSTOP)
        yield status
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def until(
    c: UnistockClient, ok: Callable[[apb.ServerStatus], bool], within: float = 60
) -> apb.ServerStatus:
    """The first status for which ok() holds (polled)."""
    got = apb.ServerStatus()
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        got = await c.get_server_status()
        if ok(got):
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"status never as expected; last:\n{got}")


def store(status: apb.ServerStatus, store_id: str) -> apb.StoreAgent:
    [found] = [s for s in status.stores if s.store_id == store_id]
    return found


def consumer(status: apb.ServerStatus, name: str) -> apb.FeedConsumer:
    [found] = [c for c in status.feed_consumers if c.name == name]
    return found


async def feed_entries(redis_url: str) -> int:
    """Entries held by every partition's feed stream (what the server wrote)."""
    r = aioredis.Redis.from_url(redis_url)
    try:
        return sum([await r.xlen(f"us:{{p{p}}}:feed") for p in range(PARTITIONS)])
    finally:
        await r.aclose()


async def open_watches(c: UnistockClient) -> list[asyncio.Task[None]]:
    """One stream of each kind, open until cancelled."""

    async def drain(stream: AsyncIterator[object]) -> None:
        async for _ in stream:
            pass

    streams: list[AsyncIterator[object]] = [
        c.watch(skus=["JACKET"]),
        c.watch(skus=["SHIRT"]),
        c.watch_networks(["web"], ["JACKET"]),
        c.watch_reservations(customer_id="ann"),
        c.watch_events(),
    ]
    return [asyncio.create_task(drain(s)) for s in streams]


@pytest.fixture
async def backlog(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> AsyncIterator[pb.AgentStatus]:
    async for status in frozen_agent_with_backlog(tmp_path, mosquitto_broker):
        yield status


async def status_server(
    make_server: MakeServer, redis_url: str, broker: MosquittoBroker
) -> UnistockServer:
    srv = await start_mqtt_server(make_server, redis_url, broker, partitions=PARTITIONS)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await web_with(c, "s1")  # s1 and dc in web, staleness limit LIMIT s
        await c.upsert_locations([apb.Location(location_id="s2", type=apb.STORE, store_id="s2")])
    return srv


async def test_status_shows_stores_backlog_staleness_ledger_lag_and_watchers(
    backlog: pb.AgentStatus,
    mosquitto_broker: MosquittoBroker,
    make_server: MakeServer,
    clean_redis_url: str,
) -> None:
    before = time.time()  # no feed entry before this (a clean Redis)
    srv = await status_server(make_server, clean_redis_url, mosquitto_broker)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await send(c, batch("wms", mv(1, "RECEIPT", "JACKET", "dc", 10)))
        await send(c, batch("wms", mv(2, "RECEIPT", "SHIRT", "dc", 3)))
        sent = time.time()
        watches = await open_watches(c)
        try:
            got = await until(
                c,
                lambda s: (
                    store(s, "s1").stale
                    and s.watch_subscribers.events == 1
                    and consumer(s, "events").entries_behind == 0
                ),
            )
        finally:
            for task in watches:
                task.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

        s1 = store(got, "s1")
        assert s1.state == pb.AgentStatus.ONLINE
        assert s1.source_id == backlog.source_id
        assert s1.source_id.startswith("agent-s1")
        assert (s1.outbox_depth, s1.last_acked_seq) == (1, 0)
        assert s1.oldest_unacked_age_seconds == backlog.oldest_unacked_age_seconds > 0
        assert s1.status_at == backlog.at
        # Heard of as of its retained status's `at` (the agent is frozen since).
        assert s1.has_been_heard
        assert abs(s1.last_heard.ToNanoseconds() - backlog.at.ToNanoseconds()) < 50_000_000
        heard = s1.last_heard.ToNanoseconds() / 1e9
        assert abs(s1.silent_seconds - (got.at.ToNanoseconds() / 1e9 - heard)) < 0.01
        # Stale for web: silent (frozen), or its agent's backlog (the movement never acked)
        # older than the limit, whichever came first.
        assert max(s1.silent_seconds, s1.oldest_unacked_age_seconds) > LIMIT
        assert list(s1.stale_networks) == ["web"]

        s2 = store(got, "s2")  # in master data, no agent ever heard
        assert s2.state == pb.AgentStatus.STATE_UNSPECIFIED
        assert (s2.source_id, s2.outbox_depth, s2.has_been_heard) == ("", 0, False)
        assert not s2.HasField("status_at")
        assert (s2.stale, list(s2.stale_networks)) == (False, [])  # in no network
        assert [s.store_id for s in got.stores] == ["s1", "s2"]

        ledger = consumer(got, "ledger")  # registered by the server; no ledger process runs
        # Exactly what the feed holds (nothing trimmed: the ledger's cursor holds it back),
        # once the feed is quiet (the store going stale is a feed change too).
        for _ in range(100):
            held = await feed_entries(clean_redis_url)
            if consumer(await c.get_server_status(), "ledger").entries_behind == held:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"ledger entries_behind never {held}")
        assert ledger.entries_behind > 0
        assert not ledger.entries_behind_at_least
        assert ledger.partitions_without_cursor == 0
        # Its oldest unread change (the first ever written) was written between `before` and
        # `sent`.
        at = got.at.ToNanoseconds() / 1e9
        assert at - sent - 0.001 <= ledger.lag_seconds <= at - before + 0.001
        events = consumer(got, "events")
        assert (events.lag_seconds, events.entries_behind) == (0, 0)
        assert [c.name for c in got.feed_consumers] == ["events", "ledger"]

        w = got.watch_subscribers
        assert (w.availability, w.network, w.reservations, w.events) == (2, 1, 1, 1)

        h = got.health
        assert h.serving
        assert h.redis_reachable
        assert h.mqtt_enabled
        assert h.mqtt_connected
        assert h.redis_error == ""
        assert 0 <= h.last_flush_age_seconds < got.uptime_seconds
        assert list(got.partitions.owned) == list(range(PARTITIONS))
        assert got.partitions.count == PARTITIONS
        assert got.positions.resident >= 2
        assert got.positions.activated >= 2
        assert got.positions.max_resident == srv.settings.max_resident
        assert got.version == "0.1.0"
        started = got.started_at.ToNanoseconds() / 1e9
        assert abs(at - started - got.uptime_seconds) < 0.001

        # The docs' example finds the store whose movement waits.
        [line] = await doc_example()(target(srv), TOKENS["admin"])
        assert line.startswith("s1: 1 unacked, oldest ")

        after = await until(c, lambda s: s.watch_subscribers.events == 0)
        w = after.watch_subscribers
        assert (w.availability, w.network, w.reservations, w.events) == (0, 0, 0, 0)

    # A restart: the broker sends the agent's retained status again (the agent is still frozen).
    await srv.stop()
    srv = await start_mqtt_server(
        make_server, clean_redis_url, mosquitto_broker, partitions=PARTITIONS
    )
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        again = await until(c, lambda s: store(s, "s1").state == pb.AgentStatus.ONLINE)
    s1 = store(again, "s1")
    assert (s1.outbox_depth, s1.status_at) == (1, backlog.at)
    assert s1.has_been_heard


async def test_a_consumer_without_entry_numbers_is_counted_up_to_the_cap(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    """The events deriver's cursors carry no entry number: a server run with --events 0 leaves
    the cursor an earlier one saved behind; what follows it is counted (up to the cap)."""
    srv = await make_server(clean_redis_url, partitions=PARTITIONS)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await send(c, batch("wms", mv(1, "RECEIPT", "JACKET", "dc", 10)))
        await until(c, lambda s: consumer(s, "events").entries_behind == 0)
    await srv.stop()
    srv = await make_server(clean_redis_url, partitions=PARTITIONS, events=0)
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        before = time.time()
        for seq in range(2, 5):  # 3 flushes: 3 feed entries (partition of dc), none read
            await send(c, batch("wms", mv(seq, "RECEIPT", "JACKET", "dc", 1)))
        sent = time.time()
        got = await c.get_server_status()
        events = consumer(got, "events")
        assert (events.entries_behind, events.entries_behind_at_least) == (3, False)
        at = got.at.ToNanoseconds() / 1e9
        assert at - sent - 0.001 <= events.lag_seconds <= at - before + 0.001
        assert srv.admin.status is not None
        srv.admin.status.count_cap = 2
        capped = consumer(await c.get_server_status(), "events")
        assert (capped.entries_behind, capped.entries_behind_at_least) == (2, True)


@pytest.mark.parametrize("role", ["channel", "backoffice"])
async def test_status_is_for_admins_only(server: UnistockServer, role: str) -> None:
    async with UnistockClient(target(server), TOKENS[role]) as c:
        with pytest.raises(UnistockClientError) as err:
            await c.get_server_status()
    assert err.value.code is grpc.StatusCode.PERMISSION_DENIED


async def test_without_mqtt_no_store_is_heard_and_health_says_mqtt_is_off(
    server: UnistockServer,
) -> None:
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await c.upsert_locations([apb.Location(location_id="s9", type=apb.STORE, store_id="s9")])
        got = await c.get_server_status()
    assert (got.health.mqtt_enabled, got.health.mqtt_connected) == (False, False)
    assert got.health.serving
    [s9] = got.stores
    assert (s9.store_id, s9.state, s9.HasField("last_heard")) == (
        "s9",
        pb.AgentStatus.STATE_UNSPECIFIED,
        False,
    )
