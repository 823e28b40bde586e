"""Events (issue 11 item 2), derived from the change feed by a durable feed consumer.

Each round reads the feed after the deriver's cursor, in the feed's global order and never
past a flush still in progress (RedisStore.read_feed_from), derives the events of every change
(`derive`), appends them to the partitions' event streams with ids made from the feed entry's
id and the event's index in it (persistence.events), and once they are stored moves
`watermark` and tells live subscribers (`listeners`). It saves its cursor ("events" in every
partition's us:{p}:feedcur, which also keeps the feed from being trimmed past it) at most every
`save_every` s (each save is a call per partition). A restart derives again what came after
the saved cursor: the same events with the same ids, which the streams refuse, so every event
is stored once, and none is ever shown to a subscriber before it is stored (one derived again
is offered to live subscribers, who take only ids after the last they got).

What makes which event (the feed change it comes from):

- a movement: COUNT_VARIANCE (a COUNT with a variance, or a late movement correcting one),
  NEGATIVE_STOCK (on_hand went below 0), RESERVATION_PICKUP_MISMATCH (a SALE naming a
  reservation that picked up fewer of its units than it sold);
- a LEVEL change (codec.level_change, written with its position): LOW_STOCK, OUT_OF_STOCK,
  BACK_IN_STOCK when the position's available changed class (threshold: the location's
  low_stock_threshold), RESERVATION_AT_RISK per reservation a movement left at risk;
- a reservation's transitions: RESERVATION_MOVED, RESERVATION_HEALED, RESERVATION_EXPIRED,
  RESERVATION_EXPIRING_SOON (detail: the expiry time, UTC),
  and READY_FOR_PICKUP for an ACTIVE CLICK_AND_COLLECT reservation per location holding its
  lines, when created and again after each move (TransferReservation or self-healing);
- a transfer record's new discrepancies (codec.transfer_change): TRANSFER_SHORT (closed short:
  units lost in transit), TRANSFER_DISCREPANT (received before shipped, over-received,
  shipped after close, received after close);
- a store's status change (codec.store_status_change, staged by the network index):
  STORE_OFFLINE / STORE_ONLINE (store_id, no location; stored in the store's partition);
- a network level's class change (codec.network_level_change, staged by the network index):
  NETWORK_LOW_STOCK, NETWORK_OUT_OF_STOCK, NETWORK_BACK_IN_STOCK (network and sku, no
  location; stored in the partition of the network level).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator

from google.protobuf.timestamp_pb2 import Timestamp

from unistock.server.domain import DiscrepancyKind, MovementType, Transition
from unistock.server.metrics import EventMetrics
from unistock.server.persistence.codec import (
    LOW,
    OK,
    OUT,
    AnyFeedRecord,
    FeedRecord,
    LevelFeedRecord,
    NetworkLevelFeedRecord,
    StoreStatusFeedRecord,
    TransferFeedRecord,
    decode_feed,
)
from unistock.server.persistence.events import (
    PER_ENTRY,
    EventId,
    EventLog,
    StoredEvent,
    event_id,
    last_event_id,
)
from unistock.server.persistence.feed import after_known, rounds
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.store import RedisStore
from unistock.v1 import inventory_pb2 as pb

log = logging.getLogger(__name__)

#: The deriver's name among the feed's durable consumers (its cursor: us:{p}:feedcur).
CONSUMER = "events"
#: Separates the values of a multi-line reservation event in a stored filter field.
SEP = "\n"

_LEVEL_EVENT = {OUT: pb.OUT_OF_STOCK, LOW: pb.LOW_STOCK, OK: pb.BACK_IN_STOCK}
_CLASS_NAME = {OUT: "out of stock", LOW: "low", OK: "in stock"}
_NETWORK_EVENT = {
    OUT: pb.NETWORK_OUT_OF_STOCK,
    LOW: pb.NETWORK_LOW_STOCK,
    OK: pb.NETWORK_BACK_IN_STOCK,
}


def _ts(at_ms: int) -> Timestamp:
    ts = Timestamp()
    ts.FromMilliseconds(at_ms)
    return ts


def derive(record: AnyFeedRecord) -> Iterator[pb.InventoryEvent]:
    """The events one feed change makes, in order (event_id unset)."""
    if isinstance(record, LevelFeedRecord):
        yield from _level_events(record)
    elif isinstance(record, FeedRecord):
        yield from _movement_events(record)
    elif isinstance(record, TransferFeedRecord):
        yield from _transfer_events(record)
    elif isinstance(record, StoreStatusFeedRecord):
        yield _store_event(record)
    elif isinstance(record, NetworkLevelFeedRecord):
        yield _network_event(record)
    else:
        res = record.reservation
        for t in record.transitions:
            if t == Transition.MOVED:
                yield _reservation_event(pb.RESERVATION_MOVED, record.at_ms, res, "moved")
            elif t == Transition.HEALED:
                yield _reservation_event(
                    pb.RESERVATION_HEALED, record.at_ms, res, "held units at risk moved"
                )
            elif t == Transition.EXPIRED:
                yield _reservation_event(pb.RESERVATION_EXPIRED, record.at_ms, res, "expired")
            elif t == Transition.EXPIRING_SOON:
                yield _reservation_event(
                    pb.RESERVATION_EXPIRING_SOON,
                    record.at_ms,
                    res,
                    f"expires at {res.expires_at.ToJsonString()}",
                )
            if t in _READY_AGAIN and res.kind == pb.CLICK_AND_COLLECT and res.state == pb.ACTIVE:
                yield from _ready(record.at_ms, res)


_DISCREPANCY = {
    DiscrepancyKind.RECEIVED_BEFORE_SHIPPED: "received before it was shipped",
    DiscrepancyKind.OVER_RECEIVED: "received beyond what was shipped",
    DiscrepancyKind.CLOSED_SHORT: "closed short: lost in transit",
    DiscrepancyKind.SHIPPED_AFTER_CLOSE: "shipped after it was closed",
    DiscrepancyKind.RECEIVED_AFTER_CLOSE: "received after it was closed short (found)",
}


def _transfer_events(r: TransferFeedRecord) -> Iterator[pb.InventoryEvent]:
    for d in r.discrepancies:
        kind = DiscrepancyKind(d.kind)
        short = kind is DiscrepancyKind.CLOSED_SHORT
        yield pb.InventoryEvent(
            type=pb.TRANSFER_SHORT if short else pb.TRANSFER_DISCREPANT,
            at=_ts(r.at_ms),
            sku=d.sku,
            location_id=r.destination,
            quantity=d.quantity,
            transfer_id=r.transfer_id,
            source_id=d.source_id,
            seq=d.seq,
            detail=f"transfer {r.transfer_id} to {r.destination}: {d.quantity} x {d.sku} "
            f"{_DISCREPANCY[kind]}",
        )


def _store_event(r: StoreStatusFeedRecord) -> pb.InventoryEvent:
    return pb.InventoryEvent(
        type=pb.STORE_ONLINE if r.online else pb.STORE_OFFLINE,
        at=_ts(r.at_ms),
        store_id=r.store_id,
        detail=f"store {r.store_id} {'online' if r.online else 'offline'}: {r.reason} "
        f"(last heard from {_ts(r.last_heard_ms).ToJsonString()})",
    )


def _network_event(r: NetworkLevelFeedRecord) -> pb.InventoryEvent:
    stale = f", {r.stale_locations} stale" if r.stale_locations else ""
    return pb.InventoryEvent(
        type=_NETWORK_EVENT[r.after],
        at=_ts(r.at_ms),
        sku=r.sku,
        network=r.network,
        available=r.available,
        detail=f"network {r.network}: available {r.available} ({r.locations} locations"
        f"{stale}; low stock threshold {r.low_stock_threshold}): {_CLASS_NAME[r.before]} -> "
        f"{_CLASS_NAME[r.after]}",
    )


def _position_event(
    kind: int, at_ms: int, r: FeedRecord | LevelFeedRecord, detail: str
) -> pb.InventoryEvent:
    return pb.InventoryEvent(
        type=kind,  # type: ignore[arg-type]
        at=_ts(at_ms),
        sku=r.sku,
        location_id=r.location_id,
        on_hand=r.on_hand,
        available=r.available,
        detail=detail,
    )


def _movement_events(r: FeedRecord) -> Iterator[pb.InventoryEvent]:
    x = r.extra
    if r.type is None:
        return  # a fulfilment's shipment: nothing to tell beyond the reservation's transitions
    movement = f"{r.type.name} seq {r.seq} from {r.source_id}"
    if x is not None and x.variance and (r.type is MovementType.COUNT or x.count_correction):
        ev = _position_event(
            pb.COUNT_VARIANCE,
            r.at_ms,
            r,
            f"count {x.count_id}: variance {x.variance:+d}"
            if not x.count_correction
            else f"{movement}, made before count {x.count_id}, changed its variance by "
            f"{x.variance:+d}",
        )
        ev.count_id, ev.quantity, ev.source_id, ev.seq = x.count_id, x.variance, r.source_id, r.seq
        yield ev
    if r.on_hand < 0 <= r.on_hand - r.on_hand_delta:
        ev = _position_event(
            pb.NEGATIVE_STOCK, r.at_ms, r, f"on_hand went to {r.on_hand} with {movement}"
        )
        ev.quantity, ev.source_id, ev.seq = r.quantity, r.source_id, r.seq
        yield ev
    if (
        x is not None
        and r.type is MovementType.SALE
        and x.reservation_id
        and x.picked_up < r.quantity
    ):
        short = r.quantity - x.picked_up
        ev = _position_event(
            pb.RESERVATION_PICKUP_MISMATCH,
            r.at_ms,
            r,
            f"{movement} sold {r.quantity} naming reservation {x.reservation_id}, which held "
            f"{x.picked_up} of them here",
        )
        ev.reservation_id, ev.quantity, ev.source_id, ev.seq = (
            x.reservation_id,
            short,
            r.source_id,
            r.seq,
        )
        yield ev


def _level_events(r: LevelFeedRecord) -> Iterator[pb.InventoryEvent]:
    if r.before != r.after:
        yield _position_event(
            _LEVEL_EVENT[r.after],
            r.at_ms,
            r,
            f"available {r.available}: {_CLASS_NAME[r.before]} -> {_CLASS_NAME[r.after]}",
        )
    for rid, units in r.at_risk:
        ev = _position_event(
            pb.RESERVATION_AT_RISK,
            r.at_ms,
            r,
            f"holds {units} here, where on_hand is {r.on_hand}",
        )
        ev.reservation_id = rid
        ev.lines.append(pb.ReservationLine(sku=r.sku, location_id=r.location_id, quantity=units))
        yield ev


def _reservation_event(
    kind: int,
    at_ms: int,
    res: pb.Reservation,
    detail: str,
    lines: list[pb.ReservationLine] | None = None,
) -> pb.InventoryEvent:
    lines = list(res.lines) if lines is None else lines
    ev = pb.InventoryEvent(
        type=kind,  # type: ignore[arg-type]
        at=_ts(at_ms),
        reservation_id=res.reservation_id,
        lines=lines,
        detail=f"reservation {res.reservation_id} {detail}",
    )
    # The event's own sku / location / network when its lines share one.
    if len({ln.sku for ln in lines}) == 1:
        ev.sku = lines[0].sku
    if len({ln.location_id for ln in lines}) == 1:
        ev.location_id = lines[0].location_id
    if len({ln.network for ln in lines}) == 1:
        ev.network = lines[0].network
    return ev


#: The transitions after which a click & collect reservation is ready where its lines are.
_READY_AGAIN = (Transition.CREATED, Transition.MOVED, Transition.HEALED)


def _ready(at_ms: int, res: pb.Reservation) -> Iterator[pb.InventoryEvent]:
    """READY_FOR_PICKUP per location holding the reservation's lines (its lines there)."""
    for loc in sorted({ln.location_id for ln in res.lines}):
        here = [ln for ln in res.lines if ln.location_id == loc]
        units = sum(ln.quantity for ln in here)
        yield _reservation_event(
            pb.READY_FOR_PICKUP,
            at_ms,
            res,
            f"ready for pickup at {loc} ({units} unit{'' if units == 1 else 's'})",
            here,
        )


