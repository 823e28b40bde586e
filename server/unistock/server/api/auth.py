"""Bearer-token authentication with roles, as a grpc.aio server interceptor.

Roles:
  channel     read levels, watch, and make/read/end reservations (web shop, app, order manager)
  backoffice  send movements, read levels and reservations, watch (warehouse, back office)
  admin       everything

Whole services with their own roles: AdminService (admin), LedgerService (backoffice, admin).

Tokens come from a file (one `<role> <token> [<name>]` per line, `#` comments) and/or the
environment variable UNISTOCK_TOKENS (`role:token,role:token`). Tokens are compared by their
SHA-256 digest, never stored or logged in clear beyond start-up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import pathlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

from unistock.v1 import inventory_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "unistock.v1.InventoryService"
#: Master data: role admin only (every method).
ADMIN_SERVICE = "unistock.v1.AdminService"
#: The ledger (histories, KPIs): roles backoffice and admin (every method).
LEDGER_SERVICE = "unistock.v1.LedgerService"
#: The roles that may call every method of a service (the others: ROLES, by method).
SERVICE_ROLES: dict[str, frozenset[str]] = {
    ADMIN_SERVICE: frozenset({"admin"}),
    LEDGER_SERVICE: frozenset({"backoffice", "admin"}),
}

ROLES: dict[str, frozenset[str]] = {
    "channel": frozenset(
        {
            "GetAvailability",
            "WatchAvailability",
            "Reserve",
            "ReleaseReservation",
            "FulfilReservation",
            "ExtendReservation",
            "GetReservation",
            "ListReservations",
            "WatchReservations",
            "TransferReservation",
            "GetTransfer",
            "GetNetworkAvailability",
            "WatchNetworkAvailability",
            "FindStock",
            "WatchEvents",
        }
    ),
    "backoffice": frozenset(
        {
            "ApplyMovements",
            "GetAvailability",
            "WatchAvailability",
            "GetReservation",
            "ListReservations",
            "WatchReservations",
            "GetTransfer",
            "CloseTransfer",
            "GetNetworkAvailability",
            "WatchNetworkAvailability",
            "FindStock",
            "WatchEvents",
        }
    ),
    # Every method of the service, including ones added later.
    "admin": frozenset(m.name for m in pb.DESCRIPTOR.services_by_name["InventoryService"].methods),
}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a token belongs to."""

    role: str
    name: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenStore:
    """Known tokens and their principals."""

    def __init__(self) -> None:
        self._tokens: dict[bytes, Principal] = {}
        # Valid tokens already seen, by header value: one dict lookup per call instead of a
        # SHA-256. Only the canonical value `Bearer <token>` of a token that matched gets in, so
        # it holds at most one entry per configured token (variants a client may send, such as
        # `bearer <token>  `, are hashed every time and never kept).
        self._seen: dict[str, Principal] = {}

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def cached(self) -> int:
        """Entries in the cache of header values (at most one per configured token)."""
        return len(self._seen)

    def add(self, token: str, role: str, name: str = "") -> None:
        """Register a token; raises ValueError for an unknown role or a short token."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {', '.join(sorted(ROLES))}")
        if len(token) < 16:
            raise ValueError(f"token for {name or role!r} is shorter than 16 characters")
        self._tokens[_digest(token)] = Principal(role, name or role)

    def load_file(self, path: pathlib.Path) -> None:
        """Read `<role> <token> [<name>]` lines."""
        for n, raw in enumerate(path.read_text().splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) < 2:
                raise ValueError(f"{path}:{n}: expected '<role> <token> [<name>]'")
            try:
                self.add(parts[1], parts[0], parts[2] if len(parts) > 2 else "")
            except ValueError as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None

    def load_env(self, value: str) -> None:
        """Read `role:token,role:token`."""
        for item in filter(None, (v.strip() for v in value.split(","))):
            role, sep, token = item.partition(":")
            if not sep:
                raise ValueError("UNISTOCK_TOKENS entries must look like role:token")
            self.add(token, role)

    def lookup(self, authorization: str | None) -> Principal | None:
        """The principal of an `authorization: Bearer <token>` value."""
        if not authorization:
            return None
        principal = self._seen.get(authorization)
        if principal is not None:
            return principal
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        token = token.strip()
        principal = self._tokens.get(_digest(token))
        if principal is not None and authorization == "Bearer " + token:
            self._seen[authorization] = principal
        return principal


#: Messages a refused client stream is read (and dropped, undecoded) before its status is sent.
DRAIN_LIMIT = 10_000
#: ... or until the client sent nothing for this long, seconds.
DRAIN_IDLE_S = 0.2


def _ignore(data: bytes) -> None:
    """The request deserializer of a refused call: its messages are never decoded."""


def _denied(
    handler: grpc.RpcMethodHandler[Any, Any], code: grpc.StatusCode, message: str
) -> grpc.RpcMethodHandler[Any, Any]:
    async def unary(request: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(code, message)

    async def stream(requests: Any, context: aio.ServicerContext[Any, Any]) -> Any:
        # A client still sending when the call ends sees its own write fail, and its library
        # reports that as INTERNAL instead of this status: read (undecoded) what it has in
        # flight until it half-closes or pauses (a client waiting for an answer before it sends
        # more), at most DRAIN_LIMIT messages, then answer.
        pending = aiter(requests)
        for _ in range(DRAIN_LIMIT):
            try:
                await asyncio.wait_for(anext(pending), DRAIN_IDLE_S)
            except (StopAsyncIteration, TimeoutError):
                break
        await context.abort(code, message)

    kwargs = {
        "request_deserializer": _ignore,
        "response_serializer": handler.response_serializer,
    }
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream, **kwargs)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(stream, **kwargs)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(unary, **kwargs)
    return grpc.unary_unary_rpc_method_handler(unary, **kwargs)


class AuthInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls to the inventory, admin and ledger services without a valid token for
    the method's role (AdminService: role admin; LedgerService: backoffice or admin)."""

    def __init__(self, tokens: TokenStore) -> None:
        self._tokens = tokens
        self._prefix = f"/{SERVICE}/"
        #: "/<service>/" -> the roles that may call its methods
        self._service_roles = {f"/{s}/": roles for s, roles in SERVICE_ROLES.items()}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]
        ],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        method: str = details.method
        handler = await continuation(details)
        if handler is None:
            return handler
        service, _, name = method.rpartition("/")
        roles = self._service_roles.get(service + "/")
        if roles is None and not method.startswith(self._prefix):
            return handler  # health, reflection
        auth = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization" and isinstance(value, str):
                auth = value
                break
        principal = self._tokens.lookup(auth)
        if principal is None:
            return _denied(
                handler,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing or unknown bearer token (metadata 'authorization: Bearer <token>')",
            )
        allowed = principal.role in roles if roles is not None else name in ROLES[principal.role]
        if not allowed:
            return _denied(
                handler,
                grpc.StatusCode.PERMISSION_DENIED,
                f"role {principal.role!r} may not call {name}",
            )
        return handler
