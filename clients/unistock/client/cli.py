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
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from types import FrameType

from unistock.client import cli_admin, cli_ledger, cli_movements, cli_reservations, cli_stock
from unistock.client._client import EventWatcher, UnistockClient, UnistockClientError
from unistock.client.cli_admin import IMPORT_DESCRIPTION, MAX_ADMIN_ROWS
from unistock.client.cli_ledger import rfc3339 as _rfc3339
from unistock.client.config import ClientConfig, ConfigError
from unistock.client.output import (
    DONE,
    EXIT_CODES,
    INTERRUPTED,
    CliError,
    print_json,
    refused,
    show,
    terminal,
)
from unistock.client.output import note as _note
from unistock.server.domain.values import MAX_QUANTITY, MAX_TTL_SECONDS
from unistock.v1 import inventory_pb2 as pb

EPILOG = EXIT_CODES
MAX_UINT64 = 2**64 - 1


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
    printing: list[argparse.ArgumentParser] = []
    g = command(
        "get",
        "levels of a SKU",
        description="The levels of SKU at every location that has a position for it, or at\n"
        "LOCATION. Exit 3 (not found) when the server has none (at LOCATION: a position never\n"
        "seen, printed as zeros).",
    )
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
        printing.append(c)
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
    m = command("move", "send one movement (SALE, RECEIPT, ADJUSTMENT...)",
                description=cli_movements.MOVE_DESCRIPTION)  # fmt: skip
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
    m.add_argument(
        "--sign",
        choices=["+", "-"],
        default=None,
        help="ADJUSTMENT (required): + units found, - units damaged, stolen, lost",
    )
    m.add_argument(
        "--reason",
        default="",
        help="ADJUSTMENT (required): why, e.g. damaged, theft, found (at most 1,024 characters)",
    )
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
    printing += [g, r, f, e, m, tr, fs, n, t, ct, w, ev]
    for c in printing:
        c.add_argument(
            "--json",
            action="store_true",
            help="print the protobuf JSON mapping with every zero-valued field (a table on a "
            "terminal otherwise; JSON in a pipe)",
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
    if (
        args.command == "admin"
        and args.admin_command == "import"
        and not cli_admin.import_files(args)
    ):
        sub.error(
            "give at least one file: --locations, --networks, --products, --catalogue or "
            "--safety-stock"
        )


async def run(args: argparse.Namespace) -> int:
    """Execute one command; returns the exit code (0), raises CliError for 1, 3 and 4."""
    uploads: list[cli_admin._Upload] = []
    streaming = args.command in ("watch", "events") or (
        args.command in ("network", "reservations") and args.watch
    )
    timeout: float | None = None if streaming else 10
    if args.command == "admin" and args.admin_command == "import":
        uploads = cli_admin.read_import(args)  # every file checked before anything is sent
        if args.dry_run:
            for u in uploads:
                print(f"{u.path}: {u.summary(len(u.rows), dry_run=True)}")
            print("dry run: nothing sent")
            return DONE
        timeout = 120
    try:
        target = ClientConfig.load().target(args.target).value
    except ConfigError as e:
        raise CliError(str(e)) from None
    async with UnistockClient(target, _token(args.token), timeout=timeout) as c:
        try:
            if uploads:
                await cli_admin.upload(c, uploads, args.batch)
            else:
                await _command(c, args)
        except UnistockClientError as exc:
            raise refused(exc) from None
    return DONE


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
        on_start=lambda at: print_json(
            pb.WatchEventsResponse(start_after_event_id=at), zeros=False
        ),
        on_retry=retrying,
        retry_before_start=False,  # a server unreachable at the start: exit 1
    )
    try:
        async for event in watcher:  # every field its type carries, zeros too
            print_json(event)
    except UnistockClientError:
        if watcher.started:  # e.g. a new token after a restart
            last = watcher.last_event_id
            _note(f"the last event printed is {last}: run again with --after {last}")
        raise


