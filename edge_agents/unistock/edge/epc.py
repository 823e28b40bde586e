"""EPC SGTIN-96 decoding and encoding, and GS1 GTIN check digits.

An RFID tag on a retail item carries an EPC; for trade items that is almost always an SGTIN-96
(GS1 EPC Tag Data Standard, TDS §14.5.1). Its 96 bits are laid out as::

    header(8) = 0x30 | filter(3) | partition(3) | company prefix + item reference (44) | serial(38)

The partition value says how the 44 middle bits are split between the GS1 company prefix and the
item reference (TDS table 14-2). The company prefix and item reference are decimal *digit
strings*: leading zeros are significant (``0614141`` is a different prefix from ``614141``), so
they are carried as ``str`` with the exact digit count the partition implies.

The GTIN of the item is recovered from the SGTIN by moving the item reference's first digit (the
indicator digit) to the front and appending the GS1 mod-10 check digit, which the tag does not
store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "SGTIN96_HEADER",
    "EpcError",
    "Sgtin",
    "decode_sgtin96",
    "encode_sgtin96",
    "gtin_check_digit",
    "is_valid_gtin",
    "normalise_gtin",
]

SGTIN96_HEADER: Final = 0x30
"""The 8-bit EPC header value that identifies an SGTIN-96."""

# TDS table 14-2, indexed by partition value:
# (company prefix bits, company prefix digits, item reference bits, item reference digits).
# The bits always add up to 44 and the digits to 13 (GTIN-14 minus its check digit).
_PARTITIONS: Final[tuple[tuple[int, int, int, int], ...]] = (
    (40, 12, 4, 1),
    (37, 11, 7, 2),
    (34, 10, 10, 3),
    (30, 9, 14, 4),
    (27, 8, 17, 5),
    (24, 7, 20, 6),
    (20, 6, 24, 7),
)

_SERIAL_BITS: Final = 38
_MAX_SERIAL: Final = (1 << _SERIAL_BITS) - 1
_EPC_HEX_DIGITS: Final = 24

# Explicit ASCII classes: str.isdigit() and \d also accept other Unicode digits ('²', '٣'),
# which int() would then happily convert.
_HEX_RE: Final = re.compile(r"[0-9A-Fa-f]{24}")
_DIGITS_RE: Final = re.compile(r"[0-9]+")

_GTIN_LENGTHS: Final = frozenset({8, 12, 13, 14})


class EpcError(ValueError):
    """An EPC that is not a well-formed SGTIN-96, or SGTIN fields that cannot be encoded."""


# -- GTIN check digits ---------------------------------------------------------------------------


def gtin_check_digit(digits: str) -> int:
    """Return the GS1 mod-10 check digit for ``digits`` (a GTIN without its check digit).

    Weights alternate 3, 1, 3, … starting from the rightmost digit, so the same function serves
    GTIN-8, -12, -13 and -14 (and a left-padded GTIN has the same check digit as the short one).
    """
    if not _DIGITS_RE.fullmatch(digits):
        raise ValueError(f"GTIN body must be ASCII digits, got {digits!r}")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def is_valid_gtin(gtin: str) -> bool:
    """Whether ``gtin`` is a GTIN-8/12/13/14 of ASCII digits whose check digit is right."""
    if len(gtin) not in _GTIN_LENGTHS or not _DIGITS_RE.fullmatch(gtin):
        return False
    return gtin_check_digit(gtin[:-1]) == int(gtin[-1])


def normalise_gtin(gtin: str) -> str:
    """Return ``gtin`` (GTIN-8/12/13/14) as a GTIN-14, after checking its check digit.

    Left-padding with zeros is the GS1 rule for widening a GTIN; it keeps the check digit valid
    because the weights are counted from the right.

    Raises:
        ValueError: wrong length, non-digit characters, or a wrong check digit; the message says
            which.
    """
    if not _DIGITS_RE.fullmatch(gtin):
        raise ValueError(f"GTIN must be ASCII digits, got {gtin!r}")
    if len(gtin) not in _GTIN_LENGTHS:
        raise ValueError(f"GTIN must have 8, 12, 13 or 14 digits, {gtin!r} has {len(gtin)}")
    expected = gtin_check_digit(gtin[:-1])
    if expected != int(gtin[-1]):
        raise ValueError(f"GTIN {gtin!r} has check digit {gtin[-1]}, expected {expected}")
    return gtin.zfill(14)


# -- SGTIN ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sgtin:
    """A decoded SGTIN: the fields of an SGTIN-96 EPC.

    Construction validates every field against the partition table, so an ``Sgtin`` can always
    be encoded back to the same 96 bits.

    Attributes:
        filter: the 3-bit filter value (1 = point-of-sale trade item, 3 = case, …); kept as read.
        partition: 0–6; fixes the digit counts of ``company_prefix`` and ``item_reference``.
        company_prefix: the GS1 company prefix, 12 − ``partition`` digits with leading zeros.
        item_reference: indicator digit followed by the item reference, 1 + ``partition`` digits.
        serial: the serial number, 0 … 2**38 − 1.
    """

    filter: int
    partition: int
    company_prefix: str
    item_reference: str
    serial: int

    def __post_init__(self) -> None:
        if not 0 <= self.filter <= 7:
            raise EpcError(f"filter must be 0–7, got {self.filter}")
        if not 0 <= self.partition <= 6:
            raise EpcError(f"partition must be 0–6, got {self.partition}")
        _, cp_digits, _, ir_digits = _PARTITIONS[self.partition]
        _check_digit_field("company prefix", self.company_prefix, cp_digits, self.partition)
        _check_digit_field("item reference", self.item_reference, ir_digits, self.partition)
        if not 0 <= self.serial <= _MAX_SERIAL:
            raise EpcError(f"serial must be 0 … 2**38 − 1 for SGTIN-96, got {self.serial}")

    @property
    def gtin14(self) -> str:
        """The GTIN-14 of the item: indicator, company prefix, item reference, check digit."""
        body = self.item_reference[0] + self.company_prefix + self.item_reference[1:]
        return body + str(gtin_check_digit(body))

    @property
    def pure_identity_uri(self) -> str:
        """The EPC pure identity URI, e.g. ``urn:epc:id:sgtin:0614141.812345.6789``."""
        return f"urn:epc:id:sgtin:{self.company_prefix}.{self.item_reference}.{self.serial}"

    def to_hex(self) -> str:
        """Encode as SGTIN-96: 24 upper-case hex digits."""
        cp_bits, _, ir_bits, _ = _PARTITIONS[self.partition]
        value = SGTIN96_HEADER
        value = (value << 3) | self.filter
        value = (value << 3) | self.partition
        value = (value << cp_bits) | int(self.company_prefix)
        value = (value << ir_bits) | int(self.item_reference)
        value = (value << _SERIAL_BITS) | self.serial
        return f"{value:0{_EPC_HEX_DIGITS}X}"


def _check_digit_field(name: str, value: str, digits: int, partition: int) -> None:
    # The digit count, not just the numeric value, is part of the identity: it is what lets the
    # decoder restore leading zeros, so a mismatch is an error rather than something to pad.
    if len(value) != digits or not _DIGITS_RE.fullmatch(value):
        raise EpcError(
            f"{name} must be {digits} ASCII digits for partition {partition}, got {value!r}"
        )


def decode_sgtin96(epc_hex: str) -> Sgtin:
    """Decode a 24-hex-digit SGTIN-96 EPC (either case) into an :class:`Sgtin`.

    Raises:
        EpcError: wrong length, non-hex characters, a header other than 0x30, partition 7, or a
            company prefix / item reference value with more digits than its partition allows.
            The message names the problem and the EPC.
    """
    if len(epc_hex) != _EPC_HEX_DIGITS:
        raise EpcError(
            f"SGTIN-96 EPC must be {_EPC_HEX_DIGITS} hex digits, {epc_hex!r} has {len(epc_hex)}"
        )
    # fullmatch rather than int(…, 16) alone: int() also accepts '0x', '_' and surrounding
    # whitespace, which would let malformed reader output through.
    if not _HEX_RE.fullmatch(epc_hex):
        raise EpcError(f"EPC {epc_hex!r} contains non-hex characters")
    value = int(epc_hex, 16)

    header = value >> 88
    if header != SGTIN96_HEADER:
        raise EpcError(
            f"EPC {epc_hex!r} has header 0x{header:02X}, not 0x{SGTIN96_HEADER:02X} (SGTIN-96)"
        )
    filter_ = (value >> 85) & 0b111
    partition = (value >> 82) & 0b111
    if partition == 7:
        raise EpcError(f"EPC {epc_hex!r} has partition 7, which SGTIN-96 does not define")

    _, cp_digits, ir_bits, ir_digits = _PARTITIONS[partition]
    middle = (value >> _SERIAL_BITS) & ((1 << 44) - 1)
    company_prefix = middle >> ir_bits
    item_reference = middle & ((1 << ir_bits) - 1)
    # The bit fields are wider than their digit counts (e.g. 40 bits hold 1.1e12 > 10**12 − 1),
    # so a value can fit the bits and still not be a valid prefix or reference (TDS §14.3.3).
    if company_prefix >= 10**cp_digits:
        raise EpcError(
            f"EPC {epc_hex!r}: company prefix {company_prefix} does not fit "
            f"{cp_digits} digits (partition {partition})"
        )
    if item_reference >= 10**ir_digits:
        raise EpcError(
            f"EPC {epc_hex!r}: item reference {item_reference} does not fit "
            f"{ir_digits} digits (partition {partition})"
        )
    return Sgtin(
        filter=filter_,
        partition=partition,
        company_prefix=f"{company_prefix:0{cp_digits}d}",
        item_reference=f"{item_reference:0{ir_digits}d}",
        serial=value & _MAX_SERIAL,
    )


def encode_sgtin96(filter: int, company_prefix: str, item_reference: str, serial: int) -> str:
    """Encode SGTIN fields as a 24-hex-digit SGTIN-96 EPC (upper case).

    The partition follows from the length of ``company_prefix`` (6–12 digits); ``item_reference``
    (indicator digit included) must have 13 − that many digits.

    Raises:
        EpcError: a field out of range or of the wrong digit count.
    """
    if not 6 <= len(company_prefix) <= 12:
        raise EpcError(
            f"company prefix must have 6–12 digits, {company_prefix!r} has {len(company_prefix)}"
        )
    partition = 12 - len(company_prefix)
    return Sgtin(filter, partition, company_prefix, item_reference, serial).to_hex()
