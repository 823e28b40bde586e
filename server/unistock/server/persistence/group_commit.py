"""Group commit: the changes of many actors written to Redis together, replies after durability.

Turns mark positions and reservation records as changed and get back the future of the current
window. The flusher takes the whole window at once (several changes to one position in a window
become one write of its latest state), encodes it, writes it in one pipeline of fenced
per-partition script calls and resolves the window's future when Redis has it durably
(`appendfsync always`). While a flush is in flight the next window fills up, so batches grow
with load and latency stays one round trip when idle.

Order inside a flush, for crash safety of reservations (see domain.reservation):
  1. records of existing reservations: every transition after creation (release, expiry,
     fulfilment, pickup, extension) ends or shrinks holds or leaves them as they are, so the
     record goes first and a crash that cuts the flush leaves holds the record no longer backs,
     which reconcile_holds corrects when the position is next loaded,
  2. positions,
  3. records of reservations created in this window (their holds exist first).
A record changes at most once per flush (pickups aside, which all shrink): turns that
transition a reservation wait until its previous change is durable (actors.inventory), so a
record created in a window never also ends in it, and an ended record never waits behind its
freed holds (a crash between them would leave an ACTIVE record whose hold is gone).

Transfers (see domain.transfer): a TRANSFER_OUT's shipment is written in the same script call
as its origin position (the partition's outbox), and the transfer record at the destination in
the same script call as the destination position it changed; the runtime applies a shipment to
its record only once the shipment is durable, and deletes it from the outbox only once the
record is (a crash in between leaves it to be applied again, which the record recognises).

A change that cannot be encoded (a value no validation should have let in) fails its own
window's waiters with Unavailable and is dropped with an error log; the flusher goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

from unistock.server.domain import (
    Fenced,
    Position,
    Reservation,
    StockKey,
    Transfer,
    Unavailable,
)
from unistock.server.metrics import Metrics
from unistock.server.persistence.codec import (
    FEED_NETWORK,
    FEED_STORE,
    encode_position_with_level,
    encode_reservation,
    encode_transfer,
    hold_value,
    level_change,
    level_class,
)
from unistock.server.persistence.keys import Keyspace, mark_field, position_field
from unistock.server.persistence.rindex import index_identity, index_write
from unistock.server.persistence.store import PartitionWrite, Phase, RedisStore, StatusWrite

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class DurableLevel(NamedTuple):
    """A position level that is now durable, as flushed (a tuple: one per position and flush)."""

    key: StockKey
    version: int
    #: Serialised StockLevel without sku and location_id (see codec.stock_level_entry).
    level: bytes
    #: How much this write changed the position's durable available.
    available_delta: int = 0


Listener = Callable[[list[DurableLevel]], None]
#: What a flush wrote besides a position's value: its spilled marks (source -> seq) and its
#: changed holds (reservation_id -> (units, shipped)), None when none.
#: (position, spilled marks written, holds written, feed changes written)
_Written = tuple[Position, dict[str, int] | None, dict[str, tuple[int, int]] | None, int]


class DurableReservation(NamedTuple):
    """A reservation record a flush made durable."""

    record: Reservation
    #: its feed changes written with it (codec.reservation_change), oldest first
    changes: Sequence[bytes]
    #: its states before this write whose index entries differed from its own (a moved
    #: record's old locations, an ended record's ACTIVE state), oldest first
    earlier: Sequence[Reservation]


ReservationListener = Callable[[list[DurableReservation]], None]


class GroupCommit:
    """Collects changed positions and reservations and flushes them in windows."""

    def __init__(
        self,
        store: RedisStore,
        metrics: Metrics,
        *,
        linger: float = 0.002,
        busy_batch: int = 4,
        max_positions: int = 8192,
        retention: float = 7 * 86400,
        retry_backoff: float = 0.05,
    ) -> None:
        self._store = store
        self._ks = store.keyspace
        self._metrics = metrics
        self.linger = linger
        self.busy_batch = busy_batch
        self._last_batch = 0
        self.max_positions = max_positions
        self._retention_ms = str(int(retention * 1000))
        self._backoff = retry_backoff
        self._positions: dict[StockKey, Position] = {}
        self._ending: dict[str, Reservation] = {}
        self._other: dict[str, Reservation] = {}
        #: reservation_id -> its feed changes not yet durable (codec.reservation_change)
        self._transitions: dict[str, list[bytes]] = {}
        #: reservation_id -> its states since its last write whose index entries differ from
        #: the next one's (rindex: entries to remove; a failed write may have stored them)
        self._earlier: dict[str, list[Reservation]] = {}
        self._sources: dict[str, int] = {}
        self._highs: dict[str, int] = {}
        self._inflight_highs: dict[str, int] = {}
        self._inflight_positions: dict[StockKey, Position] = {}
        self._inflight_reservations: set[str] = set()
        self._transfers: dict[tuple[str, str], Transfer] = {}
        #: transfer key -> its feed changes not yet durable (codec.transfer_change)
        self._xchanges: dict[tuple[str, str], list[bytes]] = {}
        self._inflight_transfers: set[tuple[str, str]] = set()
        #: (partition, status) not yet durable, oldest first (store_status_changed,
        #: network_level_changed)
        self._statuses: list[tuple[int, StatusWrite]] = []
        #: field -> (origin location, stored Shipment): written with the origin position
        self._shipments: dict[str, tuple[str, bytes]] = {}
        #: field -> origin location: shipments applied, to delete
        self._shipped: dict[str, str] = {}
        #: Positions that must be written in the same flush as this window's transfer records and
        #: shipments (a burst written in chunks keeps them in the first chunk).
        self._linked: dict[StockKey, Position] = {}
        self._window: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight: asyncio.Future[None] | None = None
        self._wake = asyncio.Event()
        #: When the last flush succeeded (time.monotonic()); None: none yet.
        self.last_flushed: float | None = None
        self._closing = False
        self._give_up_at = 0.0
        self._known_locations: set[str] = set()
        self.listeners: list[Listener] = []
        #: Called after each flush with the reservation records it made durable (only when
        #: there are some), e.g. the reservations watch.
        self.reservation_listeners: list[ReservationListener] = []
        self.fenced: Fenced | None = None
        #: A location's low-stock threshold in units (master data): a write that moves a
        #: position's available to another level class (out / low / ok, codec.level_class)
        #: than its last durable one carries a LEVEL feed change (events).
        self.low_stock_threshold: Callable[[str], int] = _no_threshold
        #: The clock of the LEVEL changes' at_ms (the inventory's: Unix seconds).
        self.clock: Callable[[], float] = time.time

    # -- called by turns (synchronous) ---------------------------------------------------------

    def position_changed(self, position: Position) -> None:
        """Schedule position's current state for writing (await barrier() for durability)."""
        self._positions[position.key] = position
        self._wake.set()

    def reservation_changed(
        self,
        reservation: Reservation,
        *,
        created: bool,
        change: bytes = b"",
        before: Reservation | None = None,
    ) -> None:
        """Schedule a reservation record for writing (await barrier() for durability), with
        its change for the feed (codec.reservation_change; written with the record).

        created: a new reservation, written after its holds; any later state of a record is
        written before the positions (see the module docstring). before: the record it
        replaces (its index entries that the new one does not have are removed with it).
        """
        rid = reservation.reservation_id
        if change:
            self._transitions.setdefault(rid, []).append(change)
        if before is not None and index_identity(before) != index_identity(reservation):
            self._earlier.setdefault(rid, []).append(before)
        if created or rid in self._other:
            # A record not yet written even once stays after the positions whatever it became
            # in this window (only pickups can change it before it is durable, and they shrink
            # holds the position has too), so that a record never exists before its holds.
            self._other[rid] = reservation
        else:
            self._ending[rid] = reservation
        self._wake.set()

    def transfer_changed(
        self, transfer: Transfer, *positions: Position, change: bytes | None = None
    ) -> None:
        """Schedule a transfer record for writing, atomically with the destination positions
        it changed in the same turn (pass them; they are scheduled too), and with its change
        for the feed if it recorded discrepancies (codec.transfer_change)."""
        self._transfers[transfer.key] = transfer
        if change is not None:
            self._xchanges.setdefault(transfer.key, []).append(change)
        for p in positions:
            self._linked[p.key] = self._positions[p.key] = p
        self._wake.set()

    def store_status_changed(self, store_id: str, value: bytes, change: bytes) -> None:
        """Schedule a store's status (codec.store_status_value) for writing in the store's
        partition, with its feed change (codec.store_status_change), which the flush script
        appends only when the status differs from the stored one; kept for the next flush when
        a flush fails."""
        status = StatusWrite(FEED_STORE, store_id, value, change, b"1")  # none stored: online
        self._statuses.append((self._store.keyspace.store_partition(store_id), status))
        self._wake.set()

    def network_level_changed(
        self, network: str, sku: str, value: bytes, change: bytes, *, baseline: bool = False
    ) -> None:
        """Schedule a network level's stock class (codec.network_level_value) for writing in its
        partition (Keyspace.network_level_partition), with its feed change
        (codec.network_level_change), which the flush script appends only when the class
        differs from the stored one. None stored counts as out of stock, or with baseline as
        the class itself (the classes a server's start stages: nothing is published for a
        level never published before). Kept for the next flush when a flush fails."""
        default = value[8:] if baseline else b"0"
        status = StatusWrite(FEED_NETWORK, f"{network}|{sku}", value, change, default)
        self._statuses.append((self._store.keyspace.network_level_partition(network, sku), status))
        self._wake.set()

    def shipment_recorded(self, origin: Position, field: str, value: bytes) -> None:
        """Schedule a TRANSFER_OUT's shipment for the outbox, atomically with its origin
        position (scheduled too)."""
        self._shipments[field] = (origin.location_id, value)
        self._linked[origin.key] = self._positions[origin.key] = origin
        self._wake.set()

    def shipment_applied(self, origin_location: str, field: str) -> None:
        """Schedule the deletion of a shipment whose transfer record is durable."""
        self._shipped[field] = origin_location
        self._wake.set()

    def transfer_dirty(self, key: tuple[str, str]) -> bool:
        """Whether a transfer record has changes not yet durable."""
        return key in self._transfers or key in self._inflight_transfers

    def source_progress(self, source_id: str, seq: int) -> None:
        """Record that every movement of source_id up to seq is applied (written last, so it
        never claims more than the positions written before it)."""
        if seq > self._sources.get(source_id, 0):
            self._sources[source_id] = seq
            self._wake.set()

    def source_high(self, source_id: str, seq: int) -> None:
        """Record the highest seq applied from source_id anywhere (written with the next flush,
        last: a crash can only make it lower than the truth, which loosens the jump bound)."""
        if seq > self._highs.get(source_id, 0):
            self._highs[source_id] = seq
            self._wake.set()

    def pending_high(self, source_id: str) -> int:
        """The highest seq of source_id recorded and not yet durable (0 when none)."""
        return max(self._highs.get(source_id, 0), self._inflight_highs.get(source_id, 0))

    def _pending(self) -> bool:
        """Whether anything waits to be written."""
        return bool(
            self._positions
            or self._ending
            or self._other
            or self._sources
            or self._highs
            or self._transfers
            or self._shipments
            or self._shipped
            or self._statuses
        )

    def is_dirty(self, key: StockKey) -> bool:
        """Whether a position has changes not yet durable (it must stay resident)."""
        return key in self._positions or key in self._inflight_positions

    def reservation_dirty(self, reservation_id: str) -> bool:
        """Whether a reservation record has changes not yet durable."""
        return (
            reservation_id in self._ending
            or reservation_id in self._other
            or reservation_id in self._inflight_reservations
        )

    def barrier(self) -> asyncio.Future[None]:
        """A future resolved once every change made so far is durable (failed: Unavailable).

        Shielded: a caller that gives up (deadline, client gone) cancels its own wait, never
        the window that other turns wait for.
        """
        if self.fenced is not None:
            return _failed(Unavailable("this server lost ownership of its partitions"))
        if self._pending():
            return asyncio.shield(self._window)
        if self._inflight is not None:
            return asyncio.shield(self._inflight)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    async def flushed(self) -> None:
        """Until the flush in flight now (if any) has finished, its listeners called (or it
        failed). Waits for nothing else."""
        inflight = self._inflight
        if inflight is not None:
            await asyncio.wait([inflight])

    # -- the flusher ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Flush windows until close(); raises Fenced when another process took a partition."""
        while True:
            await self._wake.wait()
            # Linger only when busy: when the last flush was large, waiting a little gathers
            # a bigger batch (less work per change when CPU is the limit); when idle, write
            # at once (latency is one round trip).
            if self.linger and self._last_batch >= self.busy_batch and not self._closing:
                await asyncio.sleep(self.linger)
            self._wake.clear()
            if not self._pending():
                if self._closing:
                    return
                continue
            if not await self._flush_once():
                if self._closing and time.monotonic() >= self._give_up_at:
                    # Nothing here was acknowledged (acks wait for durability); the sources
                    # resend it to whichever server runs next.
                    log.error(
                        "giving up on %d unwritten positions and %d reservation records at shutdown",
                        len(self._positions),
                        len(self._ending) + len(self._other),
                    )
                    return
                await asyncio.sleep(self._backoff)
                self._backoff = min(self._backoff * 2, 1.0)
                self._wake.set()

    async def close(self, grace: float = 5.0) -> None:
        """Let the flusher write what is pending (trying for up to grace s) and stop."""
        self._closing = True
        self._give_up_at = time.monotonic() + grace
        self._wake.set()

    def _take(self) -> tuple[_Batch, bool]:
        """The changes the next flush writes, and whether they end the window."""
        if len(self._positions) <= self.max_positions:
            batch = _Batch(
                self._positions,
                self._ending,
                self._other,
                self._sources,
                self._highs,
                self._transfers,
                self._shipments,
                self._shipped,
                self._transitions,
                self._earlier,
                self._xchanges,
                self._statuses,
            )
            self._transitions, self._earlier, self._xchanges = {}, {}, {}
            self._statuses = []
            self._window = asyncio.get_running_loop().create_future()
            self._positions, self._ending, self._other = {}, {}, {}
            self._sources, self._highs, self._transfers = {}, {}, {}
            self._shipments, self._shipped, self._linked = {}, {}, {}
            return batch, True
        # A burst larger than one flush: written in chunks under the same window, which resolves
        # with the last chunk. Shrinking records go first, new records last; transfer records
        # and shipments with the positions linked to them, in the first chunk.
        positions = dict(self._linked)
        room = max(0, self.max_positions - len(positions))
        positions.update(itertools.islice(self._positions.items(), room))
        for key in positions:
            del self._positions[key]
        batch = _Batch(
            positions,
            self._ending,
            transfers=self._transfers,
            shipments=self._shipments,
            shipped=self._shipped,
            transitions={
                rid: self._transitions.pop(rid) for rid in self._ending if rid in self._transitions
            },
            earlier={rid: self._earlier.pop(rid) for rid in self._ending if rid in self._earlier},
            xchanges=self._xchanges,
            statuses=self._statuses,
        )
        self._ending, self._transfers, self._shipments, self._shipped = {}, {}, {}, {}
        self._xchanges, self._statuses = {}, []
        self._linked = {}
        return batch, False

    async def _flush_once(self) -> bool:
        window = self._window
        batch, final = self._take()
        started = time.perf_counter()
        try:
            phases, durable, new_locations, written, flushed = self._encode(batch)
        except Exception as exc:
            # A value that cannot be stored (it should never have passed validation): the
            # flusher must not die of it. Fail this window's waiters, drop what cannot be
            # encoded and keep the rest for the next flush.
            log.exception("flush of %d positions could not be encoded", len(batch.positions))
            self._metrics.redis_errors.labels("encode").inc()
            self._requeue(batch.encodable())
            self._fail_window(window, Unavailable(f"a change could not be stored: {exc!r}"))
            return False
        # In flight from here (encoding is synchronous: no turn saw the window's changes gone).
        self._inflight_positions = batch.positions
        self._inflight_reservations = set(batch.ending) | set(batch.other)
        self._inflight_transfers = set(batch.transfers)
        self._inflight_highs = batch.highs
        self._inflight = window
        fed = self._store.feed_changes
        try:
            _, stale = await self._store.flush(phases)
        except Unavailable as exc:
            self._metrics.redis_errors.labels("flush").inc()
            log.warning("flush of %d positions failed, will retry: %s", len(batch.positions), exc)
            self._requeue(batch)
            self._fail_window(window, exc)
            return False
        except Fenced as exc:
            log.critical("fenced: %s", exc)
            self.fenced = exc
            lost = Unavailable("this server lost ownership of its partitions")
            _fail(window, lost)
            _fail(self._window, lost)  # nobody will flush the windows after this one
            raise
        finally:
            self._inflight_positions = {}
            self._inflight_reservations = set()
            self._inflight_transfers = set()
            self._inflight_highs = {}
            self._inflight = None
        self._backoff = 0.05
        self.last_flushed = time.monotonic()
        self._known_locations |= new_locations
        for p, marks, holds, changes in written:
            if marks is not None:
                p.spilled_written(marks)
            if holds is not None:
                p.holds_written(holds)
            if changes:  # the first `changes` are in the feed; later ones go with the next write
                feed = p.feed
                if feed is not None:
                    del feed[:changes]
                    if not feed:
                        p.feed = None
        for i, (p, available) in enumerate(flushed):
            if available != p.durable_available:
                durable[i] = durable[i]._replace(available_delta=available - p.durable_available)
                p.durable_available = available
        self._metrics.flush_latency.observe(time.perf_counter() - started)
        self._metrics.flush_batch.observe(len(batch.positions))
        self._last_batch = len(batch.positions) + len(batch.ending) + len(batch.other)
        if stale:
            self._metrics.flush_stale.inc(stale)
        if self._store.feed_changes > fed:
            self._metrics.feed_changes.inc(self._store.feed_changes - fed)
        if final and not window.done():
            window.set_result(None)
        else:
            self._wake.set()
        for listener in self.listeners:
            try:
                listener(durable)
            except Exception:
                log.exception("durability listener failed")
        if self.reservation_listeners and (batch.ending or batch.other):
            records = [
                DurableReservation(r, batch.transitions.get(rid, ()), batch.earlier.get(rid, ()))
                for records_ in (batch.ending, batch.other)
                for rid, r in records_.items()
            ]
            for reservation_listener in self.reservation_listeners:
                try:
                    reservation_listener(records)
                except Exception:
                    log.exception("reservation durability listener failed")
        return True

    def _encode(
        self, batch: _Batch
    ) -> tuple[
        list[Phase], list[DurableLevel], set[str], list[_Written], list[tuple[Position, int]]
    ]:
        ks = self._ks
        first: Phase = defaultdict(PartitionWrite)
        middle: Phase = defaultdict(PartitionWrite)
        last: Phase = defaultdict(PartitionWrite)
        durable: list[DurableLevel] = []
        new_locations: set[str] = set()
        partition_of = ks.location_partition
        writes: dict[str, PartitionWrite] = {}  # by location: a flush has few locations
        known = self._known_locations
        extra: list[_Written] = []
        flushed: list[tuple[Position, int]] = []  # with durable: the available written
        threshold = self.low_stock_threshold
        at_ms = int(self.clock() * 1000)
        for key, p in batch.positions.items():
            level, value = encode_position_with_level(p)
            location = key[1]
            w = writes.get(location)
            if w is None:
                w = writes[location] = middle[partition_of(location)]
                if location not in known:
                    new_locations.add(location)
                    w.locations.append(location)
            available = p.available
            news = None
            if available != p.durable_available:
                low = threshold(location)
                before, after = level_class(p.durable_available, low), level_class(available, low)
                if before != after:
                    news = level_change(at_ms, p.version, before, after, p.on_hand, available)
            if (staged := stage_position(ks, w, p, value, news)) is not None:
                extra.append(staged)
            durable.append(DurableLevel(key, p.version, level))
            flushed.append((p, available))
        now_ms = round(time.time() * 1000)  # the retention's (Redis's PX): wall clock
        retention = int(self._retention_ms)
        for records, phase in ((batch.ending, first), (batch.other, last)):
            for rid, r in records.items():
                active = r.active and r.expires_at is not None
                score = str(int(r.expires_at * 1000)) if active and r.expires_at else ""
                keep = "0" if r.active else self._retention_ms
                index = index_write(ks, r, batch.earlier.get(rid, ()), now_ms, retention)
                phase[ks.reservation_partition(rid)].reservations.append(
                    (rid, encode_reservation(r), score, keep, batch.transitions.get(rid, []), index)
                )
        for (destination, transfer_id), t in batch.transfers.items():
            # The index first: a record is never stored without it (both are idempotent).
            first[ks.transfer_partition(transfer_id)].indexes.append(
                (ks.transfer_index(transfer_id), destination)
            )
            middle[partition_of(destination)].transfers.append(
                (
                    ks.transfer(destination, transfer_id),
                    encode_transfer(t),
                    f"{destination}|{transfer_id}",
                    batch.xchanges.get((destination, transfer_id), []),
                )
            )
        for partition, status in batch.statuses:
            middle[partition].statuses.append(status)
        for name, (origin, value) in batch.shipments.items():
            middle[partition_of(origin)].shipments += (name, value)
        for name, origin in batch.shipped.items():
            last[partition_of(origin)].shipped.append(name)
        for source_id, seq in batch.sources.items():
            last[ks.source_partition(source_id)].sources.append((source_id, seq))
        for source_id, seq in batch.highs.items():
            last[ks.source_partition(source_id)].highs.append((source_id, seq))
        return [ph for ph in (first, middle, last) if ph], durable, new_locations, extra, flushed

    def _fail_window(self, window: asyncio.Future[None], exc: BaseException) -> None:
        """Fail a window whose flush failed; when it is still the current one (a chunk of a
        burst failed), later turns get a fresh window."""
        if window is self._window:
            self._window = asyncio.get_running_loop().create_future()
        _fail(window, exc)

    def _requeue(self, batch: _Batch) -> None:
        # Changes made since the failed flush are newer: keep them, add back the rest.
        for source_id, seq in batch.sources.items():
            if seq > self._sources.get(source_id, 0):
                self._sources[source_id] = seq
        for source_id, seq in batch.highs.items():
            if seq > self._highs.get(source_id, 0):
                self._highs[source_id] = seq
        for key, p in batch.positions.items():
            self._positions.setdefault(key, p)
        for records, target in ((batch.ending, self._ending), (batch.other, self._other)):
            for rid, r in records.items():
                if rid not in self._ending and rid not in self._other:
                    target[rid] = r
        for rid, changes in batch.transitions.items():  # before any made since
            self._transitions[rid] = changes + self._transitions.get(rid, [])
        for rid, earlier in batch.earlier.items():
            self._earlier[rid] = earlier + self._earlier.get(rid, [])
        for key, t in batch.transfers.items():
            self._transfers.setdefault(key, t)
        for key, changes in batch.xchanges.items():  # before any made since
            self._xchanges[key] = changes + self._xchanges.get(key, [])
        self._statuses = batch.statuses + self._statuses  # before any made since
        for name, shipment in batch.shipments.items():
            self._shipments.setdefault(name, shipment)
        for name, origin in batch.shipped.items():
            self._shipped.setdefault(name, origin)
        # What was written together is written together again.
        if batch.transfers or batch.shipments:
            for key in batch.positions:
                self._linked.setdefault(key, self._positions[key])


