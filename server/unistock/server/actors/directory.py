"""The directory of resident positions: lazy activation, LRU and idle passivation.

A position is activated on first use: the turns that need it wait (in arrival order) while it
is loaded; every position asked for during one loop pass is loaded in one pipeline. A clean
position is passivated when the resident count exceeds the cap (least recently changed first;
reads do not reorder) or when idle; a position with changes not yet durable never is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Iterable, Iterator

from unistock.server.actors.loader import BatchLoader
from unistock.server.domain import Position, StockKey
from unistock.server.metrics import Metrics
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.store import RedisStore

log = logging.getLogger(__name__)

_SENTINEL_KEY: StockKey = ("", "")  # no valid sku is empty: never a real position


class Directory:
    """Resident positions by key, in least-recently-used order."""

    def __init__(
        self,
        store: RedisStore,
        commit: GroupCommit,
        metrics: Metrics,
        *,
        max_resident: int = 2_000_000,
    ) -> None:
        self._store = store
        self._commit = commit
        self._metrics = metrics
        self.max_resident = max_resident
        self._resident: dict[StockKey, Position] = {}
        self._loader: BatchLoader[StockKey] = BatchLoader(self._fetch)
        self._pinned: dict[StockKey, int] = {}
        self._sentinel = Position(_SENTINEL_KEY)
        self._has_sentinel = False
        #: Called with newly activated positions that hold units, before they become visible;
        #: it checks their holds against reservation records (see ReservationBook).
        self.reconcile: Callable[[list[Position]], asyncio.Future[None]] | None = None
        #: The safety stock each position must have (master data). A loaded position that has
        #: another (its location's default changed while it was not resident, or a crash came
        #: between the master-data write and the position's) is corrected as it is activated.
        self.safety: Callable[[StockKey], int] | None = None
        #: Positions loaded into memory and dropped from it since the start (for status).
        self.activated = 0
        self.passivated = 0

    def __len__(self) -> int:
        return len(self._resident) - self._has_sentinel

    def get(self, key: StockKey) -> Position | None:
        """The resident position, marked as just used; None when not resident."""
        p = self._resident.pop(key, None)
        if p is not None:
            self._resident[key] = p
        return p

    def peek(self, key: StockKey) -> Position | None:
        """The resident position without marking it used."""
        return self._resident.get(key)

    def missing(self, keys: Iterable[StockKey]) -> list[StockKey]:
        """The keys that are not resident."""
        return [k for k in keys if k not in self._resident]

    @contextlib.contextmanager
    def pinned(self, keys: list[StockKey]) -> Iterator[None]:
        """Keep keys from passivation by the cap while a turn waits for its other positions
        (or records) to load; without it a turn needing many positions could be undone
        forever. The caller's synchronous turn must follow without awaiting anything else."""
        pins = self._pinned
        for k in keys:
            pins[k] = pins.get(k, 0) + 1
        try:
            yield
        finally:
            for k in keys:
                n = pins[k] - 1
                if n:
                    pins[k] = n
                else:
                    del pins[k]

    async def activate(self, keys: Iterable[StockKey]) -> None:
        """Make keys resident together (loading them from Redis); raises Unavailable."""
        keys = list(keys)
        missing = self.missing(keys)
        if not missing:
            return
        with self.pinned(keys):
            while missing:
                await self._loader.wait(missing)
                missing = self.missing(keys)

    async def _fetch(self, keys: list[StockKey]) -> None:
        keys = self.missing(keys)
        if not keys:
            return
        # A SKU is held at many locations and a location holds many SKUs: share the strings
        # (~60 B per position at a million positions).
        keys = [(sys.intern(k[0]), sys.intern(k[1])) for k in keys]
        loaded = [
            Position(key) if p is None else p
            for key, p in zip(keys, await self._store.read_positions(keys), strict=True)
            if key not in self._resident  # activated by another batch meanwhile: keep that one
        ]
        corrected = self._correct_safety(loaded)
        with_holds = [p for p in loaded if p.holds]
        if with_holds and self.reconcile is not None:
            await self.reconcile(with_holds)
        for p in loaded:
            if self._resident.setdefault(p.key, p) is p and p in corrected:
                self._commit.position_changed(p)
        self.activated += len(loaded)
        self._metrics.activations.inc(len(loaded))
        self.enforce_cap()
        self._metrics.resident_actors.set(len(self))

    def _correct_safety(self, loaded: list[Position]) -> set[Position]:
        """Give loaded positions the safety stock master data says; returns the stored ones
        that changed (a never-stored position just starts with it)."""
        safety = self.safety
        changed: set[Position] = set()
        if safety is None:
            return changed
        for p in loaded:
            want = safety(p.key)
            if p.safety_stock != want:
                if p.version == 0:
                    p.safety_stock = want
                else:
                    p.set_safety_stock(want)
                    changed.add(p)
        return changed

    def enforce_cap(self) -> int:
        """Passivate clean, unpinned positions, least recently used first, down to the cap.

        The cap is soft: positions with unwritten changes, or pinned by a turn waiting for its
        other positions, stay.
        """
        excess = len(self) - self.max_resident
        if excess <= 0:
            return 0
        victims = []
        for key in self._resident:
            if key == _SENTINEL_KEY or key in self._pinned or self._commit.is_dirty(key):
                continue
            victims.append(key)
            if len(victims) >= excess:
                break
        return self._drop(victims)

    def passivate_idle(self) -> int:
        """Passivate clean positions unused since the previous call; call it every idle period.

        A sentinel entry marks the most recent end of the LRU order at each call: everything
        still in front of it at the next call was not used in between.
        """
        victims: list[StockKey] = []
        if self._has_sentinel:
            for key in self._resident:
                if key == _SENTINEL_KEY:
                    break
                if key not in self._pinned and not self._commit.is_dirty(key):
                    victims.append(key)
            del self._resident[_SENTINEL_KEY]
        self._resident[_SENTINEL_KEY] = self._sentinel
        self._has_sentinel = True
        return self._drop(victims)

    def _drop(self, keys: list[StockKey]) -> int:
        for key in keys:
            del self._resident[key]
        if keys:
            self.passivated += len(keys)
            self._metrics.passivations.inc(len(keys))
            self._metrics.resident_actors.set(len(self))
        return len(keys)

    def resident(self) -> list[Position]:
        """Every resident position (a copy, for reports)."""
        return [p for k, p in self._resident.items() if k != _SENTINEL_KEY]

    async def close(self) -> None:
        """Stop loads in progress."""
        await self._loader.close()
