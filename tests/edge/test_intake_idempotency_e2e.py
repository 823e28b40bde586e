"""A till's retry with the same request_id never records a movement twice (agent + server)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from grpc import aio

from tests.edge.harness import drained, intake, on_hand, start_agent, stop_agent
from tests.edge.test_agent_e2e import server
from unistock.devtools.services import MosquittoBroker
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

__all__ = ["server"]  # the fixture, imported for its use below


def sale(request_id: str, quantity: int = 1) -> ipb.SaleRequest:
    return ipb.SaleRequest(till_id="t1", sku="SCARF", quantity=quantity, request_id=request_id)


async def test_a_sale_sent_three_times_with_one_request_id_lands_once(
    server: UnistockServer, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    agent, task = await start_agent(tmp_path, mosquitto_broker)
    try:
        async with intake(agent) as till:
            receipt = ipb.RecordMovementRequest(
                movement=pb.Movement(sku="SCARF", type=pb.RECEIPT, quantity=10),
                request_id="backoffice/delivery-7/1",
            )
            assert (await till.RecordMovement(receipt)).seq == 1
            answers = [await till.RecordSale(sale("t1/receipt-1042/1")) for _ in range(3)]
            assert [(a.seq, a.replayed) for a in answers] == [(2, False), (2, True), (2, True)]
            assert (await till.RecordMovement(receipt)).replayed  # any intake call, same rule
            # The same key for another movement is a till bug: refused, naming the field.
            with pytest.raises(aio.AioRpcError) as err:
                await till.RecordSale(sale("t1/receipt-1042/1", quantity=2))
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert "request_id" in (err.value.details() or "")
            with pytest.raises(aio.AioRpcError) as err:
                await till.RecordReturn(
                    ipb.ReturnRequest(
                        till_id="t1", sku="SCARF", quantity=1, request_id="t1/receipt-1042/1"
                    )
                )
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            # Without a request_id every call records a movement, as before.
            assert (await till.RecordSale(sale(""))).seq == 3
        await drained(agent)
        assert agent.outbox.last_acked == 3
        assert await on_hand(server, "SCARF") == 8
    finally:
        await stop_agent(agent, task)

    # The key is in the outbox file: after a restart the retry still gets the first receipt.
    agent, task = await start_agent(tmp_path, mosquitto_broker)
    try:
        async with intake(agent) as till:
            again = await till.RecordSale(sale("t1/receipt-1042/1"))
            assert (again.seq, again.replayed, again.outbox_depth) == (2, True, 0)
            assert (await till.RecordSale(sale("t1/receipt-1042/2"))).seq == 4
        await drained(agent)
        assert await on_hand(server, "SCARF") == 7
        [p] = await server.inventory.levels([("SCARF", "s1")])
        assert p.version == 4  # four movements applied: the replays added none
    finally:
        await stop_agent(agent, task)
