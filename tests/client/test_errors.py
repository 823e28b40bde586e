"""Each gRPC status the server answers becomes its typed client error (one mapping)."""

from __future__ import annotations

import grpc
import pytest

import unistock.client as lib
from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.client import (
    AlreadyExistsError,
    AuthenticationError,
    FailedPreconditionError,
    InsufficientStockError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    UnistockClient,
    UnistockClientError,
)
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb


async def stock(srv: UnistockServer, units: int) -> None:
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as bo:
        batch = pb.MovementBatch(
            source_id="wms-1",
            movements=[
                pb.Movement(seq=1, sku="A", location_id="s-1", type=pb.RECEIPT, quantity=units)
            ],
        )
        assert [a.applied async for a in bo.apply_movements([batch])] == [1]


async def test_status_codes_become_typed_errors(server: UnistockServer) -> None:
    await stock(server, 3)
    async with UnistockClient(target(server), TOKENS["channel"]) as c:
        with pytest.raises(InvalidArgumentError) as bad:
            await c.reserve("r-0", [("A", "s-1", 0)])
        assert bad.value.field == "lines[0].quantity", bad.value.details
        assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert not bad.value.retryable

        with pytest.raises(InsufficientStockError) as short:
            await c.reserve("r-1", [("A", "s-1", 5)])
        assert isinstance(short.value, FailedPreconditionError)
        ((line),) = short.value.short_lines
        assert (line.sku, line.requested, line.available, line.shortfall) == ("A", 5, 3, 2)

        await c.reserve("r-2", [("A", "s-1", 1)])
        with pytest.raises(AlreadyExistsError):
            await c.reserve("r-2", [("A", "s-1", 2)])
        await c.release("r-2")
        with pytest.raises(FailedPreconditionError) as ended:
            await c.extend("r-2", 60)
        assert type(ended.value) is FailedPreconditionError  # not a stock problem

        with pytest.raises(NotFoundError):
            await c.get_reservation("nobody")
        with pytest.raises(PermissionDeniedError, match="may not call"):
            await c.list_ledger_entries(sku="A")
    async with UnistockClient(target(server), "not-a-token-0123456789") as c:
        with pytest.raises(AuthenticationError):
            await c.get_availability(sku="A")


async def test_unavailable_is_retryable(make_server: MakeServer, clean_redis_url: str) -> None:
    srv = await make_server(clean_redis_url)
    port = srv.grpc_port
    await srv.stop()
    async with UnistockClient(f"127.0.0.1:{port}", TOKENS["channel"], retry=None) as c:
        with pytest.raises(UnavailableError) as down:
            await c.get_availability(sku="A")
    assert down.value.retryable
    assert down.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def test_every_error_is_exported_and_rooted() -> None:
    rpc_errors = [
        getattr(lib, n)
        for n in lib.__all__
        if n.endswith("Error") and issubclass(getattr(lib, n), UnistockClientError)
    ]
    assert len(rpc_errors) == 9  # the root and its eight kinds, all exported


def test_invalid_argument_without_a_field() -> None:
    err = InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "give sku or keys, not both")
    assert err.field == ""
    err = InvalidArgumentError(grpc.StatusCode.INVALID_ARGUMENT, "locations[3].latitude: -91")
    assert err.field == "locations[3].latitude"