def stored_event(at: EventId, ev: pb.InventoryEvent) -> StoredEvent:
    """An event as stored: its filter fields (a reservation event's skus, locations and
    networks of every line, SEP-joined) and its serialised body."""
    if ev.lines:
        skus = SEP.join(sorted({ln.sku for ln in ev.lines}))
        locations = SEP.join(sorted({ln.location_id for ln in ev.lines}))
        networks = SEP.join(sorted({ln.network for ln in ev.lines if ln.network}))
    else:
        skus, locations, networks = ev.sku, ev.location_id, ev.network
    return StoredEvent(at, ev.type, skus, locations, networks, ev.SerializeToString())


def partition_of(ks: Keyspace, ev: pb.InventoryEvent) -> int:
    """The partition of an event's subject: its reservation's, its store's (store status), its
    network level's (NETWORK_*), else its location's."""
    if ev.reservation_id:
        return ks.reservation_partition(ev.reservation_id)
    if ev.store_id:
        return ks.store_partition(ev.store_id)
    if ev.network and not ev.location_id:  # a network level's
        return ks.network_level_partition(ev.network, ev.sku)
    return ks.location_partition(ev.location_id)


Listener = Callable[[list[StoredEvent], EventId], None]


class EventDeriver:
    """Derives events from the change feed into the event streams, `batch` feed entries per
    round, and tells listeners (WatchEvents' hub) once they are stored."""

    def __init__(
        self,
        store: RedisStore,
        events: EventLog,
        metrics: EventMetrics,
        *,
        batch: int = 1000,
        trim_every: float = 1.0,
        save_every: float = 0.5,
    ) -> None:
        self._store = store
        self.log = events
        self._metrics = metrics
        self.batch = batch
        self.trim_every = trim_every
        self.save_every = save_every
        self._saved_at = 0.0
        self._cursor: tuple[int, int] | None = None
        #: partition -> the ordinal in its stream of the last entry consumed (or of its end
        #: when nothing was left), once known: to see a gap the feed's cap made (_numbered)
        self._ordinals: dict[int, int] = {}
        #: When the deriver last trimmed (not at once after start: a consumer starting beside it,
        #: such as an in-process ledger writer, registers its cursor first).
        self._trimmed_at = time.monotonic()
        #: Every event with an id up to this one is stored (ids above it may be being
        #: written): what WatchEvents reads up to, and "now" for a subscriber without a resume
        #: point. Set by start().
        self.watermark: EventId = (0, 0)
        self.listeners: list[Listener] = []
        self._wake = asyncio.Event()
        #: Set once start() loaded the cursor (watermark is meaningful from then on).
        self.started = asyncio.Event()

    async def start(self) -> None:
        """Load the cursor (registering the consumer, so that the feed waits for it, on its
        first start: it then derives whatever the feed still holds). Raises Unavailable."""
        cursor = await self._store.load_feed_cursor(CONSUMER)
        if cursor == (0, 0):
            await self._store.save_feed_cursor(CONSUMER, cursor)
        self._cursor = cursor
        self.watermark = last_event_id(cursor)
        self.started.set()

    def wake(self, *_: object) -> None:
        """Something was flushed: derive now (a GroupCommit listener)."""
        self._wake.set()

    async def drain_once(self) -> int:
        """One round: returns the feed entries consumed (0: caught up). Raises Unavailable
        (nothing consumed then)."""
        if self._cursor is None:
            await self.start()
        assert self._cursor is not None
        streams: dict[int, tuple[int, int, int]] = {}
        entries = await self._store.read_feed_from(self._cursor, self.batch, streams)
        starts = self._numbered(streams)
        if not entries:
            self._metrics.lag.set(0)
            return 0
        ks = self._store.keyspace
        out: list[tuple[int, StoredEvent]] = []
        for feed_id, _, entry in entries:
            k = 0
            for record in decode_feed(entry, notable=True):
                for ev in derive(record):
                    if k == PER_ENTRY:
                        log.error(
                            "feed entry %s makes over %d events: the rest dropped", feed_id, k
                        )
                        break
                    out.append((partition_of(ks, ev), stored_event(event_id(feed_id, k), ev)))
                    k += 1
        await self.log.append(out)
        last = entries[-1][0]
        self._cursor = last
        taken = Counter(p for _, p, _ in entries)
        for p, n in taken.items():  # the ordinal of the last entry consumed, where known
            start = starts.get(p)
            if start is None:
                self._ordinals.pop(p, None)
            else:
                self._ordinals[p] = start + n - 1
        self.watermark = last_event_id(last)
        stored = [se for _, se in out]
        for kind, n in Counter(se.type for se in stored).items():
            self._metrics.events.labels(pb.EventType.Name(kind)).inc(n)  # type: ignore[arg-type]
        for listener in self.listeners:
            try:
                listener(stored, self.watermark)
            except Exception:
                log.exception("events listener failed")
        behind = len(entries) == self.batch
        self._metrics.lag.set(max(0.0, time.time() - last[0] / 1000) if behind else 0)
        now = time.monotonic()
        if now - self._saved_at >= self.save_every:
            self._saved_at = now
            await self._store.save_feed_cursor(CONSUMER, last)
        if now - self._trimmed_at >= self.trim_every:
            self._trimmed_at = now
            await self._store.trim_feed([CONSUMER])
            await self.log.trim(int(time.time() * 1000))
        return len(entries)

    def _numbered(self, streams: dict[int, tuple[int, int, int]]) -> dict[int, int]:
        """The ordinal (n-th entry ever added to its stream) of the first entry a read returned
        per partition, where known; reports (log, unistock_feed_entries_lost_total{consumer=
        "events"}) the entries the feed's cap trimmed before they were derived: events lost.
        A partition's entries after the cursor come right after the last one consumed there
        (ordinal known from an earlier round), unless the stream's first held entry is further
        on (a gap); a partition read to its end numbers its entries from its last one."""
        starts: dict[int, int] = {}
        for p, (added, length, n) in streams.items():
            known = self._ordinals.get(p)
            gap, first = after_known(added, length, known)
            if gap is not None:
                lost = gap[1] - gap[0] + 1
                self._metrics.feed_lost.labels(CONSUMER).inc(lost)
                log.error(
                    "feed partition %d: %d entries (numbers %d to %d of its stream) were trimmed "
                    "by the feed's cap before their events were derived (the deriver was behind "
                    "by more than --feed-max-entries): those events are missing",
                    p,
                    lost,
                    *gap,
                )
            if known is not None:
                starts[p] = first
            elif n < self.batch:  # read to its end at that instant: its last held is `added`
                starts[p] = added - n + 1
            if n == 0 and p in starts:  # nothing after the cursor: numbered up to its end
                self._ordinals[p] = max(self._ordinals.get(p, 0), added)
        return starts

    async def _round(self) -> int:
        self._wake.clear()  # a flush from here on wakes the next wait
        return await self.drain_once()

    def _failed(self, exc: Exception, wait: float) -> None:
        self._metrics.errors.inc()
        log.warning("events not derived yet (will retry in %.1f s): %r", wait, exc)

    async def run(self, idle: float = 1.0, retry: float = 0.5, linger: float = 0.05) -> None:
        """Derive forever: at once while there is more; else `linger` s after a flush woke it
        (wake: several flushes make one round, whose Redis calls cost the same for one feed
        entry as for hundreds), and every `idle` s anyway; every `retry` s (doubling to 30 s)
        while Redis fails."""
        async for consumed in rounds(self._round, self._failed, retry):
            if consumed < self.batch:
                try:
                    async with asyncio.timeout(idle):
                        await self._wake.wait()
                except TimeoutError:
                    continue
                await asyncio.sleep(linger)
