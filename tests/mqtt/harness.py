"""A store's side of the MQTT contract as a test client, and batches to send with it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from unistock.devtools.services import MosquittoBroker
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb


@dataclass
class Agent:
    """Publishes batches on its store's movements topic and collects the acks of `acks_topic`."""

    store: str
    client: aiomqtt.Client
    acks: asyncio.Queue[pb.MovementAck] = field(default_factory=asyncio.Queue)

    async def send(
        self, payload: bytes | pb.MovementBatch, json_content: bool = False, *, topic: str = ""
    ) -> None:
        props = None
        if json_content:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.ContentType = "application/json"
        data = payload.SerializeToString() if isinstance(payload, pb.MovementBatch) else payload
        await self.client.publish(
            topic or f"unistock/v1/stores/{self.store}/movements", data, qos=1, properties=props
        )

    async def ack(self) -> pb.MovementAck:
        async with asyncio.timeout(20):
            return await self.acks.get()


@contextlib.asynccontextmanager
async def connect(
    broker: MosquittoBroker, store: str, acks_topic: str = ""
) -> AsyncIterator[Agent]:
    """An Agent of store, subscribed to its acks (or to acks_topic, e.g. a wildcard)."""
    async with aiomqtt.Client(
        "127.0.0.1", broker.port, identifier=f"agent-{store}",
        protocol=aiomqtt.ProtocolVersion.V5,
        socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    ) as client:  # fmt: skip
        a = Agent(store, client)
        await client.subscribe(acks_topic or f"unistock/v1/stores/{store}/acks", qos=1)

        async def collect() -> None:
            async for m in client.messages:
                await a.acks.put(pb.MovementAck.FromString(m.payload))  # type: ignore[arg-type,unused-ignore]

        task = asyncio.create_task(collect())
        try:
            yield a
        finally:
            task.cancel()


def batch(source: str, first: int, n: int, loc: str, *, sku: str = "SKU-1", qty: int = 1,
          type_: int = pb.RECEIPT) -> pb.MovementBatch:  # fmt: skip
    return pb.MovementBatch(
        source_id=source,
        movements=[
            pb.Movement(seq=s, sku=sku, location_id=loc, type=type_, quantity=qty)  # type: ignore[arg-type]
            for s in range(first, first + n)
        ],
    )


async def level(srv: UnistockServer, sku: str, loc: str) -> pb.StockLevel:
    [p] = await srv.inventory.levels([(sku, loc)])
    return pb.StockLevel(on_hand=p.on_hand, reserved=p.reserved, version=p.version)
