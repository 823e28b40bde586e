"""Bearer tokens and roles; health and reflection answer generic tools without a token."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import descriptor_pool
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.server.api.auth import TokenStore
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb
from unistock.v1 import inventory_pb2_grpc as pb_grpc

SERVICE = "unistock.v1.InventoryService"


@pytest.fixture
async def channel(server: UnistockServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(target(server)) as ch:
        yield ch


def receipt_batch(source: str, seq: int = 1) -> pb.MovementBatch:
    return pb.MovementBatch(
        source_id=source,
        movements=[
            pb.Movement(seq=seq, sku="AUTH-SKU", location_id="s1", type=pb.RECEIPT, quantity=5)
        ],
    )


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code()


async def stream_code(call: aio.StreamStreamCall | aio.UnaryStreamCall) -> grpc.StatusCode:  # type: ignore[type-arg]
    with pytest.raises(aio.AioRpcError) as err:
        async for _ in call:
            pass
    return err.value.code()


@pytest.mark.parametrize(
    "metadata",
    [
        None,
        (("authorization", "Bearer not-a-known-token-000000"),),
        (("authorization", "Basic channel-token-0123456789"),),  # right token, wrong scheme
        (("authorization", "Bearer"),),
    ],
    ids=["no-token", "wrong-token", "wrong-scheme", "empty-bearer"],
)
async def test_unauthenticated(
    channel: aio.Channel, metadata: tuple[tuple[str, str], ...] | None
) -> None:
    stub = pb_grpc.InventoryServiceStub(channel)
    req = pb.GetAvailabilityRequest(sku="AUTH-SKU")
    assert await code_of(stub.GetAvailability(req, metadata=metadata)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    reserve = pb.ReserveRequest(
        reservation_id="r1",
        lines=[pb.ReservationLine(sku="AUTH-SKU", location_id="s1", quantity=1)],
        kind=pb.CART,
    )
    assert await code_of(stub.Reserve(reserve, metadata=metadata)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert await stream_code(
        stub.ApplyMovements(iter([receipt_batch("x")]), metadata=metadata)
    ) == (grpc.StatusCode.UNAUTHENTICATED)
    assert await stream_code(
        stub.WatchAvailability(pb.WatchAvailabilityRequest(), metadata=metadata)
    ) == (grpc.StatusCode.UNAUTHENTICATED)


async def test_roles(
    server: UnistockServer,
    client: UnistockClient,
    backoffice: UnistockClient,
    admin: UnistockClient,
) -> None:
    # channel: may not send movements; nothing is applied.
    with pytest.raises(UnistockClientError) as err:
        _ = [a async for a in client.apply_movements([receipt_batch("chan")])]
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    [lvl] = await admin.get_availability(keys=[("AUTH-SKU", "s1")])
    assert lvl.version == 0

    # backoffice: sends movements, but may not reserve / release / fulfil / extend.
    [ack] = [a async for a in backoffice.apply_movements([receipt_batch("bo")])]
    assert ack.applied == 1
    for call in (
        backoffice.reserve("r-bo", [("AUTH-SKU", "s1", 1)]),
        backoffice.release("r-bo"),
        backoffice.fulfil("r-bo"),
        backoffice.extend("r-bo", 60),
    ):
        with pytest.raises(UnistockClientError) as err:
            await call
        assert err.value.code == grpc.StatusCode.PERMISSION_DENIED
    [lvl] = await admin.get_availability(keys=[("AUTH-SKU", "s1")])
    assert (lvl.on_hand, lvl.reserved) == (5, 0)
    # ... and reads reservations.
    made = await client.reserve("r-chan", [("AUTH-SKU", "s1", 1)])
    assert (await backoffice.get_reservation("r-chan")).state == made.reservation.state

    # admin: both.
    [ack] = [a async for a in admin.apply_movements([receipt_batch("adm")])]
    assert ack.applied == 1
    held = await admin.reserve("r-adm", [("AUTH-SKU", "s1", 2)])
    assert held.reservation.state == pb.ACTIVE
    [lvl] = await admin.get_availability(keys=[("AUTH-SKU", "s1")])
    assert (lvl.on_hand, lvl.reserved, lvl.available) == (10, 3, 7)
    assert (await admin.release("r-adm")).state == pb.RELEASED


async def test_health_without_token(channel: aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        resp = await stub.Check(health_pb2.HealthCheckRequest(service=service))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING, service
    with pytest.raises(aio.AioRpcError) as err:
        await stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_service(channel: aio.Channel, server: UnistockServer) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    call = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    names = [s.name async for resp in call for s in resp.list_services_response.service]
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names

    # A generic tool (grpcurl-like) can rebuild the service's methods from reflection alone.
    def describe() -> list[str]:
        with grpc.insecure_channel(target(server)) as sync_channel:
            db = ProtoReflectionDescriptorDatabase(sync_channel)
            pool = descriptor_pool.DescriptorPool(db)
            svc = pool.FindServiceByName(SERVICE)
            return [m.name for m in svc.methods]

    methods = await asyncio.to_thread(describe)
    assert set(methods) == {
        "GetAvailability",
        "WatchAvailability",
        "ApplyMovements",
        "Reserve",
        "ReleaseReservation",
        "FulfilReservation",
        "ExtendReservation",
        "GetReservation",
        "GetTransfer",
        "CloseTransfer",
        "GetNetworkAvailability",
        "WatchNetworkAvailability",
        "FindStock",
        "TransferReservation",
        "ListReservations",
        "WatchReservations",
        "WatchEvents",
    }


def test_token_cache_is_bounded_by_the_configured_tokens() -> None:
    # Issue 8 (2.7): every distinct header value that matched a token used to get an entry.
    store = TokenStore()
    store.add(TOKENS["channel"], "channel")
    for i in range(1_000):
        variant = f"{'bearer' if i % 2 else 'BEARER'} {TOKENS['channel']}{' ' * i}"
        found = store.lookup(variant)
        assert found is not None
        assert found.role == "channel"
        assert store.lookup(f"Bearer not-a-token-{i:06d}") is None
    for _ in range(3):
        found = store.lookup(f"Bearer {TOKENS['channel']}")
        assert found is not None
        assert found.role == "channel"
    assert store.cached == 1
