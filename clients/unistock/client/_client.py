"""The async gRPC client."""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Iterable,
    Sequence,
)
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from unistock.client._errors import InsufficientStockError as InsufficientStockError
from unistock.client._errors import UnistockClientError as UnistockClientError  # old home
from unistock.client._errors import from_rpc
from unistock.client._retry import RetryPolicy
from unistock.client._watchers import EventWatcher as EventWatcher  # old home
from unistock.client._watchers import Watcher as Watcher
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import admin_pb2_grpc as apb_grpc
from unistock.v1 import inventory_pb2 as pb
from unistock.v1 import inventory_pb2_grpc as pb_grpc
from unistock.v1 import ledger_pb2 as lpb
from unistock.v1 import ledger_pb2_grpc as lpb_grpc

Line = tuple[str, str, int]
"""(sku, location_id, quantity)"""
Time = datetime | Timestamp
"""An aware datetime (with a UTC offset) or a protobuf Timestamp."""


def _set_time(field: Timestamp, name: str, value: Time) -> None:
    """Set a Timestamp field from value; ValueError for a naive datetime."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"{name} must be an aware datetime (with a UTC offset)")
        field.FromDatetime(value.astimezone(UTC).replace(tzinfo=None))
    else:
        field.CopyFrom(value)


def _set_range(request: Any, since: Time | None, until: Time | None) -> None:
    """Set a request's since and until fields (None: left unset, no bound)."""
    for name, value in (("since", since), ("until", until)):
        if value is not None:
            _set_time(getattr(request, name), name, value)


_F = TypeVar("_F", pb.ListReservationsRequest, pb.WatchReservationsRequest)


def _reservations_filter(
    message: type[_F],
    customer_id: str,
    channel: str,
    location_id: str,
    states: Sequence[str | int],
) -> _F:
    return message(
        customer_id=customer_id,
        channel=channel,
        location_id=location_id,
        states=[pb.ReservationState.Value(s) if isinstance(s, str) else s for s in states],  # type: ignore[misc]
    )


def _lines(lines: Iterable[Line]) -> list[pb.ReservationLine]:
    return [pb.ReservationLine(sku=s, location_id=loc, quantity=q) for s, loc, q in lines]


