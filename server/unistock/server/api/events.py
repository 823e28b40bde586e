"""WatchEvents: stored events after a resume point, then live ones, filtered.

A stream first reads the event streams (persistence.events) after `after_event_id` up to the
deriver's watermark (every event up to it is stored), page by page, until it has caught up;
then, in the same loop pass as its last check (nothing can slip in between), it subscribes to
the hub, which the deriver tells of each round's events once they are stored. A live
subscriber buffers at most `max_pending` events; past that it is cut (RESOURCE_EXHAUSTED) and
resumes with its last event_id, reading the streams again: a slow reader never grows server
memory without bound, and never misses an event either.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

import grpc
from grpc import aio

from unistock.server.actors.events import SEP, EventDeriver
from unistock.server.actors.masterdata import MasterData
from unistock.server.domain import (
    EventsDiscarded,
    InvalidArgument,
    NetworkNotFound,
    check_id,
)
from unistock.server.metrics import EventMetrics
from unistock.server.persistence.events import (
    EventId,
    StoredEvent,
    events_response,
    format_event_id,
    parse_event_id,
)
from unistock.v1 import inventory_pb2 as pb

Context = aio.ServicerContext[Any, Any]

#: Events per message of a WatchEvents stream, and stored events read per Redis round trip.
EVENTS_BATCH = 512
#: Filter bounds of WatchEvents.
MAX_FILTER_VALUES = 10_000
_EVENT_TYPES = frozenset(v for v in pb.EventType.values() if v)


class EventFilter:
    """What one subscriber asked for (empty = everything; lists combine with AND)."""

    __slots__ = ("_members", "_revision", "locations", "master", "networks", "skus", "types")

    def __init__(
        self,
        master: MasterData,
        types: frozenset[int] = frozenset(),
        skus: frozenset[str] = frozenset(),
        locations: frozenset[str] = frozenset(),
        networks: frozenset[str] = frozenset(),
    ) -> None:
        self.master = master
        self.types = types
        self.skus = skus
        self.locations = locations
        self.networks = networks
        self._revision = -1
        self._members: frozenset[str] = frozenset()

    @classmethod
    def of(cls, request: pb.WatchEventsRequest, master: MasterData) -> EventFilter:
        """The filter of a request; raises InvalidArgument naming a bad field, or
        NetworkNotFound."""
        for name in ("types", "skus", "location_ids", "networks"):
            n = len(getattr(request, name))
            if n > MAX_FILTER_VALUES:
                raise InvalidArgument(name, f"at most {MAX_FILTER_VALUES:,} values, got {n:,}")
        for i, t in enumerate(request.types):
            if t not in _EVENT_TYPES:
                raise InvalidArgument(f"types[{i}]", f"not an event type: {t}")
        skus = frozenset(check_id(f"skus[{i}]", s) for i, s in enumerate(request.skus))
        locations = frozenset(
            check_id(f"location_ids[{i}]", loc) for i, loc in enumerate(request.location_ids)
        )
        networks = frozenset(check_id(f"networks[{i}]", n) for i, n in enumerate(request.networks))
        for network in sorted(networks):
            if network not in master.networks:
                raise NetworkNotFound(network)
        return cls(master, frozenset(request.types), skus, locations, networks)

    def _member_locations(self) -> frozenset[str]:
        """The locations of the filter's networks, as master data has them now."""
        master = self.master
        if master.revision != self._revision:
            self._revision = master.revision
            self._members = frozenset(
                loc
                for n in self.networks
                if (network := master.networks.get(n)) is not None
                for loc in network.location_ids
            )
        return self._members

    def matches(self, ev: StoredEvent) -> bool:
        """Whether an event passes the filter (a reservation event: one of its lines)."""
        if self.types and ev.type not in self.types:
            return False
        if self.skus and not _meets(ev.sku, self.skus):
            return False
        if self.locations and not _meets(ev.location_id, self.locations):
            return False
        if self.networks:
            return _meets(ev.network, self.networks) or _meets(
                ev.location_id, self._member_locations()
            )
        return True


def _meets(value: str, wanted: frozenset[str]) -> bool:
    if SEP in value:
        return any(v in wanted for v in value.split(SEP))
    return value in wanted


