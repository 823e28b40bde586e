"""Value types of the domain: identifiers, movements, reservation lines. Pure, no I/O."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import NamedTuple

from unistock.server.domain.errors import InvalidArgument

#: Largest quantity accepted in one movement or reservation line. Beyond it a figure is a typo
#: or an attack (and would overflow the int64 fields of the wire contract after a few sums).
MAX_QUANTITY = 1_000_000_000
#: Longest free-text reason of a movement (it is stored and logged, not parsed).
MAX_REASON = 1024
#: Furthest a movement's seq may lie beyond the highest seq applied from its source (for a new
#: source: beyond 0). A source's seqs start at 1 and grow by one per movement, so a larger jump
#: is a bug or an attack: accepted, it would make every later movement of that source at that
#: position a "duplicate".
MAX_SEQ_JUMP = 1_000_000

_ID_RE = re.compile(r"[!-{}~]{1,128}")  # printable ASCII, no whitespace, no '|' (0x7c)

#: Identifiers already found valid. The same SKUs, locations and sources come back millions of
#: times a day; a set lookup is 20x cheaper than the regular expression. Bounded: cleared when
#: full (a memo, not state: clearing it changes no answer).
_VALID_IDS: set[str] = set()
_VALID_IDS_MAX = 1 << 18


def id_ok(value: str) -> bool:
    """Whether value is a valid identifier (see check_id), memoised."""
    if value in _VALID_IDS:
        return True
    if not value or _ID_RE.fullmatch(value) is None:
        return False
    if len(_VALID_IDS) >= _VALID_IDS_MAX:
        _VALID_IDS.clear()
    _VALID_IDS.add(value)
    return True


def check_id(field_name: str, value: str) -> str:
    """Return value if it is a valid identifier, else raise InvalidArgument naming the field."""
    if value in _VALID_IDS or id_ok(value):
        return value
    if not value:
        raise InvalidArgument(field_name, "must not be empty")
    if _ID_RE.fullmatch(value) is None:
        raise InvalidArgument(
            field_name,
            "must be 1-128 printable ASCII characters without spaces or '|'",
        )
    return value


#: Longest hold a client may ask for (Reserve.ttl_seconds, ExtendReservation): 366 days.
MAX_TTL_SECONDS = 31_622_400
#: Longest free-text fields of a reservation: its channel and its customer.
MAX_CHANNEL = 128
MAX_CUSTOMER_ID = 256


def check_text(field_name: str, value: str, max_len: int) -> str:
    """Return value if it has at most max_len printable characters (empty is allowed), else
    raise InvalidArgument naming the field and the bound."""
    if len(value) > max_len:
        raise InvalidArgument(
            field_name, f"at most {max_len:,} printable characters, got {len(value):,}"
        )
    if not value.isprintable():
        raise InvalidArgument(
            field_name, f"at most {max_len:,} printable characters: no control characters"
        )
    return value


def check_seconds(field_name: str, value: int, *, minimum: int = 0) -> int:
    """Return a duration in seconds if minimum <= value <= MAX_TTL_SECONDS (366 days)."""
    if not minimum <= value <= MAX_TTL_SECONDS:
        raise InvalidArgument(
            field_name,
            f"must be {minimum:,} to {MAX_TTL_SECONDS:,} seconds (366 days), got {value:,}",
        )
    return value


def check_quantity(field_name: str, value: int, *, minimum: int = 0) -> int:
    """Return value if minimum <= value <= MAX_QUANTITY, else raise InvalidArgument."""
    if value < minimum:
        raise InvalidArgument(field_name, f"must be >= {minimum}, got {value}")
    if value > MAX_QUANTITY:
        raise InvalidArgument(field_name, f"must be <= {MAX_QUANTITY}, got {value}")
    return value


class MovementType(enum.IntEnum):
    """What physically happened. Values equal the wire enum's numbers."""

    SALE = 1
    RETURN = 2
    RECEIPT = 3
    ADJUSTMENT = 4
    TRANSFER_OUT = 5
    TRANSFER_IN = 6
    COUNT = 7
    #: Inspected units back to sale: non_sellable - quantity, on_hand + quantity.
    RESTOCK = 8

    # Enum hashes its name in Python code; an int's own hash is C and agrees with == (bench B1:
    # the types are set and dict keys in the hot path of every movement).
    __hash__ = int.__hash__


