"""GTIN → SKU catalogue for the edge agent.

RFID tags identify a *trade item* (a GTIN); stock positions are keyed by the retailer's SKU. The
catalogue is the mapping between them, shipped to the store as a CSV file::

    gtin,sku
    80614141123458,SKU-123
    4006381333931,SKU-456

GTIN-8, -12, -13 and -14 are accepted and normalised to GTIN-14 (left-padded with zeros), because
that is what :attr:`unistock.edge.epc.Sgtin.gtin14` produces: the same item listed as a GTIN-13 in
the file and read from a tag must meet on one key.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from unistock.edge.epc import is_valid_gtin, normalise_gtin

__all__ = ["Catalogue", "CatalogueError"]

_HEADER = ("gtin", "sku")


class CatalogueError(ValueError):
    """A catalogue file that cannot be loaded; the message starts with ``file:line:``."""

    def __init__(self, source: str, line: int, problem: str) -> None:
        super().__init__(f"{source}:{line}: {problem}")
        self.source = source
        self.line = line
        self.problem = problem


class Catalogue:
    """An immutable GTIN-14 → SKU mapping."""

    __slots__ = ("_skus",)

    def __init__(self, entries: Mapping[str, str]) -> None:
        """Build from a mapping whose keys are already GTIN-14 with a valid check digit.

        Raises:
            ValueError: a key that is not a valid GTIN-14, or an empty SKU.
        """
        for gtin, sku in entries.items():
            if len(gtin) != 14 or not is_valid_gtin(gtin):
                raise ValueError(f"catalogue key {gtin!r} is not a valid GTIN-14")
            if not sku:
                raise ValueError(f"catalogue entry for GTIN {gtin} has an empty SKU")
        self._skus: dict[str, str] = dict(entries)

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> Catalogue:
        """Load a ``gtin,sku`` CSV file (UTF-8, an Excel byte-order mark is tolerated).

        Raises:
            CatalogueError: missing or wrong header, a row without exactly two fields, an empty
                SKU, an invalid GTIN, or one GTIN listed with two different SKUs. The message
                names the file and line.
            OSError: the file cannot be read.
            UnicodeDecodeError: the file is not UTF-8.
        """
        # newline="" is what the csv module requires so that quoted fields keep their newlines
        # and line numbers stay right.
        with Path(path).open(encoding="utf-8-sig", newline="") as f:
            return cls.parse(f, source=os.fspath(path))

    @classmethod
    def parse(cls, lines: Iterable[str], source: str = "<catalogue>") -> Catalogue:
        """Parse CSV text lines; ``source`` is the name used in error messages.

        Blank lines are skipped. The same GTIN listed twice (possibly in different widths, e.g.
        GTIN-13 and GTIN-14) with the same SKU is accepted; with different SKUs it is an error,
        because a tag read could then not be attributed to one stock position.
        """
        reader = csv.reader(lines)
        header_seen = False
        skus: dict[str, str] = {}
        first_seen: dict[str, int] = {}
        for row in reader:
            # line_num counts physical lines read so far, i.e. the row's last line; a catalogue
            # row has no quoted newlines, so that is the row's line.
            line = reader.line_num
            if all(not field.strip() for field in row):
                continue
            if not header_seen:
                if tuple(field.strip().lower() for field in row) != _HEADER:
                    raise CatalogueError(
                        source, line, f"expected header 'gtin,sku', got {','.join(row)!r}"
                    )
                header_seen = True
                continue
            if len(row) != 2:
                raise CatalogueError(source, line, f"expected 2 fields (gtin,sku), got {len(row)}")
            raw_gtin, sku = (field.strip() for field in row)
            try:
                gtin14 = normalise_gtin(raw_gtin)
            except ValueError as e:
                raise CatalogueError(source, line, str(e)) from None
            if not sku:
                raise CatalogueError(source, line, f"empty SKU for GTIN {raw_gtin}")
            previous = skus.get(gtin14)
            if previous is None:
                skus[gtin14] = sku
                first_seen[gtin14] = line
            elif previous != sku:
                raise CatalogueError(
                    source,
                    line,
                    f"GTIN {gtin14} maps to {sku!r} here but to {previous!r} "
                    f"on line {first_seen[gtin14]}",
                )
        if not header_seen:
            raise CatalogueError(source, 1, "empty file, expected header 'gtin,sku'")
        return cls(skus)

    def sku_for(self, gtin14: str) -> str | None:
        """The SKU of a GTIN-14, or ``None`` if the catalogue does not list it."""
        return self._skus.get(gtin14)

    def __len__(self) -> int:
        return len(self._skus)

    def __contains__(self, gtin14: object) -> bool:
        return gtin14 in self._skus

    def items(self) -> Iterator[tuple[str, str]]:
        """The ``(gtin14, sku)`` pairs, in file order."""
        return iter(self._skus.items())
