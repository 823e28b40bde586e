"""`unistock`: a command line for the inventory API (ops, demos, scripts).

    unistock get SKU [LOCATION]               levels of a SKU (everywhere or at one location)
    unistock reserve ID SKU@LOC:QTY... [--in NETWORK SKU[:QTY]]...   hold units (all or none)
    unistock release ID | show ID
    unistock fulfil ID [SKU@LOC:QTY... --request-id R]   ship all, or these lines
    unistock extend ID (SECONDS | --until RFC3339)       hold SECONDS from now, or until then
    unistock move SOURCE SEQ TYPE SKU@LOC:QTY [--count-id C] [--transfer-id T]
                  [--counterpart LOC] [--reservation-id R] [--sign +|- --reason WHY]
                  [--condition SELLABLE|NON_SELLABLE]
    unistock network NETWORK SKU... [--watch]   what a network may promise (or watch it)
    unistock transfer-reservation ID SKU@FROM>TO:QTY... --request-id R   re-source held units
    unistock find SKU[:QTY]... [--near LOC | --at LAT,LON] [--mode M] [--network N]
                  [--max-km K] [--limit N] [--split] [--variants]   where to serve an order
    unistock transfer ID [LOCATION]           a transfer: shipped, received, in transit, lost
    unistock close-transfer ID LOCATION       the destination closes it: the rest is lost
    unistock watch [--sku S]... [--location L]...
    unistock events [--type T]... [--sku S]... [--location L]... [--network N]... [--after ID]
                    events (low stock, ready for pickup...) as JSON lines until Ctrl-C
    unistock reservations --customer C | --channel CH | --location LOC [--state STATE]...
                          [--newest-first] [--limit N] [--json] [--watch]   as a table
    unistock history SKU@LOC | SKU | --location LOC | --reservation ID [--since WHEN]
                     [--until WHEN] [--type TYPE]... [--limit N] [--json]   the ledger
    unistock kpis [--by store|location|channel] [--since WHEN] [--until WHEN]
                  [--location LOC]... [--channel C]... [--json]   sold, returned, shrinkage...
    unistock admin import [--locations F] [--networks F] [--products F] [--catalogue F]
                          [--safety-stock F] [--batch N] [--dry-run]   master data from CSV
    unistock admin locations | networks [--json]                        master data as tables

Target and token: --target / UNISTOCK_TARGET, --token / UNISTOCK_TOKEN, else the user config
file `make run` writes ($UNISTOCK_CONFIG, else ~/.config/unistock/config.toml: target, token or
token_file), else localhost:50051 and the dev token `make run` wrote: $UNISTOCK_DATA_DIR/dev-token
when UNISTOCK_DATA_DIR is set, otherwise var/dev-token in the current directory or the nearest
parent directory that has one, or in the checkout this CLI runs from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import io
import json
import math
import os
import pathlib
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from unistock.client import cli_ledger, cli_reservations
from unistock.client._client import EventWatcher, UnistockClient, UnistockClientError
from unistock.client.cli_ledger import rfc3339 as _rfc3339
from unistock.client.config import ClientConfig, ConfigError
from unistock.client.output import count as _count
from unistock.client.output import note as _note
from unistock.client.output import print_json_array as _print_json_array
from unistock.client.output import show as _show
from unistock.server.domain.errors import InvalidArgument
from unistock.server.domain.masterdata import (
    MAX_STALENESS_SECONDS,
    MAX_TEXT,
    Network,
    StalePolicy,
    gtin14,
)
from unistock.server.domain.values import MAX_QUANTITY, MAX_TTL_SECONDS, id_ok
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

EPILOG = """\
exit codes:
  0    done (a movement applied, or recognised as a duplicate of an applied one; a
       master-data import or listing complete)
  1    refused by the server, a movement rejected, no token, server unreachable, other errors
  2    usage error (bad or out-of-range arguments)
  130  interrupted (Ctrl-C)
