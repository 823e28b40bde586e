"""Sentences of proto/unistock/intake/v1/intake.proto held literally: tills -> agent -> MQTT ->
server (issue 8 item 1.6)."""

from __future__ import annotations

import grpc
import pytest
from grpc import aio

from tests.edge.harness import drained, on_hand
from tests.edge.test_agent_e2e import agent, server, till
from unistock.edge.agent import StoreAgent
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.intake.v1 import intake_pb2_grpc as ipb_grpc
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

__all__ = ["agent", "server", "till"]  # the fixtures, imported for their use below


async def test_a_receipt_is_only_given_for_what_the_server_will_apply(
    server: UnistockServer, agent: StoreAgent, till: ipb_grpc.StoreIntakeStub
) -> None:
    # "A till that got an IntakeReceipt may forget the sale: it will reach the server exactly
    # once. Before storing anything the agent checks a movement as the server does ... and
    # refuses one the server would reject with INVALID_ARGUMENT naming the field".
    refused = [
        (ipb.SaleRequest(till_id="t", sku="SHOE 42", quantity=1), "sku"),
        (ipb.SaleRequest(till_id="t", sku="SHOE", quantity=1_000_000_001), "quantity"),
        (ipb.SaleRequest(till_id="t", sku="SHOE", quantity=0), "quantity"),
        (ipb.SaleRequest(till_id="t", sku="SHOE", quantity=1, location_id="s|1"), "location_id"),
        (
            ipb.SaleRequest(till_id="t", sku="SHOE", quantity=1, reservation_id="r 1"),
            "reservation_id",
        ),
        (ipb.ReturnRequest(till_id="t", sku="", quantity=1), "sku"),
        (
            ipb.RecordMovementRequest(
                movement=pb.Movement(
                    sku="SHOE", type=pb.ADJUSTMENT, quantity=1, adjustment_sign=pb.DECREASE
                )
            ),
            "movement.reason",
        ),
        (
            ipb.RecordMovementRequest(
                movement=pb.Movement(sku="SHOE", type=pb.TRANSFER_OUT, quantity=1)
            ),
            "movement.transfer_id",
        ),
        (  # a shipment must say where to
            ipb.RecordMovementRequest(
                movement=pb.Movement(sku="SHOE", type=pb.TRANSFER_OUT, quantity=1, transfer_id="t1")
            ),
            "movement.counterpart_location_id",
        ),
        (  # to another location than the store's own (the agent's default location_id)
            ipb.RecordMovementRequest(
                movement=pb.Movement(
                    sku="SHOE",
                    type=pb.TRANSFER_OUT,
                    quantity=1,
                    transfer_id="t1",
                    counterpart_location_id="s1",
                )
            ),
            "movement.counterpart_location_id",
        ),
        (  # and only transfers have a counterpart
            ipb.RecordMovementRequest(
                movement=pb.Movement(
                    sku="SHOE", type=pb.RECEIPT, quantity=1, counterpart_location_id="s2"
                )
            ),
            "movement.counterpart_location_id",
        ),
        (
            ipb.RecordMovementRequest(movement=pb.Movement(sku="SHOE", type=pb.COUNT, quantity=3)),
            "movement.count_id",
        ),
        (
            ipb.RecordMovementRequest(
                movement=pb.Movement(sku="SHOE", type=pb.RECEIPT, quantity=1, reason="x" * 1025)
            ),
            "movement.reason",
        ),
    ]
    calls = {
        ipb.SaleRequest: till.RecordSale,
        ipb.ReturnRequest: till.RecordReturn,
        ipb.RecordMovementRequest: till.RecordMovement,
    }
    for request, field in refused:
        with pytest.raises(aio.AioRpcError) as err:
            await calls[type(request)](request)  # type: ignore[operator]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, request
        assert (err.value.details() or "").startswith(f"{field}: "), err.value.details()
    assert agent.outbox.depth() == 0  # nothing stored
    received = await till.RecordMovement(
        ipb.RecordMovementRequest(movement=pb.Movement(sku="SHOE", type=pb.RECEIPT, quantity=10))
    )
    assert (received.seq, received.outbox_depth) == (1, 1)
    await till.RecordSale(ipb.SaleRequest(till_id="t", sku="SHOE", quantity=1))
    count = ipb.RecordMovementRequest(
        movement=pb.Movement(sku="SHOE", type=pb.COUNT, quantity=0, count_id="c-empty")
    )
    assert (await till.RecordMovement(count)).seq == 3  # a COUNT of 0 is a fact
    # StartCountRequest: ids go into COUNT movements, checked as the server does.
    for start, field in (
        (ipb.StartCountRequest(count_id="count 1"), "count_id"),
        (ipb.StartCountRequest(count_id="c1", skus=["A", "B B"]), "skus[1]"),
        (ipb.StartCountRequest(count_id="c1", location_id="s 1"), "location_id"),
    ):
        with pytest.raises(aio.AioRpcError) as err:
            await till.StartCount(start)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (err.value.details() or "").startswith(f"{field}: ")
    assert "c1" not in agent._counts.running
    await drained(agent)
    assert agent.outbox.last_acked == 3
    assert await on_hand(server, "SHOE") == 0


async def test_tag_reads_without_a_running_session_are_bad_reads(
    till: ipb_grpc.StoreIntakeStub,
) -> None:
    # TagReadSummary.bad_reads: "Reads that were not SGTIN-96 or not decodable, or that named no
    # running count session".
    reads = [ipb.TagRead(count_id="no-such-count", epc="30" * 12, reader_id="r1")] * 3
    summary = await till.RecordTagReads(iter(reads))
    assert (summary.reads, summary.bad_reads, summary.unknown_reads) == (3, 3, 0)
