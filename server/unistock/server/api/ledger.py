"""The gRPC LedgerService (roles backoffice and admin): histories and KPIs read from the SQL
ledger (persistence.ledger_queries), each query in a thread so the event loop never waits for
SQL. A request is validated whole first (INVALID_ARGUMENT naming the field); a database that
fails or cannot be reached is UNAVAILABLE (a read: retrying is safe).
"""

from __future__ import annotations

import base64
import binascii
import struct
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp

from unistock.server.actors.masterdata import sql_in_thread
from unistock.server.api.convert import timestamp_from_wire
from unistock.server.api.service import Context, generic_handler, rpc
from unistock.server.domain import InvalidArgument, MovementType, check_id
from unistock.server.domain.values import MAX_CHANNEL, check_text
from unistock.server.metrics import Metrics
from unistock.server.persistence.ledger import MOVEMENT, RESERVATION, SHIPMENT, TRANSFER
from unistock.server.persistence.ledger_queries import (
    EntryFilter,
    EntryType,
    GroupBy,
    KpiQuery,
    Kpis,
    LedgerQueries,
)
from unistock.v1 import ledger_pb2 as lpb

SERVICE = "unistock.v1.LedgerService"
#: Entries per page: when page_size is 0, and at most.
DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE = 100, 1_000
#: Types in one filter; locations or channels in one KPI filter.
MAX_TYPES, MAX_FILTER = 32, 1_000

_Entry = lpb.LedgerEntry
#: The ledger rows each wire type selects (kind, movement_type or None: any).
TYPES: dict[int, EntryType] = {
    **{_Entry.Type.Value(t.name): (MOVEMENT, int(t)) for t in MovementType},
    _Entry.SHIPMENT: (SHIPMENT, None),
    _Entry.RESERVATION: (RESERVATION, None),
    _Entry.TRANSFER_DISCREPANCY: (TRANSFER, None),
}
_WIRE_TYPE = {v: k for k, v in TYPES.items()}
_GROUPS = {
    lpb.GetKpisRequest.LOCATION: GroupBy.LOCATION,
    lpb.GetKpisRequest.STORE: GroupBy.STORE,
    lpb.GetKpisRequest.CHANNEL: GroupBy.CHANNEL,
}
_TOKEN = struct.Struct(">Q")