@dataclass(slots=True)
class _Batch:
    """The changes one flush writes."""

    positions: dict[StockKey, Position]
    ending: dict[str, Reservation]
    other: dict[str, Reservation] = field(default_factory=dict)
    sources: dict[str, int] = field(default_factory=dict)
    highs: dict[str, int] = field(default_factory=dict)
    transfers: dict[tuple[str, str], Transfer] = field(default_factory=dict)
    shipments: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    shipped: dict[str, str] = field(default_factory=dict)
    #: reservation_id -> its feed changes (written with its record)
    transitions: dict[str, list[bytes]] = field(default_factory=dict)
    #: reservation_id -> its earlier states whose index entries it may leave
    earlier: dict[str, list[Reservation]] = field(default_factory=dict)
    #: transfer key -> its feed changes (written with its record)
    xchanges: dict[tuple[str, str], list[bytes]] = field(default_factory=dict)
    #: (partition, status) of stores and network levels, oldest first
    statuses: list[tuple[int, StatusWrite]] = field(default_factory=list)

    def encodable(self) -> _Batch:
        """The changes that encode, each alone; the others are logged and dropped."""
        return _Batch(
            {k: p for k, p in self.positions.items() if _encodes(encode_position_with_level, p)},
            {r: v for r, v in self.ending.items() if _encodes(encode_reservation, v)},
            {r: v for r, v in self.other.items() if _encodes(encode_reservation, v)},
            self.sources,
            self.highs,
            {k: t for k, t in self.transfers.items() if _encodes(encode_transfer, t)},
            self.shipments,
            self.shipped,
            self.transitions,
            self.earlier,
            self.xchanges,
            self.statuses,
        )


