"""A transfer between two stores end to end: the back office at store 1 ships through its agent,
store 2 receives through its own; MQTT, a real server process (killed -9 in between) and Redis.

    s1 agent ──TRANSFER_OUT (counterpart s2)──▶ server: s1 on_hand -3, then s2 in_transit +3
    s2 agent ──TRANSFER_IN──────────────────────▶ server: s2 on_hand +2, in_transit -2
    CloseTransfer at s2: the unit still on the road is lost
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import grpc
import pytest
import redis
from grpc import aio

from tests.edge.harness import drained, intake, start_agent, stop_agent
from tests.faults.helpers import eventually
from tests.fixtures.server import TOKENS, ServerProcess
from unistock.client import UnistockClient
from unistock.devtools.services import MosquittoBroker
from unistock.edge.sender import movements_topic
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.server.app.server import UnistockServer
from unistock.server.domain import TransferState
from unistock.server.persistence.keys import Keyspace
from unistock.storage.v1 import storage_pb2 as spb
from unistock.v1 import inventory_pb2 as pb

SKU = "JACKET"
TRANSFER = "T-2026-0042"


def movement(
    type_: pb.MovementType.ValueType,
    quantity: int,
    transfer_id: str = "",
    counterpart_location_id: str = "",
) -> pb.Movement:
    return pb.Movement(
        sku=SKU,
        type=type_,
        quantity=quantity,
        transfer_id=transfer_id,
        counterpart_location_id=counterpart_location_id,
    )


def redis_hkeys(url: str, key: str) -> list[str]:
    with redis.Redis.from_url(url, socket_timeout=5) as r:
        return sorted(f.decode() for f in r.hkeys(key))


def redis_hset(url: str, key: str, field: str, value: bytes) -> None:
    with redis.Redis.from_url(url, socket_timeout=5) as r:
        r.hset(key, field, value)


async def level(client: UnistockClient, location: str) -> pb.StockLevel:
    [lv] = await client.get_availability(keys=[(SKU, location)])
    return lv


@contextlib.asynccontextmanager
async def published(broker: MosquittoBroker, store: str) -> AsyncIterator[list[pb.Movement]]:
    """The movements a store's agent publishes while in the block (as the broker relays them)."""
    seen: list[pb.Movement] = []
    async with aiomqtt.Client("127.0.0.1", broker.port) as sub:
        await sub.subscribe(movements_topic(store), qos=1)

        async def collect() -> None:
            async for message in sub.messages:
                assert isinstance(message.payload, bytes)
                seen.extend(pb.MovementBatch.FromString(message.payload).movements)

        task = asyncio.create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