def _ms(field_name: str, parent: Any) -> int | None:
    """A Timestamp field as whole ms since the epoch, rounded up (an entry at ms t lies at or
    after the time iff t >= it); None when unset."""
    if not parent.HasField(field_name):
        return None
    ts: Timestamp = getattr(parent, field_name)
    timestamp_from_wire(field_name, ts)
    return ts.seconds * 1000 + -(-ts.nanos // 1_000_000)


def _time_range(request: Any) -> tuple[int | None, int | None]:
    since, until = _ms("since", request), _ms("until", request)
    if since is not None and until is not None and until < since:
        raise InvalidArgument("until", "must not be before since")
    return since, until


def page_token(entry_id: int) -> str:
    """The opaque token of the page after entry_id."""
    return base64.urlsafe_b64encode(_TOKEN.pack(entry_id)).decode().rstrip("=")


def _after_id(token: str) -> int:
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        (entry_id,) = _TOKEN.unpack(raw)
    except (binascii.Error, struct.error, ValueError):
        raise InvalidArgument(
            "page_token", "not a token of this service: give a next_page_token as it came"
        ) from None
    return int(entry_id)


def entry_filter(request: lpb.ListLedgerEntriesRequest) -> EntryFilter:
    """The validated filter of a ListLedgerEntries request; raises InvalidArgument."""
    if request.reservation_id:
        check_id("reservation_id", request.reservation_id)
        if request.sku or request.location_id:
            raise InvalidArgument(
                "reservation_id", "give it alone (a reservation's history), or sku/location_id"
            )
    elif not (request.sku or request.location_id):
        raise InvalidArgument(
            "location_id", "give sku, location_id or both (a position), or reservation_id"
        )
    if request.sku:
        check_id("sku", request.sku)
    if request.location_id:
        check_id("location_id", request.location_id)
    if len(request.types) > MAX_TYPES:
        raise InvalidArgument("types", f"at most {MAX_TYPES}, got {len(request.types):,}")
    types: list[EntryType] = []
    for i, t in enumerate(request.types):
        if t not in TYPES:
            raise InvalidArgument(f"types[{i}]", f"not a LedgerEntry.Type: {t}")
        types.append(TYPES[t])
    since, until = _time_range(request)
    return EntryFilter(
        request.sku, request.location_id, request.reservation_id, types, since, until
    )


def kpi_query(request: lpb.GetKpisRequest) -> KpiQuery:
    """The validated query of a GetKpis request; raises InvalidArgument."""
    group_by = _GROUPS.get(request.group_by)
    if group_by is None:
        raise InvalidArgument("group_by", "LOCATION, STORE or CHANNEL")
    for name, values in (("location_ids", request.location_ids), ("channels", request.channels)):
        if len(values) > MAX_FILTER:
            raise InvalidArgument(name, f"at most {MAX_FILTER:,}, got {len(values):,}")
    for i, loc in enumerate(request.location_ids):
        check_id(f"location_ids[{i}]", loc)
    for i, channel in enumerate(request.channels):
        check_text(f"channels[{i}]", channel, MAX_CHANNEL)
    since, until = _time_range(request)
    return KpiQuery(group_by, since, until, tuple(request.location_ids), tuple(request.channels))


def _timestamp(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=ms % 1000 * 1_000_000)


def entry_to_wire(row: Any) -> lpb.LedgerEntry:
    """The wire form of a ledger_entries row."""
    kind_type = (row.kind, row.movement_type if row.kind == MOVEMENT else None)
    entry = lpb.LedgerEntry(
        entry_id=row.id,
        feed_id=row.feed_id,
        type=_WIRE_TYPE.get(kind_type, _Entry.TYPE_UNSPECIFIED),  # type: ignore[arg-type]
        at=_timestamp(row.at_ms),
        sku=row.sku or "",
        location_id=row.location_id or "",
        version=row.version or 0,
        source_id=row.source_id or "",
        seq=row.seq or 0,
        movement_type=row.movement_type or 0,  # type: ignore[arg-type]
        quantity=row.quantity or 0,
        on_hand_delta=row.on_hand_delta or 0,
        on_hand=row.on_hand or 0,
        available=row.available or 0,
        variance=row.variance or 0,
        count_id=row.count_id or "",
        transfer_id=row.transfer_id or "",
        reason=row.reason or "",
        reservation_id=row.reservation_id or "",
        transitions=row.transitions.split(",") if row.transitions else [],
        revision=row.revision or 0,
        reservation_state=row.state or 0,  # type: ignore[arg-type]
        channel=row.channel or "",
        customer_id=row.customer_id or "",
    )
    if row.detail:
        json_format.Parse(row.detail, entry.reservation, ignore_unknown_fields=True)
    return entry


def kpis_to_wire(key: str, k: Kpis) -> lpb.KpiGroup:
    """The wire form of one group's figures."""
    return lpb.KpiGroup(
        key=key,
        units_sold=k.units_sold,
        units_returned=k.units_returned,
        shrinkage=k.shrinkage,
        lost_in_transit=k.lost_in_transit,
        reservations_made=k.reservations_made,
        reservations_fulfilled=k.reservations_fulfilled,
        reservations_expired=k.reservations_expired,
        reservations_released=k.reservations_released,
    )


class LedgerService:
    """Implements unistock.v1.LedgerService on the ledger's SQL engine."""

    def __init__(self, queries: LedgerQueries, metrics: Metrics) -> None:
        self.queries = queries
        self._metrics = metrics

    def _latency(self, method: str, code: str) -> Any:
        return self._metrics.grpc_latency.labels(method, code)

    @rpc
    async def ListLedgerEntries(
        self, request: lpb.ListLedgerEntriesRequest, context: Context
    ) -> lpb.ListLedgerEntriesResponse:
        where = entry_filter(request)
        if request.page_size > MAX_PAGE_SIZE:
            raise InvalidArgument(
                "page_size", f"at most {MAX_PAGE_SIZE:,}, got {request.page_size:,}"
            )
        after = _after_id(request.page_token)
        newest = await sql_in_thread("ledger", self.queries.newest_at_ms)
        rows, more = await sql_in_thread(
            "ledger",
            self.queries.entries,
            where,
            after,
            request.page_size or DEFAULT_PAGE_SIZE,
        )
        response = lpb.ListLedgerEntriesResponse(
            entries=[entry_to_wire(r) for r in rows],
            next_page_token=page_token(rows[-1].id) if more else "",
        )
        if newest is not None:
            response.newest_entry_at.CopyFrom(_timestamp(newest))
        return response

    @rpc
    async def GetKpis(self, request: lpb.GetKpisRequest, context: Context) -> lpb.GetKpisResponse:
        query = kpi_query(request)
        newest = await sql_in_thread("ledger", self.queries.newest_at_ms)
        groups = await sql_in_thread("ledger", self.queries.kpis, query)
        response = lpb.GetKpisResponse(groups=[kpis_to_wire(k, v) for k, v in groups.items()])
        if newest is not None:
            response.newest_entry_at.CopyFrom(_timestamp(newest))
        return response

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        """The generic handler serving every method of the service."""
        return generic_handler(self, lpb, "LedgerService")
