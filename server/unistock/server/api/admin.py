"""The gRPC AdminService: master data (locations, networks, products, safety stock), role admin.

Every upsert validates every row first (INVALID_ARGUMENT naming e.g. `locations[3].latitude`,
nothing written), then writes SQL in one transaction, then memory, then the stock positions the
change concerns (a safety stock shows in levels and available when the call returns).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import grpc

from unistock.server.actors import Inventory
from unistock.server.actors.masterdata import MasterData
from unistock.server.actors.networks import NetworkIndex
from unistock.server.api.service import Context, generic_handler, rpc
from unistock.server.api.status import ServerStatusReport
from unistock.server.domain import (
    InvalidArgument,
    StockKey,
    Unavailable,
    UnistockError,
    check_id,
)
from unistock.server.domain.masterdata import (
    Location,
    LocationType,
    Network,
    Product,
    StalePolicy,
    check_units,
)
from unistock.server.metrics import Metrics
from unistock.v1 import admin_pb2 as apb

log = logging.getLogger(__name__)

SERVICE = "unistock.v1.AdminService"
_T = TypeVar("_T")
#: Rows per upsert call.
MAX_ROWS = 10_000
_TYPES = {t.value: t for t in LocationType}
#: Seconds: 3 of the edge agents' status intervals (an idle agent's only sign of life).
MIN_SENSIBLE_STALENESS = 30
_STALE_POLICIES = {0: StalePolicy.EXCLUDE} | {p.value: p for p in StalePolicy}


def _rows(field_name: str, rows: Sequence[Any]) -> None:
    if not rows:
        raise InvalidArgument(field_name, "give at least one")
    if len(rows) > MAX_ROWS:
        raise InvalidArgument(field_name, f"at most {MAX_ROWS:,} per call, got {len(rows):,}")


def _stale_policy(value: int, field_name: str) -> StalePolicy:
    policy = _STALE_POLICIES.get(value)
    if policy is None:
        raise InvalidArgument(field_name, f"EXCLUDE or DISCOUNT, got {value}")
    return policy


def location_from_wire(m: apb.Location, prefix: str) -> Location:
    """A validated Location; raises InvalidArgument naming the field."""
    kind = _TYPES.get(m.type)
    if kind is None:
        raise InvalidArgument(prefix + "type", "STORE, WAREHOUSE or VIRTUAL")
    if not m.has_position and (m.latitude or m.longitude):
        raise InvalidArgument(
            prefix + "has_position", "set it to give latitude and longitude (0,0 is a place)"
        )
    return Location(
        m.location_id,
        kind,
        m.name,
        m.latitude if m.has_position else None,
        m.longitude if m.has_position else None,
        m.store_id,
        m.click_and_collect,
        m.ship_from_store,
        m.e_reservation,
        m.default_safety_stock,
        m.low_stock_threshold,
    ).validate(prefix)


def location_to_wire(loc: Location) -> apb.Location:
    """The wire form of a location."""
    return apb.Location(
        location_id=loc.location_id,
        type=int(loc.type),  # type: ignore[arg-type]
        name=loc.name,
        latitude=loc.latitude or 0.0,
        longitude=loc.longitude or 0.0,
        has_position=loc.latitude is not None,
        store_id=loc.store_id,
        click_and_collect=loc.click_and_collect,
        ship_from_store=loc.ship_from_store,
        e_reservation=loc.e_reservation,
        default_safety_stock=loc.default_safety_stock,
        low_stock_threshold=loc.low_stock_threshold,
    )


def network_to_wire(n: Network) -> apb.Network:
    """The wire form of a network."""
    return apb.Network(
        network_id=n.network_id,
        channel=n.channel,
        location_ids=n.location_ids,
        staleness_limit_seconds=n.staleness_limit,
        stale_policy=int(n.stale_policy),  # type: ignore[arg-type]
        stale_discount_percent=n.stale_discount_percent,
        low_stock_threshold=n.low_stock_threshold,
    )


class AdminService:
    """Implements unistock.v1.AdminService on MasterData and the Inventory it feeds.

    A change, once validated, runs to its end even when its caller goes away (a deadline, a
    disconnect): SQL, memory and positions never disagree because a call was cancelled half
    way. A caller waits at most `timeout` s for it (then UNAVAILABLE: the change still completes
    if its SQL commits; upserts are idempotent, so a retry is safe).
    """

    def __init__(
        self,
        master: MasterData,
        inventory: Inventory,
        metrics: Metrics,
        networks: NetworkIndex | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        self.master = master
        self.inventory = inventory
        self.networks = networks
        self._metrics = metrics
        self.timeout = timeout
        self._running: set[asyncio.Task[Any]] = set()
        #: Answers GetServerStatus (set by the server once everything it reads exists).
        self.status: ServerStatusReport | None = None

    async def _complete(self, work: Coroutine[Any, Any, _T]) -> _T:
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._finished)
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            raise Unavailable(
                f"master data: no answer within {self.timeout:g} s (the database is slow or "
                "down); the change is still applied if it commits, and retrying is safe"
            ) from None

    def _finished(self, task: asyncio.Task[Any]) -> None:
        self._running.discard(task)
        exc = None if task.cancelled() else task.exception()
        if exc is not None and not isinstance(exc, UnistockError):
            log.error("master data change failed", exc_info=exc)

    def _latency(self, method: str, code: str) -> Any:
        return self._metrics.grpc_latency.labels(method, code)

    @rpc
    async def UpsertLocations(
        self, request: apb.UpsertLocationsRequest, context: Context
    ) -> apb.UpsertResponse:
        _rows("locations", request.locations)
        locations = _unique(
            [location_from_wire(m, f"locations[{i}].") for i, m in enumerate(request.locations)],
            lambda loc: loc.location_id,
            "locations",
            "location_id",
        )

        async def work() -> None:
            changed = await self.master.upsert_locations(locations)
            if changed:
                # Their positions without a safety stock of their own follow the new default.
                keys = await self.inventory.positions_at(changed)
                n = await self.inventory.apply_safety_stock(keys)
                log.info(
                    "default safety stock changed at %d locations: %d positions", len(changed), n
                )

        await self._complete(work())
        return apb.UpsertResponse(upserted=len(locations))

    @rpc
    async def UpsertNetworks(
        self, request: apb.UpsertNetworksRequest, context: Context
    ) -> apb.UpsertResponse:
        _rows("networks", request.networks)
        networks = _unique(
            [
                Network(
                    m.network_id,
                    tuple(m.location_ids),
                    m.channel,
                    m.staleness_limit_seconds,
                    _stale_policy(m.stale_policy, f"networks[{i}].stale_policy"),
                    m.stale_discount_percent,
                    m.low_stock_threshold,
                ).validate(f"networks[{i}].")
                for i, m in enumerate(request.networks)
            ],
            lambda n: n.network_id,
            "networks",
            "network_id",
        )

        for n in networks:
            if 0 < n.staleness_limit < MIN_SENSIBLE_STALENESS:
                log.warning(
                    "network %s: a staleness limit of %d s is under 3 of the agents' status "
                    "intervals (10 s): an idle store will flip between stale and fresh",
                    n.network_id,
                    n.staleness_limit,
                )

        async def work() -> None:
            await self.master.upsert_networks(networks)
            if self.networks is not None:  # members joining or leaving a network's sums
                await self.networks.sync()

        await self._complete(work())
        return apb.UpsertResponse(upserted=len(networks))

    @rpc
    async def UpsertProducts(
        self, request: apb.UpsertProductsRequest, context: Context
    ) -> apb.UpsertResponse:
        _rows("products", request.products)
        products = _unique(
            [
                Product(m.sku, m.gtin, m.model, m.size, m.colour).validate(f"products[{i}].")
                for i, m in enumerate(request.products)
            ],
            lambda p: p.sku,
            "products",
            "sku",
        )
        await self._complete(self.master.upsert_products(products))
        return apb.UpsertResponse(upserted=len(products))

    @rpc
    async def SetSafetyStock(
        self, request: apb.SetSafetyStockRequest, context: Context
    ) -> apb.UpsertResponse:
        _rows("positions", request.positions)
        rows: list[tuple[str, str, int | None]] = []
        for i, m in enumerate(request.positions):
            prefix = f"positions[{i}]."
            check_id(prefix + "sku", m.sku)
            check_id(prefix + "location_id", m.location_id)
            if m.clear and m.units:
                raise InvalidArgument(prefix + "units", "give units or clear, not both")
            rows.append(
                (m.sku, m.location_id, None if m.clear else check_units(prefix + "units", m.units))
            )
        _unique(rows, lambda r: (r[0], r[1]), "positions", "sku, location_id")
        keys: list[StockKey] = [(s, loc) for s, loc, _ in rows]

        async def work() -> None:
            await self.master.set_safety_stock(rows)
            await self.inventory.apply_safety_stock(keys)

        await self._complete(work())
        return apb.UpsertResponse(upserted=len(rows))

    @rpc
    async def ListLocations(
        self, request: apb.ListLocationsRequest, context: Context
    ) -> apb.ListLocationsResponse:
        page, token = _page(self.master.locations, request.page_size, request.page_token)
        return apb.ListLocationsResponse(
            locations=[location_to_wire(loc) for loc in page], next_page_token=token
        )

    @rpc
    async def ListNetworks(
        self, request: apb.ListNetworksRequest, context: Context
    ) -> apb.ListNetworksResponse:
        page, token = _page(self.master.networks, request.page_size, request.page_token)
        return apb.ListNetworksResponse(
            networks=[network_to_wire(n) for n in page], next_page_token=token
        )

    @rpc
    async def GetServerStatus(
        self, request: apb.GetServerStatusRequest, context: Context
    ) -> apb.ServerStatus:
        if self.status is None:
            raise Unavailable("the server is starting")
        return await self.status.build()

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        """The generic handler serving every method of the service."""
        return generic_handler(self, apb, "AdminService")


def _page(items: dict[str, _T], size: int, token: str) -> tuple[list[_T], str]:
    """A page of items by id after the token (the last id of the previous page)."""
    if size > MAX_ROWS:
        raise InvalidArgument("page_size", f"at most {MAX_ROWS:,}, got {size:,}")
    size = size or 1000
    ids = sorted(i for i in items if i > token) if token else sorted(items)
    page = ids[:size]
    return [items[i] for i in page], page[-1] if len(ids) > size else ""


def _unique(rows: list[Any], key: Any, field_name: str, what: str) -> list[Any]:
    seen: dict[object, int] = {}
    for i, row in enumerate(rows):
        k = key(row)
        if k in seen:
            raise InvalidArgument(
                f"{field_name}[{i}]", f"the same {what} as {field_name}[{seen[k]}]: give it once"
            )
        seen[k] = i
    return rows
