"""A till's movement that the server rejects after the receipt (issue 12: tills and store staff
see their rejected movements): a real server, mosquitto and agent; the till's intake calls
ListRejectedMovements, WatchRejectedMovements and ResolveRejectedMovement; the agent's retained
status and /metrics follow."""

from __future__ import annotations

import asyncio
import io
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio
from rich.console import Console

from tests.edge.harness import drained, intake, metric, on_hand, start_agent, stop_agent
from tests.edge.test_sender import as_bytes, mqtt_client
from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient
from unistock.client.cli_status import render
from unistock.devtools.services import MosquittoBroker, free_port
from unistock.edge.agent import StoreAgent
from unistock.edge.sender import status_topic
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

DEADLINE = 60


@pytest.fixture
def server(mqtt_server: UnistockServer) -> UnistockServer:
    return mqtt_server


async def status_where(
    broker: MosquittoBroker, ok: Callable[[pb.AgentStatus], bool], store: str = "s1"
) -> pb.AgentStatus:
    """The first status of the store (the retained one, then each new one) that is ``ok``."""
    async with mqtt_client(broker, f"status-reader-{time.monotonic_ns()}") as client:
        await client.subscribe(status_topic(store), qos=1)
        async with asyncio.timeout(DEADLINE):
            async for message in client.messages:
                status = pb.AgentStatus.FromString(as_bytes(message.payload))
                if ok(status):
                    return status
    raise AssertionError("unreachable")


async def server_sees(server: UnistockServer, unresolved: int) -> apb.ServerStatus:
    """The server's status (`unistock status`) once it shows store s1 with that many
    unresolved rejections, from the agent's status (polled)."""
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        async with asyncio.timeout(DEADLINE):
            while True:
                status = await c.get_server_status()
                if any(
                    s.store_id == "s1" and s.rejected_unresolved == unresolved
                    for s in status.stores
                ):
                    return status
                await asyncio.sleep(0.1)


async def gauge(agent: StoreAgent) -> float:
    """unistock_agent_rejections_unresolved, scraped from the agent's /metrics."""
    url = f"http://127.0.0.1:{agent.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read())
    return metric(body.decode(), "unistock_agent_rejections_unresolved")


def mistyped_sale(request_id: str = "till-3/4711/1") -> ipb.SaleRequest:
    """A sale at store s1 whose location was mistyped as s2 (another store's location)."""
    return ipb.SaleRequest(
        till_id="till-3", sku="SHOE", quantity=1, location_id="s2", request_id=request_id
    )


@pytest.fixture
async def agent(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, server: UnistockServer
) -> AsyncIterator[StoreAgent]:
    a, task = await start_agent(tmp_path, mosquitto_broker, metrics_port=free_port())
    yield a
    await stop_agent(a, task)


async def test_a_rejected_sale_is_shown_to_the_till_and_store_staff_until_resolved(
    server: UnistockServer, agent: StoreAgent, mosquitto_broker: MosquittoBroker
) -> None:
    async with intake(agent) as till:
        watch = till.WatchRejectedMovements(ipb.WatchRejectedMovementsRequest())
        other_till = till.WatchRejectedMovements(
            ipb.WatchRejectedMovementsRequest(device_id="till-1")
        )
        first = await asyncio.wait_for(watch.read(), DEADLINE)
        assert first.caught_up
        assert not first.HasField("rejection")
        assert (await asyncio.wait_for(other_till.read(), DEADLINE)).caught_up

        receipt = await till.RecordSale(mistyped_sale())  # the till gets its receipt...
        await till.RecordSale(ipb.SaleRequest(till_id="till-1", sku="SHOE", quantity=1))
        await drained(agent)
        assert await on_hand(server, "SHOE", "s2") == 0  # ...but nothing was applied

        # ...and learns of the rejection on the watch it had open.
        seen = await asyncio.wait_for(watch.read(), DEADLINE)
        rejected = seen.rejection
        assert not seen.caught_up
        assert (rejected.source_id, rejected.seq) == (receipt.source_id, receipt.seq)
        assert (rejected.device_id, rejected.request_id) == ("till-3", "till-3/4711/1")
        assert rejected.reason == pb.WRONG_STORE
        assert rejected.detail == "location_id: location 's2' does not belong to store 's1'"
        assert (rejected.movement.sku, rejected.movement.location_id) == ("SHOE", "s2")
        assert rejected.movement.type == pb.SALE
        assert rejected.movement.seq == receipt.seq
        assert rejected.HasField("recorded_at")
        assert rejected.HasField("rejected_at")
        assert rejected.recorded_at.ToDatetime() <= rejected.rejected_at.ToDatetime()
        assert not rejected.resolved
        assert not rejected.HasField("resolved_at")
        listed = await till.ListRejectedMovements(ipb.ListRejectedMovementsRequest())
        assert list(listed.rejections) == [rejected]
        assert listed.next_page_token == ""
        mine = await till.ListRejectedMovements(
            ipb.ListRejectedMovementsRequest(device_id="till-3")
        )
        assert list(mine.rejections) == [rejected]
        others = await till.ListRejectedMovements(
            ipb.ListRejectedMovementsRequest(device_id="till-1")
        )
        assert list(others.rejections) == []

        # The store's retained status and the agent's gauge show it.
        status = await status_where(mosquitto_broker, lambda s: s.rejected_unresolved > 0)
        assert status.rejected_unresolved == 1
        assert status.last_rejected_at == rejected.rejected_at
        assert await gauge(agent) == 1
        # So does the server's status, centrally (`unistock status`).
        central = await server_sees(server, 1)
        [s1] = [s for s in central.stores if s.store_id == "s1"]
        assert s1.last_rejected_at == rejected.rejected_at
        console = Console(width=200, record=True, file=io.StringIO())
        render(central, console)
        assert "1 unresolved" in console.export_text()

        # Store staff resolve it (twice: the first resolution stands).
        resolved = await till.ResolveRejectedMovement(
            ipb.ResolveRejectedMovementRequest(
                seq=receipt.seq, resolved_by="ana", note="sold again at s1"
            )
        )
        assert (resolved.resolved, resolved.resolved_by, resolved.resolve_note) == (
            True,
            "ana",
            "sold again at s1",
        )
        assert resolved.HasField("resolved_at")
        again = await till.ResolveRejectedMovement(
            ipb.ResolveRejectedMovementRequest(seq=receipt.seq, resolved_by="bob", note="dup")
        )
        assert again == resolved
        unresolved = await till.ListRejectedMovements(ipb.ListRejectedMovementsRequest())
        assert list(unresolved.rejections) == []
        every = await till.ListRejectedMovements(
            ipb.ListRejectedMovementsRequest(include_resolved=True)
        )
        assert list(every.rejections) == [resolved]
        status = await status_where(mosquitto_broker, lambda s: s.rejected_unresolved == 0)
        assert not status.HasField("last_rejected_at")
        assert await gauge(agent) == 0
        [s1] = [s for s in (await server_sees(server, 0)).stores if s.store_id == "s1"]
        assert not s1.HasField("last_rejected_at")
        assert not other_till.done()  # till-1's watch saw nothing of till-3's rejection
        watch.cancel()
        other_till.cancel()


