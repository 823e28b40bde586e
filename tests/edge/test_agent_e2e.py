"""The edge agent end to end: tills -> agent intake -> outbox -> MQTT -> server -> Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc import aio

from tests.edge.harness import drained, intake, on_hand, start_agent, stop_agent
from unistock.devtools.services import MosquittoBroker
from unistock.edge.agent import StoreAgent
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.intake.v1 import intake_pb2_grpc as ipb_grpc
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb


@pytest.fixture
def server(mqtt_server: UnistockServer) -> UnistockServer:
    return mqtt_server


@pytest.fixture
async def agent(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, server: UnistockServer
) -> AsyncIterator[StoreAgent]:
    a, task = await start_agent(tmp_path, mosquitto_broker)
    yield a
    await stop_agent(a, task)


@pytest.fixture
async def till(agent: StoreAgent) -> AsyncIterator[ipb_grpc.StoreIntakeStub]:
    async with intake(agent) as stub:
        yield stub


async def test_sales_and_returns_reach_the_server_once(
    server: UnistockServer, agent: StoreAgent, till: ipb_grpc.StoreIntakeStub
) -> None:
    await till.RecordMovement(
        ipb.RecordMovementRequest(movement=pb.Movement(sku="SHOE", type=pb.RECEIPT, quantity=10))
    )
    for _ in range(3):
        r = await till.RecordSale(ipb.SaleRequest(till_id="t1", sku="SHOE", quantity=1))
    assert r.seq == 4
    await till.RecordReturn(ipb.ReturnRequest(till_id="t1", sku="SHOE", quantity=1))
    await drained(agent)
    assert await on_hand(server, "SHOE") == 8
    assert agent.outbox.last_acked == 5


async def test_bad_intake_is_refused_naming_the_field(till: ipb_grpc.StoreIntakeStub) -> None:
    with pytest.raises(aio.AioRpcError) as err:
        await till.RecordSale(ipb.SaleRequest(till_id="t1", sku="", quantity=1))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sku" in (err.value.details() or "")


async def test_an_agent_whose_outbox_file_was_lost_loses_nothing_after_it(
    server: UnistockServer, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    """The server remembers how far each source got; a new outbox under the old source would
    start again at seq 1 and its first movements would be dropped as duplicates. A new file is
    a new incarnation of the source instead."""
    for run in range(2):
        agent, task = await start_agent(tmp_path, mosquitto_broker)
        try:
            await agent.record([pb.Movement(sku="CAP", type=pb.RECEIPT, quantity=1)] * 3)
            await drained(agent)
        finally:
            await stop_agent(agent, task)
        if run == 0:
            first_source = agent.outbox.source_id
            (tmp_path / "agent-s1" / "outbox-s1.sqlite").unlink()  # a new disk
    assert await on_hand(server, "CAP") == 6  # nothing of the second life dropped
    assert agent.outbox.source_id != first_source


@pytest.mark.slow
async def test_offline_for_a_while_then_everything_lands_once_in_order(
    server: UnistockServer, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    mosquitto_broker.stop()  # the store loses its uplink
    agent, task = await start_agent(tmp_path, mosquitto_broker)
    try:
        async with intake(agent) as stub:
            await stub.RecordMovement(
                ipb.RecordMovementRequest(
                    movement=pb.Movement(sku="BAG", type=pb.RECEIPT, quantity=100_000)
                )
            )
            await stub.RecordSale(ipb.SaleRequest(till_id="t1", sku="BAG", quantity=1))
        # Hours of trading at many tills: 50k sales, recorded as the intake does (in chunks,
        # to keep the test fast: each append is one fsync'd SQLite transaction).
        n = 50_000
        for start in range(1, n, 1000):
            await agent.record(
                [
                    pb.Movement(sku="BAG", type=pb.SALE, quantity=1)
                    for _ in range(min(1000, n - start))
                ]
            )
        assert agent.outbox.depth() == n + 1
        mosquitto_broker.start()
        await drained(agent)
        assert await on_hand(server, "BAG") == 100_000 - n
        [p] = await server.inventory.levels([("BAG", "s1")])
        assert p.version == n + 1  # every movement applied exactly once
    finally:
        await stop_agent(agent, task)


@pytest.mark.slow
async def test_mosquitto_killed_with_movements_in_flight_loses_nothing(
    server: UnistockServer, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    agent, task = await start_agent(tmp_path, mosquitto_broker)
    try:
        n = 1_000
        async with intake(agent) as stub:
            for i in range(n):
                await stub.RecordMovement(
                    ipb.RecordMovementRequest(
                        movement=pb.Movement(sku="HAT", type=pb.RECEIPT, quantity=1)
                    )
                )
                if i == n // 2:
                    mosquitto_broker.kill()
                    mosquitto_broker.restart()
        await drained(agent)
        assert await on_hand(server, "HAT") == n
        [p] = await server.inventory.levels([("HAT", "s1")])
        assert p.version == n
        # The send counters add up over both connections (they are Prometheus counters).
        sample = agent.metrics.registry.get_sample_value
        assert (sample("unistock_agent_movements_published_total") or 0) >= n
        assert sample("unistock_agent_batches_in_flight") is not None
    finally:
        await stop_agent(agent, task)


async def test_a_pickup_of_a_reservation_it_does_not_match_is_applied_and_reported(
    server: UnistockServer, agent: StoreAgent, till: ipb_grpc.StoreIntakeStub
) -> None:
    """Issue 8 item 1.4 through the agent and MQTT: a till's sale naming a reservation that holds
    nothing of its SKU here is a fact (applied), and both sides say so."""
    await till.RecordMovement(
        ipb.RecordMovementRequest(movement=pb.Movement(sku="BELT", type=pb.RECEIPT, quantity=4))
    )
    r = await till.RecordSale(
        ipb.SaleRequest(till_id="t1", sku="BELT", quantity=1, reservation_id="cc-unknown")
    )
    await drained(agent)
    assert await on_hand(server, "BELT") == 3
    assert server.metrics.registry.get_sample_value("unistock_pickup_mismatches_total") == 1
    assert agent.send_stats.notices == {"PICKUP_MISMATCH": 1}
    registry = agent.metrics.registry
    assert (
        registry.get_sample_value("unistock_agent_notices_total", {"kind": "PICKUP_MISMATCH"}) == 1
    )
    assert r.seq == 2


async def test_a_damaged_return_goes_to_non_sellable_and_is_restocked_after_inspection(
    server: UnistockServer, agent: StoreAgent, till: ipb_grpc.StoreIntakeStub
) -> None:
    """Issue 9 item 2 through the agent and MQTT: a till records a damaged return; the back
    office later restocks one unit after inspection and writes the other off."""
    await till.RecordMovement(
        ipb.RecordMovementRequest(movement=pb.Movement(sku="COAT", type=pb.RECEIPT, quantity=3))
    )
    await till.RecordReturn(
        ipb.ReturnRequest(till_id="t2", sku="COAT", quantity=2, condition=pb.NON_SELLABLE)
    )
    await drained(agent)
    [p] = await server.inventory.levels([("COAT", "s1")])
    assert (p.on_hand, p.non_sellable, p.available) == (3, 2, 3)
    await till.RecordMovement(
        ipb.RecordMovementRequest(movement=pb.Movement(sku="COAT", type=pb.RESTOCK, quantity=1))
    )
    await till.RecordMovement(
        ipb.RecordMovementRequest(
            movement=pb.Movement(
                sku="COAT",
                type=pb.ADJUSTMENT,
                quantity=1,
                adjustment_sign=pb.DECREASE,
                reason="stained",
                condition=pb.NON_SELLABLE,
            )
        )
    )
    await drained(agent)
    [p] = await server.inventory.levels([("COAT", "s1")])
    assert (p.on_hand, p.non_sellable, p.available) == (4, 0, 4)
