"""`unistock admin import | locations | networks`: master data (role admin) on the command line.

    unistock admin import [--locations F] [--networks F] [--products F] [--catalogue F]
                          [--safety-stock F] [--batch N] [--dry-run]   master data from CSV
    unistock admin locations | networks [--json]                        master data as tables

Every file is read and checked before anything is sent (IMPORT_DESCRIPTION says the formats);
rows then go in batches, with a Rich progress bar per file on a terminal.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import pathlib
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from unistock.client._client import UnistockClient, UnistockClientError
from unistock.client.cli_app import JsonOpt, admin_app, command, schedule, state, usage
from unistock.client.cli_args import int_in
from unistock.client.output import CliError, note, print_json_array, show
from unistock.client.output import count as _count
from unistock.server.domain.errors import InvalidArgument
from unistock.server.domain.masterdata import (
    MAX_STALENESS_SECONDS,
    MAX_TEXT,
    Network,
    StalePolicy,
    gtin14,
)
from unistock.server.domain.values import MAX_QUANTITY, id_ok
from unistock.v1 import admin_pb2 as apb

#: Rows per master-data call the server accepts.
MAX_ADMIN_ROWS = 10_000
#: The largest request `admin import` sends (the server accepts 16 MiB): many networks with
#: thousands of members each are split into more calls than --batch alone would make.
MAX_REQUEST_BYTES = 4 * 1024 * 1024

IMPORT_DESCRIPTION = """\
Import master data from CSV files, in this order: locations, networks, products, catalogue,
safety stock. Files are UTF-8 (an Excel byte-order mark is fine) with a header line naming
the columns (any order); blank lines are skipped and spaces around values ignored.

  --locations FILE
      location_id,type,name,latitude,longitude,store_id,click_and_collect,
      ship_from_store,e_reservation,default_safety_stock[,low_stock_threshold]
      type: STORE, WAREHOUSE or VIRTUAL (any case). latitude, longitude: degrees, both or
      neither. click_and_collect, ship_from_store, e_reservation: true/false, yes/no, 1/0
      (empty: false). default_safety_stock: units (empty: 0). low_stock_threshold: units
      (empty: 0): a position there with 1 to that many available is low on stock
      (WatchEvents LOW_STOCK; 0: only out of stock / back in stock). The server's old
      --locations-file, `location_id,store_id`, is accepted too: its locations are STOREs.
  --networks FILE
      network_id,channel,staleness_limit_seconds,location_ids[,stale_policy,
      stale_discount_percent,low_stock_threshold]
      location_ids: the members, separated by ';' (each must be a location the server
      knows, e.g. from --locations). staleness_limit_seconds: empty or 0 is never stale.
      stale_policy: EXCLUDE (empty: a stale store's units are left out) or DISCOUNT (they
      count at stale_discount_percent, 0 to 100, required, and its stock is offered last).
      low_stock_threshold: units (empty: 0): a SKU whose network available is 1 to that
      many is low on stock there (WatchEvents NETWORK_LOW_STOCK; 0: only network out of
      stock / back in stock).
  --products FILE
      sku,gtin,model,size,colour
      gtin: GTIN-8, -12, -13 or -14 with its check digit, or empty.
  --catalogue FILE
      gtin,sku (the edge agent's catalogue): the GTIN of each SKU. A SKU that --products
      also lists gets the GTIN there. Any other SKU is imported as a product with only its
      GTIN: a product is replaced whole, so the model, size and colour stored for it are
      CLEARED. Import the catalogue together with --products to keep them.
  --safety-stock FILE
      sku,location_id,units
      units: the position's own safety stock; empty clears it (the position follows its
      location's default_safety_stock again).

Required columns: location_id and type (locations), network_id (networks), sku (products),
gtin and sku (catalogue), sku, location_id and units (safety stock). A column left out is
empty in every row. Each row replaces what is stored under its id (a network's members too).

Every file is read and checked before anything is sent: a bad line is reported as
`error: FILE:LINE: ...` and nothing is imported. Rows are then sent in batches of --batch
rows, each all or nothing. If the server refuses a batch (`error: FILE: rows A-B ...`, exit
1), the earlier batches and files stay imported: fix the file and run the same import again
(rows are replaced by id, so importing the same file twice is harmless).
"""


def listing(rows: Sequence[Any], table: Callable[[Any], Any], what: str, as_json: bool) -> None:
    """Master-data rows as one JSON array, or a table (a note when there are none)."""
    if as_json:
        print_json_array(rows)
    elif rows:
        show(table(rows))
    else:
        note(f"no {what} in master data")


# -- admin: master data ----------------------------------------------------------------------

_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0", ""})
_LOCATION_TYPES = ("STORE", "WAREHOUSE", "VIRTUAL")
_LOCATION_COLUMNS = (
    "location_id",
    "type",
    "name",
    "latitude",
    "longitude",
    "store_id",
    "click_and_collect",
    "ship_from_store",
    "e_reservation",
    "default_safety_stock",
    "low_stock_threshold",
)
#: The server's old --locations-file: every location a STORE.
_OLD_LOCATION_COLUMNS = ["location_id", "store_id"]
_NETWORK_COLUMNS = (
    "network_id",
    "channel",
    "staleness_limit_seconds",
    "location_ids",
    "stale_policy",
    "stale_discount_percent",
    "low_stock_threshold",
)
_PRODUCT_COLUMNS = ("sku", "gtin", "model", "size", "colour")
_CATALOGUE_COLUMNS = ("gtin", "sku")
_SAFETY_COLUMNS = ("sku", "location_id", "units")
#: Where the server's INVALID_ARGUMENT points, e.g. "networks[3].location_ids[0]: ...".
_ROW_REF = re.compile(r"(\w+)\[(\d+)\]")


class _BadValue(Exception):
    """A bad value in a CSV row; the message names the column."""


@dataclass
class _Row:
    """A message to send and the CSV row it came from."""

    ordinal: int  # its file's data row 1, 2, ... (the header and blank lines not counted)
    line: int
    message: Any
    note: str = ""  # e.g. where a merged GTIN came from


@dataclass
class _Upload:
    """One file's rows, sent in batches by `send`."""

    path: str
    noun: str  # "location": what a row is
    rows: list[_Row]
    send: Callable[[UnistockClient, list[Any]], Awaitable[int]]
    extra: str = ""  # said in the summary, after the count
    merged: int = 0  # catalogue: GTINs merged into the products file's rows
    batches: int = field(default=0, init=False)

    def summary(self, imported: int, *, dry_run: bool = False) -> str:
        verb = "to import" if dry_run else "imported"
        text = f"{_count(imported, self.noun)} {verb}{self.extra}"
        if self.merged:
            text = f"{_count(self.merged, 'GTIN')} merged into --products rows, {text}"
        return text


def import_files(args: argparse.Namespace) -> list[str]:
    return [
        f
        for f in (args.locations, args.networks, args.products, args.catalogue, args.safety_stock)
        if f
    ]


def _read_csv(
    path: str, known: Sequence[str], required: Sequence[str]
) -> tuple[int, list[str], list[tuple[int, dict[str, str]]]]:
    """(header line, columns, [(line, {column: value})]) of a CSV file; CliError naming the
    file and line when it cannot be read, is not UTF-8, or has a bad header or row."""
    try:
        data = pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CliError(f"{path}:{line}: not UTF-8 text (save it as CSV UTF-8)") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    header_line = 1
    rows: list[tuple[int, dict[str, str]]] = []
    end = 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num  # a quoted value may span lines
            if all(not f.strip() for f in fields):
                continue
            if header is None:
                header, header_line = [f.strip().lower() for f in fields], start
                _check_header(path, start, header, known, required)
                continue
            if len(fields) != len(header):
                raise CliError(
                    f"{path}:{start}: expected {len(header)} values ({','.join(header)}), "
                    f"got {len(fields)}"
                )
            rows.append((start, {c: f.strip() for c, f in zip(header, fields, strict=True)}))
    except csv.Error as exc:
        raise CliError(f"{path}:{reader.line_num}: {exc}") from None
    if header is None:
        raise CliError(f"{path}:1: empty file: expected the header {','.join(known)}")
    return header_line, header, rows


def _check_header(
    path: str, line: int, header: list[str], known: Sequence[str], required: Sequence[str]
) -> None:
    for column in header:
        if column not in known:
            raise CliError(
                f"{path}:{line}: unknown column {column!r} in the header (the columns are "
                f"{','.join(known)})"
            )
        if header.count(column) > 1:
            raise CliError(f"{path}:{line}: column {column!r} is named twice in the header")
    missing = [c for c in required if c not in header]
    if missing:
        raise CliError(
            f"{path}:{line}: the header lacks the column{'s' if len(missing) > 1 else ''} "
            f"{','.join(missing)} (the columns are {','.join(known)})"
        )


def _rows(
    path: str,
    rows: list[tuple[int, dict[str, str]]],
    parse: Callable[[dict[str, str], int], Any],
) -> list[_Row]:
    """The message parse(values, line) makes of every row; CliError `FILE:LINE: column:
    problem` at the first bad one."""
    out = []
    for ordinal, (line, values) in enumerate(rows, 1):
        try:
            out.append(_Row(ordinal, line, parse(values, line)))
        except _BadValue as exc:
            raise CliError(f"{path}:{line}: {exc}") from None
    return out


def _id(values: dict[str, str], column: str, *, optional: bool = False) -> str:
    value = values.get(column, "")
    if not value:
        if optional:
            return ""
        raise _BadValue(f"{column}: empty")
    if not id_ok(value):  # the server's own rule, checked before anything is sent
        raise _BadValue(
            f"{column}: {value!r} is not 1-128 printable ASCII characters without spaces or '|'"
        )
    return value


def _text(values: dict[str, str], column: str) -> str:
    value = values.get(column, "")
    if len(value) > MAX_TEXT:
        raise _BadValue(f"{column}: at most {MAX_TEXT} characters, got {len(value)}")
    return value


def _int(values: dict[str, str], column: str, hi: int) -> int:
    value = values.get(column, "")
    if not value:
        return 0
    try:
        n = int(value)
    except ValueError:
        raise _BadValue(f"{column}: expected a whole number, got {value!r}") from None
    if not 0 <= n <= hi:
        raise _BadValue(f"{column}: must be 0 to {hi:,}, got {value}")
    return n


def _degrees(values: dict[str, str], column: str, limit: float) -> float:
    value = values[column]
    try:
        x = float(value)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and -limit <= x <= limit):
        raise _BadValue(f"{column}: expected degrees from {-limit:g} to {limit:g}, got {value!r}")
    return x


def _bool(values: dict[str, str], column: str) -> bool:
    value = values.get(column, "").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise _BadValue(f"{column}: expected true/false, yes/no or 1/0, got {values[column]!r}")


def _gtin(values: dict[str, str], *, optional: bool) -> str:
    value = values.get("gtin", "")
    if not value and optional:
        return ""
    gtin = gtin14(value)
    if gtin is None:
        raise _BadValue(
            f"gtin: {value!r} is not a GTIN-8, -12, -13 or -14 with a valid check digit"
        )
    return gtin


def _once(seen: dict[Any, int], key: Any, what: str) -> None:
    """_BadValue when key was already on an earlier line."""
    if key in seen:
        raise _BadValue(f"{what} is already on line {seen[key]}")


def _read_locations(path: str) -> _Upload:
    header_line, header, rows = _read_csv(path, _LOCATION_COLUMNS, ["location_id"])
    old = header == _OLD_LOCATION_COLUMNS
    if not old and "type" not in header:
        raise CliError(
            f"{path}:{header_line}: the header lacks the column type (only the 2-column form "
            f"location_id,store_id may leave it out: its locations are STOREs)"
        )
    seen: dict[str, int] = {}

    def parse(v: dict[str, str], line: int) -> apb.Location:
        location_id = _id(v, "location_id")
        _once(seen, location_id, f"location_id {location_id!r}")
        kind = v.get("type", "STORE" if old else "").upper()
        if kind not in _LOCATION_TYPES:
            raise _BadValue(f"type: expected STORE, WAREHOUSE or VIRTUAL, got {v['type']!r}")
        m = apb.Location(
            location_id=location_id,
            type=apb.LocationType.Value(kind),
            name=_text(v, "name"),
            store_id=_id(v, "store_id", optional=True),
            click_and_collect=_bool(v, "click_and_collect"),
            ship_from_store=_bool(v, "ship_from_store"),
            e_reservation=_bool(v, "e_reservation"),
            default_safety_stock=_int(v, "default_safety_stock", MAX_QUANTITY),
            low_stock_threshold=_int(v, "low_stock_threshold", MAX_QUANTITY),
        )
        lat, lon = v.get("latitude", ""), v.get("longitude", "")
        if bool(lat) != bool(lon):
            raise _BadValue(
                f"{'longitude' if lat else 'latitude'}: empty: give both latitude and "
                "longitude, or neither"
            )
        if lat:
            m.latitude = _degrees(v, "latitude", 90)
            m.longitude = _degrees(v, "longitude", 180)
            m.has_position = True
        seen[location_id] = line
        return m

    return _Upload(path, "location", _rows(path, rows, parse), lambda c, ms: c.upsert_locations(ms))


def _read_networks(path: str) -> _Upload:
    _, _, rows = _read_csv(path, _NETWORK_COLUMNS, ["network_id"])
    seen: dict[str, int] = {}

    def parse(v: dict[str, str], line: int) -> apb.Network:
        network_id = _id(v, "network_id")
        _once(seen, network_id, f"network_id {network_id!r}")
        members: list[str] = []
        for member in v.get("location_ids", "").split(";"):
            member = member.strip()
            if not member:
                continue  # "a;;b" or a trailing ';'
            _id({"location_ids": member}, "location_ids")
            if member in members:
                raise _BadValue(f"location_ids: {member!r} is listed twice")
            members.append(member)
        policy = v.get("stale_policy", "").upper() or "EXCLUDE"
        if policy not in ("EXCLUDE", "DISCOUNT"):
            raise _BadValue(
                f"stale_policy: expected EXCLUDE or DISCOUNT, got {v['stale_policy']!r}"
            )
        if policy == "DISCOUNT" and not v.get("stale_discount_percent"):
            raise _BadValue("stale_discount_percent: give 0 to 100 with stale_policy DISCOUNT")
        n = apb.Network(
            network_id=network_id,
            channel=_text(v, "channel"),
            location_ids=members,
            staleness_limit_seconds=_int(v, "staleness_limit_seconds", MAX_STALENESS_SECONDS),
            stale_policy=apb.Network.StalePolicy.Value(policy),
            stale_discount_percent=_int(v, "stale_discount_percent", 100),
            low_stock_threshold=_int(v, "low_stock_threshold", MAX_QUANTITY),
        )
        try:  # the server's own rules (e.g. a discount only with DISCOUNT)
            Network(
                network_id, tuple(members), n.channel, n.staleness_limit_seconds,
                StalePolicy[policy], n.stale_discount_percent, n.low_stock_threshold,
            ).validate()  # fmt: skip
        except InvalidArgument as exc:
            raise _BadValue(str(exc)) from None
        seen[network_id] = line
        return n

    return _Upload(path, "network", _rows(path, rows, parse), lambda c, ms: c.upsert_networks(ms))


def _read_products(path: str) -> _Upload:
    _, _, rows = _read_csv(path, _PRODUCT_COLUMNS, ["sku"])
    skus: dict[str, int] = {}
    gtins: dict[str, int] = {}

    def parse(v: dict[str, str], line: int) -> apb.Product:
        sku = _id(v, "sku")
        _once(skus, sku, f"sku {sku!r}")
        gtin = _gtin(v, optional=True)
        if gtin:
            _once(gtins, gtin, f"GTIN {gtin}")
            gtins[gtin] = line
        skus[sku] = line
        return apb.Product(
            sku=sku,
            gtin=gtin,
            model=_text(v, "model"),
            size=_text(v, "size"),
            colour=_text(v, "colour"),
        )

    return _Upload(path, "product", _rows(path, rows, parse), lambda c, ms: c.upsert_products(ms))


def _read_catalogue(path: str, products: _Upload | None) -> _Upload:
    """The catalogue's GTINs: merged into the rows of products (when given), the other SKUs
    as products with only a GTIN."""
    _, _, rows = _read_csv(path, _CATALOGUE_COLUMNS, _CATALOGUE_COLUMNS)
    by_sku = {r.message.sku: r for r in products.rows} if products else {}
    by_gtin = {r.message.gtin: r for r in products.rows if r.message.gtin} if products else {}
    gtins: dict[str, tuple[str, int]] = {}  # GTIN -> (SKU, line)
    skus: dict[str, tuple[str, int]] = {}  # SKU -> (GTIN, line)
    products_path = products.path if products else ""
    merged = 0

    def parse(v: dict[str, str], line: int) -> apb.Product | None:
        nonlocal merged
        gtin, sku = _gtin(v, optional=False), _id(v, "sku")
        if gtin in gtins:
            other, first = gtins[gtin]
            if other != sku:
                raise _BadValue(f"GTIN {gtin} names SKU {other!r} on line {first}, here {sku!r}")
            return None  # the same pair again (e.g. as GTIN-13 and GTIN-14)
        if sku in skus:
            other, first = skus[sku]
            raise _BadValue(
                f"SKU {sku!r} has GTIN {other} on line {first}, here {gtin}: master data "
                "keeps one GTIN per SKU"
            )
        gtins[gtin], skus[sku] = (sku, line), (gtin, line)
        owner = by_gtin.get(gtin)
        if owner is not None and owner.message.sku != sku:
            raise _BadValue(
                f"GTIN {gtin} is SKU {sku!r} here, but {owner.message.sku!r} in "
                f"{products_path}:{owner.line}"
            )
        row = by_sku.get(sku)
        if row is None:
            return apb.Product(sku=sku, gtin=gtin)
        if row.message.gtin and row.message.gtin != gtin:
            raise _BadValue(
                f"SKU {sku!r} has GTIN {gtin} here, but {row.message.gtin} in "
                f"{products_path}:{row.line}"
            )
        if not row.message.gtin:
            row.message.gtin = gtin
            row.note = f"its GTIN from {path}:{line}"
            merged += 1
        return None  # in the products file's rows

    parsed = _rows(path, rows, parse)
    return _Upload(
        path,
        "product",
        [r for r in parsed if r.message is not None],
        lambda c, ms: c.upsert_products(ms),
        extra=" (SKU and GTIN only)",
        merged=merged,
    )


def _read_safety_stock(path: str) -> _Upload:
    _, _, rows = _read_csv(path, _SAFETY_COLUMNS, _SAFETY_COLUMNS)
    seen: dict[tuple[str, str], int] = {}
    cleared = 0

    def parse(v: dict[str, str], line: int) -> apb.SafetyStock:
        nonlocal cleared
        key = (_id(v, "sku"), _id(v, "location_id"))
        _once(seen, key, f"sku {key[0]!r} at location_id {key[1]!r}")
        seen[key] = line
        if not v["units"]:
            cleared += 1
            return apb.SafetyStock(sku=key[0], location_id=key[1], clear=True)
        return apb.SafetyStock(sku=key[0], location_id=key[1], units=_int(v, "units", MAX_QUANTITY))

    upload = _Upload(
        path, "safety stock", _rows(path, rows, parse), lambda c, ms: c.set_safety_stock(ms)
    )
    if cleared:
        upload.extra = f" ({cleared:,} of them cleared)"
    return upload


def read_import(args: argparse.Namespace) -> list[_Upload]:
    """Every file given, read and checked (CliError FILE:LINE), in import order."""
    uploads = []
    if args.locations:
        uploads.append(_read_locations(args.locations))
    if args.networks:
        uploads.append(_read_networks(args.networks))
    products = _read_products(args.products) if args.products else None
    if products:
        uploads.append(products)
    if args.catalogue:
        uploads.append(_read_catalogue(args.catalogue, products))
    if args.safety_stock:
        uploads.append(_read_safety_stock(args.safety_stock))
    return uploads


def _batches(rows: list[_Row], size: int) -> Iterator[list[_Row]]:
    """rows in batches of at most size rows and about MAX_REQUEST_BYTES."""
    batch: list[_Row] = []
    nbytes = 0
    for row in rows:
        n = row.message.ByteSize() + 8  # the field's tag and length
        if batch and (len(batch) >= size or nbytes + n > MAX_REQUEST_BYTES):
            yield batch
            batch, nbytes = [], 0
        batch.append(row)
        nbytes += n
    if batch:
        yield batch


def _refused(upload: _Upload, batch: list[_Row], exc: UnistockClientError) -> CliError:
    """`FILE: rows A-B (lines C-D): CODE: message`, naming the line of the row it points at."""
    first, last = batch[0], batch[-1]
    if first is last:
        where = f"row {first.ordinal:,} (line {first.line})"
    else:
        where = f"rows {first.ordinal:,}-{last.ordinal:,} (lines {first.line}-{last.line})"
    text = f"{upload.path}: {where}: {exc}"
    ref = _ROW_REF.match(exc.details)
    if ref is not None and int(ref[2]) < len(batch):
        row = batch[int(ref[2])]
        text += f" ({ref[0]} is line {row.line}{', ' + row.note if row.note else ''})"
    return CliError(" ".join(text.split()))


async def upload(c: UnistockClient, uploads: list[_Upload], size: int) -> None:
    """Send every upload in batches: a progress bar per file on a terminal, else a line per
    file on stderr; then the summary on stdout. CliError naming the rows of a refused batch."""
    console = Console(stderr=True)
    progress = Progress(
        TextColumn("{task.description}", markup=False),  # a file name, not markup
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("rows"),
        TimeElapsedColumn(),
        console=console,
        disable=not console.is_terminal,
    )
    imported: list[int] = []
    with progress:
        for u in uploads:
            task = progress.add_task(u.path, total=len(u.rows))
            done = 0
            for batch in _batches(u.rows, size):
                try:
                    done += await u.send(c, [r.message for r in batch])
                except UnistockClientError as exc:
                    raise _refused(u, batch, exc) from None
                u.batches += 1
                progress.advance(task, len(batch))
            imported.append(done)
            if not console.is_terminal:
                print(f"{u.path}: {u.summary(done)}", file=sys.stderr, flush=True)
    for u, done in zip(uploads, imported, strict=True):
        print(f"{u.path}: {u.summary(done)} in {_count(u.batches, 'batch')}")


# -- admin: tables -------------------------------------------------------------------------


def locations_table(locations: Sequence[apb.Location]) -> Table:
    t = Table(title=_count(len(locations), "location"), title_justify="left")
    t.add_column("location", no_wrap=True)
    t.add_column("type", no_wrap=True)
    t.add_column("name")
    t.add_column("position", no_wrap=True)
    t.add_column("store", no_wrap=True)
    t.add_column("offers")
    t.add_column("default safety stock", justify="right")
    t.add_column("low stock", justify="right")
    for loc in locations:
        offers = [
            what
            for what, flag in (
                ("click & collect", loc.click_and_collect),
                ("ship from store", loc.ship_from_store),
                ("e-reservation", loc.e_reservation),
            )
            if flag
        ]
        t.add_row(
            Text(loc.location_id),
            apb.LocationType.Name(loc.type),
            Text(loc.name),
            f"{loc.latitude:g}, {loc.longitude:g}" if loc.has_position else "",
            Text(loc.store_id),
            ", ".join(offers),
            f"{loc.default_safety_stock:,}",
            f"1 to {loc.low_stock_threshold:,}" if loc.low_stock_threshold else "off",
        )
    return t


def networks_table(networks: Sequence[apb.Network]) -> Table:
    t = Table(title=_count(len(networks), "network"), title_justify="left")
    t.add_column("network", no_wrap=True)
    t.add_column("channel")
    t.add_column("staleness limit", justify="right")
    t.add_column("stale stores")
    t.add_column("low stock", justify="right")
    t.add_column("locations", justify="right")
    t.add_column("members")
    for n in networks:
        t.add_row(
            Text(n.network_id),
            Text(n.channel),
            f"{n.staleness_limit_seconds:,} s" if n.staleness_limit_seconds else "never",
            (
                f"count {n.stale_discount_percent} %"
                if n.stale_policy == apb.Network.DISCOUNT
                else "left out"
            ),
            f"1 to {n.low_stock_threshold:,}" if n.low_stock_threshold else "off",
            f"{len(n.location_ids):,}",
            Text(", ".join(n.location_ids)),
        )
    return t


@command(
    admin_app,
    short_help="import master data from CSV files",
    as_written=True,
    name="import",
    help=IMPORT_DESCRIPTION,
)
def import_(
    ctx: typer.Context,
    locations: Annotated[
        str | None,
        typer.Option(metavar="FILE", help="locations CSV (or the old location_id,store_id form)"),
    ] = None,
    networks: Annotated[str | None, typer.Option(metavar="FILE", help="networks CSV")] = None,
    products: Annotated[str | None, typer.Option(metavar="FILE", help="products CSV")] = None,
    catalogue: Annotated[
        str | None, typer.Option(metavar="FILE", help="the edge agent's gtin,sku catalogue")
    ] = None,
    safety_stock: Annotated[
        str | None, typer.Option(metavar="FILE", help="safety stock CSV")
    ] = None,
    batch: Annotated[
        int,
        typer.Option(
            parser=int_in(1, MAX_ADMIN_ROWS),
            metavar="N",
            help="rows per call (default 1,000; at most 10,000)",
        ),
    ] = 1_000,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run", help="read and check the files, say what would be imported, send nothing"
        ),
    ] = False,
) -> None:
    args = argparse.Namespace(
        locations=locations,
        networks=networks,
        products=products,
        catalogue=catalogue,
        safety_stock=safety_stock,
    )
    if not import_files(args):
        raise usage(
            "give at least one file: --locations, --networks, --products, --catalogue or "
            "--safety-stock"
        )
    s = state(ctx)

    def check() -> int | None:
        uploads = read_import(args)  # every file checked before anything is sent
        if dry_run:
            for u in uploads:
                print(f"{u.path}: {u.summary(len(u.rows), dry_run=True)}")
            print("dry run: nothing sent")
            return 0
        schedule(ctx, lambda c: upload(c, uploads, batch), timeout=120)
        return None  # go on: connect and send

    s.local = check


def _listing_command(
    name: str,
    what: str,
    fetch: Callable[[UnistockClient], Awaitable[Sequence[Any]]],
    table: Callable[[Any], Table],
) -> None:
    """`unistock admin NAME [--json]`: the rows fetch(client) answers, as listing prints them."""

    @command(
        admin_app,
        name=name,
        short_help=f"list the {what}",
        help=f"List the {what} (a table; --json: one JSON array).",
    )
    def _(ctx: typer.Context, as_json: JsonOpt = False) -> None:
        async def job(c: UnistockClient) -> None:
            listing(await fetch(c), table, name, as_json)

        schedule(ctx, job)


_listing_command("locations", "locations", lambda c: c.list_locations(), locations_table)
_listing_command(
    "networks", "networks and their members", lambda c: c.list_networks(), networks_table
)