class ItemCondition(enum.IntEnum):
    """Which units a RETURN or an ADJUSTMENT concerns. Values equal the wire enum's numbers."""

    SELLABLE = 1
    #: Damaged, soiled, awaiting inspection: physically here, never available.
    NON_SELLABLE = 2

    __hash__ = int.__hash__


#: The types that may concern non-sellable units.
CONDITIONED = frozenset({MovementType.RETURN, MovementType.ADJUSTMENT})


class AdjustmentSign(enum.IntEnum):
    """Direction of an ADJUSTMENT. Values equal the wire enum's numbers."""

    INCREASE = 1
    DECREASE = 2

    __hash__ = int.__hash__


_DECREASING = frozenset({MovementType.SALE, MovementType.TRANSFER_OUT})
_INCREASING = frozenset(
    {MovementType.RETURN, MovementType.RECEIPT, MovementType.TRANSFER_IN, MovementType.RESTOCK}
)

#: Types with no field beyond the common ones (the bulk of a store's stream).
_PLAIN = frozenset({MovementType.SALE, MovementType.RETURN, MovementType.RECEIPT})

StockKey = tuple[str, str]
"""A stock position's identity: (sku, location_id)."""


class Movement(NamedTuple):
    """One physical fact about stock; idempotent on (source_id, seq).

    A named tuple rather than a frozen dataclass: a store stream builds tens of thousands a
    second, and a tuple is built five times faster (see bench B1). Immutable all the same.
    """

    source_id: str
    seq: int
    sku: str
    location_id: str
    type: MovementType
    quantity: int
    reservation_id: str = ""
    count_id: str = ""
    transfer_id: str = ""
    reason: str = ""
    adjustment_sign: AdjustmentSign | None = None
    epcs: tuple[str, ...] = ()
    #: On a RETURN or an ADJUSTMENT: which units (non_sellable ones instead of on_hand).
    condition: ItemCondition = ItemCondition.SELLABLE
    #: On a TRANSFER_OUT the destination (required), on a TRANSFER_IN the origin (optional).
    counterpart_location_id: str = ""

    @property
    def key(self) -> StockKey:
        """The position this movement applies to."""
        return (self.sku, self.location_id)

    @property
    def signed_quantity(self) -> int:
        """The change to on_hand, or to non_sellable for a NON_SELLABLE movement (not meaningful
        for COUNT, which sets on_hand)."""
        if self.type in _DECREASING:
            return -self.quantity
        if self.type in _INCREASING:
            return self.quantity
        if self.type is MovementType.ADJUSTMENT:
            return (
                self.quantity if self.adjustment_sign is AdjustmentSign.INCREASE else -self.quantity
            )
        return 0

    def _check_seq(self, prefix: str) -> None:
        if self.seq < 1:
            raise InvalidArgument(prefix + "seq", f"must be >= 1, got {self.seq}")

    def validate(self, prefix: str = "") -> Movement:
        """Check every field; raise InvalidArgument naming the first bad one."""
        # The common case (a sale or receipt of known ids) costs three set lookups; field names
        # are only built for an error.
        if not (id_ok(self.source_id) and id_ok(self.sku) and id_ok(self.location_id)):
            check_id(prefix + "source_id", self.source_id)
            self._check_seq(prefix)
            check_id(prefix + "sku", self.sku)
            check_id(prefix + "location_id", self.location_id)
        self._check_seq(prefix)
        # A count of zero is a fact (an empty shelf); any other movement of zero units is noise.
        if not 1 <= self.quantity <= MAX_QUANTITY:
            minimum = 0 if self.type is MovementType.COUNT else 1
            check_quantity(prefix + "quantity", self.quantity, minimum=minimum)
        if self.reason and len(self.reason) > MAX_REASON:
            raise InvalidArgument(
                prefix + "reason", f"at most {MAX_REASON} characters, got {len(self.reason)}"
            )
        if (
            self.type in _PLAIN
            and not self.reservation_id
            and not self.count_id
            and not self.transfer_id
            and self.condition is ItemCondition.SELLABLE
            and not self.counterpart_location_id
        ):
            return self
        if self.condition is not ItemCondition.SELLABLE and self.type not in CONDITIONED:
            raise InvalidArgument(
                prefix + "condition",
                f"only a RETURN or an ADJUSTMENT concerns {self.condition.name} units, "
                f"not a {self.type.name}",
            )
        if self.type is MovementType.ADJUSTMENT:
            if self.adjustment_sign is None:
                raise InvalidArgument(
                    prefix + "adjustment_sign", "an ADJUSTMENT needs INCREASE or DECREASE"
                )
            if not self.reason:
                raise InvalidArgument(
                    prefix + "reason", "an ADJUSTMENT needs a reason (damage, theft, found...)"
                )
        if self.type is MovementType.COUNT and not self.count_id:
            raise InvalidArgument(prefix + "count_id", "a COUNT needs a count_id")
        transfer = self.type in (MovementType.TRANSFER_OUT, MovementType.TRANSFER_IN)
        if self.transfer_id or transfer:
            check_id(prefix + "transfer_id", self.transfer_id)
        if self.counterpart_location_id and not transfer:
            raise InvalidArgument(
                prefix + "counterpart_location_id",
                f"only a TRANSFER_OUT or TRANSFER_IN has a counterpart, not a {self.type.name}",
            )
        if self.type is MovementType.TRANSFER_OUT or self.counterpart_location_id:
            check_id(prefix + "counterpart_location_id", self.counterpart_location_id)
            if self.counterpart_location_id == self.location_id:
                raise InvalidArgument(
                    prefix + "counterpart_location_id",
                    f"a transfer moves units between two locations; both are {self.location_id!r}",
                )
        if self.reservation_id:
            if self.type is not MovementType.SALE:
                raise InvalidArgument(
                    prefix + "reservation_id", "only a SALE can pick up a reservation"
                )
            check_id(prefix + "reservation_id", self.reservation_id)
        if self.count_id:
            check_id(prefix + "count_id", self.count_id)
        return self


