"""FindStock: the wire request validated, the candidates of the network chosen (mode, staleness,
distance), ranked by domain.sourcing from the network index's per-SKU map of where units are,
and variants from the catalogue. No position is read: everything is in memory.

A popular SKU is at hundreds of locations, so the work per candidate is done on arrays (numpy):
the eligible members of a (network, mode) are kept as arrays (`_Sites`, rebuilt when the
index's eligible set changes), what an order's lines have there is copied into a units matrix
by C-level dict iteration, distances are one `haversine_vector` call, and domain.sourcing.Table
ranks; only the options returned become Python objects.
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass

import numpy as np
from google.protobuf.internal.containers import RepeatedCompositeFieldContainer
from haversine import Unit, haversine_vector  # type: ignore[import-untyped]
from numpy.typing import NDArray

from unistock.server.actors.networks import NetworkIndex
from unistock.server.domain import InvalidArgument, NetworkNotFound, ReservationKind, check_id
from unistock.server.domain.masterdata import Location, LocationType
from unistock.server.domain.sourcing import Candidate, Option, Table, rank, split
from unistock.server.domain.values import MAX_QUANTITY
from unistock.v1 import inventory_pb2 as pb

MAX_LINES = 100
MAX_LIMIT = 100


def offers(loc: Location, mode: int) -> bool:
    """Whether a location offers a fulfilment mode."""
    if mode == pb.FindStockRequest.SHIP:
        return loc.type is not LocationType.STORE or loc.ship_from_store
    if mode == pb.FindStockRequest.CLICK_AND_COLLECT:
        return loc.type is LocationType.STORE and loc.click_and_collect
    return loc.type is LocationType.STORE and loc.e_reservation


def _lines(request: pb.FindStockRequest) -> list[tuple[str, int]]:
    if not 1 <= len(request.lines) <= MAX_LINES:
        raise InvalidArgument("lines", f"give 1 to {MAX_LINES} lines, got {len(request.lines)}")
    out: dict[str, int] = {}
    for i, ln in enumerate(request.lines):
        sku = check_id(f"lines[{i}].sku", ln.sku)
        if not 1 <= ln.quantity <= MAX_QUANTITY:
            raise InvalidArgument(f"lines[{i}].quantity", f"must be 1 to {MAX_QUANTITY:,}")
        if sku in out:
            raise InvalidArgument(f"lines[{i}].sku", f"{sku!r} is asked for twice: give it once")
        out[sku] = ln.quantity
    return list(out.items())


def _origin(request: pb.FindStockRequest, index: NetworkIndex) -> tuple[float, float] | None:
    near_given = request.HasField("near")
    if near_given and request.near_location_id:
        raise InvalidArgument("near", "give near or near_location_id, not both")
    if near_given:
        lat, lon = request.near.latitude, request.near.longitude
        if not -90 <= lat <= 90:
            raise InvalidArgument("near.latitude", f"must be -90 to 90, got {lat}")
        if not -180 <= lon <= 180:
            raise InvalidArgument("near.longitude", f"must be -180 to 180, got {lon}")
        return (lat, lon)
    if request.near_location_id:
        loc_id = check_id("near_location_id", request.near_location_id)
        loc = index.master.locations.get(loc_id)
        if loc is None or loc.latitude is None or loc.longitude is None:
            raise InvalidArgument(
                "near_location_id", f"{loc_id!r} is not a location of master data with a position"
            )
        return (loc.latitude, loc.longitude)
    return None


def find_stock(request: pb.FindStockRequest, index: NetworkIndex) -> pb.FindStockResponse:
    """Answer a FindStock request from memory; raises InvalidArgument, NetworkNotFound."""
    lines = _lines(request)
    if request.mode not in (
        pb.FindStockRequest.SHIP,
        pb.FindStockRequest.CLICK_AND_COLLECT,
        pb.FindStockRequest.E_RESERVATION,
    ):
        raise InvalidArgument("mode", "SHIP, CLICK_AND_COLLECT or E_RESERVATION")
    network_id = check_id("network", request.network)
    if not 1 <= request.limit <= MAX_LIMIT:
        raise InvalidArgument("limit", f"must be 1 to {MAX_LIMIT}, got {request.limit}")
    max_km = request.max_distance_km
    if not max_km >= 0:  # also NaN
        raise InvalidArgument("max_distance_km", f"must be >= 0, got {max_km}")
    origin = _origin(request, index)
    if max_km and origin is None:
        raise InvalidArgument("max_distance_km", "needs near or near_location_id")
    master = index.master
    if network_id not in master.networks:
        raise NetworkNotFound(network_id)
    eligible = index.eligible(network_id, request.mode, offers)
    stale = index.stale.get(network_id, set())  # members eligible only by a DISCOUNT policy
    sites = _sites(index, network_id, request.mode, eligible, stale)
    units = _units(lines, sites, index.where)
    distance = np.full(len(sites.ids), np.nan)
    if origin is not None:
        # Distances where needed: the holders (the candidates), or every member for variants.
        near = sites.known if request.include_variants else sites.known & (units > 0).any(axis=0)
        distance[near] = haversine_vector(
            np.array([origin]), sites.points[near], Unit.KILOMETERS, comb=True, check=False
        )[:, 0]
        if max_km:
            units[:, ~(distance <= max_km)] = 0  # beyond it, or no position: not a candidate
    table = Table(lines, sites.ids, units, distance, sites.stale)
    # Only the best `limit` become options; a split ranks them all.
    response = pb.FindStockResponse()
    _add_options(response.options, table.ranked(request.limit))
    if request.allow_split and not table.any_covers():
        plan, covered = split(lines, table.ranked())
        _add_options(response.split, plan)
        response.split_covers_all = covered
    if request.include_variants:  # variants may be where none of the order is
        within = np.flatnonzero(~(distance > max_km)) if max_km else range(len(sites.ids))
        candidates = [
            Candidate(sites.ids[j], None if np.isnan(distance[j]) else float(distance[j]))
            for j in within
        ]
        response.variants.extend(_variants(lines, candidates, index, request.limit))
    return response


@dataclass(frozen=True, slots=True)
class _Sites:
    """The eligible members of one (network, mode) as arrays, one column per location in
    location-id order (domain.sourcing.Table's columns); built once per eligible set."""

    #: the index's eligible dict this was built from (the index keeps it until it changes)
    eligible: dict[str, Location]
    #: the network's stale members then
    stale_members: frozenset[str]
    #: location id per column, increasing
    ids: list[str]
    #: location id -> column
    column: dict[str, int]
    #: float64 (n, 2): latitude, longitude in degrees; NaN where unknown
    points: NDArray[np.float64]
    #: bool (n,): has a position
    known: NDArray[np.bool_]
    #: bool (n,): its store is stale
    stale: NDArray[np.bool_]


#: index -> (network, mode) -> its eligible members as arrays
_SITES: weakref.WeakKeyDictionary[NetworkIndex, dict[tuple[str, int], _Sites]] = (
    weakref.WeakKeyDictionary()
)


def _sites(
    index: NetworkIndex, network_id: str, mode: int, eligible: dict[str, Location], stale: set[str]
) -> _Sites:
    """The eligible members as arrays, cached while the index's eligible set is the same."""
    cache = _SITES.setdefault(index, {})
    got = cache.get((network_id, mode))
    if got is not None and got.eligible is eligible and got.stale_members == stale:
        return got
    ids = sorted(eligible)
    points = np.array(
        [
            (loc.latitude, loc.longitude)
            if loc.latitude is not None and loc.longitude is not None
            else (np.nan, np.nan)
            for loc in (eligible[i] for i in ids)
        ],
        dtype=np.float64,
    ).reshape(len(ids), 2)
    got = cache[network_id, mode] = _Sites(
        eligible,
        frozenset(stale),
        ids,
        {loc_id: j for j, loc_id in enumerate(ids)},
        points,
        ~np.isnan(points[:, 0]),
        np.array([loc_id in stale for loc_id in ids], dtype=np.bool_),
    )
    return got


def _units(
    lines: list[tuple[str, int]], sites: _Sites, where: dict[str, dict[str, int]]
) -> NDArray[np.int64]:
    """int64 (lines, columns): what each eligible member has available of each line (from the
    index's `where`; locations that are not eligible are left out). A SKU held at as many
    locations as half the columns or more is read per column (one dict lookup each), a
    rarer one per location holding it: C-level iteration either way, over the shorter."""
    ids, column = sites.ids, sites.column.get
    n = len(ids)
    units = np.zeros((len(lines), n), np.int64)
    for i, (sku, _) in enumerate(lines):
        here = where.get(sku)
        if not here:
            continue
        if 2 * len(here) >= n:
            units[i] = np.fromiter(map(here.get, ids, itertools.repeat(0)), np.int64, n)
        else:
            cols = np.fromiter(map(column, here, itertools.repeat(-1)), np.intp, len(here))
            got = np.fromiter(here.values(), np.int64, len(here))
            member = cols >= 0
            units[i, cols[member]] = got[member]
    return units


#: The mode a reservation kind's units are served by.
MODE_OF_KIND = {
    ReservationKind.CART: pb.FindStockRequest.SHIP,
    ReservationKind.ORDER: pb.FindStockRequest.SHIP,
    ReservationKind.SHIP_FROM_STORE: pb.FindStockRequest.SHIP,
    ReservationKind.CLICK_AND_COLLECT: pb.FindStockRequest.CLICK_AND_COLLECT,
    ReservationKind.E_RESERVATION: pb.FindStockRequest.E_RESERVATION,
}
#: Locations tried for one network line (the best by the sourcing rules).
NETWORK_LINE_CANDIDATES = 8


def network_candidates(
    index: NetworkIndex, network_id: str, sku: str, units: int, kind: ReservationKind
) -> list[str]:
    """The network's locations that may serve a network line of a reservation, best first:
    offering the kind's mode, not stale (or stale, after the fresh ones, by a DISCOUNT policy),
    holding some of the SKU (by their durable available), those with every unit first, then
    the deepest (so that, when none can hold the line, the first says the most one location
    could promise); raises NetworkNotFound."""
    if network_id not in index.master.networks:
        raise NetworkNotFound(network_id)
    here = index.where.get(sku, {})
    stale = index.stale.get(network_id, ())
    eligible = index.eligible(network_id, MODE_OF_KIND[kind], offers)
    candidates = [Candidate(loc_id, None, loc_id in stale) for loc_id in here if loc_id in eligible]
    ranked = rank([(sku, units)], candidates, lambda s, loc: here.get(loc, 0))
    # Those with every unit first, fresh before stale (rank's order, kept: the sort is stable);
    # then the others, deepest first (the first says what the shortfall reports), so that a
    # stale store that can hold the line is not pushed out by fresh ones that cannot.
    ranked.sort(key=lambda o: (not o.covers_all, 0 if o.covers_all else -o.depth))
    return [o.location_id for o in ranked[:NETWORK_LINE_CANDIDATES]]


def _add_options(
    to: RepeatedCompositeFieldContainer[pb.FindStockOption], options: list[Option]
) -> None:
    """Append options to a response's repeated field, built in place (half the time of
    building each message and copying it in)."""
    for o in options:
        added = to.add(
            location_id=o.location_id,
            distance_km=round(o.distance_km or 0.0, 3),
            covers_all=o.covers_all,
            stale=o.stale,
        )
        line = added.lines.add
        for sku, n in o.lines:
            line(sku=sku, quantity=n)


def _variants(
    lines: list[tuple[str, int]], candidates: list[Candidate], index: NetworkIndex, limit: int
) -> list[pb.VariantOption]:
    """The same models' other SKUs available at the candidates, nearest first."""
    products = index.master.products
    out = []
    by_model = index.master.skus_of_model
    for sku, _ in lines:
        product = products.get(sku)
        if product is None or not product.model:
            continue
        for other in by_model(product.model):
            if other == sku:
                continue
            here = index.where.get(other)
            if not here:
                continue
            variant = products[other]
            for c in candidates:
                units = here.get(c.location_id, 0)
                if units > 0:
                    out.append(
                        pb.VariantOption(
                            of_sku=sku,
                            sku=other,
                            size=variant.size,
                            colour=variant.colour,
                            location_id=c.location_id,
                            distance_km=round(c.distance_km or 0.0, 3),
                            available=units,
                        )
                    )
    out.sort(key=lambda v: (v.distance_km, -v.available, v.sku, v.location_id))
    return out[:limit]