#: A lost server is dialled again after 0.1 s, then at most every 2 s (gRPC's own defaults, 1 s
#: up to 120 s, would keep a restarted server unreachable long after it is back).
_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class UnistockClient:
    """A channel to a Unistock server with a bearer token (``target``: ``host:port``).

    ``timeout`` bounds each attempt of a unary call (seconds; ``None``: none). ``retry`` says
    how calls that are idempotent on the wire are retried on UNAVAILABLE / DEADLINE_EXCEEDED
    (``None``: never; see RetryPolicy). Every method raises the typed errors of
    ``unistock.client`` (UnistockClientError and its subclasses)."""

    def __init__(
        self,
        target: str,
        token: str,
        *,
        root_certificates: bytes | None = None,
        tls: bool = False,
        timeout: float | None = 10.0,
        retry: RetryPolicy | None = RetryPolicy(),  # noqa: B008 (frozen: shared safely)
    ) -> None:
        if tls or root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates)
            self.channel = aio.secure_channel(target, creds, options=_CHANNEL_OPTIONS)
        else:
            self.channel = aio.insecure_channel(target, options=_CHANNEL_OPTIONS)
        self.retry = retry
        self.stub = pb_grpc.InventoryServiceStub(self.channel)
        #: unistock.v1.AdminService (role admin): master data.
        self.admin = apb_grpc.AdminServiceStub(self.channel)
        #: unistock.v1.LedgerService (roles backoffice, admin): histories and KPIs.
        self.ledger = lpb_grpc.LedgerServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),)
        self.timeout = timeout

    async def __aenter__(self) -> UnistockClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close(None)

    async def _unary(self, method: Any, request: Any, *, idempotent: bool = True) -> Any:
        """One unary call; retried per self.retry when idempotent (see RetryPolicy)."""

        async def attempt() -> Any:
            try:
                return await method(request, metadata=self.metadata, timeout=self.timeout)
            except aio.AioRpcError as exc:
                raise from_rpc(exc) from None

        if not idempotent or self.retry is None:
            return await attempt()
        return await self.retry.call(attempt)

    async def get_availability(
        self, keys: Sequence[tuple[str, str]] = (), sku: str = ""
    ) -> list[pb.StockLevel]:
        """Levels of (sku, location_id) keys, or of one sku at every location."""
        req = pb.GetAvailabilityRequest(
            keys=[pb.StockKey(sku=s, location_id=loc) for s, loc in keys], sku=sku
        )
        resp: pb.GetAvailabilityResponse = await self._unary(self.stub.GetAvailability, req)
        return list(resp.levels)

    async def reserve(
        self,
        reservation_id: str,
        lines: Iterable[Line],
        *,
        kind: str | int = "CART",
        ttl_seconds: int = 0,
        channel: str = "",
        customer_id: str = "",
        network_lines: Iterable[tuple[str, str, int]] = (),
    ) -> pb.ReserveResponse:
        """Hold every line or none; raises InsufficientStockError with the short lines.

        lines: (sku, location_id, quantity); network_lines: (sku, network, quantity), held at a
        location of the network the server chooses (the answer's lines name it)."""
        req = pb.ReserveRequest(
            reservation_id=reservation_id,
            lines=[
                *_lines(lines),
                *(pb.ReservationLine(sku=s, network=n, quantity=q) for s, n, q in network_lines),
            ],
            kind=pb.ReservationKind.Value(kind) if isinstance(kind, str) else kind,  # type: ignore[arg-type]
            ttl_seconds=ttl_seconds,
            channel=channel,
            customer_id=customer_id,
        )
        resp: pb.ReserveResponse = await self._unary(
            self.stub.Reserve, req, idempotent=bool(reservation_id)
        )
        return resp

    async def release(self, reservation_id: str) -> pb.Reservation:
        """Cancel a reservation."""
        req = pb.ReleaseReservationRequest(reservation_id=reservation_id)
        resp: pb.Reservation = await self._unary(self.stub.ReleaseReservation, req)
        return resp

    async def fulfil(
        self, reservation_id: str, lines: Iterable[Line] = (), request_id: str = ""
    ) -> pb.Reservation:
        """The reserved units left physically (all, or the given lines): reserved and on_hand
        fall together. Send a request_id with lines, so that a retry fulfils them once."""
        req = pb.FulfilReservationRequest(
            reservation_id=reservation_id, lines=_lines(lines), request_id=request_id
        )
        # Without request_id only a full fulfilment is idempotent: a partial one is sent once.
        resp: pb.Reservation = await self._unary(
            self.stub.FulfilReservation, req, idempotent=bool(request_id) or not req.lines
        )
        return resp

    async def extend(
        self,
        reservation_id: str,
        ttl_seconds: int | None = None,
        *,
        expires_at: datetime | Timestamp | None = None,
    ) -> pb.Reservation:
        """Move an ACTIVE reservation's expiry: to ttl_seconds from now (1 to 31,622,400), or
        to expires_at (an aware datetime or a Timestamp, at most 366 days ahead). Give exactly
        one; ValueError otherwise, or for a naive datetime."""
        if (ttl_seconds is None) == (expires_at is None):
            raise ValueError("give exactly one of ttl_seconds and expires_at")
        req = pb.ExtendReservationRequest(reservation_id=reservation_id)
        if ttl_seconds is not None:
            req.ttl_seconds = ttl_seconds
        elif expires_at is not None:
            _set_time(req.expires_at, "expires_at", expires_at)
        resp: pb.Reservation = await self._unary(self.stub.ExtendReservation, req)
        return resp

    async def get_reservation(self, reservation_id: str) -> pb.Reservation:
        """A reservation's current state."""
        req = pb.GetReservationRequest(reservation_id=reservation_id)
        resp: pb.Reservation = await self._unary(self.stub.GetReservation, req)
        return resp

    async def list_reservations(
        self,
        *,
        customer_id: str = "",
        channel: str = "",
        location_id: str = "",
        states: Sequence[str | int] = (),
        page_size: int = 0,
        page_token: str = "",
        newest_first: bool = False,
    ) -> pb.ListReservationsResponse:
        """One page of the reservations of a customer, a channel and/or a location (at least
        one; all given must match), in the states given (names "ACTIVE"... or numbers; none:
        every state), oldest first unless newest_first; page_size 0 is 100 (at most 1,000).
        A page may be short while more follow: go on while next_page_token is set. Raises
        UnistockClientError (INVALID_ARGUMENT naming the field)."""
        req = _reservations_filter(
            pb.ListReservationsRequest, customer_id, channel, location_id, states
        )
        req.page_size = page_size
        req.page_token = page_token
        req.newest_first = newest_first
        resp: pb.ListReservationsResponse = await self._unary(self.stub.ListReservations, req)
        return resp

    async def reservations(
        self, *, limit: int | None = None, page_size: int = 0, **where: Any
    ) -> AsyncIterator[pb.Reservation]:
        """Every reservation list_reservations selects (its filters as keywords), page after
        page; at most limit (None: all)."""
        token = ""
        left = limit
        while left is None or left > 0:
            size = page_size if left is None else min(left, page_size or 1_000)
            page = await self.list_reservations(page_size=size, page_token=token, **where)
            for r in page.reservations:
                yield r
            if left is not None:
                left -= len(page.reservations)
            token = page.next_page_token
            if not token:
                return

    async def watch_reservations(
        self,
        *,
        customer_id: str = "",
        channel: str = "",
        location_id: str = "",
        states: Sequence[str | int] = (),
    ) -> AsyncIterator[pb.WatchReservationsResponse]:
        """One reservations watch (list_reservations' filter): the matching reservations
        (snapshot, ended by a message with snapshot_complete), then every change of one that
        matches before or after it, with its transitions."""
        req = _reservations_filter(
            pb.WatchReservationsRequest, customer_id, channel, location_id, states
        )
        async for msg in _stream(self.stub.WatchReservations(req, metadata=self.metadata)):
            yield msg

    async def get_network_availability(
        self, network: str, skus: Sequence[str]
    ) -> list[pb.NetworkLevel]:
        """Per SKU (1 to 500, in request order), what a network may promise: the sum of its
        members' available. Raises UnistockClientError (NOT_FOUND: unknown network)."""
        req = pb.GetNetworkAvailabilityRequest(network=network, skus=skus)
        resp: pb.GetNetworkAvailabilityResponse = await self._unary(
            self.stub.GetNetworkAvailability, req
        )
        return list(resp.levels)

    async def watch_networks(
        self,
        networks: Sequence[str],
        skus: Sequence[str] = (),
        known_versions: dict[tuple[str, str], int] | None = None,
    ) -> AsyncIterator[pb.WatchNetworkAvailabilityResponse]:
        """One network watch stream: the levels (skipping those not newer than known_versions,
        keyed (sku, network)), then every change."""
        req = pb.WatchNetworkAvailabilityRequest(
            networks=networks,
            skus=skus,
            known_versions=[
                pb.NetworkKnownVersion(sku=s, network=n, version=v)
                for (s, n), v in (known_versions or {}).items()
            ],
        )
        async for msg in _stream(self.stub.WatchNetworkAvailability(req, metadata=self.metadata)):
            yield msg

    async def transfer_reservation(
        self, reservation_id: str, request_id: str, moves: Sequence[tuple[str, str, str, int]]
    ) -> pb.Reservation:
        """Move held units (sku, from_location_id, to_location_id, quantity) of an ACTIVE
        reservation, every move or none; idempotent on request_id (reuse it on retry)."""
        req = pb.TransferReservationRequest(
            reservation_id=reservation_id,
            request_id=request_id,
            moves=[
                pb.ReservationMove(sku=s, from_location_id=f, to_location_id=t, quantity=q)
                for s, f, t, q in moves
            ],
        )
        resp: pb.Reservation = await self._unary(
            self.stub.TransferReservation, req, idempotent=bool(request_id)
        )
        return resp

    async def find_stock(
        self,
        network: str,
        lines: Sequence[tuple[str, int]],
        mode: str = "SHIP",
        *,
        near: tuple[float, float] | None = None,
        near_location_id: str = "",
        max_distance_km: float = 0.0,
        limit: int = 10,
        allow_split: bool = False,
        include_variants: bool = False,
    ) -> pb.FindStockResponse:
        """Ranked locations of a network for (sku, quantity) lines: mode SHIP,
        CLICK_AND_COLLECT or E_RESERVATION; near (latitude, longitude) or near_location_id.
        Raises UnistockClientError (INVALID_ARGUMENT naming the field, NOT_FOUND)."""
        req = pb.FindStockRequest(
            lines=[pb.StockLine(sku=s, quantity=q) for s, q in lines],
            mode=pb.FindStockRequest.FulfilmentMode.Value(mode),
            network=network,
            near_location_id=near_location_id,
            max_distance_km=max_distance_km,
            limit=limit,
            allow_split=allow_split,
            include_variants=include_variants,
        )
        if near is not None:
            req.near.latitude, req.near.longitude = near
        resp: pb.FindStockResponse = await self._unary(self.stub.FindStock, req)
        return resp

    async def get_transfer(self, transfer_id: str, location_id: str = "") -> list[pb.Transfer]:
        """A transfer's records (per SKU shipped, received, in transit, lost; state;
        discrepancies): the one at location_id, or every destination's (usually one).
        Raises UnistockClientError (NOT_FOUND when nothing of it was applied)."""
        req = pb.GetTransferRequest(transfer_id=transfer_id, location_id=location_id)
        resp: pb.GetTransferResponse = await self._unary(self.stub.GetTransfer, req)
        return list(resp.transfers)

    async def close_transfer(self, transfer_id: str, location_id: str) -> pb.Transfer:
        """Close a transfer at its destination location_id: units still in transit are recorded
        lost in transit. Idempotent (a CLOSED transfer is returned as it is)."""
        req = pb.CloseTransferRequest(transfer_id=transfer_id, location_id=location_id)
        resp: pb.Transfer = await self._unary(self.stub.CloseTransfer, req)
        return resp

    # -- the ledger (LedgerService, roles backoffice and admin) ----------------------------------

    async def list_ledger_entries(
        self,
        *,
        sku: str = "",
        location_id: str = "",
        reservation_id: str = "",
        types: Sequence[str | int] = (),
        since: Time | None = None,
        until: Time | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> lpb.ListLedgerEntriesResponse:
        """One page of a history, oldest first: of a position (sku and location_id), a SKU, a
        location, or a reservation (reservation_id alone). types: LedgerEntry.Type names
        ("SALE", "SHIPMENT"...) or numbers; since inclusive, until exclusive; page_size 0 is
        100 (at most 1,000). Raises UnistockClientError (INVALID_ARGUMENT naming the field;
        UNAVAILABLE: the ledger's database is down), ValueError for a naive datetime."""
        req = lpb.ListLedgerEntriesRequest(
            sku=sku,
            location_id=location_id,
            reservation_id=reservation_id,
            types=[lpb.LedgerEntry.Type.Value(t) if isinstance(t, str) else t for t in types],  # type: ignore[misc]
            page_size=page_size,
            page_token=page_token,
        )
        _set_range(req, since, until)
        resp: lpb.ListLedgerEntriesResponse = await self._unary(self.ledger.ListLedgerEntries, req)
        return resp

    async def ledger_entries(
        self, *, limit: int | None = None, page_size: int = 0, **where: Any
    ) -> AsyncIterator[lpb.LedgerEntry]:
        """Every entry of a history (list_ledger_entries' filters as keywords), page after
        page, oldest first; at most limit entries (None: all)."""
        token = ""
        left = limit
        while left is None or left > 0:
            size = page_size if left is None else min(left, page_size or 1_000)
            page = await self.list_ledger_entries(page_size=size, page_token=token, **where)
            for entry in page.entries:
                yield entry
            if left is not None:
                left -= len(page.entries)
            token = page.next_page_token
            if not token:
                return

    async def get_kpis(
        self,
        group_by: str | int = "LOCATION",
        *,
        since: Time | None = None,
        until: Time | None = None,
        location_ids: Sequence[str] = (),
        channels: Sequence[str] = (),
    ) -> lpb.GetKpisResponse:
        """Per location, store or channel (group_by "LOCATION", "STORE", "CHANNEL"), over a
        time range: units sold, returned, shrinkage, lost in transit, reservations made,
        fulfilled, expired and released. Raises UnistockClientError, ValueError as above."""
        req = lpb.GetKpisRequest(
            group_by=(
                lpb.GetKpisRequest.GroupBy.Value(group_by)  # type: ignore[arg-type]
                if isinstance(group_by, str)
                else group_by
            ),
            location_ids=location_ids,
            channels=channels,
        )
        _set_range(req, since, until)
        resp: lpb.GetKpisResponse = await self._unary(self.ledger.GetKpis, req)
        return resp

    # -- master data (AdminService, role admin) ------------------------------------------------

    async def upsert_locations(self, locations: Sequence[apb.Location]) -> int:
        """Create or replace locations (at most 10,000 per call, all or nothing); returns how
        many. Raises UnistockClientError (INVALID_ARGUMENT naming e.g. locations[3].latitude)."""
        req = apb.UpsertLocationsRequest(locations=locations)
        resp: apb.UpsertResponse = await self._unary(self.admin.UpsertLocations, req)
        return resp.upserted

    async def upsert_networks(self, networks: Sequence[apb.Network]) -> int:
        """Create or replace networks with their members (each a known location)."""
        req = apb.UpsertNetworksRequest(networks=networks)
        resp: apb.UpsertResponse = await self._unary(self.admin.UpsertNetworks, req)
        return resp.upserted

    async def upsert_products(self, products: Sequence[apb.Product]) -> int:
        """Create or replace products by SKU (a GTIN names one SKU)."""
        req = apb.UpsertProductsRequest(products=products)
        resp: apb.UpsertResponse = await self._unary(self.admin.UpsertProducts, req)
        return resp.upserted

    async def set_safety_stock(self, positions: Sequence[apb.SafetyStock]) -> int:
        """Set (or clear) positions' own safety stock; every level shows it once this returns."""
        req = apb.SetSafetyStockRequest(positions=positions)
        resp: apb.UpsertResponse = await self._unary(self.admin.SetSafetyStock, req)
        return resp.upserted

    async def list_locations(self) -> list[apb.Location]:
        """Every location, sorted by id (all pages)."""
        return await self._all_pages(
            self.admin.ListLocations, apb.ListLocationsRequest, "locations"
        )

    async def list_networks(self) -> list[apb.Network]:
        """Every network, sorted by id, members sorted (all pages)."""
        return await self._all_pages(self.admin.ListNetworks, apb.ListNetworksRequest, "networks")

    async def _all_pages(self, method: Any, request: Any, field: str) -> list[Any]:
        found: list[Any] = []
        token = ""
        while True:
            resp = await self._unary(method, request(page_token=token))
            found += getattr(resp, field)
            token = resp.next_page_token
            if not token:
                return found

    async def apply_movements(
        self, batches: AsyncIterable[pb.MovementBatch] | Iterable[pb.MovementBatch]
    ) -> AsyncGenerator[pb.MovementAck, None]:
        """Send batches on one stream; yields one ack per batch once it is durable. Never
        retried (see MovementWriter for a durable sender that resends until acknowledged);
        the stream is cancelled when the iteration is left."""
        call = self.stub.ApplyMovements(batches, metadata=self.metadata)  # type: ignore[arg-type]
        async for ack in _stream(call):
            yield ack

    async def watch(
        self,
        skus: Sequence[str] = (),
        location_ids: Sequence[str] = (),
        known_versions: dict[tuple[str, str], int] | None = None,
    ) -> AsyncIterator[pb.WatchAvailabilityResponse]:
        """One watch stream: the snapshot, then changes. See Watcher for a resuming one."""
        req = pb.WatchAvailabilityRequest(
            skus=skus,
            location_ids=location_ids,
            known_versions=[
                pb.KnownVersion(sku=s, location_id=loc, version=v)
                for (s, loc), v in (known_versions or {}).items()
            ],
        )
        async for msg in _stream(self.stub.WatchAvailability(req, metadata=self.metadata)):
            yield msg

    async def watch_events(
        self,
        types: Sequence[str | int] = (),
        skus: Sequence[str] = (),
        location_ids: Sequence[str] = (),
        networks: Sequence[str] = (),
        after_event_id: str = "",
    ) -> AsyncIterator[pb.WatchEventsResponse]:
        """One WatchEvents stream (types by name, e.g. "LOW_STOCK", or number): its first
        message carries start_after_event_id, the others events. See EventWatcher for one
        that resumes by itself. Raises UnistockClientError (OUT_OF_RANGE: after_event_id is
        older than the events kept)."""
        req = pb.WatchEventsRequest(
            types=[pb.EventType.Value(t) if isinstance(t, str) else t for t in types],  # type: ignore[misc]
            skus=skus,
            location_ids=location_ids,
            networks=networks,
            after_event_id=after_event_id,
        )
        async for msg in _stream(self.stub.WatchEvents(req, metadata=self.metadata)):
            yield msg

    # -- server status (issue 12: `unistock status`) ------------------------------------------

    async def get_server_status(self) -> apb.ServerStatus:
        """The server's health, partitions, resident positions, store agents (state, outbox
        depth, oldest unacked age, staleness), feed consumers' lag and watch subscribers
        (AdminService.GetServerStatus, role admin). Raises UnistockClientError
        (PERMISSION_DENIED for another role; UNAVAILABLE when the server cannot be reached)."""
        status: apb.ServerStatus = await self._unary(
            self.admin.GetServerStatus, apb.GetServerStatusRequest()
        )
        return status


async def _stream(call: Any) -> AsyncIterator[Any]:
    """A server stream's messages; its errors as UnistockClientError; cancelled when left."""
    try:
        async for msg in call:
            yield msg
    except aio.AioRpcError as exc:
        raise from_rpc(exc) from None
    finally:
        call.cancel()
