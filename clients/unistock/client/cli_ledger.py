"""`unistock history` and `unistock kpis`: the ledger (LedgerService) on the command line.

    unistock history SKU@LOC | SKU | --location LOC | --reservation ID
                     [--since WHEN] [--until WHEN] [--type TYPE]... [--limit N] [--json]
    unistock kpis [--by store|location|channel] [--since WHEN] [--until WHEN]
                  [--location LOC]... [--channel C]... [--json]

WHEN is a duration back from now (30m, 12h, 1d, 7d, 2w) or an RFC 3339 time with a UTC offset
(2030-01-31T18:00:00Z).
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from typing import Annotated, Any

import typer
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table
from rich.text import Text
from typer import BadParameter

from unistock.client._client import UnistockClient
from unistock.client.cli_app import JsonOpt, command, schedule, usage
from unistock.client.output import note, print_json_array, show
from unistock.v1 import inventory_pb2 as pb
from unistock.v1 import ledger_pb2 as lpb

_E = lpb.LedgerEntry
_TYPES = [t for t in _E.Type.keys() if t != "TYPE_UNSPECIFIED"]  # noqa: SIM118 (an enum wrapper)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"(\d{1,6})([smhdw])")
#: Entries `history` shows unless --limit says otherwise.
DEFAULT_LIMIT = 1_000

WHEN_HELP = "a duration back from now (30m, 12h, 1d, 7d, 2w) or an RFC 3339 time (…T18:00:00Z)"


def rfc3339(text: str) -> datetime:
    """A parser: a time with a UTC offset, e.g. 2030-01-31T18:00:00Z."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        at = None
    if at is None or at.utcoffset() is None:
        raise BadParameter(
            f"expected an RFC 3339 time with a UTC offset, e.g. 2030-01-31T18:00:00Z, got {text!r}"
        )
    return at


def when(text: str) -> datetime:
    """A parser: a duration back from now, or an RFC 3339 time with a UTC offset."""
    m = _DURATION.fullmatch(text)
    if m:
        return datetime.now(UTC) - timedelta(**{_UNITS[m[2]]: int(m[1])})
    try:
        return rfc3339(text)
    except BadParameter:
        raise BadParameter(
            f"expected a duration (30m, 12h, 1d, 7d, 2w) or an RFC 3339 time with a UTC "
            f"offset (2030-01-31T18:00:00Z), got {text!r}"
        ) from None