def stage_position(
    ks: Keyspace, w: PartitionWrite, p: Position, value: bytes, level: bytes | None = None
) -> _Written | None:
    """Add a position's stored form to its partition's write, with what goes in the same
    script call: its spilled marks, its changed holds and its changes for the feed (level: a
    LEVEL change made by this write, after them; not kept in the position: a failed write's
    next attempt makes it again). Returns what else was staged (for Position.spilled_written,
    holds_written and the feed once durable), None when nothing."""
    key = p.key
    w.positions += (position_field(key), value)
    marks = holds = None
    fed = 0
    if p.feed:
        fed = len(p.feed)
        w.feed.append((len(w.positions) // 2, [*p.feed, level] if level else list(p.feed)))
    elif level:
        w.feed.append((len(w.positions) // 2, [level]))
    if p.spill:  # marks this position no longer keeps itself
        marks = dict(p.spill)
        for source_id, seq in marks.items():
            w.marks += (mark_field(key, source_id), seq)
    if p.hold_changes:
        holds = {rid: p.hold_state(rid) for rid in p.hold_changes}
        changes: list[bytes | str] = []
        for rid, (units, shipped) in holds.items():
            changes += (rid, hold_value(units, shipped))
        w.holds.append((len(w.positions) // 2, ks.holds(key), changes))
    if marks is None and holds is None and not fed:
        return None
    return p, marks, holds, fed


def _no_threshold(location_id: str) -> int:
    return 0


def _encodes(encode: Callable[[_T], object], value: _T) -> bool:
    try:
        encode(value)
    except Exception:
        log.error("dropping a change that cannot be stored: %r", value, exc_info=True)
        return False
    return True


def _fail(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
        future.exception()  # retrieved: a window nobody waits for must not log "never retrieved"


def _failed(exc: BaseException) -> asyncio.Future[None]:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    _fail(future, exc)
    return future
