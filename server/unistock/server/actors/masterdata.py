"""Master data in memory: loaded from SQL at start-up, changed through the admin API (SQL first,
then memory, then the stock positions it concerns), read by every turn that needs it.

Admin changes are serialised (one at a time), so SQL and memory change in the same order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from unistock.server.domain import InvalidArgument, StockKey, Unavailable
from unistock.server.domain.masterdata import Location, Network, Product
from unistock.server.persistence.sql import MasterDataStore, MasterSnapshot

log = logging.getLogger(__name__)
_T = TypeVar("_T")


class MasterData:
    """Locations, networks, products and position safety stock, served from memory."""

    def __init__(self, store: MasterDataStore) -> None:
        self.store = store
        self.locations: dict[str, Location] = {}
        self.networks: dict[str, Network] = {}
        self.products: dict[str, Product] = {}
        self.sku_of_gtin: dict[str, str] = {}
        #: model -> its SKUs (variants: sizes, colours)
        self._by_model: dict[str, set[str]] = {}
        #: Positions with their own safety stock (units); the others follow their location's.
        self.position_safety: dict[StockKey, int] = {}
        self._lock = asyncio.Lock()
        #: Grows with every change (readers cache what they derive from master data by it).
        self.revision = 0

    async def start(self) -> None:
        """Migrate the schema and load everything; raises Unavailable."""
        snapshot = await self._sql(self._migrate_and_load)
        self.locations = {loc.location_id: loc for loc in snapshot.locations}
        self.networks = {n.network_id: n for n in snapshot.networks}
        self.products = {p.sku: p for p in snapshot.products}
        self.sku_of_gtin = {p.gtin: p.sku for p in snapshot.products if p.gtin}
        for p in snapshot.products:
            if p.model:
                self._by_model.setdefault(p.model, set()).add(p.sku)
        self.position_safety = {(s, loc): u for s, loc, u in snapshot.safety_stock}
        log.info(
            "master data: %d locations, %d networks, %d products, %d position safety stocks",
            len(self.locations),
            len(self.networks),
            len(self.products),
            len(self.position_safety),
        )

    def _migrate_and_load(self) -> MasterSnapshot:
        self.store.migrate()
        return self.store.load()

    async def close(self) -> None:
        """Release the SQL connections."""
        await asyncio.to_thread(self.store.close)

    # -- reads ---------------------------------------------------------------------------------

    def skus_of_model(self, model: str) -> list[str]:
        """The SKUs of a model, sorted."""
        return sorted(self._by_model.get(model, ()))

    def store_of(self, location_id: str) -> str | None:
        """The store whose agent reports location_id (None: master data does not say)."""
        loc = self.locations.get(location_id)
        return loc.store_id if loc is not None and loc.store_id else None

    def safety_stock(self, key: StockKey) -> int:
        """The safety stock a position must have: its own, else its location's default."""
        own = self.position_safety.get(key)
        if own is not None:
            return own
        loc = self.locations.get(key[1])
        return 0 if loc is None else loc.default_safety_stock

    def low_stock_threshold(self, location_id: str) -> int:
        """A location's low-stock threshold in units (0 for a location master data lacks)."""
        loc = self.locations.get(location_id)
        return 0 if loc is None else loc.low_stock_threshold

    # -- writes (SQL first, then memory) -------------------------------------------------------

    async def upsert_locations(self, locations: Sequence[Location]) -> set[str]:
        """Store locations; returns the ids whose default safety stock changed."""
        async with self._change():
            await self._sql(self.store.upsert_locations, locations)
            changed = set()
            for loc in locations:
                before = self.locations.get(loc.location_id)
                before_default = 0 if before is None else before.default_safety_stock
                if before_default != loc.default_safety_stock:
                    changed.add(loc.location_id)
                self.locations[loc.location_id] = loc
            return changed

    async def upsert_networks(self, networks: Sequence[Network]) -> None:
        """Store networks; every member must be a known location (InvalidArgument)."""
        async with self._change():
            for i, n in enumerate(networks):
                for j, loc in enumerate(n.location_ids):
                    if loc not in self.locations:
                        raise InvalidArgument(
                            f"networks[{i}].location_ids[{j}]",
                            f"unknown location {loc!r} (upsert it with UpsertLocations first)",
                        )
            await self._sql(self.store.upsert_networks, networks)
            for n in networks:  # members are a set, listed sorted (as loaded from SQL)
                self.networks[n.network_id] = replace(n, location_ids=tuple(sorted(n.location_ids)))

    async def upsert_products(self, products: Sequence[Product]) -> None:
        """Store products; a GTIN names one SKU (InvalidArgument when another SKU has it and
        keeps it)."""
        async with self._change():
            moving = {p.sku for p in products}
            seen: dict[str, int] = {}
            for i, p in enumerate(products):
                if not p.gtin:
                    continue
                owner = self.sku_of_gtin.get(p.gtin)
                if p.gtin in seen or (owner is not None and owner != p.sku and owner not in moving):
                    other = products[seen[p.gtin]].sku if p.gtin in seen else owner
                    raise InvalidArgument(
                        f"products[{i}].gtin", f"GTIN {p.gtin} already belongs to SKU {other!r}"
                    )
                seen[p.gtin] = i
            await self._sql(self.store.upsert_products, products)
            for p in products:
                old = self.products.get(p.sku)
                if old is not None and old.gtin and self.sku_of_gtin.get(old.gtin) == p.sku:
                    del self.sku_of_gtin[old.gtin]
                if old is not None and old.model:
                    self._by_model.get(old.model, set()).discard(p.sku)
                if p.model:
                    self._by_model.setdefault(p.model, set()).add(p.sku)
                self.products[p.sku] = p
            for p in products:
                if p.gtin:
                    self.sku_of_gtin[p.gtin] = p.sku

    async def set_safety_stock(self, positions: Sequence[tuple[str, str, int | None]]) -> None:
        """(sku, location_id, units or None to clear) of positions."""
        async with self._change():
            await self._sql(self.store.set_safety_stock, positions)
            for sku, loc, units in positions:
                if units is None:
                    self.position_safety.pop((sku, loc), None)
                else:
                    self.position_safety[sku, loc] = units

    @contextlib.asynccontextmanager
    async def _change(self) -> AsyncIterator[None]:
        """One admin change at a time; the revision grows once it is in memory (also when it
        failed half way: readers recompute rather than keep a view it may have changed)."""
        async with self._lock:
            try:
                yield
            finally:
                self.revision += 1

    async def _sql(self, fn: Callable[..., _T], *args: object) -> _T:
        return await sql_in_thread("master data", fn, *args)


async def sql_in_thread(what: str, fn: Callable[..., _T], *args: object) -> _T:
    """fn(*args) in a thread (never blocking the event loop); a SQL failure is logged and
    raised as Unavailable naming `what` ("master data", "ledger") and the driver's error."""
    try:
        return await asyncio.to_thread(fn, *args)
    except SQLAlchemyError as exc:
        # One line, without the statement and its parameters (SQLAlchemy appends them:
        # kilobytes for a big upsert, too long for a gRPC status message).
        cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        first = (str(cause).strip().splitlines() or [""])[0]
        log.warning("%s: SQL failed: %s: %s", what, type(cause).__name__, first)
        raise Unavailable(f"{what} database: {type(cause).__name__}: {first}") from exc
