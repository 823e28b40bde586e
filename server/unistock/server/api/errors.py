"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2
from grpc_status import rpc_status

from unistock.server.domain import (
    EventsDiscarded,
    Fenced,
    InsufficientStock,
    InvalidArgument,
    NetworkNotFound,
    ReservationConflict,
    ReservationNotActive,
    ReservationNotFound,
    TransferNotFound,
    Unavailable,
    UnistockError,
)
from unistock.v1 import inventory_pb2 as pb

_CODES: list[tuple[type[UnistockError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (InsufficientStock, grpc.StatusCode.FAILED_PRECONDITION),
    (ReservationNotActive, grpc.StatusCode.FAILED_PRECONDITION),
    (ReservationConflict, grpc.StatusCode.ALREADY_EXISTS),
    (ReservationNotFound, grpc.StatusCode.NOT_FOUND),
    (TransferNotFound, grpc.StatusCode.NOT_FOUND),
    (NetworkNotFound, grpc.StatusCode.NOT_FOUND),
    (EventsDiscarded, grpc.StatusCode.OUT_OF_RANGE),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Fenced, grpc.StatusCode.UNAVAILABLE),
]


def status_code(exc: UnistockError) -> grpc.StatusCode:
    """The gRPC status code of a domain error."""
    for cls, code in _CODES:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def to_status(exc: UnistockError) -> grpc.Status:
    """A full status: code, message and, for InsufficientStock, the short lines as details."""
    code = status_code(exc)
    detail = pb.InsufficientStock()
    if isinstance(exc, InsufficientStock):
        detail.lines.extend(
            pb.ShortLine(
                sku=s.sku,
                location_id=s.location_id,
                requested=s.requested,
                available=s.available,
                shortfall=s.shortfall,
            )
            for s in exc.lines
        )
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=str(exc))
    if detail.lines:
        packed = any_pb2.Any()
        packed.Pack(detail)
        status.details.append(packed)
    return rpc_status.to_status(status)
