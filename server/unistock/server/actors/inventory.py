"""Inventory: the turns that transports call. Each turn waits until the positions and records it
needs are resident, then changes them in one synchronous step (the event loop serialises turns),
then waits for its changes to be durable before answering.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import cast

from unistock.server.actors.directory import Directory
from unistock.server.actors.loader import BatchLoader
from unistock.server.actors.reservations import ReservationBook
from unistock.server.actors.transfers import TransferBook, TransferKey
from unistock.server.domain import (
    MAX_SEQ_JUMP,
    InsufficientStock,
    InvalidArgument,
    Line,
    Move,
    Movement,
    MovementResult,
    MovementType,
    NetworkNotFound,
    Outcome,
    Position,
    Reservation,
    ReservationKind,
    ReservationNotFound,
    ReservationState,
    ReserveRequest,
    Shortfall,
    StockKey,
    Transfer,
    TransferNotFound,
    Unavailable,
    apply_movement,
    check_replay,
    choose_locations,
    fulfil,
    reserve,
)
from unistock.server.metrics import Metrics
from unistock.server.persistence.codec import (
    OUT,
    decode_shipment,
    encode_shipment,
    feed_change,
    level_change,
    shipment_field,
)
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.keys import parse_position_field
from unistock.server.persistence.rindex import ReservationIndex
from unistock.server.persistence.store import RedisStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PickupMismatch:
    """A SALE named a reservation that holds nothing of its SKU at its location (unknown,
    ended, picked up in another store, another size): applied as a plain sale, reported."""

    source_id: str
    seq: int
    reservation_id: str
    detail: str


@dataclass(slots=True)
class BatchResult:
    """What a batch of movements did, movement by movement."""

    #: One result per movement that was applied or found a duplicate (not the refused ones).
    results: list[MovementResult] = field(default_factory=list)
    #: Movements recognised as already applied.
    duplicates: int = 0
    #: Applied movements their sender should hear about (transports put them in the ack).
    notices: list[PickupMismatch] = field(default_factory=list)
    #: Movements refused by the inventory itself, with why (e.g. a seq jumping too far beyond
    #: its source's highest): final, like a validation rejection; never applied.
    refused: list[tuple[Movement, InvalidArgument]] = field(default_factory=list)

    @property
    def applied(self) -> int:
        """Movements applied for the first time (counts and corrections included)."""
        return len(self.results) - self.duplicates


class Inventory:
    """The authoritative stock positions and reservations of the partitions this process owns."""

    def __init__(
        self,
        store: RedisStore,
        commit: GroupCommit,
        metrics: Metrics,
        *,
        max_resident: int = 2_000_000,
        max_cached_reservations: int = 200_000,
        max_sources: int = 65_536,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.commit = commit
        self.metrics = metrics
        self.clock = clock
        self.positions = Directory(store, commit, metrics, max_resident=max_resident)
        self.reservations = ReservationBook(
            store, commit, metrics, max_cached=max_cached_reservations, clock=clock
        )
        self.positions.reconcile = self.reservations.reconcile
        self.transfers = TransferBook(store, commit, clock=clock)
        #: Reservations by customer, channel and location (ListReservations).
        self.reservation_index = ReservationIndex(store)
        #: Where the expiry warnings' scan of the expiry zsets resumes (ms; 0: from now).
        self._warn_from = 0
        #: The safety stock each position must have (see set_safety_source).
        self.safety_of: Callable[[StockKey], int] = _no_safety_stock
        #: (network, sku, units, kind) -> the network's locations that may serve a network line,
        #: best first (the sourcing rules); raises NetworkNotFound. None: no networks.
        self.sourcer: Callable[[str, str, int, ReservationKind], list[str]] | None = None
        #: TRANSFER_OUT batches whose shipments go to their transfer records once durable.
        self._shipping: asyncio.Queue[tuple[list[Movement], asyncio.Future[None]]] = asyncio.Queue()
        self._shipments_pending = 0
        #: "position went negative" lines: at most 10 per 10 s (a wrong feed can drive
        #: thousands of positions negative at once; the metric counts every one).
        self.negative_log = LogBudget(10, 10.0)
        #: Self-healing tasks in flight (kept referenced).
        self._healing: set[asyncio.Task[None]] = set()
        self.locations: set[str] = set()
        #: Highest seq applied from each source anywhere (bounds seq jumps), most recent last.
        self._highs: dict[str, int] = {}
        self.max_sources = max_sources
        self._highs_loader: BatchLoader[str] = BatchLoader(self._fetch_highs)
        self._marks_loader: BatchLoader[tuple[StockKey, str]] = BatchLoader(self._fetch_marks)

    async def start(self) -> None:
        """Load what must be known before serving (the set of locations)."""
        self.locations = await self.store.locations()

    async def close(self) -> None:
        """Stop loads and re-sourcing in progress."""
        for task in list(self._healing):
            task.cancel()
        await asyncio.gather(*self._healing, return_exceptions=True)
        await self.positions.close()
        await self.reservations.close()
        await self.transfers.close()
        await self._highs_loader.close()
        await self._marks_loader.close()

    async def _fetch_marks(self, wanted: list[tuple[StockKey, str]]) -> None:
        await self.store.load_marks(wanted)  # kept in the store's cache

    async def _ready(
        self,
        keys: Iterable[StockKey],
        ids: Iterable[str] = (),
        *,
        settled: bool = False,
        transfers: Iterable[TransferKey] = (),
    ) -> None:
        """Every position and record of the turn resident at once; the turn runs right after.

        settled: also wait until no record of ids has a change that is not durable yet (raises
        Unavailable when the write fails). A turn that transitions a reservation, or answers
        from its state, waits so: no answer reveals a state a crash could still undo, and a
        record changes at most once per flush (see persistence.group_commit).
        """
        keys, ids, xfers = list(keys), list(ids), list(transfers)
        dirty = self.commit.reservation_dirty

        def unknown() -> bool:
            return not (
                all(map(self.reservations.loaded, ids)) and all(map(self.transfers.loaded, xfers))
            )

        while True:
            missing = self.positions.missing(keys)
            if missing or unknown():
                with self.positions.pinned(keys):
                    while missing or unknown():
                        await asyncio.gather(
                            self.positions.activate(keys),
                            self.reservations.load(ids),
                            self.transfers.load(xfers),
                        )
                        missing = self.positions.missing(keys)
            if not settled or not (
                any(map(dirty, ids)) or any(map(self.commit.transfer_dirty, xfers))
            ):
                return
            await self.commit.barrier()

    async def _revealed(self, keys: Iterable[StockKey]) -> None:
        """Before an answer reveals positions' state: wait until it is durable, if it is not."""
        if any(map(self.commit.is_dirty, keys)):
            await self.commit.barrier()

    def _position(self, key: StockKey) -> Position:
        p = self.positions.get(key)
        assert p is not None, "turn ran before its position was resident"
        return p

    # -- movements -----------------------------------------------------------------------------

    async def apply_movements(self, movements: Sequence[Movement]) -> BatchResult:
        """Apply validated movements in order; returns once every effect is durable."""
        result, durable = await self.submit_movements(movements)
        await durable
        return result

    async def submit_movements(
        self, movements: Sequence[Movement]
    ) -> tuple[BatchResult, asyncio.Future[None]]:
        """Apply validated movements in order; the future resolves once every effect is durable.

        Callers that pipeline batches (a stream) submit the next batch while this one is being
        written; their acks follow the futures in order. Nothing in the result may be told to
        anyone before the future resolves.
        """
        rids = {m.reservation_id for m in movements if m.reservation_id}
        xfers = {(m.location_id, m.transfer_id) for m in movements if m.type is _IN}
        read = await self._load_highs({m.source_id for m in movements})
        await self._ready_marks(movements, rids, xfers)
        # Each source's highest seq as this turn starts: the batch's own reading stands in when
        # the bounded cache let the source go while the turn waited (it is never lower than
        # what was durable or pending then).
        highs = self._highs
        high_of = {s: max(highs.get(s, 0), seq) for s, seq in read.items()}
        before = dict(high_of)
        out = BatchResult()
        results = out.results
        outcomes: Counter[tuple[MovementType, Outcome]] = Counter()
        get = self.positions.get
        changed = self.commit.position_changed
        locations = self.locations
        shipments: list[Movement] = []
        at_risk: set[StockKey] = set()
        at_ms = int(self.clock() * 1000)
        for m in movements:
            high = high_of[m.source_id]
            if m.seq > high + MAX_SEQ_JUMP:
                out.refused.append((m, _seq_jump(m, high)))
                continue
            p = get(m.key)
            assert p is not None, "turn ran before its position was resident"
            record = self.reservations.get(m.reservation_id) if m.reservation_id else None
            was_at_risk, was_negative = p.at_risk, p.negative
            on_hand, non_sellable = p.on_hand, p.non_sellable
            r, picked, mismatch = apply_movement(p, m, record)
            results.append(r)
            outcomes[m.type, r.outcome] += 1
            if r.outcome is Outcome.DUPLICATE:
                out.duplicates += 1
                continue
            change = feed_change(
                at_ms,
                m,
                r,
                p.on_hand - on_hand,
                p.non_sellable - non_sellable,
                p.on_hand,
                p.non_sellable,
                p.available,
                p.version,
            )
            if p.feed is None:
                p.feed = [change]
            else:
                p.feed.append(change)  # (feed_add inlined: once per movement)
            if m.seq > high:
                high_of[m.source_id] = m.seq
            if m.location_id not in locations:
                locations.add(m.location_id)
            if picked is not None:
                self.reservations.put(picked)
            elif mismatch:
                out.notices.append(self._mismatch(m, mismatch))
            if r.at_risk and not was_at_risk:
                self.metrics.at_risk.inc()
                log.warning("reservations at risk (on_hand below reserved): %r", p)
                # Which reservations, in the feed with the position (RESERVATION_AT_RISK).
                p.feed_add(
                    level_change(
                        at_ms, p.version, OUT, OUT, p.on_hand, p.available, dict(p.holds or {})
                    )
                )
            if r.at_risk and self.sourcer is not None:
                at_risk.add(m.key)
            if p.negative and not was_negative:
                self.metrics.negative_positions.inc()
                allowed, held = self.negative_log.allow()
                if allowed:
                    log.warning(
                        "position went negative (on_hand %d, non_sellable %d) with %s seq %d "
                        "from %s: investigate %r%s",
                        p.on_hand,
                        p.non_sellable,
                        m.type.name,
                        m.seq,
                        m.source_id,
                        p,
                        f" ({held} more went negative since the last line, not logged: see "
                        "unistock_negative_positions_total)"
                        if held
                        else "",
                    )
            if m.type is MovementType.COUNT or r.outcome is Outcome.COUNT_CORRECTION:
                direction = "gain" if r.variance > 0 else "loss"
                self.metrics.count_variance.labels(direction).inc(abs(r.variance))
            if m.type is _OUT:
                # The units left (a count that saw them gone included): their shipment goes to
                # the outbox with this position, then to the transfer record at the destination.
                self.commit.shipment_recorded(p, shipment_field(m), encode_shipment(m))
                shipments.append(m)
            elif m.type is _IN:
                self._receive(p, m)
            changed(p)
        for source_id, seq in high_of.items():
            if seq > before[source_id]:
                highs[source_id] = seq
                self.commit.source_high(source_id, seq)
        for (mtype, outcome), n in outcomes.items():
            self.metrics.movements.labels(mtype.name, outcome.value).inc(n)
        # Duplicates too: the original may still be on its way to Redis.
        durable = self.commit.barrier()
        if at_risk:
            self._spawn_heal(at_risk, durable)
        if shipments:
            self._shipments_pending += len(shipments)
            self.metrics.shipments_pending.set(self._shipments_pending)
            self._shipping.put_nowait((shipments, durable))
        return out, durable

    async def _ready_marks(
        self, movements: Sequence[Movement], rids: set[str], xfers: set[TransferKey]
    ) -> None:
        """_ready for a batch, and the marks its sources spilled from its positions restored
        (a position keeps at most MAX_MARKS sources' marks itself; see Position.spill)."""
        keys = {m.key for m in movements}
        while True:
            await self._ready(keys, rids, settled=bool(rids), transfers=xfers)
            peek = self.positions.peek
            # Only positions that spilled marks can need one read back (rarely any): look at
            # the batch's movements only for those.
            spilled = {k: p for k in keys if (p := peek(k)) is not None and p.spill is not None}
            need: dict[tuple[StockKey, str], Position] = {}
            if spilled:
                for m in movements:
                    p = spilled.get(m.key)
                    if p is not None and p.needs_mark(m.source_id):
                        need[m.key, m.source_id] = p
            if not need:
                return
            known = self.store.cached_marks(list(need))
            if None in known:
                # Read in one pipeline with the other turns of this loop pass, which resume in
                # arrival order; then look again (what was read is in the store's cache).
                await self._marks_loader.wait(
                    [k for k, seq in zip(need, known, strict=True) if seq is None]
                )
                continue
            for ((_, source_id), p), seq in zip(need.items(), known, strict=True):
                assert seq is not None
                p.restore_mark(source_id, seq)  # no await since the cache was read: current
                self.commit.position_changed(p)  # the mark it let go is written

    async def _load_highs(self, sources: set[str]) -> dict[str, int]:
        """The highest seq applied from each source (cached, else read with the other turns of
        this loop pass, never below what is still being written), for a batch of them."""
        highs = self._highs
        while missing := [s for s in sources if s not in highs]:
            await self._highs_loader.wait(missing)
        return {s: highs[s] for s in sources}

    async def _fetch_highs(self, sources: list[str]) -> None:
        highs = self._highs
        stored = await self.store.load_source_highs(sources)
        pending = self.commit.pending_high
        for source_id, seq in zip(sources, stored, strict=True):
            highs[source_id] = max(seq, pending(source_id), highs.pop(source_id, 0))
        while len(highs) > max(self.max_sources, len(sources)):  # forget the oldest seen
            del highs[next(iter(highs))]

    # -- transfers -----------------------------------------------------------------------------

    def _receive(self, p: Position, m: Movement) -> None:
        """A TRANSFER_IN applied to p: received on its transfer record, in the same turn."""
        record = self.transfers.get_or_new((m.location_id, m.transfer_id))
        after, delta = record.receive(
            m.sku, m.quantity, m.counterpart_location_id, m.source_id, m.seq
        )
        if after is not record:
            p.transit(delta)
            self.transfers.put(after, p)
            self._discrepancies(record, after)

    def _discrepancies(self, before: Transfer, after: Transfer) -> None:
        for d in after.discrepancies[len(before.discrepancies) :]:
            self.metrics.transfer_discrepancies.labels(d.kind.name).inc()
            log.warning(
                "transfer %s to %s: %s, %d units of %s (%s seq %d)",
                after.transfer_id,
                after.destination,
                d.kind.name,
                d.quantity,
                d.sku,
                d.source_id or "close",
                d.seq,
            )

    async def _apply_shipments(self, shipments: list[Movement]) -> None:
        """Apply durable TRANSFER_OUT shipments to their transfer records and destinations'
        in_transit (each once: the record remembers it), then delete them from the outbox once
        the records are durable."""
        keys = {(m.sku, m.counterpart_location_id) for m in shipments}
        xfers = {(m.counterpart_location_id, m.transfer_id) for m in shipments}
        await self._ready(keys, transfers=xfers)
        for m in shipments:
            record = self.transfers.get_or_new((m.counterpart_location_id, m.transfer_id))
            after, delta = record.ship(m.sku, m.quantity, m.location_id, m.source_id, m.seq)
            if after is record:
                continue  # applied before a crash that left it in the outbox
            p = self._position((m.sku, m.counterpart_location_id))
            p.transit(delta)
            self.locations.add(m.counterpart_location_id)  # listed by SKU from now on
            if delta:
                self.transfers.put(after, p)
            else:
                self.transfers.put(after)
            self._discrepancies(record, after)
        await self._durably()
        for m in shipments:
            self.commit.shipment_applied(m.location_id, shipment_field(m))

    async def _durably(self) -> None:
        """Wait until every change made so far is durable, however many flushes fail first."""
        while True:
            try:
                await self.commit.barrier()
                return
            except Unavailable:
                await asyncio.sleep(0.2)

    async def run_shipments(self, retry: float = 1.0) -> None:
        """Apply the shipments a crash left in the outbox, then every TRANSFER_OUT's shipment
        once it is durable; until cancelled. Redis failing only delays them (retried every
        `retry` s; the outbox keeps them meanwhile, across restarts too)."""
        while True:
            try:
                pending = await self.store.pending_shipments()
                break
            except Unavailable as exc:
                self.metrics.redis_errors.labels("shipments").inc()
                log.warning("cannot read pending transfer shipments yet: %s", exc)
                await asyncio.sleep(retry)
        if pending:
            log.info("applying %d transfer shipments left by a crash", len(pending))
            await self._ship_retrying([decode_shipment(v) for _, v in pending], retry)
        while True:
            shipments, durable = await self._shipping.get()
            try:
                await durable
            except Unavailable:
                await self._durably()  # the failed write is retried with a later window
            await self._ship_retrying(shipments, retry)
            self._shipments_pending -= len(shipments)
            self.metrics.shipments_pending.set(self._shipments_pending)

    async def _ship_retrying(self, shipments: list[Movement], retry: float) -> None:
        """_apply_shipments until it does not fail with Unavailable (safe to repeat: a record
        applies a shipment once)."""
        while True:
            try:
                await self._apply_shipments(shipments)
                return
            except Unavailable as exc:
                self.metrics.redis_errors.labels("shipments").inc()
                log.warning("applying transfer shipments failed, will retry: %s", exc)
                await asyncio.sleep(retry)

    # -- safety stock --------------------------------------------------------------------------

    def set_safety_source(self, safety: Callable[[StockKey], int]) -> None:
        """Where positions take their safety stock from (master data)."""
        self.safety_of = safety
        self.positions.safety = safety

    async def apply_safety_stock(self, keys: Iterable[StockKey]) -> int:
        """Give positions the safety stock master data now says (safety_of), in chunks; returns
        once every change is durable; returns the positions changed."""
        keys = list(dict.fromkeys(keys))
        changed = 0
        for i in range(0, len(keys), SAFETY_CHUNK):
            chunk = keys[i : i + SAFETY_CHUNK]
            await self._ready(chunk)
            for key in chunk:
                p = self._position(key)
                want = self.safety_of(key)
                if p.safety_stock != want:
                    p.set_safety_stock(want)
                    self.commit.position_changed(p)
                    changed += 1
            await self.commit.barrier()
        return changed

    async def positions_at(self, location_ids: set[str]) -> list[StockKey]:
        """Every position at these locations: stored ones and resident ones not written yet."""
        found = {p.key for p in self.positions.resident() if p.location_id in location_ids}
        async for chunk in self.store.scan_levels(frozenset(), frozenset(location_ids), set()):
            found.update(parse_position_field(f.decode()) for f, _ in chunk)
        return sorted(found)

    async def get_transfer(self, transfer_id: str, location_id: str = "") -> list[Transfer]:
        """The durable records of a transfer (at location_id, or every destination that has
        one); raises TransferNotFound when there is none."""
        destinations = (
            [location_id] if location_id else await self.store.transfer_destinations(transfer_id)
        )
        keys = [(d, transfer_id) for d in destinations]
        await self._ready((), settled=True, transfers=keys)
        found = [t for k in keys if (t := self.transfers.get(k)) is not None]
        if not found:
            raise TransferNotFound(transfer_id, location_id)
        return found

    async def close_transfer(self, transfer_id: str, location_id: str) -> Transfer:
        """The destination closes a transfer: what is in transit is lost in transit. Returns
        the closed record once durable; raises TransferNotFound."""
        key = (location_id, transfer_id)
        while True:
            await self._ready((), settled=True, transfers=[key])
            record = self.transfers.get(key)
            if record is None:
                raise TransferNotFound(transfer_id, location_id)
            positions = [(ln.sku, location_id) for ln in record.lines]
            await self._ready(positions, settled=True, transfers=[key])
            if self.transfers.get(key) is record and not self.positions.missing(positions):
                break
        after, deltas = record.close()
        if after is record:
            return record
        changed = []
        for sku, delta in deltas.items():
            p = self._position((sku, location_id))
            p.transit(delta)
            changed.append(p)
            self.metrics.transfer_units_lost.inc(-delta)
        self.transfers.put(after, *changed)
        self._discrepancies(record, after)
        await self.commit.barrier()
        return after

    def _mismatch(self, m: Movement, why: str) -> PickupMismatch:
        self.metrics.pickup_mismatches.inc()
        log.warning("SALE %s seq %d: %s; applied as a plain sale", m.source_id, m.seq, why)
        return PickupMismatch(
            m.source_id, m.seq, m.reservation_id, why + "; applied as a plain sale"
        )

    # -- reads ---------------------------------------------------------------------------------

    async def levels(self, keys: Sequence[StockKey]) -> list[Position]:
        """The levels of keys (never-seen positions have version 0), as durable.

        A position with a change not yet durable is answered as it is now, once that change is
        durable (a snapshot is taken first: what is returned does not move meanwhile). Reads of
        quiet positions never wait. Reads do not refresh the LRU order (only turns that change
        a position do): moving an entry leaves a hole in the directory's dict until it is
        resized, and reads are many.
        """
        await self._ready(keys)
        found = cast(list[Position], list(map(self.positions.peek, keys)))
        assert None not in found, "read ran before its positions were resident"
        if any(map(self.commit.is_dirty, keys)):
            found = [p.snapshot() for p in found]
            await self.commit.barrier()
        return found

    async def levels_of_sku(self, sku: str) -> list[Position]:
        """Every position of sku that exists, one per location."""
        found = await self.levels([(sku, loc) for loc in sorted(self.locations)])
        return [p for p in found if p.version > 0]

    # -- reservations --------------------------------------------------------------------------

    async def reserve(self, request: ReserveRequest) -> tuple[Reservation, bool]:
        """Hold every line or none; returns (reservation, replayed). Idempotent on its id.

        Every answer waits until what it reveals is durable: the reservation made or found, a
        conflict with a reservation still being written, a shortfall computed from levels that
        are still being written (InsufficientStock).
        """
        rid = request.reservation_id
        kind = request.kind.name
        candidates = self._candidates(request)
        keys = [ln.key for ln in request.lines if not ln.network]
        keys += [(request.lines[i].sku, loc) for i, locs in candidates.items() for loc in locs]
        await self._ready(keys, [rid])
        existing = self.reservations.get(rid)
        if existing is not None:
            try:
                found = check_replay(existing, request)
            except Exception:
                self.metrics.reservations.labels("reserve", kind, "conflict").inc()
                await self._durable(rid)
                raise
            await self._durable(rid)
            self.metrics.reservations.labels("reserve", kind, "replayed").inc()
            return found, True
        positions = {key: self._position(key) for key in keys}
        try:
            chosen = choose_locations(request, positions, candidates) if candidates else None
            made = reserve(request, positions, self.clock(), chosen)
        except Exception:
            self.metrics.reservations.labels("reserve", kind, "insufficient").inc()
            await self._revealed(keys)
            raise
        for ln in made.lines:
            self.commit.position_changed(positions[ln.key])
        self.reservations.put(made, created=True)
        await self.commit.barrier()
        self.metrics.reservations.labels("reserve", kind, "held").inc()
        return made, False

    # -- self-healing ----------------------------------------------------------------------------

    def _spawn_heal(self, keys: set[StockKey], durable: asyncio.Future[None]) -> None:
        task = asyncio.get_running_loop().create_task(self._heal_after(keys, durable))
        self._healing.add(task)
        task.add_done_callback(self._healing.discard)

    async def _heal_after(self, keys: set[StockKey], durable: asyncio.Future[None]) -> None:
        try:
            await durable  # the sale is a fact first; then what it left at risk is re-sourced
            for key in sorted(keys):
                await self.heal(key)
        except Exception:  # a heal that cannot run now is retried by the next sale
            log.warning("re-sourcing of reservations at risk failed", exc_info=True)

    async def heal(self, key: StockKey) -> int:
        """Move the at-risk units of network lines held at a position (on_hand below reserved)
        to other locations of their network that can promise them (TransferReservation, moves
        recorded on the reservation); returns the units moved. Lines naming their location are
        never moved. What cannot be moved stays at risk and is counted and logged."""
        await self._ready([key])
        p = self._position(key)
        deficit = p.reserved - max(p.on_hand, 0)
        moved = 0
        for rid, _ in sorted(p.hold_items()):
            if deficit <= 0:
                break
            record = await self._record(rid, keys_of=False)
            if not record.active:
                continue
            line = next((ln for ln in record.lines if ln.key == key and ln.network), None)
            if line is None or self.sourcer is None:
                continue
            units = min(line.quantity, deficit)
            try:
                places = self.sourcer(line.network, key[0], units, record.kind)
            except NetworkNotFound:
                continue
            for loc in places:
                if loc == key[1]:
                    continue
                request_id = f"heal:{key[0]}@{key[1]}:{p.version}:{loc}"
                try:
                    await self.transfer_reservation(
                        rid, request_id, [Move(key[0], key[1], loc, units, keep_network=True)]
                    )
                except (InsufficientStock, InvalidArgument):
                    continue
                deficit -= units
                moved += units
                self.metrics.reservations_healed.inc(units)
                log.warning(
                    "reservation %s: %d of %s moved from %s (at risk) to %s in network %s",
                    rid, units, key[0], key[1], loc, line.network,
                )  # fmt: skip
                break
        if deficit > 0 and p.reserved - max(p.on_hand, 0) > 0:
            self.metrics.reservations_unhealed.inc()
            log.warning("position %r stays at risk: no location of the network can take it", p)
        return moved

    def _candidates(self, request: ReserveRequest) -> dict[int, list[str]]:
        """For each network line (by index), the locations that may serve it, best first."""
        out: dict[int, list[str]] = {}
        for i, ln in enumerate(request.lines):
            if ln.network:
                if self.sourcer is None:
                    raise NetworkNotFound(ln.network)
                out[i] = self.sourcer(ln.network, ln.sku, ln.quantity, request.kind)
        return out

    async def _durable(self, reservation_id: str) -> None:
        if self.commit.reservation_dirty(reservation_id):
            await self.commit.barrier()

    async def _record(self, reservation_id: str, keys_of: bool = True) -> Reservation:
        """The record, settled (no change of it still being written), with its positions
        resident when it is ACTIVE and keys_of; raises ReservationNotFound."""
        await self._ready((), [reservation_id], settled=True)
        record = self.reservations.get(reservation_id)
        if record is None:
            raise ReservationNotFound(reservation_id)
        if keys_of and record.active:
            await self._ready([ln.key for ln in record.lines], [reservation_id], settled=True)
            record = self.reservations.get(reservation_id)
            assert record is not None
        return record

    async def get_reservation(self, reservation_id: str) -> Reservation:
        """The current record (durable)."""
        return await self._record(reservation_id, keys_of=False)

    async def release(self, reservation_id: str) -> Reservation:
        """Cancel an ACTIVE reservation (a released one is returned as it is)."""
        return await self._end(reservation_id, "release", _freeing(lambda r: r.release()))

    async def fulfil(
        self, reservation_id: str, lines: Sequence[Line] = (), request_id: str = ""
    ) -> Reservation:
        """The units left physically: all held lines, or the given quantities.

        reserved and on_hand of each position fall together by the units shipped (available
        never rises when goods leave); units a SALE naming the reservation already picked up
        are matched and change nothing more. Idempotent on request_id (see
        Reservation.fulfil). Raises InvalidArgument, ReservationConflict, ReservationNotActive,
        ReservationNotFound, Unavailable.
        """
        return await self._end(
            reservation_id, "fulfil", lambda r, ps: fulfil(r, ps, lines, request_id)
        )

    async def transfer_reservation(
        self, reservation_id: str, request_id: str, moves: Sequence[Move]
    ) -> Reservation:
        """Move held units of an ACTIVE reservation between locations, every move or none;
        idempotent on request_id. Crash-safe like a reservation across positions: the new
        holds are written first (intents), then the record (the commit point), and the old
        holds are freed only once the record is durable; a crash in between leaves holds the
        record no longer backs, which reconcile_holds frees at activation, and a retry of the
        request finishes the freeing. Raises InvalidArgument, InsufficientStock (a destination
        cannot promise the units), ReservationConflict, ReservationNotActive,
        ReservationNotFound, Unavailable."""
        while True:
            record = await self._record(reservation_id)
            keys = {ln.key for ln in record.lines} | {(m.sku, m.destination) for m in moves}
            await self._ready(keys, [reservation_id], settled=True)
            if self.reservations.get(reservation_id) is record and not self.positions.missing(keys):
                break
        positions = {key: self._position(key) for key in keys}
        after = record.transfer(moves, request_id)
        if after is not record:
            gain: dict[StockKey, int] = {}
            for m in moves:
                key = (m.sku, m.destination)
                gain[key] = gain.get(key, 0) + m.quantity
            short = [
                Shortfall(k[0], k[1], q, positions[k].available)
                for k, q in gain.items()
                if not positions[k].fits(q)
            ]
            if short:
                self.metrics.reservations.labels("transfer", record.kind.name, "insufficient").inc()
                await self._revealed(gain)
                raise InsufficientStock(short)
            for key, q in gain.items():  # intents first: written before the record
                positions[key].hold(reservation_id, q)
                self.commit.position_changed(positions[key])
            self.reservations.put(after, created=True)  # the commit point, written last
            await self.commit.barrier()
        # Then (and on a retry) free what the record no longer holds.
        freed = False
        for key, p in positions.items():
            excess = p.held(reservation_id) - after.held(key)
            if excess > 0:
                p.release(reservation_id, excess)
                self.commit.position_changed(p)
                freed = True
        if freed:
            await self.commit.barrier()
        self.metrics.reservations.labels("transfer", record.kind.name, "ok").inc()
        return after

    async def extend(self, reservation_id: str, expires_at: float) -> Reservation:
        """Move an ACTIVE reservation's expiry."""
        return await self._end(
            reservation_id,
            "extend",
            lambda r, _: r.extend(expires_at, self.clock()),
            holds=False,
        )

    async def _end(
        self,
        reservation_id: str,
        operation: str,
        transition: Callable[[Reservation, dict[StockKey, Position]], Reservation],
        *,
        holds: bool = True,
    ) -> Reservation:
        """Run a transition on a settled record and the positions it holds, in one step, and
        answer once it is durable. A refusal is raised from a durable state too.

        holds: the transition changes the holds (else, e.g. an extension, the positions are
        neither loaded nor passed: an empty mapping).
        """
        while True:
            record = await self._record(reservation_id, keys_of=holds)
            if not holds or not record.active:
                break
            if not self.positions.missing(ln.key for ln in record.lines):
                break
        held = holds and record.active
        positions = {ln.key: self._position(ln.key) for ln in record.lines} if held else {}
        versions = [p.version for p in positions.values()]
        on_hand = [p.on_hand for p in positions.values()]
        kind = record.kind.name
        try:
            after = transition(record, positions)
        except Exception:
            self.metrics.reservations.labels(operation, kind, "refused").inc()
            raise
        if after is record:
            return record
        at_ms = int(self.clock() * 1000)
        for p, version, before in zip(positions.values(), versions, on_hand, strict=True):
            if p.version != version:
                if p.on_hand != before:  # shipped by a fulfilment: in the feed too
                    p.feed_add(
                        feed_change(
                            at_ms, None, None, p.on_hand - before, 0, p.on_hand,
                            p.non_sellable, p.available, p.version, reservation_id,
                        )
                    )  # fmt: skip
                self.commit.position_changed(p)
        self.reservations.put(after)
        await self.commit.barrier()
        self.metrics.reservations.labels(operation, kind, "ok").inc()
        return after

    async def expire_due(self, limit: int = 1000) -> int:
        """Expire the reservations whose hold ran out (also those due while the server was
        down), up to `limit` per partition per call.

        They are expired together: their records are read in one pipeline, their turns run in
        one loop pass and share one group-commit window, so a position held by thousands of
        carts that run out at once is written once per window, not once per cart. Raises
        Unavailable (after the others were tried) when Redis failed for some.
        """
        now = self.clock()
        due = await self.store.due_reservations(now, limit)
        done = await asyncio.gather(
            *(self._expire_one(rid, now) for rid in due), return_exceptions=True
        )
        expired = sum(1 for d in done if d is True)
        if expired:
            self.metrics.reservations_expired.inc(expired)
        for failure in done:
            if isinstance(failure, BaseException):
                raise failure
        return expired

    async def _expire_one(self, reservation_id: str, now: float) -> bool:
        try:
            record = await self._record(reservation_id)
        except ReservationNotFound:
            return False
        if record.expire(now) is None:
            return False
        after = await self._end(reservation_id, "expire", _freeing(lambda r: r.expire(now) or r))
        return after.state is ReservationState.EXPIRED

    async def warn_expiring(self, within: float, limit: int = 1000) -> int:
        """Warn the ACTIVE reservations expiring in the next `within` seconds that were not
        warned for their current expiry yet (each one a turn through the actor path: its record
        gets warned_expires_at = expires_at and transition EXPIRING_SOON, written with its feed
        change, so a warning is given once per expiry, across restarts). Returns how many.

        Bounded: reads at most `limit` ids per partition per call, resuming after the expiries
        it already went through (a cursor in memory, lowered when a record with an unwarned
        expiry is stored; a restart scans the window again, and the records say what was
        warned). Raises Unavailable (the cursor stays, the next call retries).
        """
        low = self.reservations.take_unwarned()
        if low != float("inf"):
            self._warn_from = min(self._warn_from, round(low * 1000))
            await self.commit.barrier()  # its record is in the zset before the scan
        now = self.clock()
        since = max(self._warn_from, int(now * 1000) + 1)  # expired ones are not warned
        until = int((now + within) * 1000)
        if until < since:
            return 0
        found = await self.store.expiring_reservations(since, until, limit)
        done = await asyncio.gather(
            *(self._warn_one(rid, within) for ids in found for rid, _ in ids),
            return_exceptions=True,
        )
        for failure in done:
            if isinstance(failure, BaseException):
                raise failure
        resume = until + 1
        for ids in found:
            if len(ids) >= limit:  # that partition was read up to its last expiry only
                last = ids[-1][1]
                # (more than `limit` ids with the expiry `since`: skipped, not re-read forever)
                resume = min(resume, last if last > since else last + 1)
        self._warn_from = max(self._warn_from, resume)
        return sum(1 for d in done if d is True)

    async def _warn_one(self, reservation_id: str, within: float) -> bool:
        try:
            record = await self._record(reservation_id, keys_of=False)
        except ReservationNotFound:
            return False
        if record.warn(self.clock(), within) is None:
            return False
        after = await self._end(
            reservation_id,
            "expiring_soon",
            lambda r, _: r.warn(self.clock(), within) or r,
            holds=False,
        )
        return after.warned_expires_at != record.warned_expires_at

    async def run_expiry(self, interval: float = 1.0, expiring_soon: float = 0.0) -> None:
        """Expire due reservations every interval seconds, warn those expiring within
        `expiring_soon` seconds (0: none; see warn_expiring), and remove the index entries of
        ended records whose retention ran out, until cancelled."""
        while True:
            try:
                await self.expire_due()
            except Unavailable as exc:
                self.metrics.redis_errors.labels("expiry").inc()
                log.warning("reservation expiry sweep failed: %s", exc)
            if expiring_soon > 0:
                try:
                    await self.warn_expiring(expiring_soon)
                except Unavailable as exc:
                    self.metrics.redis_errors.labels("expiry_warning").inc()
                    log.warning("reservation expiry warnings failed: %s", exc)
            try:
                swept = await self.reservation_index.sweep(round(time.time() * 1000))
                if swept:
                    self.metrics.reservation_index_swept.inc(swept)
            except Unavailable as exc:
                self.metrics.redis_errors.labels("index_sweep").inc()
                log.warning("reservation index sweep failed: %s", exc)
            await asyncio.sleep(interval)

    async def run_index_backfill(self, retry: float = 5.0) -> None:
        """Index the reservation records stored before the indexes existed (once per
        partition; retried while Redis fails), then return."""
        while True:
            try:
                n = await self.reservation_index.backfill()
            except Unavailable as exc:
                self.metrics.redis_errors.labels("index_backfill").inc()
                log.warning("reservation index backfill failed, will retry: %s", exc)
                await asyncio.sleep(retry)
                continue
            if n:
                self.metrics.reservation_index_backfilled.inc(n)
                log.info("reservation index: %d records stored before it indexed", n)
            return

    async def run_idle_passivation(self, idle: float) -> None:
        """Passivate positions unused for about idle seconds, until cancelled."""
        while True:
            await asyncio.sleep(idle)
            n = self.positions.passivate_idle()
            if n:
                log.info("passivated %d idle positions", n)


