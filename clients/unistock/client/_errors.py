"""The client's exception tree, mapped from gRPC status codes in one place (:func:`from_rpc`).

UnistockClientError               a call failed (.code, .details); also the base of the others
├── InvalidArgumentError          INVALID_ARGUMENT: malformed request (.field: the field named)
├── NotFoundError                 NOT_FOUND: no such reservation, transfer, network...
├── AlreadyExistsError            ALREADY_EXISTS: an id (reservation_id, request_id) reused
│                                 with other lines or moves
├── FailedPreconditionError       FAILED_PRECONDITION: the state forbids it (e.g. not ACTIVE)
│   └── InsufficientStockError    not enough stock: .short_lines (pb.ShortLine each)
├── AuthenticationError           UNAUTHENTICATED: missing, unknown or expired token
├── PermissionDeniedError         PERMISSION_DENIED: the token's role may not call this
└── UnavailableError              UNAVAILABLE / DEADLINE_EXCEEDED: server or its dependency
                                  down or slow; .retryable is True (safe to retry an
                                  idempotent call)

Any other status code (OUT_OF_RANGE, RESOURCE_EXHAUSTED, INTERNAL, CANCELLED...) is a plain
:class:`UnistockClientError` whose ``code`` says which.
"""

from __future__ import annotations

import re
from typing import ClassVar

import grpc
from grpc import aio
from grpc_status import rpc_status

from unistock.v1 import inventory_pb2 as pb

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "FailedPreconditionError",
    "InsufficientStockError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "UnavailableError",
    "UnistockClientError",
    "from_rpc",
]


class UnistockClientError(Exception):
    """A call failed; ``code`` is the gRPC status code, ``details`` the server's message."""

    #: Whether the same call may simply be sent again (only UnavailableError says yes).
    retryable: ClassVar[bool] = False

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}")


# The server words an invalid argument "<field>: <problem>", the field a dotted path with
# indexes: "lines[2].quantity", "locations[3].latitude", "page_token".
_FIELD = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)*): "
)


class InvalidArgumentError(UnistockClientError):
    """INVALID_ARGUMENT: the request is malformed. ``field`` is the field the server named
    (e.g. ``"lines[0].quantity"``), or ``""`` when its message names none."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(code, details)
        found = _FIELD.match(details)
        self.field = found.group(1) if found else ""


class NotFoundError(UnistockClientError):
    """NOT_FOUND: the reservation, transfer, network... named does not exist."""


class AlreadyExistsError(UnistockClientError):
    """ALREADY_EXISTS: a reservation_id or request_id was reused with other lines or moves."""


class FailedPreconditionError(UnistockClientError):
    """FAILED_PRECONDITION: the target's state forbids the call (e.g. the reservation ended)."""


class InsufficientStockError(FailedPreconditionError):
    """Reserve refused, nothing held: ``short_lines`` (``pb.ShortLine``: sku, location_id,
    requested, available, shortfall) says which lines fell short and by how much."""

    def __init__(self, code: grpc.StatusCode, details: str, short: list[pb.ShortLine]) -> None:
        super().__init__(code, details)
        self.short_lines = short


class AuthenticationError(UnistockClientError):
    """UNAUTHENTICATED: the bearer token is missing or unknown to the server."""


class PermissionDeniedError(UnistockClientError):
    """PERMISSION_DENIED: the token's role may not make this call."""


class UnavailableError(UnistockClientError):
    """UNAVAILABLE or DEADLINE_EXCEEDED: the server (or Redis behind it) is down or slow.
    An idempotent call may be sent again (the client does, see RetryPolicy)."""

    retryable: ClassVar[bool] = True


_BY_CODE: dict[grpc.StatusCode, type[UnistockClientError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}


def from_rpc(exc: aio.AioRpcError) -> UnistockClientError:
    """The typed error of a failed call (the one place status codes become exceptions)."""
    code = exc.code()
    details = exc.details() or ""
    status = rpc_status.from_call(exc)  # type: ignore[arg-type]
    if status is not None:
        for detail in status.details:
            if detail.Is(pb.InsufficientStock.DESCRIPTOR):
                info = pb.InsufficientStock()
                detail.Unpack(info)
                return InsufficientStockError(code, details, list(info.lines))
    return _BY_CODE.get(code, UnistockClientError)(code, details)