def _limit(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise BadParameter(f"expected an integer, got {text!r}") from None
    if n < 0:
        raise BadParameter(f"must be 0 (every entry) or more, got {text}")
    return n


def usage_error(args: argparse.Namespace) -> str | None:
    """What the parser cannot check alone (a usage error, exit 2), or None."""
    if args.since and args.until and args.until < args.since:
        return "argument --until: before --since"
    if args.command != "history":
        return None
    if args.reservation and (args.what or args.location):
        return "argument --reservation: give it alone (SKU@LOC and --location are positions)"
    if not (args.reservation or args.what or args.location):
        return "give SKU@LOC, SKU, --location LOC or --reservation ID"
    sku, at, loc = args.what.partition("@")
    if at and not (sku and loc):
        return f"argument SKU@LOC|SKU: expected SKU@LOC or SKU, got {args.what!r}"
    if loc and args.location:
        return "argument --location: SKU@LOC names the location already"
    return None


class By(StrEnum):
    """KPI grouping."""

    store = "store"
    location = "location"
    channel = "channel"


LedgerType = Enum("LedgerType", {t: t for t in _TYPES})  # type: ignore[misc]
Since = Annotated[
    datetime | None, typer.Option(parser=when, metavar="WHEN", help="from then on: " + WHEN_HELP)
]
Until = Annotated[
    datetime | None, typer.Option(parser=when, metavar="WHEN", help="before then: " + WHEN_HELP)
]


@command(
    short_help="what happened to a position, SKU, location or reservation (the ledger)",
    help="The ledger's entries, oldest first: every movement applied, shipment, transfer "
    "discrepancy of a position (SKU@LOC), of a SKU everywhere (SKU) or of a location "
    "(--location LOC); or a reservation's transitions and the sales and shipments naming it "
    "(--reservation ID). Roles backoffice and admin.",
)
def history(
    ctx: typer.Context,
    what: Annotated[str, typer.Argument(metavar="SKU@LOC|SKU")] = "",
    location: Annotated[str, typer.Option(metavar="LOC", help="every position of LOC")] = "",
    reservation: Annotated[str, typer.Option(metavar="ID", help="a reservation's history")] = "",
    since: Since = None,
    until: Until = None,
    types: Annotated[
        list[LedgerType],
        typer.Option("--type", metavar="TYPE", help="only entries of this type (repeatable)"),
    ] = [],  # noqa: B006 (Typer reads the default, never mutates it)
    limit: Annotated[
        int,
        typer.Option(
            parser=_limit,
            metavar="N",
            help=f"at most N entries, the oldest (default {DEFAULT_LIMIT:,}; 0: every one)",
        ),
    ] = DEFAULT_LIMIT,
    as_json: JsonOpt = False,
) -> None:
    args = argparse.Namespace(
        command="history", what=what, location=location, reservation=reservation,
        since=since, until=until, types=[t.value for t in types], limit=limit, json=as_json,
    )  # fmt: skip
    if problem := usage_error(args):
        raise usage(problem)
    schedule(ctx, lambda c: _history(c, args))


@command(
    short_help="units sold, returned, shrinkage, lost in transit, reservations (the ledger)",
    help="Per store, location or channel over a time range: units sold, returned, shrinkage "
    "(units counts found missing), lost in transit, reservations made, fulfilled, expired and "
    "released (ledger.proto KpiGroup says exactly how each is counted). Roles backoffice and "
    "admin.",
)
def kpis(
    ctx: typer.Context,
    by: Annotated[
        By, typer.Option(help="the grouping (store: master data's store_id of a location)")
    ] = By.location,
    since: Since = None,
    until: Until = None,
    locations: Annotated[
        list[str], typer.Option("--location", metavar="LOC", help="only this location")
    ] = [],  # noqa: B006
    channels: Annotated[
        list[str], typer.Option("--channel", metavar="C", help="only this channel")
    ] = [],  # noqa: B006
    as_json: JsonOpt = False,
) -> None:
    args = argparse.Namespace(
        command="kpis", by=by.value, since=since, until=until, locations=locations,
        channels=channels, json=as_json,
    )  # fmt: skip
    if problem := usage_error(args):
        raise usage(problem)
    schedule(ctx, lambda c: _kpis(c, args))


async def _history(c: UnistockClient, args: argparse.Namespace) -> None:
    sku, _, loc = args.what.partition("@")
    where: dict[str, Any] = {
        "sku": sku,
        "location_id": loc or args.location,
        "reservation_id": args.reservation,
        "types": args.types,
        "since": args.since,
        "until": args.until,
    }
    entries: list[lpb.LedgerEntry] = []
    token = ""
    more = False
    newest = ""  # the ledger's newest entry as of the first page: how far it is written
    while True:
        left = args.limit - len(entries) if args.limit else 1_000
        page = await c.list_ledger_entries(page_size=min(left, 1_000), page_token=token, **where)
        if not token and page.HasField("newest_entry_at"):
            newest = _at(page.newest_entry_at)
        entries += page.entries
        token = page.next_page_token
        if not token:
            break
        if args.limit and len(entries) >= args.limit:
            more = True
            break
    if args.json:
        print_json_array(entries)
    elif entries:
        show(history_table(entries, args.what or args.location or args.reservation, newest))
    else:
        written = f"written up to {newest}" if newest else "empty"
        note(
            f"no ledger entry matches (the ledger, {written}, lags the live levels by its "
            "writer's lag)"
        )
    if more:
        note(f"only the oldest {args.limit:,} shown: more match (--limit N, or 0 for every one)")


def _at(ts: Timestamp) -> str:
    at: datetime = ts.ToDatetime(UTC)
    return at.isoformat(sep=" ", timespec="milliseconds").removesuffix("+00:00")


def _details(e: lpb.LedgerEntry) -> str:
    """What else an entry says, in a few words."""
    parts = []
    if e.type == _E.RESERVATION:
        parts.append(f"{','.join(e.transitions)} ({pb.ReservationState.Name(e.reservation_state)})")
        parts += [f"channel {e.channel}" if e.channel else "no channel"]
        if e.customer_id:
            parts.append(f"customer {e.customer_id}")
    elif e.reservation_id:
        parts.append(f"reservation {e.reservation_id}")
    if e.count_id:
        parts.append(f"count {e.count_id}")
    if e.variance:
        parts.append(f"variance {e.variance:+,}")
    if e.transfer_id:
        parts.append(f"transfer {e.transfer_id}")
    if e.reason:
        parts.append(e.reason)
    return ", ".join(parts)


def history_table(entries: list[lpb.LedgerEntry], what: str, newest: str = "") -> Table:
    """Ledger entries as a table, one row each; newest: the time of the ledger's newest entry
    (said in the title: later changes are not in it yet)."""
    n = len(entries)
    title = f"{what}: {n:,} {'entry' if n == 1 else 'entries'}"
    if newest:
        title += f" (ledger written up to {newest})"
    t = Table(title=title, title_justify="left")
    t.add_column("at (UTC)", no_wrap=True)
    t.add_column("type", no_wrap=True)
    t.add_column("sku", no_wrap=True)
    t.add_column("location", no_wrap=True)
    t.add_column("qty", justify="right")
    t.add_column("Δ on hand", justify="right")
    t.add_column("on hand", justify="right")
    t.add_column("available", justify="right")
    t.add_column("source", no_wrap=True)
    t.add_column("details")
    for e in entries:
        position = e.type != _E.RESERVATION
        # A movement's or a shipment's: what it did to the position, and the levels after it.
        levels = position and e.type != _E.TRANSFER_DISCREPANCY
        t.add_row(
            _at(e.at),
            _E.Type.Name(e.type),
            Text(e.sku),
            Text(e.location_id),
            f"{e.quantity:,}" if position else "",
            f"{e.on_hand_delta:+,}" if levels else "",
            f"{e.on_hand:,}" if levels else "",
            f"{e.available:,}" if levels else "",
            Text(f"{e.source_id}:{e.seq}" if e.source_id else ""),
            Text(_details(e) or (e.reservation_id if not position else "")),
        )
    return t


_KPI_COLUMNS = (
    ("units_sold", "sold"),
    ("units_returned", "returned"),
    ("shrinkage", "shrinkage"),
    ("lost_in_transit", "lost in transit"),
    ("reservations_made", "reservations made"),
    ("reservations_fulfilled", "fulfilled"),
    ("reservations_expired", "expired"),
    ("reservations_released", "released"),
)


async def _kpis(c: UnistockClient, args: argparse.Namespace) -> None:
    resp = await c.get_kpis(
        args.by.upper(),
        since=args.since,
        until=args.until,
        location_ids=args.locations,
        channels=args.channels,
    )
    if args.json:
        print(
            json.dumps(json_format.MessageToDict(resp, always_print_fields_with_no_presence=True))
        )
    elif resp.groups:
        show(kpis_table(resp, args))
    else:
        note("no ledger entry counted in these figures in the range")


def kpis_table(resp: lpb.GetKpisResponse, args: argparse.Namespace) -> Table:
    """One row per group, a total row when there are several."""
    since = _when_text(args.since, "the beginning")
    until = _when_text(args.until, "now")
    title = f"KPIs by {args.by}, {since} to {until}"
    if resp.HasField("newest_entry_at"):
        title += f" (ledger written up to {_at(resp.newest_entry_at)})"
    t = Table(title=title, title_justify="left", show_footer=len(resp.groups) > 1)
    t.add_column(args.by, no_wrap=True, footer="total")
    for field, header in _KPI_COLUMNS:
        total = sum(getattr(g, field) for g in resp.groups)
        t.add_column(header, justify="right", footer=f"{total:,}")
    for g in resp.groups:
        key = Text(g.key) if g.key else Text("(none)", style="dim")
        t.add_row(key, *(f"{getattr(g, field):,}" for field, _ in _KPI_COLUMNS))
    return t


def _when_text(at: datetime | None, default: str) -> str:
    if at is None:
        return default
    return at.astimezone(UTC).isoformat(sep=" ", timespec="seconds").removesuffix("+00:00")