async def test_resolve_refuses_what_it_cannot_resolve(agent: StoreAgent) -> None:
    async with intake(agent) as till:
        for request, code, field in [
            (ipb.ResolveRejectedMovementRequest(seq=7, resolved_by="ana"), "NOT_FOUND", "seq 7"),
            (
                ipb.ResolveRejectedMovementRequest(seq=0, resolved_by="ana"),
                "INVALID_ARGUMENT",
                "seq",
            ),
            (ipb.ResolveRejectedMovementRequest(seq=7), "INVALID_ARGUMENT", "resolved_by"),
        ]:
            with pytest.raises(aio.AioRpcError) as err:
                await till.ResolveRejectedMovement(request)
            assert err.value.code() == getattr(grpc.StatusCode, code)
            assert (err.value.details() or "").startswith(field)
        for bad in [
            ipb.ListRejectedMovementsRequest(page_size=1001),
            ipb.ListRejectedMovementsRequest(page_token="x"),
        ]:
            with pytest.raises(aio.AioRpcError) as err:
                await till.ListRejectedMovements(bad)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_rejections_survive_an_agent_restart_and_page_newest_first(
    server: UnistockServer, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    agent, task = await start_agent(tmp_path, mosquitto_broker)
    try:
        async with intake(agent) as till:
            seqs = [(await till.RecordSale(mistyped_sale(f"till-3/{n}/1"))).seq for n in range(3)]
            await drained(agent)
    finally:
        await stop_agent(agent, task)
    agent, task = await start_agent(tmp_path, mosquitto_broker)
    try:
        async with intake(agent) as till:
            watch = till.WatchRejectedMovements(
                ipb.WatchRejectedMovementsRequest(device_id="till-3")
            )
            at_start = [await asyncio.wait_for(watch.read(), DEADLINE) for _ in range(4)]
            assert [m.rejection.seq for m in at_start[:3]] == seqs  # oldest first
            assert [m.caught_up for m in at_start] == [False, False, False, True]
            assert [m.rejection.request_id for m in at_start[:3]] == [
                f"till-3/{n}/1" for n in range(3)
            ]
            page = await till.ListRejectedMovements(ipb.ListRejectedMovementsRequest(page_size=2))
            assert [r.seq for r in page.rejections] == seqs[::-1][:2]  # newest first
            rest = await till.ListRejectedMovements(
                ipb.ListRejectedMovementsRequest(page_size=2, page_token=page.next_page_token)
            )
            assert [r.seq for r in rest.rejections] == seqs[:1]
            assert rest.next_page_token == ""
            newest = at_start[2].rejection.rejected_at
            since = await till.ListRejectedMovements(ipb.ListRejectedMovementsRequest(since=newest))
            assert seqs[2] in [r.seq for r in since.rejections]
            later = ipb.ListRejectedMovementsRequest()
            later.since.FromMicroseconds(newest.ToMicroseconds() + 1000)
            assert list((await till.ListRejectedMovements(later)).rejections) == []
            status = await status_where(mosquitto_broker, lambda s: s.rejected_unresolved > 0)
            assert status.rejected_unresolved == 3
            await till.ResolveRejectedMovement(
                ipb.ResolveRejectedMovementRequest(seq=seqs[0], resolved_by="ana")
            )
            status = await status_where(mosquitto_broker, lambda s: s.rejected_unresolved < 3)
            assert status.rejected_unresolved == 2
            assert status.last_rejected_at == at_start[2].rejection.rejected_at
            # A new rejection after the restart reaches the watch opened after it.
            receipt = await till.RecordSale(mistyped_sale("till-3/9/1"))
            new = await asyncio.wait_for(watch.read(), DEADLINE)
            assert (new.rejection.seq, new.rejection.reason) == (receipt.seq, pb.WRONG_STORE)
            watch.cancel()
    finally:
        await stop_agent(agent, task)