"""

_SIGNS = {None: pb.ADJUSTMENT_SIGN_UNSPECIFIED, "+": pb.INCREASE, "-": pb.DECREASE}
MAX_UINT64 = 2**64 - 1
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


class CliError(Exception):
    """A failure reported as `error: <message>`, exit 1."""


def _int_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer from lo to hi (what the wire and the server accept)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be from {lo:,} to {hi:,}, got {text}")
        return value

    return parse


def _line_of(min_quantity: int) -> Callable[[str], tuple[str, str, int]]:
    """An argparse type: SKU@LOCATION:QTY with min_quantity <= QTY <= 1,000,000,000."""
    quantity = _int_in(min_quantity, MAX_QUANTITY)

    def parse(text: str) -> tuple[str, str, int]:
        try:
            key, qty = text.rsplit(":", 1)
            sku, loc = key.split("@", 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected SKU@LOCATION:QTY, got {text!r}") from None
        try:
            return sku, loc, quantity(qty)
        except argparse.ArgumentTypeError as exc:
            raise argparse.ArgumentTypeError(f"quantity {exc} (in {text!r})") from None

    return parse


def _sku(text: str) -> str:
    """An argparse type: a SKU alone (SKU@LOC is the location form of other commands)."""
    if "@" in text:
        raise argparse.ArgumentTypeError(
            f"expected a SKU, got {text!r}: no @LOCATION here (the network's locations are "
            "all looked at)"
        )
    return text


def _sku_qty(text: str) -> tuple[str, int]:
    """An argparse type: SKU or SKU:QTY (QTY 1 to 1e9, default 1), no @LOCATION."""
    sku, _, qty = text.rpartition(":") if ":" in text else (text, "", "1")
    if not sku:
        raise argparse.ArgumentTypeError(f"expected SKU or SKU:QTY, got {text!r}")
    return _sku(sku), _int_in(1, MAX_QUANTITY)(qty)


def _move(text: str) -> tuple[str, str, str, int]:
    """An argparse type: SKU@FROM>TO:QTY."""
    sku, at, rest = text.partition("@")
    origin, gt, rest = rest.partition(">")
    destination, colon, qty = rest.rpartition(":")
    if not (sku and at and origin and gt and destination and colon):
        raise argparse.ArgumentTypeError(f"expected SKU@FROM>TO:QTY, got {text!r}")
    return sku, origin, destination, _int_in(1, MAX_QUANTITY)(qty)


def _lat_lon(text: str) -> tuple[float, float]:
    """An argparse type: LAT,LON in degrees (-90 to 90, -180 to 180)."""
    try:
        lat, lon = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LAT,LON in degrees, got {text!r}") from None
    if not -90 <= lat <= 90:
        raise argparse.ArgumentTypeError(f"latitude must be -90 to 90, got {lat:g}")
    if not -180 <= lon <= 180:
        raise argparse.ArgumentTypeError(f"longitude must be -180 to 180, got {lon:g}")
    return lat, lon


def _km(text: str) -> float:
    """An argparse type: a distance in km, >= 0."""
    try:
        km = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected kilometres, got {text!r}") from None
    if not km >= 0:  # also NaN
        raise argparse.ArgumentTypeError(f"must be 0 (any distance) or more, got {text}")
    return km


def _token(arg: str | None) -> str:
    """The token (see unistock.client.config for the order); CliError naming what was tried."""
    try:
        return ClientConfig.load().token(arg).value
    except ConfigError as e:
        raise CliError(str(e)) from None


def _print(message: object, *, defaults: bool = False) -> None:
    print(
        json_format.MessageToJson(
            message,  # type: ignore[arg-type]
            indent=None,
            always_print_fields_with_no_presence=defaults,
        )
    )


def _event_id(text: str) -> str:
    """--after: an event id as WatchEvents gives them ("<ms>-<sequence>")."""
    if not re.fullmatch(r"\d{1,20}-\d{1,20}", text):
        raise argparse.ArgumentTypeError(
            f"not an event id: {text!r} (the eventId or startAfterEventId of a line printed)"
        )
    return text


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="unistock",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", default=None)
    p.add_argument("--token", default=None)
    sub = p.add_subparsers(dest="command", required=True)

    def command(
        name: str,
        help_: str,
        parent: argparse._SubParsersAction[argparse.ArgumentParser] = sub,
        **kwargs: str,
    ) -> argparse.ArgumentParser:
        c = parent.add_parser(
            name,
            help=help_,
            epilog=EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **kwargs,  # type: ignore[arg-type]
        )
        c.set_defaults(command_parser=c)  # for usage errors found after parsing
        return c

    line = _line_of(1)
    g = command("get", "levels of a SKU")
    g.add_argument("sku")
    g.add_argument("location", nargs="?")
    r = command("reserve", "hold units")
    r.add_argument("reservation_id")
    r.add_argument("lines", nargs="*", type=line, metavar="SKU@LOC:QTY")
    r.add_argument(
        "--in",
        dest="network_lines",
        nargs=2,
        action="append",
        default=[],
        metavar=("NETWORK", "SKU[:QTY]"),
        help="a line held anywhere in NETWORK (the server chooses the location); one --in per "
        "line: --in web A:1 --in web B:2",
    )
    r.add_argument(
        "--kind",
        default="CART",
        choices=[k for k in pb.ReservationKind.keys() if k != "RESERVATION_KIND_UNSPECIFIED"],  # noqa: SIM118 (an enum wrapper, not a dict),
    )
    r.add_argument(
        "--ttl",
        type=_int_in(0, MAX_TTL_SECONDS),
        default=0,
        help="hold time in seconds from now (0: the kind's default; at most 31,622,400)",
    )
    r.add_argument("--channel", default="cli")
    r.add_argument("--customer", default="", help="the customer the units are promised to")
    for name in ("release", "show"):
        c = command(name, f"{name} a reservation")
        c.add_argument("reservation_id")
    f = command(
        "fulfil",
        "the reserved units left (all, or some lines)",
        description="Report units of a reservation as shipped: every unit still held, or only\n"
        "the given lines (a partial fulfilment, which needs --request-id so that running\n"
        "the same command again fulfils the lines once).",
    )
    f.add_argument("reservation_id")
    f.add_argument("lines", nargs="*", type=line, metavar="SKU@LOC:QTY")
    f.add_argument(
        "--request-id", default="", help="idempotency key, required with lines (reuse it on retry)"
    )
    e = command(
        "extend",
        "move a reservation's expiry",
        description="Move an ACTIVE reservation's expiry: SECONDS is the new hold time counted\n"
        "from now (not added to the current expiry), or --until gives the new expiry itself.",
    )
    e.add_argument("reservation_id")
    when = e.add_mutually_exclusive_group()
    when.add_argument(
        "seconds",
        nargs="?",
        type=_int_in(1, MAX_TTL_SECONDS),
        metavar="SECONDS",
        help="hold time from now, in seconds (1 to 31,622,400, i.e. 366 days)",
    )
    when.add_argument(
        "--until",
        type=_rfc3339,
        metavar="RFC3339",
        help="the new expiry, e.g. 2030-01-31T18:00:00Z (at most 366 days from now)",
    )
    m = command("move", "send one movement")
    m.add_argument("source")
    m.add_argument("seq", type=_int_in(1, MAX_UINT64), help="the source's sequence number (>= 1)")
    m.add_argument(
        "type",
        choices=[t for t in pb.MovementType.keys() if t != "MOVEMENT_TYPE_UNSPECIFIED"],  # noqa: SIM118
    )
    m.add_argument(
        "line", type=_line_of(0), metavar="SKU@LOC:QTY", help="QTY 1 to 1e9 (a COUNT: 0 to 1e9)"
    )
    m.add_argument("--count-id", default="")
    m.add_argument("--transfer-id", default="")
    m.add_argument(
        "--counterpart",
        default="",
        metavar="LOC",
        help="TRANSFER_OUT: the destination (required); TRANSFER_IN: the origin (optional)",
    )
    m.add_argument("--reservation-id", default="")
    m.add_argument("--sign", choices=["+", "-"], default=None, help="ADJUSTMENT: + or -")
    m.add_argument("--reason", default="", help="ADJUSTMENT: why (damage, theft, found...)")
    m.add_argument(
        "--condition",
        choices=["SELLABLE", "NON_SELLABLE"],
        default=None,
        help="RETURN or ADJUSTMENT: which units (NON_SELLABLE: damaged, to inspect)",
    )
    tr = command(
        "transfer-reservation",
        "move held units of a reservation between locations",
        description="Move held units of an ACTIVE reservation: every move or none. MOVE is\n"
        "SKU@FROM>TO:QTY. --request-id makes it idempotent (reuse it on retry).",
    )
    tr.add_argument("reservation_id")
    tr.add_argument("moves", nargs="+", type=_move, metavar="SKU@FROM>TO:QTY")
    tr.add_argument("--request-id", required=True, help="idempotency key, the same on retry")
    fs = command(
        "find",
        "which locations of a network should serve an order",
        description="Rank a network's locations for an order (FindStock): those that serve every\n"
        "line alone first, then the nearest, then the deepest stock. SKU or SKU:QTY (1 unit).",
    )
    fs.add_argument("lines", nargs="+", type=_sku_qty, metavar="SKU[:QTY]")
    fs.add_argument("--network", default="web", help="the network (default web)")
    fs.add_argument(
        "--mode",
        default="SHIP",
        choices=["SHIP", "CLICK_AND_COLLECT", "E_RESERVATION"],
        help="the fulfilment mode the locations must offer (default SHIP)",
    )
    where = fs.add_mutually_exclusive_group()
    where.add_argument("--near", default="", metavar="LOCATION", help="from this location")
    where.add_argument("--at", type=_lat_lon, metavar="LAT,LON", help="from these coordinates")
    fs.add_argument(
        "--max-km", type=_km, default=0.0, help="only this far (0: any; needs --near or --at)"
    )
    fs.add_argument(
        "--limit", type=_int_in(1, 100), default=10, help="1 to 100 options (default 10)"
    )
    fs.add_argument("--split", action="store_true", help="also the fewest locations together")
    fs.add_argument("--variants", action="store_true", help="also the model's other sizes/colours")
    n = command(
        "network",
        "what a network may promise of SKUs",
        description="Per SKU, the sum of the available of the network's member locations that\n"
        "are not stale, plus a stale one's share under a DISCOUNT stale policy (NetworkLevel).\n"
        "--watch: the levels, then every change, until Ctrl-C.",
    )
    n.add_argument("network")
    n.add_argument(
        "skus", nargs="*", type=_sku, metavar="SKU", help="1 to 500 (with --watch: none = all)"
    )
    n.add_argument("--watch", action="store_true", help="stream the levels and their changes")
    t = command(
        "transfer",
        "a transfer: per SKU shipped, received, in transit, lost",
        description="Show a transfer's record at its destination (LOCATION), or at every\n"
        "destination that has one.",
    )
    t.add_argument("transfer_id")
    t.add_argument("location", nargs="?", default="")
    ct = command(
        "close-transfer",
        "close a transfer received short",
        description="The receiving side (LOCATION, the destination) closes a transfer: units\n"
        "still in transit are recorded lost in transit. Running it again changes nothing.",
    )
    ct.add_argument("transfer_id")
    ct.add_argument("location")
    w = command("watch", "stream levels and changes")
    w.add_argument("--sku", action="append", default=[])
    w.add_argument("--location", action="append", default=[])
    ev = command(
        "events",
        "stream events (low stock, ready for pickup, ...)",
        description="Events matching every filter given (each repeatable: any of its values),\n"
        'as JSON lines, until Ctrl-C. The first line is {"startAfterEventId": ...}: pass it,\n'
        "or the last eventId printed, to --after to resume there. A connection lost once the\n"
        "stream has started (a server restart) is resumed after the last event printed, with\n"
        "a note on stderr; a server that cannot be reached at the start is exit 1.",
    )
    ev.add_argument(
        "--type",
        action="append",
        default=[],
        choices=[v.name for v in pb.EventType.DESCRIPTOR.values if v.number],
        metavar="TYPE",
        help="an EventType name, e.g. LOW_STOCK",
    )
    ev.add_argument("--sku", action="append", default=[])
    ev.add_argument("--location", action="append", default=[])
    ev.add_argument("--network", action="append", default=[])
    ev.add_argument(
        "--after", default=None, type=_event_id, help="resume after this event id (default: now)"
    )
    cli_ledger.add_commands(command)
    cli_reservations.add_commands(command)
    a = command(
        "admin",
        "master data (role admin): import CSV files, list locations and networks",
        description="Master data (role admin): locations, networks, products and safety stock.",
    )
    admin = a.add_subparsers(
        dest="admin_command", required=True, metavar="{import,locations,networks}"
    )
    i = command(
        "import",
        "import master data from CSV files",
        admin,
        description=IMPORT_DESCRIPTION,
    )
    for flag, what in (
        ("--locations", "locations CSV (or the old location_id,store_id form)"),
        ("--networks", "networks CSV"),
        ("--products", "products CSV"),
        ("--catalogue", "the edge agent's gtin,sku catalogue"),
        ("--safety-stock", "safety stock CSV"),
    ):
        i.add_argument(flag, metavar="FILE", help=what)
    i.add_argument(
        "--batch",
        type=_int_in(1, MAX_ADMIN_ROWS),
        default=1_000,
        metavar="N",
        help="rows per call (default 1,000; at most 10,000)",
    )
    i.add_argument(
        "--dry-run",
        action="store_true",
        help="read and check the files, say what would be imported, send nothing",
    )
    for name, what in (("locations", "locations"), ("networks", "networks and their members")):
        c = command(name, f"list the {what}", admin)
        c.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    return p


def _check(args: argparse.Namespace) -> None:
    """What the argparse types cannot check alone; a usage error (exit 2) otherwise."""
    sub: argparse.ArgumentParser = args.command_parser
    if args.command == "move" and args.line[2] == 0 and args.type != "COUNT":
        sub.error("argument SKU@LOC:QTY: quantity must be at least 1 (0 only for a COUNT)")
    if args.command == "reserve" and not args.lines and not args.network_lines:
        sub.error("give at least one line: SKU@LOC:QTY, or --in NETWORK SKU[:QTY]")
    if args.command == "reserve":
        for _, item in args.network_lines:
            if "@" in item:
                sub.error(
                    f"argument --in: {item!r}: give SKU[:QTY]; the network chooses the location "
                    "(a line at a location is SKU@LOC:QTY, without --in)"
                )
            try:
                _sku_qty(item)
            except argparse.ArgumentTypeError as exc:
                sub.error(f"argument --in: {exc}")
    if args.command == "find" and args.max_km and not (args.near or args.at):
        sub.error("argument --max-km: needs --near or --at (a distance from where?)")
    if args.command in cli_ledger.COMMANDS and (problem := cli_ledger.usage_error(args)):
        sub.error(problem)
    if args.command in cli_reservations.COMMANDS and (
        problem := cli_reservations.usage_error(args)
    ):
        sub.error(problem)
    if args.command == "network" and not args.watch and not args.skus:
        sub.error("give at least one SKU (or --watch for every SKU of the network)")
    if args.command == "fulfil" and args.lines and not args.request_id:
        sub.error(
            "argument --request-id: required with lines (without it, running the command "
            "again would fulfil the lines twice)"
        )
    if args.command == "extend" and args.seconds is None and args.until is None:
        sub.error("give SECONDS (hold time from now) or --until RFC3339")
    if args.command == "admin" and args.admin_command == "import" and not _import_files(args):
        sub.error(
            "give at least one file: --locations, --networks, --products, --catalogue or "
            "--safety-stock"
        )


def _rejected(ack: pb.MovementAck) -> str:
    first = ack.rejections[0]
    reason = pb.RejectReason.Name(first.reason)
    return f"{len(ack.rejections)} movement(s) rejected: {reason} {first.detail}"


async def run(args: argparse.Namespace) -> int:
    """Execute one command; returns the exit code."""
    uploads: list[_Upload] = []
    streaming = args.command in ("watch", "events") or (
        args.command in ("network", "reservations") and args.watch
    )
    timeout: float | None = None if streaming else 10
    if args.command == "admin" and args.admin_command == "import":
        uploads = _read_import(args)  # every file checked before anything is sent
        if args.dry_run:
            for u in uploads:
                print(f"{u.path}: {u.summary(len(u.rows), dry_run=True)}")
            print("dry run: nothing sent")
            return 0
        timeout = 120
    try:
        target = ClientConfig.load().target(args.target).value
    except ConfigError as e:
        raise CliError(str(e)) from None
    async with UnistockClient(target, _token(args.token), timeout=timeout) as c:
        try:
            if uploads:
                await _import(c, uploads, args.batch)
                return 0
            return await _command(c, args)
        except UnistockClientError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


async def _events(c: UnistockClient, args: argparse.Namespace) -> None:
    """Print events as JSON lines (the stream's start point first, once), resuming after the
    last one printed when the stream breaks once started (EventWatcher); raises
    UnistockClientError."""

    def retrying(exc: UnistockClientError, delay: float) -> None:
        _note(f"{exc}; resuming after event {watcher.last_event_id} in {delay:g} s (Ctrl-C stops)")

    watcher = EventWatcher(
        c,
        types=args.type,
        skus=args.sku,
        location_ids=args.location,
        networks=args.network,
        after_event_id=args.after or "",
        max_retry_delay=5.0,
        on_start=lambda at: _print(pb.WatchEventsResponse(start_after_event_id=at)),
        on_retry=retrying,
        retry_before_start=False,  # a server unreachable at the start: exit 1
    )
    try:
        async for event in watcher:  # every field its type carries, zeros too
            _print(event, defaults=True)
    except UnistockClientError:
        if watcher.started:  # e.g. a new token after a restart
            last = watcher.last_event_id
            _note(f"the last event printed is {last}: run again with --after {last}")
        raise


async def _command(c: UnistockClient, args: argparse.Namespace) -> int:
    if args.command == "get":
        keys = [(args.sku, args.location)] if args.location else []
        levels = await c.get_availability(keys=keys, sku="" if keys else args.sku)
        for level in levels:  # every number, zeros too (as events and watches)
            _print(level, defaults=True)
        if not levels:
            _note(f"no position for sku {args.sku!r} at any location")
        elif keys and levels[0].version == 0:
            _note(f"no position for sku {args.sku!r} at {args.location!r} (never seen: zeros)")
    elif args.command == "reserve":
        _print(
            await c.reserve(
                args.reservation_id,
                args.lines,
                kind=args.kind,
                ttl_seconds=args.ttl,
                channel=args.channel,
                customer_id=args.customer,
                network_lines=[
                    (sku, network, qty)
                    for network, (sku, qty) in ((n, _sku_qty(x)) for n, x in args.network_lines)
                ],
            )
        )
    elif args.command == "release":
        _print(await c.release(args.reservation_id))
    elif args.command == "fulfil":
        _print(await c.fulfil(args.reservation_id, args.lines, args.request_id))
    elif args.command == "show":
        _print(await c.get_reservation(args.reservation_id))
    elif args.command == "extend":
        if args.until is not None:
            _print(await c.extend(args.reservation_id, expires_at=args.until))
        else:
            _print(await c.extend(args.reservation_id, args.seconds))
    elif args.command == "move":
        sku, loc, qty = args.line
        mv = pb.Movement(
            source_id=args.source,
            seq=args.seq,
            sku=sku,
            location_id=loc,
            type=pb.MovementType.Value(args.type),
            quantity=qty,
            count_id=args.count_id,
            transfer_id=args.transfer_id,
            counterpart_location_id=args.counterpart,
            reservation_id=args.reservation_id,
            adjustment_sign=_SIGNS[args.sign],
            reason=args.reason,
            condition=pb.ItemCondition.Value(args.condition or "ITEM_CONDITION_UNSPECIFIED"),
        )
        code = 0
        batch = pb.MovementBatch(source_id=args.source, movements=[mv])
        async for ack in c.apply_movements([batch]):
            _print(ack)
            if ack.rejections:
                print(f"error: {_rejected(ack)}", file=sys.stderr)
                code = 1
        return code
    elif args.command == "watch":
        async for msg in c.watch(args.sku, args.location):
            _print(msg, defaults=True)
    elif args.command == "events":
        await _events(c, args)
    elif args.command == "transfer-reservation":
        _print(await c.transfer_reservation(args.reservation_id, args.request_id, args.moves))
    elif args.command == "find":
        found = json_format.MessageToDict(
            await c.find_stock(
                args.network,
                args.lines,
                args.mode,
                near=args.at,
                near_location_id=args.near,
                max_distance_km=args.max_km,
                limit=args.limit,
                allow_split=args.split,
                include_variants=args.variants,
            )
        )
        # What was asked for is always shown, also when empty (no options: "options": []).
        found.setdefault("options", [])
        if args.split:
            found.setdefault("split", [])
            found.setdefault("splitCoversAll", False)
        if args.variants:
            found.setdefault("variants", [])
        print(json.dumps(found))
    elif args.command == "network":
        if args.watch:
            async for update in c.watch_networks([args.network], args.skus):
                _print(update, defaults=True)
        else:
            for network_level in await c.get_network_availability(args.network, args.skus):
                _print(network_level, defaults=True)
    elif args.command == "transfer":
        for t in await c.get_transfer(args.transfer_id, args.location):
            _print(t)
    elif args.command == "close-transfer":
        _print(await c.close_transfer(args.transfer_id, args.location))
    elif args.command in cli_ledger.COMMANDS:
        await cli_ledger.run(c, args)
    elif args.command in cli_reservations.COMMANDS:
        await cli_reservations.run(c, args)
    elif args.command == "admin" and args.admin_command == "locations":
        _listing(await c.list_locations(), _locations_table, "locations", args.json)
    elif args.command == "admin" and args.admin_command == "networks":
        _listing(await c.list_networks(), _networks_table, "networks", args.json)
    return 0


def _listing(rows: Sequence[Any], table: Callable[[Any], Any], what: str, as_json: bool) -> None:
    """Master-data rows as one JSON array, or a table (a note when there are none)."""
    if as_json:
        _print_json_array(rows)
    elif rows:
        _show(table(rows))
    else:
        _note(f"no {what} in master data")


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


def _import_files(args: argparse.Namespace) -> list[str]:
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


def _read_import(args: argparse.Namespace) -> list[_Upload]:
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


async def _import(c: UnistockClient, uploads: list[_Upload], size: int) -> None:
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


def _locations_table(locations: Sequence[apb.Location]) -> Table:
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


def _networks_table(networks: Sequence[apb.Network]) -> Table:
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


class _Interrupt:
    """SIGINT handling: Ctrl-C cancels the running command, whose channel is then closed, and
    the CLI exits 130. A KeyboardInterrupt is raised only before the event loop runs; once it
    has started, a further Ctrl-C (or one during teardown, while grpc objects are freed) exits
    130 at once, never raising inside grpc code where it would print a traceback."""

    def __init__(self) -> None:
        self.count = 0
        self.loop_started = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task[object] | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        if not self.loop_started:
            raise KeyboardInterrupt
        if self.count == 1 and self.task is not None and not self.task.done():
            assert self.loop is not None
            self.task.cancel()
            self.loop.call_soon_threadsafe(lambda: None)  # wake the loop up
            return
        if self.count == 1 and self.task is None:
            return  # the loop is starting: `_main` sees the count and stops at once
        _hard_exit(130)

    async def run(self, args: argparse.Namespace) -> int:
        """run(args), or 130 once interrupted."""
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        if self.count:
            return 130
        try:
            return await run(args)
        except asyncio.CancelledError:
            if self.count:
                return 130
            raise


def _hard_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # exiting anyway
            stream.flush()
    os._exit(code)


def _main(argv: Sequence[str] | None, interrupt: _Interrupt) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args)
    interrupt.loop_started = True
    return asyncio.run(interrupt.run(args))


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point: exit 0 done, 1 error, 2 usage, 130 interrupted (see EPILOG)."""
    interrupt = _Interrupt()
    signal.signal(signal.SIGINT, interrupt)  # kept until the process ends: see _Interrupt
    try:
        code = _main(argv, interrupt)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        # The reader went away (`unistock watch | head`): nothing more can be shown.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 1
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except Exception as exc:  # no traceback for a command-line user
        detail = " ".join(str(exc).split())
        print(
            f"error: {type(exc).__name__}: {detail}" if detail else f"error: {exc!r}",
            file=sys.stderr,
        )
        code = 1
    # The outcome is decided: a Ctrl-C from now on changes nothing. Ignored, not left to the
    # handler: the interpreter's shutdown resets Python handlers to the default, and a second
    # Ctrl-C there would kill the process by SIGINT (exit -2) instead of 130.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    main()
