"""ListReservations and WatchReservations: reservations by customer, channel and location.

Listing reads the reservation indexes (persistence.rindex). Watching subscribes to the group
commit's durable reservation records (GroupCommit.reservation_listeners) through a
ReservationHub, then sends the snapshot (the listing, every page), then the changes. A change's
stored feed form (codec.reservation_change: revision, length, ReservationChange) is the wire
ReservationUpdate with the same field numbers, so an update is sent as stored, serialised once
for every watcher.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc import aio

from unistock.server.api.watch import send_changes
from unistock.server.domain import InvalidArgument, Reservation, check_id
from unistock.server.domain.values import MAX_CHANNEL, MAX_CUSTOMER_ID, check_text
from unistock.server.metrics import Metrics
from unistock.server.persistence.codec import reservation_message, varint
from unistock.server.persistence.group_commit import DurableReservation
from unistock.server.persistence.rindex import (
    ALL_STATES,
    CHANNEL,
    CUSTOMER,
    LOCATION,
    Query,
    ReservationIndex,
    decode_token,
)
from unistock.v1 import inventory_pb2 as pb

Context = aio.ServicerContext[Any, Any]

#: ListReservations page size when the request gives none, and the largest allowed.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
#: Reservations a WatchReservations snapshot may hold (RESOURCE_EXHAUSTED beyond: narrow it).
MAX_WATCH_SNAPSHOT = 50_000
#: Updates per message of a watch's changes.
WATCH_BATCH = 256
_SNAPSHOT_COMPLETE = pb.WatchReservationsResponse(snapshot_complete=True).SerializeToString()
_UPDATES_TAG = b"\x0a"  # WatchReservationsResponse.updates: field 1, length-delimited


def query_from_wire(request: pb.ListReservationsRequest | pb.WatchReservationsRequest) -> Query:
    """The filter of a request; InvalidArgument naming the first bad field."""
    customer = check_text("customer_id", request.customer_id, MAX_CUSTOMER_ID)
    channel = check_text("channel", request.channel, MAX_CHANNEL)
    location = check_id("location_id", request.location_id) if request.location_id else ""
    if not (customer or channel or location):
        raise InvalidArgument(
            "customer_id", "give customer_id, channel or location_id (or several)"
        )
    states = frozenset(int(s) for s in request.states)
    for i, s in enumerate(request.states):
        if s not in ALL_STATES:
            raise InvalidArgument(f"states[{i}]", f"unknown reservation state {s}")
    return Query(customer, channel, location, states)


async def list_reservations(
    index: ReservationIndex, request: pb.ListReservationsRequest
) -> pb.ListReservationsResponse:
    """One page of ListReservations; raises InvalidArgument, Unavailable."""
    query = query_from_wire(request)
    size = request.page_size or DEFAULT_PAGE_SIZE
    if size > MAX_PAGE_SIZE:
        raise InvalidArgument("page_size", f"at most {MAX_PAGE_SIZE:,}, got {size:,}")
    after = decode_token(request.page_token, request.newest_first) if request.page_token else ""
    page = await index.page(query, size, after, newest_first=request.newest_first)
    return pb.ListReservationsResponse(
        reservations=[reservation_message(r) for r, _ in page.records],
        next_page_token=page.next_token,
    )


class ReservationSubscription:
    """One watcher's filter and its bounded buffer of updates not yet sent."""

    __slots__ = ("_hub", "event", "overflowed", "pending", "query")

    def __init__(self, hub: ReservationHub, query: Query) -> None:
        self._hub = hub
        self.query = query
        #: (reservation_id, revision, serialised `updates` entry), in durability order.
        self.pending: collections.deque[tuple[str, int, bytes]] = collections.deque()
        self.event = asyncio.Event()
        self.overflowed = False

    def offer(self, rid: str, revision: int, entry: bytes) -> None:
        """Buffer an update; a watcher with too many waiting is cut."""
        if self.overflowed:
            return
        if len(self.pending) >= self._hub.max_pending:
            self.cut()
            return
        self.pending.append((rid, revision, entry))
        self.event.set()

    def take(self, limit: int) -> list[bytes]:
        """Up to limit buffered updates, oldest first."""
        pending = self.pending
        out = [pending.popleft()[2] for _ in range(min(limit, len(pending)))]
        if not pending and not self.overflowed:
            self.event.clear()
        return out

    def cut(self) -> None:
        """Fell too far behind: free the buffer, end the stream."""
        if not self.overflowed:
            self.overflowed = True
            self.pending.clear()
            self._hub.unsubscribe(self)
            self._hub.metrics.reservation_watch_dropped.inc()
            self.event.set()

    def close(self) -> None:
        """Stop receiving updates."""
        self._hub.unsubscribe(self)


