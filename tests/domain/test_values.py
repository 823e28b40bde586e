"""Value types: identifiers, quantities, movements, reservation lines."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.domain.builders import T
from tests.domain.builders import mv as _mv
from unistock.server.domain import (
    MAX_QUANTITY,
    AdjustmentSign,
    InvalidArgument,
    Line,
    Movement,
    MovementType,
    check_id,
    validate_lines,
)
from unistock.server.domain.values import MAX_REASON, ItemCondition, check_quantity
from unistock.v1 import inventory_pb2 as pb


def mv(type_: MovementType = T.SALE, quantity: int = 1, **kw: object) -> Movement:
    return _mv(type_, quantity, key=("SKU-1", "STORE-1"), **kw)  # type: ignore[arg-type]


# -- check_id ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["a", "SKU-123", "x" * 128, "!", "~", "}", "{", "a:b/c.d_e@f#g", "0", "A" * 64 + "z" * 64],
)
def test_check_id_accepts_printable_ascii_up_to_128(value: str) -> None:
    assert check_id("sku", value) == value


@pytest.mark.parametrize(
    ("value", "problem_part"),
    [
        ("", "empty"),
        (" ", "printable"),
        ("a b", "printable"),
        (" a", "printable"),
        ("a ", "printable"),
        ("a|b", "printable"),
        ("|", "printable"),
        ("x" * 129, "printable"),
        ("é", "printable"),
        ("sku-ü", "printable"),
        ("日本", "printable"),
        ("a\tb", "printable"),
        ("a\n", "printable"),
        ("\n", "printable"),
        ("a\x7f", "printable"),
        ("a\x00", "printable"),
    ],
)
def test_check_id_rejects_with_field(value: str, problem_part: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        check_id("location_id", value)
    assert ei.value.field == "location_id"
    assert problem_part in ei.value.problem
    assert str(ei.value).startswith("location_id: ")


@given(st.text(min_size=1, max_size=140))
def test_check_id_matches_its_definition(value: str) -> None:
    ok = len(value) <= 128 and all(0x21 <= ord(c) <= 0x7E and c != "|" for c in value)
    if ok:
        assert check_id("f", value) == value
    else:
        with pytest.raises(InvalidArgument) as ei:
            check_id("f", value)
        assert ei.value.field == "f"


# -- quantities -------------------------------------------------------------------------------


def test_check_quantity_bounds() -> None:
    assert check_quantity("q", 0) == 0
    assert check_quantity("q", MAX_QUANTITY) == MAX_QUANTITY
    assert check_quantity("q", 1, minimum=1) == 1
    for bad, minimum in [(-1, 0), (0, 1), (MAX_QUANTITY + 1, 0), (-(10**12), 0)]:
        with pytest.raises(InvalidArgument) as ei:
            check_quantity("lines[2].quantity", bad, minimum=minimum)
        assert ei.value.field == "lines[2].quantity"


def test_movement_quantity_bounds() -> None:
    assert mv(quantity=MAX_QUANTITY).validate() is not None
    assert mv(T.COUNT, quantity=0).validate() is not None
    for bad in (-1, MAX_QUANTITY + 1):
        with pytest.raises(InvalidArgument) as ei:
            mv(quantity=bad).validate("movements[3].")
        assert ei.value.field == "movements[3].quantity"


# -- Movement.validate ------------------------------------------------------------------------


@pytest.mark.parametrize("type_", list(MovementType))
def test_valid_movement_of_every_type_validates(type_: MovementType) -> None:
    m = mv(type_)
    assert m.validate() is m
    assert m.validate("movements[0].") is m


def test_valid_sale_with_reservation_and_count_id() -> None:
    m = mv(T.SALE, reservation_id="R-1", count_id="C-9")
    assert m.validate() is m


@pytest.mark.parametrize(
    ("movement", "field"),
    [
        (mv(source_id=""), "source_id"),
        (mv(source_id="edge 1"), "source_id"),
        (mv(seq=0), "seq"),
        (mv(seq=-5), "seq"),
        (mv(sku=""), "sku"),
        (mv(sku="a|b"), "sku"),
        (mv(location_id="x" * 129), "location_id"),
        (mv(location_id="mağaza"), "location_id"),
        (mv(quantity=-1), "quantity"),
        (mv(quantity=MAX_QUANTITY + 1), "quantity"),
        (mv(T.COUNT, count_id=""), "count_id"),
        (mv(T.COUNT, count_id="c 1"), "count_id"),
        (mv(T.SALE, count_id="c|1"), "count_id"),
        (mv(T.ADJUSTMENT, adjustment_sign=None), "adjustment_sign"),
        (mv(T.TRANSFER_OUT, transfer_id=""), "transfer_id"),
        (mv(T.TRANSFER_IN, transfer_id=""), "transfer_id"),
        (mv(T.TRANSFER_IN, transfer_id="t r"), "transfer_id"),
        (mv(T.RETURN, reservation_id="R-1"), "reservation_id"),
        (mv(T.RECEIPT, reservation_id="R-1"), "reservation_id"),
        (mv(T.COUNT, reservation_id="R-1"), "reservation_id"),
        (mv(T.ADJUSTMENT, reservation_id="R-1"), "reservation_id"),
        (mv(T.TRANSFER_OUT, reservation_id="R-1"), "reservation_id"),
        (mv(T.SALE, reservation_id="R 1"), "reservation_id"),
        (mv(T.SALE, reason="r" * (MAX_REASON + 1)), "reason"),
        (mv(T.ADJUSTMENT, reason="r" * (MAX_REASON + 1)), "reason"),
    ],
)
@pytest.mark.parametrize("prefix", ["", "movements[3]."])
def test_movement_validate_names_the_bad_field(movement: Movement, field: str, prefix: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        movement.validate(prefix)
    assert ei.value.field == prefix + field


def test_movement_validate_reports_first_bad_field_in_order() -> None:
    m = mv(source_id="", seq=0, sku="", location_id="", quantity=-1)
    with pytest.raises(InvalidArgument) as ei:
        m.validate("movements[7].")
    assert ei.value.field == "movements[7].source_id"
    with pytest.raises(InvalidArgument) as ei:
        m._replace(source_id="s").validate("movements[7].")
    assert ei.value.field == "movements[7].seq"


def test_transfers_without_transfer_id_but_other_types_need_none() -> None:
    for t in (T.SALE, T.RETURN, T.RECEIPT):
        assert mv(t, transfer_id="").validate() is not None


# -- signed_quantity --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("movement", "signed"),
    [
        (mv(T.SALE, 3), -3),
        (mv(T.SALE, 3, reservation_id="R"), -3),
        (mv(T.RETURN, 3), 3),
        (mv(T.RECEIPT, 3), 3),
        (mv(T.TRANSFER_OUT, 3), -3),
        (mv(T.TRANSFER_IN, 3), 3),
        (mv(T.ADJUSTMENT, 3, adjustment_sign=AdjustmentSign.INCREASE), 3),
        (mv(T.ADJUSTMENT, 3, adjustment_sign=AdjustmentSign.DECREASE), -3),
        (mv(T.COUNT, 3), 0),
        (mv(T.SALE, 0), 0),
    ],
)
def test_signed_quantity(movement: Movement, signed: int) -> None:
    assert movement.signed_quantity == signed


def test_signed_quantity_covers_every_type() -> None:
    covered = {
        T.SALE, T.RETURN, T.RECEIPT, T.TRANSFER_OUT, T.TRANSFER_IN, T.ADJUSTMENT, T.COUNT, T.RESTOCK
    }  # fmt: skip
    assert covered == set(MovementType)
    assert mv(T.RESTOCK, 3).signed_quantity == 3


def test_movement_key() -> None:
    assert mv(sku="S", location_id="L").key == ("S", "L")


def test_wire_enum_numbers() -> None:
    assert [t.value for t in MovementType] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [t.name for t in MovementType] == [pb.MovementType.Name(t.value) for t in MovementType]
    assert [(c.name, c.value) for c in ItemCondition] == [
        (pb.ItemCondition.Name(c.value), c.value) for c in ItemCondition
    ]
    assert AdjustmentSign.INCREASE == 1
    assert AdjustmentSign.DECREASE == 2


# -- validate_lines ---------------------------------------------------------------------------


def test_validate_lines_ok_returns_tuple() -> None:
    lines = [Line("A", "L1", 1), Line("A", "L2", 2), Line("B", "L1", MAX_QUANTITY)]
    assert validate_lines(lines) == tuple(lines)
    assert Line("A", "L1", 1).key == ("A", "L1")


def test_validate_lines_empty() -> None:
    with pytest.raises(InvalidArgument) as ei:
        validate_lines([])
    assert ei.value.field == "lines"
    with pytest.raises(InvalidArgument) as ei:
        validate_lines([], "request.lines")
    assert ei.value.field == "request.lines"
    assert validate_lines([], allow_empty=True) == ()


@pytest.mark.parametrize(
    ("lines", "field"),
    [
        ([Line("A", "L", 0)], "lines[0].quantity"),
        ([Line("A", "L", 1), Line("B", "L", -2)], "lines[1].quantity"),
        ([Line("A", "L", MAX_QUANTITY + 1)], "lines[0].quantity"),
        ([Line("", "L", 1)], "lines[0].sku"),
        ([Line("A", "L", 1), Line("A", "L|2", 1)], "lines[1].location_id"),
        ([Line("A", "L", 1), Line("B", "L", 1), Line("A", "L", 2)], "lines[2]"),
        ([Line("A", "L", 1), Line("A", "L", 1)], "lines[1]"),
    ],
)
def test_validate_lines_names_the_bad_field(lines: list[Line], field: str) -> None:
    with pytest.raises(InvalidArgument) as ei:
        validate_lines(lines)
    assert ei.value.field == field


def test_validate_lines_duplicate_message_says_merge() -> None:
    with pytest.raises(InvalidArgument) as ei:
        validate_lines([Line("A", "L", 1), Line("A", "L", 1)])
    assert "duplicate" in ei.value.problem


def test_zero_units_are_only_valid_for_a_count() -> None:
    with pytest.raises(InvalidArgument) as err:
        mv(T.SALE, quantity=0).validate("movements[2].")
    assert err.value.field == "movements[2].quantity"
    assert mv(T.COUNT, quantity=0).validate() is not None


def test_an_adjustment_needs_a_reason() -> None:
    with pytest.raises(InvalidArgument) as err:
        mv(T.ADJUSTMENT, reason="").validate()
    assert err.value.field == "reason"