@pytest.mark.slow  # kills a server process
async def test_a_transfer_between_two_stores_across_a_server_kill(
    tmp_path: Path, clean_redis_url: str, mosquitto_broker: MosquittoBroker
) -> None:
    def server_process(name: str) -> ServerProcess:
        return ServerProcess(
            clean_redis_url, tmp_path / name, "--mqtt-url", mosquitto_broker.url
        ).start()

    srv = await asyncio.to_thread(server_process, "srv1")
    s1, s1_run = await start_agent(tmp_path, mosquitto_broker, "s1")
    s2, s2_run = await start_agent(tmp_path, mosquitto_broker, "s2")
    ship = ipb.RecordMovementRequest(
        movement=movement(pb.TRANSFER_OUT, 3, transfer_id=TRANSFER, counterpart_location_id="s2"),
        request_id=f"backoffice/{TRANSFER}/out",
        device_id="backoffice",
    )
    try:
        # Store 2 has one unit on its shelf, store 1 receives 5 and ships 3 of them to store 2.
        async with intake(s2) as till2:
            await till2.RecordMovement(ipb.RecordMovementRequest(movement=movement(pb.RECEIPT, 1)))
        await drained(s2)
        async with intake(s1) as bo1, published(mosquitto_broker, "s1") as wire:
            await bo1.RecordMovement(ipb.RecordMovementRequest(movement=movement(pb.RECEIPT, 5)))
            first = await bo1.RecordMovement(ship)
            assert (first.seq, first.replayed) == (2, False)
            await drained(s1)
        # The shipment went on the wire as the back office wrote it (binary MovementBatch).
        [sent] = [m for m in wire if m.type == pb.TRANSFER_OUT]
        assert (sent.counterpart_location_id, sent.transfer_id) == ("s2", TRANSFER)
        assert (sent.location_id, sent.quantity, sent.seq) == ("s1", 3, 2)

        # Acknowledged to the agent: kill -9 the server at once. The shipment to s2's record is
        # written right after the ack and then deleted from s1's partition outbox (xout); if
        # the server got that far, put it back, as a kill between the two would leave it: the
        # next start must apply it again, and the record must count it once.
        srv.kill()
        shipments = Keyspace().shipments(Keyspace().location_partition("s1"))
        field = f"{s1.outbox.source_id}|2"
        left = await asyncio.to_thread(redis_hkeys, clean_redis_url, shipments)
        assert left in ([], [field])
        if not left:
            shipment = spb.Shipment(
                transfer_id=TRANSFER,
                sku=SKU,
                quantity=3,
                origin_location_id="s1",
                destination_location_id="s2",
                source_id=s1.outbox.source_id,
                seq=2,
            )
            await asyncio.to_thread(
                redis_hset, clean_redis_url, shipments, field, shipment.SerializeToString()
            )
        async with intake(s1) as bo1:
            # The back office did not see the answer: its retry gets the same receipt, even
            # while the server is away, and another destination under that key is refused.
            again = await bo1.RecordMovement(ship)
            assert (again.source_id, again.seq, again.replayed) == (first.source_id, 2, True)
            elsewhere = ipb.RecordMovementRequest()
            elsewhere.CopyFrom(ship)
            elsewhere.movement.counterpart_location_id = "s3"
            with pytest.raises(aio.AioRpcError) as err:
                await bo1.RecordMovement(elsewhere)
            assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
            assert (err.value.details() or "").startswith("request_id: ")
        srv = await asyncio.to_thread(server_process, "srv2")

        async with UnistockClient(srv.target, TOKENS["backoffice"]) as bo:

            async def shipment_applied() -> bool:
                return not await asyncio.to_thread(redis_hkeys, clean_redis_url, shipments)

            # Deleted from the outbox once its record is durable: s2 shows 3 units on the road.
            await eventually(shipment_applied, within=15)
            log = srv.log_path.read_text()
            assert "applying 1 transfer shipments left by a crash" in log, log[-3000:]
            lv1, lv2 = await level(bo, "s1"), await level(bo, "s2")
            assert (lv1.on_hand, lv1.available, lv1.in_transit, lv1.version) == (2, 2, 0, 2)
            assert (lv2.on_hand, lv2.available, lv2.in_transit) == (1, 1, 3)

            # Store 2 unpacks the parcel: 2 of the 3 units are in it.
            async with intake(s2) as till2:
                await till2.RecordMovement(
                    ipb.RecordMovementRequest(
                        movement=movement(
                            pb.TRANSFER_IN, 2, transfer_id=TRANSFER, counterpart_location_id="s1"
                        ),
                        request_id=f"s2/{TRANSFER}/in",
                    )
                )
            await drained(s2)
            lv2 = await level(bo, "s2")
            assert (lv2.on_hand, lv2.available, lv2.in_transit) == (3, 3, 1)
            [t] = await bo.get_transfer(TRANSFER)
            assert (t.origin_location_id, t.destination_location_id) == ("s1", "s2")
            assert t.state == pb.IN_TRANSIT
            [line] = t.lines
            assert (line.sku, line.shipped, line.received, line.in_transit, line.lost) == (
                SKU, 3, 2, 1, 0
            )  # fmt: skip
            assert line.unexpected == 0
            assert list(t.discrepancies) == []  # shipped once, received once

            # Another retry of the shipment after the restart: still one shipment of 3.
            async with intake(s1) as bo1:
                assert (await bo1.RecordMovement(ship)).replayed
            assert s1.outbox.depth() == 0
            assert s1.outbox.last_acked == 2

            # The missing unit never arrives: store 2 closes the transfer short.
            closed = await bo.close_transfer(TRANSFER, "s2")
            assert closed.state == pb.CLOSED
            [line] = closed.lines
            assert (line.shipped, line.received, line.in_transit, line.lost) == (3, 2, 0, 1)
            assert [(d.kind, d.sku, d.quantity) for d in closed.discrepancies] == [
                (pb.CLOSED_SHORT, SKU, 1)
            ]
            assert await bo.get_transfer(TRANSFER, "s2") == [closed]
            lv1, lv2 = await level(bo, "s1"), await level(bo, "s2")
            assert (lv1.on_hand, lv1.in_transit, lv1.version) == (2, 0, 2)
            assert (lv2.on_hand, lv2.available, lv2.in_transit) == (3, 3, 0)
    finally:
        await stop_agent(s1, s1_run)
        await stop_agent(s2, s2_run)
        srv.stop()


async def test_in_transit_rises_at_the_destination_shortly_after_the_ack(
    tmp_path: Path, mqtt_server: UnistockServer, mosquitto_broker: MosquittoBroker
) -> None:
    """Without a restart: s2 sees the units on the road by polling, then receives all of them."""
    s1, s1_run = await start_agent(tmp_path, mosquitto_broker, "s1")
    s2, s2_run = await start_agent(tmp_path, mosquitto_broker, "s2")
    try:
        async with intake(s1) as bo1:
            await bo1.RecordMovement(ipb.RecordMovementRequest(movement=movement(pb.RECEIPT, 5)))
            await bo1.RecordMovement(
                ipb.RecordMovementRequest(
                    movement=movement(
                        pb.TRANSFER_OUT, 3, transfer_id="T-7", counterpart_location_id="s2"
                    )
                )
            )
        await drained(s1)

        async def on_the_road() -> bool:
            [lv] = await mqtt_server.inventory.levels([(SKU, "s2")])
            return lv.in_transit == 3

        await eventually(on_the_road, within=10)
        [lv] = await mqtt_server.inventory.levels([(SKU, "s2")])
        assert (lv.on_hand, lv.available) == (0, 0)  # never available while on the road
        async with intake(s2) as till2:
            await till2.RecordMovement(
                ipb.RecordMovementRequest(
                    movement=movement(pb.TRANSFER_IN, 3, transfer_id="T-7")  # origin not said
                )
            )
        await drained(s2)
        [lv] = await mqtt_server.inventory.levels([(SKU, "s2")])
        assert (lv.on_hand, lv.available, lv.in_transit) == (3, 3, 0)
        [t] = await mqtt_server.inventory.get_transfer("T-7")
        assert t.state == TransferState.RECEIVED
        assert t.origin == "s1"  # from the shipment
        assert [(ln.shipped, ln.received, ln.in_transit) for ln in t.lines] == [(3, 3, 0)]
    finally:
        await stop_agent(s1, s1_run)
        await stop_agent(s2, s2_run)