@dataclass(frozen=True, slots=True)
class Line:
    """Units of one SKU at one location, as a reservation line. A line asked of a network has
    network set and no location_id until the server chooses one (then both are set)."""

    sku: str
    location_id: str
    quantity: int
    network: str = ""

    @property
    def key(self) -> StockKey:
        """The position this line holds units of."""
        return (self.sku, self.location_id)


def validate_lines(
    lines: list[Line], field_name: str = "lines", *, allow_empty: bool = False
) -> tuple[Line, ...]:
    """Check reservation lines: valid ids, quantity >= 1, one line per position."""
    if not lines and not allow_empty:
        raise InvalidArgument(field_name, "at least one line is required")
    seen: set[StockKey] = set()
    for i, line in enumerate(lines):
        check_id(f"{field_name}[{i}].sku", line.sku)
        if line.network:
            if line.location_id:
                raise InvalidArgument(
                    f"{field_name}[{i}]",
                    "give location_id or network, not both (the server chooses the location "
                    "of a network line)",
                )
            check_id(f"{field_name}[{i}].network", line.network)
        else:
            check_id(f"{field_name}[{i}].location_id", line.location_id)
        check_quantity(f"{field_name}[{i}].quantity", line.quantity, minimum=1)
        key = (line.sku, line.location_id or "@" + line.network)
        if key in seen:
            where = line.location_id or f"network {line.network!r}"
            raise InvalidArgument(
                f"{field_name}[{i}]",
                f"duplicate line for sku {line.sku!r} at {where}; merge the quantities",
            )
        seen.add(key)
    return tuple(lines)