def _reservation(res: pb.Reservation, as_json: bool) -> None:
    """A reservation: JSON (--json: zeros too; in a pipe: as always), or a one-row table."""
    if as_json or not terminal():
        print_json(res, zeros=as_json)
    else:
        show(cli_reservations.table([res]))


def _movement(args: argparse.Namespace) -> pb.Movement:
    sku, loc, qty = args.line
    return pb.Movement(
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
        adjustment_sign=cli_movements.SIGNS[args.sign],
        reason=args.reason,
        condition=pb.ItemCondition.Value(args.condition or "ITEM_CONDITION_UNSPECIFIED"),
    )


async def _command(c: UnistockClient, args: argparse.Namespace) -> None:
    as_json: bool = getattr(args, "json", False)
    if args.command == "get":
        await cli_stock.get(c, args.sku, args.location, as_json=as_json)
    elif args.command == "reserve":
        resp = await c.reserve(
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
        if as_json or not terminal():
            print_json(resp, zeros=as_json)
        else:
            show(cli_reservations.table([resp.reservation]))
            if resp.replayed:
                _note("replayed: this reservation was already made by an earlier call")
    elif args.command == "release":
        _reservation(await c.release(args.reservation_id), as_json)
    elif args.command == "fulfil":
        _reservation(await c.fulfil(args.reservation_id, args.lines, args.request_id), as_json)
    elif args.command == "show":
        _reservation(await c.get_reservation(args.reservation_id), as_json)
    elif args.command == "extend":
        if args.until is not None:
            _reservation(await c.extend(args.reservation_id, expires_at=args.until), as_json)
        else:
            _reservation(await c.extend(args.reservation_id, args.seconds), as_json)
    elif args.command == "move":
        await cli_movements.move(c, _movement(args), as_json=as_json)
    elif args.command == "watch":
        await cli_stock.watch(c, args.sku, args.location, as_json=as_json)
    elif args.command == "events":
        await _events(c, args)
    elif args.command == "transfer-reservation":
        moved = await c.transfer_reservation(args.reservation_id, args.request_id, args.moves)
        _reservation(moved, as_json)
    elif args.command == "find":
        await cli_stock.find(
            c,
            args.network,
            args.lines,
            args.mode,
            at=args.at,
            near=args.near,
            max_km=args.max_km,
            limit=args.limit,
            split=args.split,
            variants=args.variants,
            as_json=as_json,
        )
    elif args.command == "network":
        await cli_stock.network(c, args.network, args.skus, watching=args.watch, as_json=as_json)
    elif args.command == "transfer":
        await cli_movements.transfer(c, args.transfer_id, args.location, as_json=as_json)
    elif args.command == "close-transfer":
        closed = await c.close_transfer(args.transfer_id, args.location)
        cli_movements.print_transfers([closed], as_json=as_json)
    elif args.command in cli_ledger.COMMANDS:
        await cli_ledger.run(c, args)
    elif args.command in cli_reservations.COMMANDS:
        await cli_reservations.run(c, args)
    elif args.command == "admin" and args.admin_command == "locations":
        locations = await c.list_locations()
        cli_admin.listing(locations, cli_admin.locations_table, "locations", args.json)
    elif args.command == "admin" and args.admin_command == "networks":
        networks = await c.list_networks()
        cli_admin.listing(networks, cli_admin.networks_table, "networks", args.json)


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
            return INTERRUPTED
        try:
            return await run(args)
        except asyncio.CancelledError:
            if self.count:
                return INTERRUPTED
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
    """Console entry point: exit 0 done, 1 error, 2 usage, 3 not found, 4 duplicate, 130
    interrupted (output.EXIT_CODES)."""
    interrupt = _Interrupt()
    signal.signal(signal.SIGINT, interrupt)  # kept until the process ends: see _Interrupt
    try:
        code = _main(argv, interrupt)
    except KeyboardInterrupt:
        code = INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`unistock watch | head`): nothing more can be shown.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 1
    except CliError as exc:
        print(exc.line, file=sys.stderr)
        code = exc.code
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