class ReservationHub:
    """Routes durable reservation changes to the watchers whose filter matches the record
    after the change or one of its states before it (a watcher sees a reservation leave)."""

    def __init__(self, metrics: Metrics, *, max_pending: int = 100_000) -> None:
        self.metrics = metrics
        self.max_pending = max_pending
        self._by: dict[tuple[str, str], set[ReservationSubscription]] = {}
        self.closing = False

    def subscribe(self, query: Query) -> ReservationSubscription:
        """A new watcher: it buffers every matching durable change from now on."""
        sub = ReservationSubscription(self, query)
        self._by.setdefault(query.driving(), set()).add(sub)
        self.metrics.reservation_watchers.inc()
        return sub

    @property
    def subscribers(self) -> int:
        """Open watchers."""
        return sum(len(subs) for subs in self._by.values())

    def unsubscribe(self, sub: ReservationSubscription) -> None:
        """Remove a watcher (idempotent)."""
        key = sub.query.driving()
        subs = self._by.get(key)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if not subs:
                del self._by[key]
            self.metrics.reservation_watchers.dec()

    def shutdown(self) -> None:
        """End every stream (the server is stopping)."""
        self.closing = True
        for sub in [s for subs in self._by.values() for s in subs]:
            sub.cut()

    def publish(self, records: list[DurableReservation]) -> None:
        """Offer durable records' changes to matching watchers (a reservation listener of the
        group commit)."""
        by = self._by
        if not by:
            return
        for record, changes, earlier in records:
            if not changes:
                continue
            targets = self._targets(record, earlier)
            if not targets:
                continue
            rid = record.reservation_id
            for change in changes:
                revision = int.from_bytes(change[:8], "big")
                entry = _UPDATES_TAG + change[8:]  # varint length + ReservationChange
                for sub in targets:
                    sub.offer(rid, revision, entry)

    def _targets(
        self, record: Reservation, earlier: Iterable[Reservation]
    ) -> list[ReservationSubscription]:
        states = (record, *earlier)
        candidates: set[ReservationSubscription] = set()
        for r in states:
            for key in _keys_of(r):
                found = self._by.get(key)
                if found:
                    candidates |= found
        return [s for s in candidates if any(s.query.matches(r) for r in states)]


def _keys_of(r: Reservation) -> Iterable[tuple[str, str]]:
    if r.customer_id:
        yield CUSTOMER, r.customer_id
    if r.channel:
        yield CHANNEL, r.channel
    for ln in (*r.lines, *r.fulfilled):
        yield LOCATION, ln.location_id


async def watch_reservations(
    index: ReservationIndex,
    hub: ReservationHub,
    settled: Callable[[], Awaitable[None]],
    request: pb.WatchReservationsRequest,
    context: Context,
) -> None:
    """Serve one WatchReservations call: subscribe, send the snapshot, then the changes.

    settled: waits until the flush in flight (if any) has called its listeners, so that no
    update older than the snapshot can arrive after the snapshot's revisions are forgotten.
    Raises InvalidArgument, Unavailable; ends with RESOURCE_EXHAUSTED (too far behind, or a
    snapshot over MAX_WATCH_SNAPSHOT) or UNAVAILABLE (server stopping).
    """
    query = query_from_wire(request)
    sub = hub.subscribe(query)
    try:
        #: reservation_id -> the revision the snapshot showed (not sent again as an update)
        seen: dict[str, int] = {}
        after = ""
        while True:
            page = await index.page(query, 1000, after)
            if page.records:
                if len(seen) + len(page.records) > MAX_WATCH_SNAPSHOT:
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"more than {MAX_WATCH_SNAPSHOT:,} reservations match: narrow the filter "
                        "(states, location_id), or page through them with ListReservations",
                    )
                out = []
                for r, data in page.records:
                    seen[r.reservation_id] = int.from_bytes(data[1:9], "big")
                    msg = pb.ReservationUpdate(reservation=reservation_message(r))
                    body = msg.SerializeToString()
                    out.append(_UPDATES_TAG + varint(len(body)) + body)
                await context.write(b"".join(out))
            if not page.next_token:
                break
            after = decode_token(page.next_token, False)
        await context.write(_SNAPSHOT_COMPLETE)
        await settled()
        # Updates buffered so far may be older than what the snapshot read (its reads and the
        # flushes raced); any buffered from now on is newer.
        sub.pending = collections.deque(u for u in sub.pending if seen.get(u[0], 0) < u[1])
        del seen
        if sub.pending:
            sub.event.set()
        await send_changes(sub, hub, context, "watch again for a new snapshot", WATCH_BATCH)
    finally:
        sub.close()