def _freeing(
    step: Callable[[Reservation], Reservation],
) -> Callable[[Reservation, dict[StockKey, Position]], Reservation]:
    """A transition that ends a reservation (release, expiry) and frees what it held."""

    def run(record: Reservation, positions: dict[StockKey, Position]) -> Reservation:
        after = step(record)
        if record.active and not after.active:
            for ln in record.lines:
                positions[ln.key].release(record.reservation_id, ln.quantity)
        return after

    return run


_OUT, _IN = MovementType.TRANSFER_OUT, MovementType.TRANSFER_IN
#: Positions given a new safety stock per turn (a location's default changing touches them all).
SAFETY_CHUNK = 1000


def _no_safety_stock(key: StockKey) -> int:
    return 0


def _seq_jump(m: Movement, high: int) -> InvalidArgument:
    return InvalidArgument(
        "seq",
        f"{m.seq} lies more than {MAX_SEQ_JUMP:,} beyond {high}, the highest seq applied from "
        f"source {m.source_id!r}; seqs start at 1 and grow by one per movement",
    )


class LogBudget:
    """At most `lines` log lines per `window` seconds; counts the ones held back, to say so in
    the next line allowed."""

    def __init__(
        self, lines: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.lines = lines
        self.window = window
        self._clock = clock
        self._start = -window
        self._used = 0
        self._held = 0

    def allow(self) -> tuple[bool, int]:
        """(whether to log now, how many were held back since the last line logged)."""
        now = self._clock()
        if now - self._start >= self.window:
            self._start, self._used = now, 0
        if self._used >= self.lines:
            self._held += 1
            return False, 0
        self._used += 1
        held, self._held = self._held, 0
        return True, held
