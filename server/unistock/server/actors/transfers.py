"""The transfer book: transfer records loaded from Redis on demand, cached, written by group
commit together with the destination positions they change (see domain.transfer)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from unistock.server.actors.loader import BatchLoader
from unistock.server.domain import Position, Transfer, new_transfer
from unistock.server.persistence.codec import decode_transfer, transfer_change
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.store import RedisStore

#: (destination location, transfer_id): a record's identity.
TransferKey = tuple[str, str]


class TransferBook:
    """Transfer records by (destination, transfer_id); None marks a record known not to exist."""

    def __init__(
        self,
        store: RedisStore,
        commit: GroupCommit,
        *,
        max_cached: int = 50_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = store
        self._commit = commit
        self._clock = clock
        self.max_cached = max_cached
        self._cache: dict[TransferKey, Transfer | None] = {}
        self._loader: BatchLoader[TransferKey] = BatchLoader(self._fetch)

    def loaded(self, key: TransferKey) -> bool:
        """Whether the record (or its absence) is known."""
        return key in self._cache

    def get(self, key: TransferKey) -> Transfer | None:
        """The cached record; call only once loaded()."""
        return self._cache[key]

    def get_or_new(self, key: TransferKey) -> Transfer:
        """The cached record, or a new empty one (not stored until put); once loaded()."""
        found = self._cache[key]
        return new_transfer(key[1], key[0]) if found is None else found

    def put(self, transfer: Transfer, *positions: Position) -> None:
        """Store a new state of a record, atomically with the destination positions it changed
        and, when it recorded discrepancies, with its change for the feed (durable after the
        group commit's barrier)."""
        before = self._cache.get(transfer.key)
        known = len(before.discrepancies) if before is not None else 0
        found = transfer.discrepancies[known:]  # discrepancies are only ever appended
        self._cache[transfer.key] = transfer
        change = None
        if found:
            change = transfer_change(int(self._clock() * 1000), found, transfer)
        self._commit.transfer_changed(transfer, *positions, change=change)

    async def load(self, keys: Iterable[TransferKey]) -> None:
        """Make keys known (loading them from Redis); raises Unavailable. The caller must use
        them without awaiting anything else."""
        keys = list(keys)
        while missing := [k for k in keys if k not in self._cache]:
            await self._loader.wait(missing)

    async def _fetch(self, keys: list[TransferKey]) -> None:
        keys = [k for k in keys if k not in self._cache]
        if not keys:
            return
        for key, data in zip(keys, await self._store.load_transfers(keys), strict=True):
            self._cache.setdefault(key, None if data is None else decode_transfer(data))
        excess = len(self._cache) - self.max_cached
        if excess > 0:
            victims = [k for k in self._cache if not self._commit.transfer_dirty(k)][:excess]
            for k in victims:
                del self._cache[k]

    async def close(self) -> None:
        """Stop loads in progress."""
        await self._loader.close()
