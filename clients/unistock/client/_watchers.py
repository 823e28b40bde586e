"""Watches that reconnect by themselves and resume where they were: no gap, no duplicate.

* :class:`Watcher`: WatchAvailability, resumed with the version it has of each position.
* :class:`NetworkWatcher`: WatchNetworkAvailability, resumed with its (sku, network) versions.
* :class:`EventWatcher`: WatchEvents, resumed after the last event it yielded.
* :class:`ReservationWatcher`: WatchReservations. It has no resume point on the wire (a new
  stream starts with a new snapshot), so the watcher compares that snapshot with what it has
  yielded: what changed while it was away arrives once, at its latest state (coalesced, as a
  position's levels are), and nothing unchanged is repeated.

Each reconnects after UNAVAILABLE (server stopped or restarting), DEADLINE_EXCEEDED and
RESOURCE_EXHAUSTED (this reader fell too far behind and was cut), waiting ``retry_delay``
seconds, doubled after each failed attempt up to ``max_retry_delay`` and back to
``retry_delay`` once a stream delivers. Any other error is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

import grpc

from unistock.client._errors import UnistockClientError
from unistock.v1 import inventory_pb2 as pb

if TYPE_CHECKING:
    from unistock.client._client import UnistockClient

__all__ = ["EventWatcher", "NetworkWatcher", "ReservationWatcher", "Watcher"]

#: Errors after which a watcher opens its stream again.
RECONNECT = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)

OnRetry = Callable[[UnistockClientError, float], None]
"""Called before each reconnect wait with the error and the seconds it waits."""


class _Backoff:
    """The reconnect pause: doubles per failure up to a bound, reset by a delivering stream."""

    def __init__(self, first: float, most: float | None, on_retry: OnRetry | None) -> None:
        self.first = first
        self.most = first if most is None else most
        self.on_retry = on_retry
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    async def wait(self, exc: UnistockClientError) -> None:
        if self.on_retry is not None:
            self.on_retry(exc, self.delay)
        await asyncio.sleep(self.delay)
        self.delay = min(self.delay * 2, self.most)


class _Versioned(Protocol):
    @property
    def version(self) -> int: ...


_L = TypeVar("_L", bound=_Versioned)
_K = TypeVar("_K", bound=Hashable)


class _VersionWatcher(Generic[_K, _L]):
    """Keeps the latest level per key and yields only levels newer than it, across reconnects
    (so each key's versions come once each, in increasing order)."""

    def __init__(self, retry_delay: float, max_retry_delay: float | None, on_retry: OnRetry | None):
        self._backoff = _Backoff(retry_delay, max_retry_delay, on_retry)
        self.levels: dict[_K, _L] = {}

    def _open(self, known: dict[_K, int]) -> AsyncIterator[Sequence[_L]]:
        raise NotImplementedError

    @staticmethod
    def _key(level: _L) -> _K:
        raise NotImplementedError

    async def __aiter__(self) -> AsyncIterator[_L]:
        """Every new level, for ever."""
        while True:
            known = {k: lvl.version for k, lvl in self.levels.items()}
            try:
                async for levels in self._open(known):
                    self._backoff.reset()
                    for lvl in levels:
                        key = self._key(lvl)
                        have = self.levels.get(key)
                        if have is None or lvl.version > have.version:
                            self.levels[key] = lvl
                            yield lvl
            except UnistockClientError as exc:
                if exc.code not in RECONNECT:
                    raise
                await self._backoff.wait(exc)
            else:  # the server ended the stream (it should not): open it again
                await asyncio.sleep(self._backoff.delay)


class Watcher(_VersionWatcher[tuple[str, str], pb.StockLevel]):
    """Levels of positions (skus and/or location_ids; empty: all), each new version once, in
    increasing version order per position, across reconnects: it resumes with the versions it
    has, so the server sends only what changed meanwhile. ``levels`` maps (sku, location_id)
    to the latest level. A position changed several times while the watcher was away arrives
    once, at its latest version (the contract's watch semantics)."""

    def __init__(
        self,
        client: UnistockClient,
        skus: Sequence[str] = (),
        location_ids: Sequence[str] = (),
        *,
        retry_delay: float = 0.5,
        max_retry_delay: float | None = 5.0,
        on_retry: OnRetry | None = None,
    ) -> None:
        super().__init__(retry_delay, max_retry_delay, on_retry)
        self.client = client
        self.skus = skus
        self.location_ids = location_ids

    async def _open(
        self, known: dict[tuple[str, str], int]
    ) -> AsyncIterator[Sequence[pb.StockLevel]]:
        async for msg in self.client.watch(self.skus, self.location_ids, known):
            yield msg.levels

    @staticmethod
    def _key(level: pb.StockLevel) -> tuple[str, str]:
        return (level.sku, level.location_id)


class NetworkWatcher(_VersionWatcher[tuple[str, str], pb.NetworkLevel]):
    """Network levels of networks (and skus; empty: every SKU of them), each new version once,
    in increasing version order per (sku, network), across reconnects (resumed with the
    versions it has). ``levels`` maps (sku, network) to the latest level."""

    def __init__(
        self,
        client: UnistockClient,
        networks: Sequence[str],
        skus: Sequence[str] = (),
        *,
        retry_delay: float = 0.5,
        max_retry_delay: float | None = 5.0,
        on_retry: OnRetry | None = None,
    ) -> None:
        super().__init__(retry_delay, max_retry_delay, on_retry)
        self.client = client
        self.networks = networks
        self.skus = skus

    async def _open(
        self, known: dict[tuple[str, str], int]
    ) -> AsyncIterator[Sequence[pb.NetworkLevel]]:
        async for msg in self.client.watch_networks(self.networks, self.skus, known):
            yield msg.levels

    @staticmethod
    def _key(level: pb.NetworkLevel) -> tuple[str, str]:
        return (level.sku, level.network)


class EventWatcher:
    """Events matching a filter, one by one, forever: after a disconnect (the server stopped,
    or this reader fell behind) it resumes after the last event it yielded, so none is missed
    or repeated. `last_event_id` is where it is: keep it to resume in another process.

    It waits `retry_delay` s before reconnecting, doubling after each failed attempt up to
    `max_retry_delay` (default: retry_delay, a fixed delay). on_start is called once, with the
    first stream's start point (its start_after_event_id), and on_retry before each wait
    (the error, the seconds it waits). With retry_before_start False, a server that cannot
    be reached before the first stream started raises at once (as any error other than
    UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED always does)."""

    def __init__(
        self,
        client: UnistockClient,
        *,
        types: Sequence[str | int] = (),
        skus: Sequence[str] = (),
        location_ids: Sequence[str] = (),
        networks: Sequence[str] = (),
        after_event_id: str = "",
        retry_delay: float = 0.5,
        max_retry_delay: float | None = None,
        on_start: Callable[[str], None] | None = None,
        on_retry: OnRetry | None = None,
        retry_before_start: bool = True,
    ) -> None:
        self.client = client
        self.types, self.skus, self.location_ids, self.networks = (
            types,
            skus,
            location_ids,
            networks,
        )
        self.last_event_id = after_event_id
        self.retry_delay = retry_delay
        self.max_retry_delay = retry_delay if max_retry_delay is None else max_retry_delay
        self.on_start, self.on_retry = on_start, on_retry
        self.retry_before_start = retry_before_start
        #: Whether a stream has started (its start point came).
        self.started = False

    async def __aiter__(self) -> AsyncIterator[pb.InventoryEvent]:
        """Yields every event, reconnecting as the module docstring says."""
        backoff = _Backoff(self.retry_delay, self.max_retry_delay, self.on_retry)
        while True:
            try:
                async for msg in self.client.watch_events(
                    self.types, self.skus, self.location_ids, self.networks, self.last_event_id
                ):
                    if msg.start_after_event_id:
                        self.last_event_id = msg.start_after_event_id
                        if not self.started and self.on_start is not None:
                            self.on_start(msg.start_after_event_id)
                        self.started = True
                        backoff.reset()
                    for ev in msg.events:
                        self.last_event_id = ev.event_id
                        yield ev
            except UnistockClientError as exc:
                if exc.code not in RECONNECT or not (self.started or self.retry_before_start):
                    raise
                await backoff.wait(exc)
            else:
                await asyncio.sleep(backoff.delay)


class ReservationWatcher:
    """Reservations matching a filter (as ``UnistockClient.watch_reservations``), as
    ``ReservationUpdate``s: first one per matching reservation (the snapshot: ``at_ms`` 0, no
    transitions), then every change with its transitions, for ever, across reconnects.

    After a reconnect the server sends a new snapshot. The watcher yields, from it, only the
    reservations that are new or differ from the last state it yielded (a catch-up update:
    ``at_ms`` 0, no transitions: what happened meanwhile is coalesced into the latest state),
    and, for each one it had that is no longer in the snapshot (it left the filter, e.g. an
    ACTIVE-only watch and a reservation fulfilled meanwhile), its current state from
    GetReservation (one the server no longer keeps, past its retention, is dropped). So no
    reservation's latest state is missed and none is repeated.
    ``reservations`` maps reservation_id to the latest Reservation yielded.

    Reconnects and pauses as the other watchers (``retry_delay``, ``max_retry_delay``,
    ``on_retry``); any error other than UNAVAILABLE, DEADLINE_EXCEEDED and RESOURCE_EXHAUSTED
    is raised."""

    def __init__(
        self,
        client: UnistockClient,
        *,
        customer_id: str = "",
        channel: str = "",
        location_id: str = "",
        states: Sequence[str | int] = (),
        retry_delay: float = 0.5,
        max_retry_delay: float | None = 5.0,
        on_retry: OnRetry | None = None,
    ) -> None:
        self.client = client
        self.filter = {
            "customer_id": customer_id,
            "channel": channel,
            "location_id": location_id,
            "states": states,
        }
        self._backoff = _Backoff(retry_delay, max_retry_delay, on_retry)
        self.reservations: dict[str, pb.Reservation] = {}

    def _fresh(self, update: pb.ReservationUpdate) -> bool:
        """Whether update says something not yielded yet (and remember it)."""
        r = update.reservation
        if self.reservations.get(r.reservation_id) == r:
            return False
        self.reservations[r.reservation_id] = r
        return True

    async def __aiter__(self) -> AsyncIterator[pb.ReservationUpdate]:
        """Every new state, for ever."""
        while True:
            seen: set[str] = set()
            try:
                async for msg in self.client.watch_reservations(**self.filter):  # type: ignore[arg-type]
                    self._backoff.reset()
                    for update in msg.updates:
                        seen.add(update.reservation.reservation_id)
                        if self._fresh(update):
                            yield update
                    if msg.snapshot_complete:  # what left the filter while we were away
                        for rid in [r for r in self.reservations if r not in seen]:
                            try:
                                now = await self.client.get_reservation(rid)
                            except UnistockClientError as exc:
                                if exc.code != grpc.StatusCode.NOT_FOUND:
                                    raise
                                del self.reservations[rid]  # gone past its retention
                                continue
                            catch_up = pb.ReservationUpdate(reservation=now)
                            if self._fresh(catch_up):
                                yield catch_up
            except UnistockClientError as exc:
                if exc.code not in RECONNECT:
                    raise
                await self._backoff.wait(exc)
            else:  # the server ended the stream (it should not): open it again
                await asyncio.sleep(self._backoff.delay)