class EventSubscription:
    """A live subscriber: its filter and its bounded buffer of events not yet sent."""

    __slots__ = ("_hub", "after", "event", "filter", "overflowed", "pending")

    def __init__(self, hub: EventHub, flt: EventFilter, after: EventId) -> None:
        self._hub = hub
        self.filter = flt
        #: The last event id sent (or skipped by the filter): only later ones are buffered.
        self.after = after
        self.pending: deque[StoredEvent] = deque()
        self.event = asyncio.Event()
        self.overflowed = False

    def offer(self, events: list[StoredEvent]) -> None:
        """Buffer the events after `after` that pass the filter; cut when too many wait."""
        matches, pending = self.filter.matches, self.pending
        for ev in events:
            if ev.id > self.after and matches(ev):
                if len(pending) >= self._hub.max_pending:
                    self.cut()
                    return
                pending.append(ev)
        if pending:
            self.event.set()

    def take(self, limit: int) -> list[StoredEvent]:
        """Up to limit buffered events, oldest first."""
        pending = self.pending
        out = [pending.popleft() for _ in range(min(limit, len(pending)))]
        if out:
            self.after = out[-1].id
        if not pending and not self.overflowed:
            self.event.clear()
        return out

    def cut(self) -> None:
        """The subscriber fell too far behind (or the server stops): end its stream."""
        if not self.overflowed:
            self.overflowed = True
            self.pending.clear()
            self._hub.unsubscribe(self)
            if not self._hub.closing:
                self._hub.metrics.dropped.inc()
            self.event.set()


class EventHub:
    """The live subscribers; a listener of the deriver."""

    def __init__(self, metrics: EventMetrics, *, max_pending: int = 10_000) -> None:
        self.metrics = metrics
        self.max_pending = max_pending
        self._subs: set[EventSubscription] = set()
        self.closing = False

    def subscribe(self, flt: EventFilter, after: EventId) -> EventSubscription:
        """A live subscription receiving the events stored from now on, after `after`."""
        sub = EventSubscription(self, flt, after)
        self._subs.add(sub)
        self.metrics.subscribers.set(len(self._subs))
        return sub

    @property
    def subscribers(self) -> int:
        """Open WatchEvents streams."""
        return len(self._subs)

    def unsubscribe(self, sub: EventSubscription) -> None:
        """Remove a subscription (idempotent)."""
        self._subs.discard(sub)
        self.metrics.subscribers.set(len(self._subs))

    def publish(self, events: list[StoredEvent], watermark: EventId) -> None:
        """Offer a round's stored events to every subscriber (an EventDeriver listener)."""
        if events:
            for sub in list(self._subs):
                sub.offer(events)

    def shutdown(self) -> None:
        """End every stream (the server is stopping; clients resume elsewhere)."""
        self.closing = True
        for sub in list(self._subs):
            sub.cut()


class EventStreams:
    """Serves WatchEvents from the deriver's stored events and its hub."""

    def __init__(self, deriver: EventDeriver, hub: EventHub, master: MasterData) -> None:
        self.deriver = deriver
        self.hub = hub
        self.master = master
        deriver.listeners.append(hub.publish)

    async def watch(self, request: pb.WatchEventsRequest, context: Context) -> None:
        """Stream the events of a request until the client leaves or is cut. Raises
        InvalidArgument, NetworkNotFound, EventsDiscarded (resume point too old) or
        Unavailable."""
        flt = EventFilter.of(request, self.master)
        deriver = self.deriver
        if request.after_event_id:
            try:
                cursor = parse_event_id(request.after_event_id)
            except ValueError:
                raise InvalidArgument(
                    "after_event_id", f"not an event id: {request.after_event_id!r}"
                ) from None
            if await deriver.log.discarded_after(cursor):
                raise EventsDiscarded(request.after_event_id)
        else:
            cursor = deriver.watermark
        await context.write(
            pb.WatchEventsResponse(start_after_event_id=format_event_id(cursor)).SerializeToString()
        )
        # Catch up from the streams, then subscribe with no await in between.
        while cursor < (upto := deriver.watermark):
            page = await deriver.log.read(cursor, upto, EVENTS_BATCH)
            if not page:
                cursor = upto
                continue
            cursor = page[-1].id
            matched = [ev for ev in page if flt.matches(ev)]
            if matched:
                await context.write(events_response(matched))
        sub = self.hub.subscribe(flt, cursor)
        try:
            while True:
                await sub.event.wait()
                if sub.overflowed:
                    if self.hub.closing:
                        await context.abort(
                            grpc.StatusCode.UNAVAILABLE,
                            "server shutting down; reconnect with after_event_id to resume",
                        )
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        "events subscriber fell too far behind; reconnect with after_event_id "
                        "(the last event_id received) to resume",
                    )
                events = sub.take(EVENTS_BATCH)
                if events:
                    await context.write(events_response(events))
        finally:
            self.hub.unsubscribe(sub)
