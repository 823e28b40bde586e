"""Master data (domain.md "Locations, networks and channels"): what the server knows about the
places, groups of places and products behind the stock positions. Pure values and their
validation; stored in SQL (persistence.sql) and served from memory (actors.masterdata).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from unistock.server.domain.errors import InvalidArgument
from unistock.server.domain.values import MAX_QUANTITY, check_id

#: Longest free-text master-data fields (names, channel, model, size, colour).
MAX_TEXT = 256
#: Longest staleness limit of a network, seconds (366 days).
MAX_STALENESS_SECONDS = 366 * 86400


class LocationType(enum.IntEnum):
    """What a location is (the wire enum's numbers)."""

    STORE = 1
    WAREHOUSE = 2
    VIRTUAL = 3


class StalePolicy(enum.IntEnum):
    """What a network does with a stale member's units (the wire enum's numbers)."""

    #: Left out of the network's available, of FindStock's options and of network holds.
    EXCLUDE = 1
    #: Counted at the network's stale_discount_percent in its available; offered and held
    #: after every fresh location.
    DISCOUNT = 2


@dataclass(frozen=True, slots=True)
class Location:
    """A store, warehouse or virtual location. latitude/longitude in degrees (WGS 84), both
    None when unknown; default_safety_stock and low_stock_threshold in units (a position
    whose available is 1 to low_stock_threshold is low on stock: LOW_STOCK events; 0: only
    out of stock and back in stock)."""

    location_id: str
    type: LocationType
    name: str = ""
    latitude: float | None = None
    longitude: float | None = None
    store_id: str = ""
    click_and_collect: bool = False
    ship_from_store: bool = False
    e_reservation: bool = False
    default_safety_stock: int = 0
    low_stock_threshold: int = 0

    def validate(self, prefix: str = "") -> Location:
        """Check every field; raise InvalidArgument naming the first bad one."""
        check_id(prefix + "location_id", self.location_id)
        _text(prefix + "name", self.name)
        if (self.latitude is None) != (self.longitude is None):
            raise InvalidArgument(
                prefix + "latitude", "give both latitude and longitude, or neither"
            )
        if self.latitude is not None and not (
            math.isfinite(self.latitude) and -90 <= self.latitude <= 90
        ):
            raise InvalidArgument(prefix + "latitude", f"must be -90 to 90, got {self.latitude}")
        if self.longitude is not None and not (
            math.isfinite(self.longitude) and -180 <= self.longitude <= 180
        ):
            raise InvalidArgument(
                prefix + "longitude", f"must be -180 to 180, got {self.longitude}"
            )
        if self.store_id:
            check_id(prefix + "store_id", self.store_id)
        check_units(prefix + "default_safety_stock", self.default_safety_stock)
        check_units(prefix + "low_stock_threshold", self.low_stock_threshold)
        return self


@dataclass(frozen=True, slots=True)
class Network:
    """The locations that serve a channel. staleness_limit in seconds (0: never stale);
    stale_policy: what a stale member's units count for; stale_discount_percent (0 to 100,
    DISCOUNT only): the share of each stale position's available counted, rounded down;
    low_stock_threshold in units (a network level, a SKU's network available, of 1 to
    low_stock_threshold is low on stock: NETWORK_LOW_STOCK events; 0: only
    NETWORK_OUT_OF_STOCK and NETWORK_BACK_IN_STOCK)."""

    network_id: str
    location_ids: tuple[str, ...] = ()
    channel: str = ""
    staleness_limit: int = 0
    stale_policy: StalePolicy = StalePolicy.EXCLUDE
    stale_discount_percent: int = 0
    low_stock_threshold: int = 0

    def share(self, available: int, stale: bool) -> int:
        """What a member's available counts for in the network's available (units)."""
        if not stale:
            return available
        if self.stale_policy is StalePolicy.DISCOUNT:
            return available * self.stale_discount_percent // 100
        return 0

    def validate(self, prefix: str = "") -> Network:
        """Check every field; raise InvalidArgument naming the first bad one."""
        check_id(prefix + "network_id", self.network_id)
        _text(prefix + "channel", self.channel)
        seen: set[str] = set()
        for i, loc in enumerate(self.location_ids):
            check_id(f"{prefix}location_ids[{i}]", loc)
            if loc in seen:
                raise InvalidArgument(f"{prefix}location_ids[{i}]", f"{loc!r} is listed twice")
            seen.add(loc)
        if not 0 <= self.staleness_limit <= MAX_STALENESS_SECONDS:
            raise InvalidArgument(
                prefix + "staleness_limit_seconds",
                f"must be 0 (never stale) to {MAX_STALENESS_SECONDS:,}, got {self.staleness_limit}",
            )
        if not 0 <= self.stale_discount_percent <= 100:
            raise InvalidArgument(
                prefix + "stale_discount_percent",
                f"must be 0 to 100, got {self.stale_discount_percent}",
            )
        if self.stale_discount_percent and self.stale_policy is not StalePolicy.DISCOUNT:
            raise InvalidArgument(
                prefix + "stale_discount_percent",
                "applies only with stale_policy DISCOUNT (EXCLUDE counts nothing of a stale store)",
            )
        check_units(prefix + "low_stock_threshold", self.low_stock_threshold)
        return self


@dataclass(frozen=True, slots=True)
class Product:
    """A SKU of the catalogue: its GTIN-14 (or "") and its model with attributes."""

    sku: str
    gtin: str = ""
    model: str = ""
    size: str = ""
    colour: str = ""

    def validate(self, prefix: str = "") -> Product:
        """Check every field and normalise the GTIN to 14 digits; raise InvalidArgument."""
        check_id(prefix + "sku", self.sku)
        for name in ("model", "size", "colour"):
            _text(prefix + name, getattr(self, name))
        if not self.gtin:
            return self
        gtin = gtin14(self.gtin)
        if gtin is None:
            raise InvalidArgument(
                prefix + "gtin",
                f"{self.gtin!r} is not a GTIN-8, -12, -13 or -14 with a valid check digit",
            )
        return (
            self
            if gtin == self.gtin
            else Product(self.sku, gtin, self.model, self.size, self.colour)
        )


def gtin14(value: str) -> str | None:
    """value as a GTIN-14 (left-padded with zeros) when it is a GTIN-8/12/13/14 with a valid
    check digit, else None."""
    if len(value) not in (8, 12, 13, 14) or not value.isascii() or not value.isdigit():
        return None
    digits = value.zfill(14)
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(digits[:13]))
    return digits if (10 - total % 10) % 10 == int(digits[13]) else None


def check_units(field_name: str, units: int) -> int:
    """A safety stock or a low-stock threshold: 0 to MAX_QUANTITY units."""
    if not 0 <= units <= MAX_QUANTITY:
        raise InvalidArgument(field_name, f"must be 0 to {MAX_QUANTITY:,} units, got {units}")
    return units


def _text(field_name: str, value: str) -> None:
    if len(value) > MAX_TEXT:
        raise InvalidArgument(field_name, f"at most {MAX_TEXT} characters, got {len(value)}")
