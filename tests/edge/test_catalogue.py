"""The GTIN → SKU catalogue CSV: normalisation to GTIN-14 and file:line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from unistock.edge.catalogue import Catalogue, CatalogueError
from unistock.edge.epc import decode_sgtin96


def write(tmp_path: Path, text: str, name: str = "catalogue.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_every_gtin_width_as_gtin14(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "gtin,sku\n"
        "96385074,SKU-8\n"
        "036000291452,SKU-12\n"
        "4006381333931,SKU-13\n"
        "80614141123458,SKU-14\n",
    )
    cat = Catalogue.from_csv(path)
    assert len(cat) == 4
    assert cat.sku_for("00000096385074") == "SKU-8"
    assert cat.sku_for("00036000291452") == "SKU-12"
    assert cat.sku_for("04006381333931") == "SKU-13"
    assert cat.sku_for("80614141123458") == "SKU-14"
    assert next(cat.items()) == ("00000096385074", "SKU-8")


def test_a_tag_read_meets_its_catalogue_row() -> None:
    cat = Catalogue.parse(["gtin,sku", "80614141123458,SKU-14"])
    assert cat.sku_for(decode_sgtin96("3074257BF7194E4000001A85").gtin14) == "SKU-14"


def test_unknown_gtin_and_short_form_lookup_give_none() -> None:
    cat = Catalogue.parse(["gtin,sku", "4006381333931,SKU-13"])
    assert cat.sku_for("80614141123458") is None
    # The key is the GTIN-14; callers normalise (decode_sgtin96 already gives GTIN-14).
    assert cat.sku_for("4006381333931") is None
    assert "04006381333931" in cat


def test_tolerates_bom_crlf_blank_lines_spaces_and_header_case(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(
        b"\xef\xbb\xbfGTIN , SKU\r\n\r\n 4006381333931 , SKU-13 \r\n,\r\n96385074,SKU-8\r\n"
    )
    cat = Catalogue.from_csv(path)
    assert dict(cat.items()) == {"04006381333931": "SKU-13", "00000096385074": "SKU-8"}


def test_quoted_sku_with_comma() -> None:
    cat = Catalogue.parse(["gtin,sku", '4006381333931,"SKU,13"'])
    assert cat.sku_for("04006381333931") == "SKU,13"


def test_same_gtin_twice_with_the_same_sku_is_accepted() -> None:
    cat = Catalogue.parse(["gtin,sku", "4006381333931,SKU-13", "04006381333931,SKU-13"])
    assert len(cat) == 1


def test_header_only_gives_an_empty_catalogue(tmp_path: Path) -> None:
    assert len(Catalogue.from_csv(write(tmp_path, "gtin,sku\n"))) == 0


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("", 1, "empty file"),
        ("\n\n", 1, "empty file"),
        ("sku,gtin\n4006381333931,SKU\n", 1, "expected header 'gtin,sku'"),
        ("4006381333931,SKU\n", 1, "expected header 'gtin,sku'"),
        ("gtin,sku,colour\n", 1, "expected header"),
        ("gtin,sku\n4006381333931,SKU-13\n4006381333932,SKU-X\n", 3, "check digit 2, expected 1"),
        ("gtin,sku\n\n\n40063813339,SKU\n", 4, "8, 12, 13 or 14 digits"),
        ("gtin,sku\nABC,SKU\n", 2, "ASCII digits"),
        ("gtin,sku\n,SKU\n", 2, "ASCII digits"),
        ("gtin,sku\n4006381333931,\n", 2, "empty SKU"),
        ("gtin,sku\n4006381333931\n", 2, "expected 2 fields"),
        ("gtin,sku\n4006381333931,SKU,red\n", 2, "expected 2 fields"),
        (
            "gtin,sku\n4006381333931,SKU-A\n96385074,SKU-8\n04006381333931,SKU-B\n",
            4,
            "GTIN 04006381333931 maps to 'SKU-B' here but to 'SKU-A' on line 2",
        ),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, text: str, line: int, problem: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(CatalogueError) as excinfo:
        Catalogue.from_csv(path)
    err = excinfo.value
    assert err.source == str(path)
    assert err.line == line
    assert problem in err.problem
    assert str(err).startswith(f"{path}:{line}: ")


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Catalogue.from_csv(tmp_path / "absent.csv")


@pytest.mark.parametrize(
    ("entries", "problem"),
    [
        ({"4006381333931": "SKU"}, "not a valid GTIN-14"),
        ({"04006381333932": "SKU"}, "not a valid GTIN-14"),
        ({"04006381333931": ""}, "empty SKU"),
    ],
)
def test_constructor_validates_its_mapping(entries: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Catalogue(entries)
