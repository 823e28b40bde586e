"""FindStock: the wire request validated, the candidates of the network chosen (mode, staleness,
distance), ranked by domain.sourcing from the network index's per-SKU map of where units are,
and variants from the catalogue. No position is read: everything is in memory."""

from __future__ import annotations

from haversine import Unit, haversine  # type: ignore[import-untyped]

from unistock.server.actors.networks import NetworkIndex
from unistock.server.domain import InvalidArgument, NetworkNotFound, ReservationKind, check_id
from unistock.server.domain.masterdata import Location, LocationType
from unistock.server.domain.sourcing import Candidate, Option, rank, split
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
    stale = index.stale.get(network_id, ())  # members eligible only by a DISCOUNT policy
    where = index.where
    # Only the locations holding some of the order are looked at (not every member).
    holding: set[str] = set()
    for sku, _ in lines:
        here = where.get(sku)
        if here:
            holding.update(here)
    candidates = []
    for loc_id in holding:
        loc = eligible.get(loc_id)
        if loc is None:
            continue
        distance = _distance(origin, loc)
        if max_km and (distance is None or distance > max_km):
            continue
        candidates.append(Candidate(loc_id, distance, loc_id in stale))
    if request.include_variants:  # variants may be where none of the order is
        for loc_id, loc in eligible.items():
            distance = _distance(origin, loc)
            if loc_id not in holding and (
                not max_km or (distance is not None and distance <= max_km)
            ):
                candidates.append(Candidate(loc_id, distance, loc_id in stale))

    def available(sku: str, loc_id: str) -> int:
        here = where.get(sku)
        return 0 if here is None else here.get(loc_id, 0)

    # Only the best `limit` are built, unless a split needs them all.
    ranked = rank(lines, candidates, available, None if request.allow_split else request.limit)
    response = pb.FindStockResponse(options=[_option(o) for o in ranked[: request.limit]])
    if request.allow_split and not any(o.covers_all for o in ranked):
        plan, covered = split(lines, ranked)
        response.split.extend(_option(o) for o in plan)
        response.split_covers_all = covered
    if request.include_variants:
        response.variants.extend(_variants(lines, candidates, index, request.limit))
    return response


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
    offering the kind's mode, not stale (or stale, last, by a DISCOUNT policy), and (by their
    durable available) having every unit; raises NetworkNotFound."""
    if network_id not in index.master.networks:
        raise NetworkNotFound(network_id)
    here = index.where.get(sku, {})
    stale = index.stale.get(network_id, ())
    candidates = [
        Candidate(loc_id, None, loc_id in stale)
        for loc_id in index.eligible(network_id, MODE_OF_KIND[kind], offers)
        if here.get(loc_id, 0) >= units
    ]
    ranked = rank([(sku, units)], candidates, lambda s, loc: here.get(loc, 0))
    return [o.location_id for o in ranked[:NETWORK_LINE_CANDIDATES]]


def _distance(origin: tuple[float, float] | None, loc: Location) -> float | None:
    if origin is None:
        return None
    if loc.latitude is None or loc.longitude is None:
        return None
    return float(haversine(origin, (loc.latitude, loc.longitude), unit=Unit.KILOMETERS))


def _option(o: Option) -> pb.FindStockOption:
    return pb.FindStockOption(
        location_id=o.location_id,
        distance_km=round(o.distance_km or 0.0, 3),
        lines=[pb.StockLine(sku=sku, quantity=n) for sku, n in o.lines],
        covers_all=o.covers_all,
        stale=o.stale,
    )


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
