"""SGTIN-96 decoding/encoding against the GS1 EPC Tag Data Standard, and GTIN check digits."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from unistock.edge.epc import (
    EpcError,
    Sgtin,
    decode_sgtin96,
    encode_sgtin96,
    gtin_check_digit,
    is_valid_gtin,
    normalise_gtin,
)

# TDS table 14-2: partition → (company prefix bits, digits, item reference bits, digits).
PARTITIONS = {
    0: (40, 12, 4, 1),
    1: (37, 11, 7, 2),
    2: (34, 10, 10, 3),
    3: (30, 9, 14, 4),
    4: (27, 8, 17, 5),
    5: (24, 7, 20, 6),
    6: (20, 6, 24, 7),
}

# GS1 EPC Tag Data Standard, worked SGTIN-96 example.
GS1_HEX = "3074257BF7194E4000001A85"
GS1_URI = "urn:epc:id:sgtin:0614141.812345.6789"
GS1_GTIN14 = "80614141123458"


def raw_epc(header: int, filter_: int, partition: int, cp: int, ir: int, serial: int) -> str:
    """Pack fields bit by bit without any validation, to build malformed EPCs."""
    cp_bits, _, ir_bits, _ = PARTITIONS.get(partition, (20, 6, 24, 7))
    value = header
    value = (value << 3) | filter_
    value = (value << 3) | partition
    value = (value << cp_bits) | cp
    value = (value << ir_bits) | ir
    value = (value << 38) | serial
    return f"{value:024X}"


# -- the GS1 example ---------------------------------------------------------------------------


@pytest.mark.parametrize("epc", [GS1_HEX, GS1_HEX.lower(), "3074257bF7194e4000001A85"])
def test_decodes_the_gs1_example_in_any_case(epc: str) -> None:
    sgtin = decode_sgtin96(epc)
    assert sgtin == Sgtin(
        filter=3, partition=5, company_prefix="0614141", item_reference="812345", serial=6789
    )
    assert sgtin.gtin14 == GS1_GTIN14
    assert sgtin.pure_identity_uri == GS1_URI


def test_encodes_the_gs1_example() -> None:
    assert encode_sgtin96(3, "0614141", "812345", 6789) == GS1_HEX
    assert decode_sgtin96(GS1_HEX).to_hex() == GS1_HEX


def test_gtin14_moves_the_indicator_digit_to_the_front() -> None:
    # Indicator 0 (a consumer unit): the GTIN-14 is the GTIN-13 with a leading zero.
    sgtin = decode_sgtin96(encode_sgtin96(1, "400638", "0133393", 1))
    assert sgtin.gtin14 == "04006381333931"
    assert is_valid_gtin(sgtin.gtin14)


# -- round trips for every partition -----------------------------------------------------------


def digits(n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet="0123456789", min_size=n, max_size=n)


@pytest.mark.parametrize("partition", sorted(PARTITIONS))
@given(data=st.data())
def test_round_trip_every_partition(partition: int, data: st.DataObject) -> None:
    _, cp_digits, _, ir_digits = PARTITIONS[partition]
    filter_ = data.draw(st.integers(0, 7), label="filter")
    cp = data.draw(digits(cp_digits), label="company_prefix")
    ir = data.draw(digits(ir_digits), label="item_reference")
    serial = data.draw(st.integers(0, 2**38 - 1), label="serial")

    epc = encode_sgtin96(filter_, cp, ir, serial)
    assert len(epc) == 24
    assert epc.startswith("30")
    sgtin = decode_sgtin96(epc)
    assert sgtin == Sgtin(filter_, partition, cp, ir, serial)
    assert sgtin.to_hex() == epc
    # The GTIN-14 is indicator + prefix + rest of the reference + a valid check digit.
    assert sgtin.gtin14[:13] == ir[0] + cp + ir[1:]
    assert is_valid_gtin(sgtin.gtin14)
    assert sgtin.pure_identity_uri == f"urn:epc:id:sgtin:{cp}.{ir}.{serial}"


@pytest.mark.parametrize("partition", sorted(PARTITIONS))
def test_extreme_values_of_every_partition(partition: int) -> None:
    _, cp_digits, _, ir_digits = PARTITIONS[partition]
    for cp, ir, serial in [
        ("0" * cp_digits, "0" * ir_digits, 0),
        ("9" * cp_digits, "9" * ir_digits, 2**38 - 1),
    ]:
        epc = encode_sgtin96(7, cp, ir, serial)
        assert decode_sgtin96(epc) == Sgtin(7, partition, cp, ir, serial)


@given(
    filter_=st.integers(0, 7),
    partition=st.integers(0, 6),
    bits=st.integers(0, 2**44 - 1),
    serial=st.integers(0, 2**38 - 1),
)
def test_any_valid_bit_pattern_decodes_and_re_encodes_identically(
    filter_: int, partition: int, bits: int, serial: int
) -> None:
    _, cp_digits, ir_bits, ir_digits = PARTITIONS[partition]
    cp, ir = bits >> ir_bits, bits & ((1 << ir_bits) - 1)
    epc = raw_epc(0x30, filter_, partition, cp, ir, serial)
    if cp >= 10**cp_digits or ir >= 10**ir_digits:
        with pytest.raises(EpcError, match="does not fit"):
            decode_sgtin96(epc)
    else:
        assert decode_sgtin96(epc).to_hex() == epc


# -- rejections --------------------------------------------------------------------------------


def test_rejects_sscc96_header() -> None:
    sscc = "31" + GS1_HEX[2:]
    with pytest.raises(EpcError, match=r"header 0x31, not 0x30"):
        decode_sgtin96(sscc)


@pytest.mark.parametrize("header", [0x00, 0x2F, 0x36, 0xE2, 0xFF])
def test_rejects_other_headers(header: int) -> None:
    with pytest.raises(EpcError, match=f"header 0x{header:02X}"):
        decode_sgtin96(f"{header:02X}" + GS1_HEX[2:])


def test_rejects_partition_7() -> None:
    epc = raw_epc(0x30, 1, 7, 0, 0, 1)
    with pytest.raises(EpcError, match="partition 7"):
        decode_sgtin96(epc)


@pytest.mark.parametrize(
    "epc",
    ["", GS1_HEX[:-1], GS1_HEX[:12], GS1_HEX + "0", "30" + "0" * 30],
)
def test_rejects_wrong_length(epc: str) -> None:
    with pytest.raises(EpcError, match="24 hex digits"):
        decode_sgtin96(epc)


@pytest.mark.parametrize(
    "epc",
    [
        "3074257BF7194E4000001A8G",
        "3074257BF7194E4000001A8 ",
        " 074257BF7194E4000001A85",
        "0x74257BF7194E4000001A85",
        "3074_57BF7194E4000001A85",
        "3074257BF7194E4000001A8٣",  # an Arabic-Indic digit: isdigit() but not hex
    ],
)
def test_rejects_non_hex(epc: str) -> None:
    assert len(epc) == 24
    with pytest.raises(EpcError, match="non-hex"):
        decode_sgtin96(epc)


@pytest.mark.parametrize("partition", sorted(PARTITIONS))
def test_rejects_item_reference_overflow(partition: int) -> None:
    _, _, ir_bits, ir_digits = PARTITIONS[partition]
    assert 10**ir_digits < 2**ir_bits  # the field has room for values that are not digits
    epc = raw_epc(0x30, 1, partition, 614141, 10**ir_digits, 1)
    with pytest.raises(EpcError, match=f"item reference {10**ir_digits} does not fit {ir_digits}"):
        decode_sgtin96(epc)


@pytest.mark.parametrize(
    "partition", [p for p, row in PARTITIONS.items() if 10 ** row[1] < 2 ** row[0]]
)
def test_rejects_company_prefix_overflow(partition: int) -> None:
    _, cp_digits, _, _ = PARTITIONS[partition]
    epc = raw_epc(0x30, 1, partition, 10**cp_digits, 0, 1)
    with pytest.raises(EpcError, match=r"company prefix \d+ does not fit"):
        decode_sgtin96(epc)


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ((8, "0614141", "812345", 1), "filter"),
        ((-1, "0614141", "812345", 1), "filter"),
        ((1, "0614141", "812345", 2**38), "serial"),
        ((1, "0614141", "812345", -1), "serial"),
        ((1, "0614141", "81234", 1), "item reference must be 6"),
        ((1, "0614141", "8123456", 1), "item reference must be 6"),
        ((1, "061414A", "812345", 1), "company prefix must be 7"),
        ((1, "06141", "81234567", 1), "6–12 digits"),
        ((1, "0614141234567", "", 1), "6–12 digits"),
    ],
)
def test_encode_rejects_bad_fields(args: tuple[int, str, str, int], problem: str) -> None:
    with pytest.raises(EpcError, match=problem):
        encode_sgtin96(*args)


def test_sgtin_is_an_immutable_value() -> None:
    sgtin = decode_sgtin96(GS1_HEX)
    with pytest.raises(dataclasses.FrozenInstanceError):
        sgtin.serial = 1  # type: ignore[misc]
    assert sgtin == decode_sgtin96(GS1_HEX.lower())
    assert hash(sgtin) == hash(decode_sgtin96(GS1_HEX.lower()))


# -- GTIN check digits -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "check"),
    [
        ("8061414112345", 8),  # the TDS example's GTIN-14
        ("400638133393", 1),  # GTIN-13
        ("03600029145", 2),  # GTIN-12 (UPC-A)
        ("9638507", 4),  # GTIN-8, GS1's check digit calculator example
        ("0000000000000", 0),
    ],
)
def test_gtin_check_digit(body: str, check: int) -> None:
    assert gtin_check_digit(body) == check
    assert gtin_check_digit(body.zfill(13)) == check  # padding does not change it


@pytest.mark.parametrize("body", ["", "12a4", "１２３"])
def test_gtin_check_digit_rejects_non_digits(body: str) -> None:
    with pytest.raises(ValueError, match="ASCII digits"):
        gtin_check_digit(body)


@pytest.mark.parametrize(
    ("gtin", "gtin14"),
    [
        ("96385074", "00000096385074"),
        ("036000291452", "00036000291452"),
        ("4006381333931", "04006381333931"),
        ("80614141123458", "80614141123458"),
    ],
)
def test_normalise_gtin(gtin: str, gtin14: str) -> None:
    assert is_valid_gtin(gtin)
    assert normalise_gtin(gtin) == gtin14


@pytest.mark.parametrize(
    ("gtin", "problem"),
    [
        ("4006381333932", "check digit 2, expected 1"),
        ("40063813339", "8, 12, 13 or 14 digits"),
        ("400638133393", "check digit 3, expected 0"),
        ("806141411234580", "8, 12, 13 or 14 digits"),
        ("40063813339-1", "ASCII digits"),
        ("", "ASCII digits"),
    ],
)
def test_normalise_gtin_rejects(gtin: str, problem: str) -> None:
    assert not is_valid_gtin(gtin)
    with pytest.raises(ValueError, match=problem):
        normalise_gtin(gtin)


@given(digits(13))
def test_every_gtin_body_gets_exactly_one_valid_check_digit(body: str) -> None:
    valid = [d for d in "0123456789" if is_valid_gtin(body + d)]
    assert valid == [str(gtin_check_digit(body))]
