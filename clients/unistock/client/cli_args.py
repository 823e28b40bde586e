"""What `unistock` arguments are: parsers that turn a command-line word into a value or raise
`typer.BadParameter` (a usage error, exit 2, naming the argument: "Invalid value for
'SKU@LOC:QTY': quantity must be from 1 to 1,000,000,000, got 0 (in 'A@b:0')")."""

from __future__ import annotations

import re
from collections.abc import Callable

from typer import BadParameter

from unistock.server.domain.values import MAX_QUANTITY

MAX_UINT64 = 2**64 - 1


def int_in(lo: int, hi: int) -> Callable[[str], int]:
    """A parser: an integer from lo to hi (what the wire and the server accept)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise BadParameter(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise BadParameter(f"must be from {lo:,} to {hi:,}, got {text}")
        return value

    return parse


def seq_or_next(text: str) -> int:
    """A parser: SEQ, 1 to 2**64-1, or `next` (0: the CLI's durable outbox assigns it)."""
    if text == "next":
        return 0
    try:
        return int_in(1, MAX_UINT64)(text)
    except BadParameter as e:
        raise BadParameter(f"{e.message}, or next (the source's next seq)") from None


def seconds(text: str) -> float:
    """A parser: a number of seconds, above 0 and at most a day."""
    try:
        value = float(text)
    except ValueError:
        raise BadParameter(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 86400:  # also NaN
        raise BadParameter(f"must be above 0 and at most 86400, got {text}")
    return value


def line_of(min_quantity: int) -> Callable[[str], tuple[str, str, int]]:
    """A parser: SKU@LOCATION:QTY with min_quantity <= QTY <= 1,000,000,000."""
    quantity = int_in(min_quantity, MAX_QUANTITY)

    def parse(text: str) -> tuple[str, str, int]:
        try:
            key, qty = text.rsplit(":", 1)
            name, loc = key.split("@", 1)
        except ValueError:
            raise BadParameter(f"expected SKU@LOCATION:QTY, got {text!r}") from None
        try:
            return name, loc, quantity(qty)
        except BadParameter as exc:
            raise BadParameter(f"quantity {exc} (in {text!r})") from None

    return parse


def sku_alone(text: str) -> str:
    """A parser: a SKU alone (SKU@LOC is the location form of other commands)."""
    if "@" in text:
        raise BadParameter(
            f"expected a SKU, got {text!r}: no @LOCATION here (the network's locations are "
            "all looked at)"
        )
    return text


def sku_qty(text: str) -> tuple[str, int]:
    """A parser: SKU or SKU:QTY (QTY 1 to 1e9, default 1), no @LOCATION."""
    name, _, qty = text.rpartition(":") if ":" in text else (text, "", "1")
    if not name:
        raise BadParameter(f"expected SKU or SKU:QTY, got {text!r}")
    return sku_alone(name), int_in(1, MAX_QUANTITY)(qty)


def move(text: str) -> tuple[str, str, str, int]:
    """A parser: SKU@FROM>TO:QTY."""
    name, at, rest = text.partition("@")
    origin, gt, rest = rest.partition(">")
    destination, colon, qty = rest.rpartition(":")
    if not (name and at and origin and gt and destination and colon):
        raise BadParameter(f"expected SKU@FROM>TO:QTY, got {text!r}")
    return name, origin, destination, int_in(1, MAX_QUANTITY)(qty)


def lat_lon(text: str) -> tuple[float, float]:
    """A parser: LAT,LON in degrees (-90 to 90, -180 to 180)."""
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError:
        raise BadParameter(f"expected LAT,LON in degrees, got {text!r}") from None
    if not -90 <= lat <= 90:
        raise BadParameter(f"latitude must be -90 to 90, got {lat:g}")
    if not -180 <= lon <= 180:
        raise BadParameter(f"longitude must be -180 to 180, got {lon:g}")
    return lat, lon


def km(text: str) -> float:
    """A parser: a distance in km, >= 0."""
    try:
        km = float(text)
    except ValueError:
        raise BadParameter(f"expected kilometres, got {text!r}") from None
    if not km >= 0:  # also NaN
        raise BadParameter(f"must be 0 (any distance) or more, got {text}")
    return km


def event_id(text: str) -> str:
    """--after: an event id as WatchEvents gives them ("<ms>-<sequence>")."""
    if not re.fullmatch(r"\d{1,20}-\d{1,20}", text):
        raise BadParameter(
            f"not an event id: {text!r} (the eventId or startAfterEventId of a line printed)"
        )
    return text
