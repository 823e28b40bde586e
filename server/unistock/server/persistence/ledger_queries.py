"""Reading the SQL ledger (issue 11): histories, paged by entry id, and KPIs aggregated in SQL.

SQLAlchemy 2 Core, the same statements on SQLite and PostgreSQL except where a reservation's
lines are read out of its JSON (`json_each` / `jsonb_array_elements`). Every method is one
short read transaction, synchronous (the server runs it in a thread) and raises SQLAlchemyError
when the database fails. The ledger's rows and kinds are persistence.ledger's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine

from unistock.server.domain import MovementType
from unistock.server.domain.transfer import DiscrepancyKind
from unistock.server.persistence.ledger import MOVEMENT, RESERVATION, SHIPMENT, TRANSFER
from unistock.server.persistence.sql import LEDGER, LOCATIONS

#: The channel of ledger entries that name no reservation (a till's sale, a return, a count...).
STORE_CHANNEL = "store"

#: (kind, movement_type or None): which entries a type filter selects (None: every one of kind).
EntryType = tuple[int, int | None]


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """Which entries a history lists: a position (sku and location_id), a SKU, a location, or a
    reservation (its own entries, and the SALE and SHIPMENT entries naming it); `types`
    empty: all; times in ms since the epoch, since inclusive, until exclusive, None unbounded."""

    sku: str = ""
    location_id: str = ""
    reservation_id: str = ""
    types: Sequence[EntryType] = ()
    since_ms: int | None = None
    until_ms: int | None = None


class GroupBy(Enum):
    """How KPIs are grouped."""

    LOCATION = "location"
    #: A location's store_id in master data; a location without one is its own store.
    STORE = "store"
    CHANNEL = "channel"


@dataclass(slots=True)
class Kpis:
    """The figures of one group (see ledger.proto KpiGroup for their exact definitions)."""

    units_sold: int = 0
    units_returned: int = 0
    #: Units missing per counts: minus the sum of count variances and their corrections.
    shrinkage: int = 0
    lost_in_transit: int = 0
    reservations_made: int = 0
    reservations_fulfilled: int = 0
    reservations_expired: int = 0
    reservations_released: int = 0


@dataclass(frozen=True, slots=True)
class KpiQuery:
    """What GetKpis asks: the grouping, the time range (ms, as EntryFilter), and optional
    filters on locations and channels (empty: all)."""

    group_by: GroupBy
    since_ms: int | None = None
    until_ms: int | None = None
    location_ids: Sequence[str] = ()
    channels: Sequence[str] = ()


_L = LEDGER
_SALE, _RETURN, _COUNT = int(MovementType.SALE), int(MovementType.RETURN), int(MovementType.COUNT)
_CLOSED_SHORT = DiscrepancyKind.CLOSED_SHORT.name
_RECEIVED_AFTER_CLOSE = DiscrepancyKind.RECEIVED_AFTER_CLOSE.name
#: The reservation transitions the KPIs count, by Kpis field.
_ENDINGS = {
    "reservations_made": "CREATED",
    "reservations_fulfilled": "FULFILLED",
    "reservations_expired": "EXPIRED",
    "reservations_released": "RELEASED",
}


def _in_range(at: sa.ColumnElement[Any], since_ms: int | None, until_ms: int | None) -> list[Any]:
    conditions = []
    if since_ms is not None:
        conditions.append(at >= since_ms)
    if until_ms is not None:
        conditions.append(at < until_ms)
    return conditions


def _of_type(t: EntryType) -> sa.ColumnElement[bool]:
    kind, movement_type = t
    if movement_type is None:
        return _L.c.kind == kind
    return sa.and_(_L.c.kind == kind, _L.c.movement_type == movement_type)


class LedgerQueries:
    """The ledger's read side on an engine (the master data's)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    def entries(self, where: EntryFilter, after_id: int, limit: int) -> tuple[list[Any], bool]:
        """Up to `limit` entries matching `where` with an id above after_id, by id; and
        whether more match after them."""
        conditions = [_L.c.id > after_id, *_in_range(_L.c.at_ms, where.since_ms, where.until_ms)]
        if where.reservation_id:
            conditions.append(_L.c.reservation_id == where.reservation_id)
        if where.sku:
            conditions.append(_L.c.sku == where.sku)
        if where.location_id:
            conditions.append(_L.c.location_id == where.location_id)
        if where.types:
            conditions.append(sa.or_(*(_of_type(t) for t in where.types)))
        query = sa.select(_L).where(*conditions).order_by(_L.c.id).limit(limit + 1)
        with self.engine.connect() as conn:
            rows = list(conn.execute(query))
        return rows[:limit], len(rows) > limit

    def newest_at_ms(self) -> int | None:
        """The time of the newest entry (by id), None when the ledger is empty."""
        query = sa.select(_L.c.at_ms).order_by(_L.c.id.desc()).limit(1)
        with self.engine.connect() as conn:
            at: int | None = conn.execute(query).scalar_one_or_none()
        return at

    def kpis(self, q: KpiQuery) -> dict[str, Kpis]:
        """The figures per group key (location, store or channel) of groups with an entry in
        the range counted in a figure."""
        out: dict[str, Kpis] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(self._position_figures(q)):
                k = out.setdefault(row.key, Kpis())
                k.units_sold, k.units_returned = int(row.sold), int(row.returned)
                k.shrinkage, k.lost_in_transit = -int(row.variance), int(row.lost)
            for row in conn.execute(self._reservation_figures(q)):
                k = out.setdefault(row.key, Kpis())
                for name in _ENDINGS:
                    setattr(k, name, int(getattr(row, name)))
        return dict(sorted(out.items()))

    def _position_figures(self, q: KpiQuery) -> sa.Select[Any]:
        """Sold, returned, the variances' sum and lost in transit per key."""
        res = _L.alias("res")
        reservation_channel = (
            sa.select(sa.func.coalesce(res.c.channel, ""))
            .where(res.c.reservation_id == _L.c.reservation_id, res.c.kind == RESERVATION)
            .limit(1)
            .scalar_subquery()
        )
        is_sale = sa.and_(_L.c.kind == MOVEMENT, _L.c.movement_type == _SALE)
        picks_up = sa.and_(sa.or_(is_sale, _L.c.kind == SHIPMENT), _L.c.reservation_id.is_not(None))
        channel = sa.case(
            (picks_up, sa.func.coalesce(reservation_channel, STORE_CHANNEL)),
            else_=STORE_CHANNEL,
        )
        variance = sa.func.coalesce(_L.c.variance, 0)
        counted = sa.or_(
            _L.c.kind == SHIPMENT,
            sa.and_(
                _L.c.kind == MOVEMENT,
                sa.or_(_L.c.movement_type.in_((_SALE, _RETURN, _COUNT)), variance != 0),
            ),
            sa.and_(_L.c.kind == TRANSFER, _L.c.reason.in_((_CLOSED_SHORT, _RECEIVED_AFTER_CLOSE))),
        )
        conditions = [counted, *_in_range(_L.c.at_ms, q.since_ms, q.until_ms)]
        if q.location_ids:
            conditions.append(_L.c.location_id.in_(q.location_ids))
        if q.channels:
            conditions.append(channel.in_(q.channels))
        key = self._key(q.group_by, _L.c.location_id, channel)
        rows = (
            sa.select(
                key.label("key"),
                # A pickup's units already shipped by its fulfilment neither left on_hand nor
                # count twice: -on_hand_delta; one that preceded a count changed only its
                # variance (on_hand_delta 0): + variance.
                sa.case(
                    (_L.c.kind == SHIPMENT, _L.c.quantity),
                    (is_sale, variance - sa.func.coalesce(_L.c.on_hand_delta, 0)),
                    else_=0,
                ).label("sold"),
                sa.case(
                    (sa.and_(_L.c.kind == MOVEMENT, _L.c.movement_type == _RETURN), _L.c.quantity),
                    else_=0,
                ).label("returned"),
                sa.case((_L.c.kind == MOVEMENT, variance), else_=0).label("variance"),
                sa.case(
                    (_L.c.reason == _CLOSED_SHORT, _L.c.quantity),
                    (_L.c.reason == _RECEIVED_AFTER_CLOSE, -_L.c.quantity),
                    else_=0,
                ).label("lost"),
            )
            .select_from(self._with_store(q.group_by, _L, _L.c.location_id))
            .where(*conditions)
            .subquery()
        )
        return sa.select(
            rows.c.key,
            *(sa.func.sum(rows.c[c]).label(c) for c in ("sold", "returned", "variance", "lost")),
        ).group_by(rows.c.key)

    def _reservation_figures(self, q: KpiQuery) -> sa.Select[Any]:
        """Reservations made, fulfilled, expired and released per key: one (entry, location)
        pair per location among the entry's lines and fulfilled lines, counted once per key."""
        tokens = sa.literal(",") + _L.c.transitions + sa.literal(",")

        def has(transition: str) -> sa.ColumnElement[bool]:
            return tokens.like(f"%,{transition},%")

        def pairs(lines: str) -> sa.Select[Any]:
            return sa.select(
                _L.c.id,
                sa.func.coalesce(_L.c.channel, "").label("channel"),
                *(has(t).label(name) for name, t in _ENDINGS.items()),
                self._line_locations(lines),
            ).where(
                _L.c.kind == RESERVATION,
                sa.or_(*(has(t) for t in _ENDINGS.values())),
                *_in_range(_L.c.at_ms, q.since_ms, q.until_ms),
            )

        both = sa.union(pairs("lines"), pairs("fulfilled")).subquery()  # (id, location) once
        conditions = []
        if q.location_ids:
            conditions.append(both.c.location_id.in_(q.location_ids))
        if q.channels:
            conditions.append(both.c.channel.in_(q.channels))
        key = self._key(q.group_by, both.c.location_id, both.c.channel)
        return (
            sa.select(
                key.label("key"),
                *(
                    sa.func.count(sa.distinct(sa.case((both.c[name], both.c.id)))).label(name)
                    for name in _ENDINGS
                ),
            )
            .select_from(self._with_store(q.group_by, both, both.c.location_id))
            .where(*conditions)
            .group_by(key)
        )

    def _line_locations(self, lines: str) -> sa.Label[Any]:
        """The location_id of each line of a reservation entry's JSON array `lines` (one row
        each: a table-valued function joined to the entry's row)."""
        if self._postgres:
            array = sa.cast(_L.c.detail, JSONB)[lines]
            each = sa.func.jsonb_array_elements(array).table_valued("value", joins_implicitly=True)
            return each.c.value.op("->>")("locationId").label("location_id")
        each = sa.func.json_each(_L.c.detail, f"$.{lines}").table_valued(
            "value", joins_implicitly=True
        )
        return sa.func.json_extract(each.c.value, "$.locationId").label("location_id")

    @staticmethod
    def _key(
        group_by: GroupBy, location: sa.ColumnElement[Any], channel: sa.ColumnElement[Any]
    ) -> sa.ColumnElement[Any]:
        if group_by is GroupBy.CHANNEL:
            return channel
        if group_by is GroupBy.STORE:
            return sa.func.coalesce(sa.func.nullif(LOCATIONS.c.store_id, ""), location)
        return location

    @staticmethod
    def _with_store(
        group_by: GroupBy, source: sa.FromClause, location: sa.ColumnElement[Any]
    ) -> sa.FromClause:
        """source, joined to its locations' master data when grouping by store."""
        if group_by is not GroupBy.STORE:
            return source
        return source.outerjoin(LOCATIONS, LOCATIONS.c.location_id == location)
