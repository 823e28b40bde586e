"""`unistock`: a command line for the inventory API (ops, demos, scripts), on Typer and Rich.

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
    unistock status [--json] [--max-lag SECONDS]   the server and every store (cli_status)
    unistock config                           the settings in force and where each comes from

Every command that prints data takes --json; output and exit codes: unistock.client.output.
Shell completion: `unistock --install-completion` (or --show-completion to see the script).

Target and token: --target / UNISTOCK_TARGET, --token / UNISTOCK_TOKEN, else the user config
file `make run` writes ($UNISTOCK_CONFIG, else ~/.config/unistock/config.toml: target, token or
token_file), else localhost:50051 and the dev token `make run` wrote: $UNISTOCK_DATA_DIR/dev-token
when UNISTOCK_DATA_DIR is set, otherwise var/dev-token in the current directory or the nearest
parent directory that has one, or in the checkout this CLI runs from.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from enum import Enum, StrEnum
from types import FrameType
from typing import Annotated, Any

import grpc
import typer
from typer._click.exceptions import (  # Typer bundles its Click
    BadParameter,
    ClickException,
    MissingParameter,
)
from typer.main import get_command

from unistock.client import (
    cli_admin,  # noqa: F401 (registers `admin import|locations|networks`)
    cli_args,
    cli_ledger,  # noqa: F401 (registers `history`, `kpis`)
    cli_movements,
    cli_reservations,
    cli_status,
    cli_stock,
)
from unistock.client._client import EventWatcher, UnistockClient, UnistockClientError
from unistock.client._retry import RetryPolicy
from unistock.client.cli_app import (
    CONTEXT,
    JsonOpt,
    State,
    app,
    command,
    schedule,
    state,
    usage,
    verbatim,
)
from unistock.client.cli_ledger import rfc3339
from unistock.client.config import ClientConfig, ConfigError
from unistock.client.output import (
    DONE,
    ERROR,
    INTERRUPTED,
    USAGE,
    CliError,
    print_json,
    refused,
    show,
    terminal,
)
from unistock.client.output import note as _note
from unistock.server.domain.values import MAX_TTL_SECONDS
from unistock.v1 import inventory_pb2 as pb

# Enums of the wire's names, for choices (and their completion).
Kind = Enum(  # type: ignore[misc]
    "Kind",
    {k: k for k in pb.ReservationKind.keys() if k != "RESERVATION_KIND_UNSPECIFIED"},  # noqa: SIM118
)
MovementType = Enum(  # type: ignore[misc]
    "MovementType",
    {t: t for t in pb.MovementType.keys() if t != "MOVEMENT_TYPE_UNSPECIFIED"},  # noqa: SIM118
)
EventType = Enum(  # type: ignore[misc]
    "EventType", {v.name: v.name for v in pb.EventType.DESCRIPTOR.values if v.number}
)


class Sign(StrEnum):
    """ADJUSTMENT's direction."""

    INCREASE = "+"
    DECREASE = "-"


class Condition(StrEnum):
    """Which units a RETURN or an ADJUSTMENT concerns."""

    SELLABLE = "SELLABLE"
    NON_SELLABLE = "NON_SELLABLE"


class Mode(StrEnum):
    """FindStock's fulfilment mode."""

    SHIP = "SHIP"
    CLICK_AND_COLLECT = "CLICK_AND_COLLECT"
    E_RESERVATION = "E_RESERVATION"


_LINE = cli_args.line_of(1)
#: `--in NETWORK SKU[:QTY]` takes two words; Click options take one: main() joins them with this
#: (never in an id: ids are printable ASCII without spaces).
_IN_JOIN = "\x1f"


def _network_line(text: str) -> tuple[str, str, int]:
    """--in's value (NETWORK and SKU[:QTY] joined by main()): (sku, network, qty)."""
    network, sep, item = text.partition(_IN_JOIN)
    if not sep:
        raise typer.BadParameter(f"expected NETWORK SKU[:QTY], got {text!r}")
    if "@" in item:
        raise typer.BadParameter(
            f"{item!r}: give SKU[:QTY]; the network chooses the location (a line at a "
            "location is SKU@LOC:QTY, without --in)"
        )
    sku, qty = cli_args.sku_qty(item)
    return sku, network, qty


def _join_in(argv: list[str]) -> list[str]:
    """argv with each `--in NETWORK ITEM` as `--in NETWORK<US>ITEM` (see _IN_JOIN)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--":
            return out + argv[i:]
        if argv[i] == "--in" and i + 2 < len(argv) and not argv[i + 2].startswith("-"):
            out += ["--in", argv[i + 1] + _IN_JOIN + argv[i + 2]]
            i += 3
            continue
        out.append(argv[i])
        i += 1
    return out


@app.callback()
def _root(
    ctx: typer.Context,
    target: Annotated[
        str | None, typer.Option(help="the server, host:port (else UNISTOCK_TARGET, config)")
    ] = None,
    token: Annotated[
        str | None, typer.Option(help="the bearer token (else UNISTOCK_TOKEN, config, dev token)")
    ] = None,
) -> None:
    s = state(ctx)
    s.target, s.token = target, token


@command(
    short_help="levels of a SKU",
    help="Levels of SKU at every location that has a position for it, or at LOCATION. "
    "Exit 3 (not found) when the server has none (at LOCATION: a position never seen, "
    "printed as zeros).",
)
def get(
    ctx: typer.Context,
    sku: Annotated[str, typer.Argument(metavar="SKU")],
    location: Annotated[str | None, typer.Argument(metavar="LOCATION")] = None,
    as_json: JsonOpt = False,
) -> None:
    schedule(ctx, lambda c: cli_stock.get(c, sku, location, as_json=as_json))


LinesArg = Annotated[
    list[Any],
    typer.Argument(parser=_LINE, metavar="SKU@LOC:QTY", help="QTY 1 to 1e9", show_default=False),
]


@command(
    short_help="hold units",
    help="Hold units, all or none: lines at a location (SKU@LOC:QTY) and/or anywhere in "
    "a network (--in NETWORK SKU[:QTY]).",
)
def reserve(
    ctx: typer.Context,
    reservation_id: Annotated[str, typer.Argument(metavar="ID")],
    lines: LinesArg = [],  # noqa: B006 (Typer reads the default, never mutates it)
    network_lines: Annotated[
        list[Any],
        typer.Option(
            "--in",
            parser=_network_line,
            metavar="NETWORK SKU[:QTY]",
            help="a line held anywhere in NETWORK (the server chooses the location); one --in "
            "per line: --in web A:1 --in web B:2",
            show_default=False,
        ),
    ] = [],  # noqa: B006
    kind: Annotated[Kind, typer.Option(help="the reservation's kind")] = Kind["CART"],
    ttl: Annotated[
        int,
        typer.Option(
            parser=cli_args.int_in(0, MAX_TTL_SECONDS),
            help="hold time in seconds from now (0: the kind's default; at most 31,622,400)",
        ),
    ] = 0,
    channel: Annotated[str, typer.Option(help="the channel reserving")] = "cli",
    customer: Annotated[str, typer.Option(help="the customer the units are promised to")] = "",
    as_json: JsonOpt = False,
) -> None:
    if not lines and not network_lines:
        raise usage("give at least one line: SKU@LOC:QTY, or --in NETWORK SKU[:QTY]")

    async def job(c: UnistockClient) -> None:
        resp = await c.reserve(
            reservation_id,
            lines,
            kind=kind.value,
            ttl_seconds=ttl,
            channel=channel,
            customer_id=customer,
            network_lines=network_lines,
        )
        if as_json or not terminal():
            print_json(resp, zeros=as_json)
        else:
            show(cli_reservations.table([resp.reservation]))
            if resp.replayed:
                _note("replayed: this reservation was already made by an earlier call")

    schedule(ctx, job)


IdArg = Annotated[str, typer.Argument(metavar="ID", help="the reservation id")]


def _reservation(res: pb.Reservation, as_json: bool) -> None:
    """A reservation: JSON (--json: zeros too; in a pipe: as always), or a one-row table."""
    if as_json or not terminal():
        print_json(res, zeros=as_json)
    else:
        show(cli_reservations.table([res]))


def _schedule_reservation(
    ctx: typer.Context, call: Callable[[UnistockClient], Awaitable[pb.Reservation]], as_json: bool
) -> None:
    """Schedule call(client), the reservation it answers printed by _reservation."""

    async def job(c: UnistockClient) -> None:
        _reservation(await call(c), as_json)

    schedule(ctx, job)


def _reservation_command(
    name: str,
    short_help: str,
    help_: str,
    call: Callable[[UnistockClient, str], Awaitable[pb.Reservation]],
) -> None:
    """`unistock NAME ID [--json]`: call(client, ID), the reservation it answers printed."""

    @command(name=name, short_help=short_help, help=help_)
    def _(ctx: typer.Context, reservation_id: IdArg, as_json: JsonOpt = False) -> None:
        _schedule_reservation(ctx, lambda c: call(c, reservation_id), as_json)


_reservation_command(
    "release",
    "release a reservation",
    "Release a reservation (its units are available again). Exit 3 (not found) for an unknown one.",
    lambda c, rid: c.release(rid),
)
_reservation_command(
    "show",
    "show a reservation",
    "Show a reservation. Exit 3 (not found) for an unknown one.",
    lambda c, rid: c.get_reservation(rid),
)


@command(
    short_help="the reserved units left (all, or some lines)",
    help="Report units of a reservation as shipped: every unit still held, or only the "
    "given lines (a partial fulfilment, which needs --request-id so that running the "
    "same command again fulfils the lines once).",
)
def fulfil(
    ctx: typer.Context,
    reservation_id: IdArg,
    lines: LinesArg = [],  # noqa: B006
    request_id: Annotated[
        str, typer.Option(help="idempotency key, required with lines (reuse it on retry)")
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    if lines and not request_id:
        raise usage(
            "argument --request-id: required with lines (without it, running the command "
            "again would fulfil the lines twice)"
        )

    _schedule_reservation(ctx, lambda c: c.fulfil(reservation_id, lines, request_id), as_json)


@command(
    short_help="move a reservation's expiry",
    help="Move an ACTIVE reservation's expiry: SECONDS is the new hold time counted from "
    "now (not added to the current expiry), or --until gives the new expiry itself.",
)
def extend(
    ctx: typer.Context,
    reservation_id: IdArg,
    seconds: Annotated[
        int | None,
        typer.Argument(
            parser=cli_args.int_in(1, MAX_TTL_SECONDS),
            metavar="SECONDS",
            help="hold time from now, in seconds (1 to 31,622,400, i.e. 366 days)",
            show_default=False,
        ),
    ] = None,
    until: Annotated[
        datetime | None,
        typer.Option(
            parser=rfc3339,
            metavar="RFC3339",
            help="the new expiry, e.g. 2030-01-31T18:00:00Z (at most 366 days from now)",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    if seconds is None and until is None:
        raise usage("give SECONDS (hold time from now) or --until RFC3339")
    if seconds is not None and until is not None:
        raise usage("argument --until: not allowed with argument SECONDS")

    if until is not None:
        _schedule_reservation(ctx, lambda c: c.extend(reservation_id, expires_at=until), as_json)
    else:
        _schedule_reservation(ctx, lambda c: c.extend(reservation_id, seconds), as_json)


@command(
    short_help="send one movement (SALE, RECEIPT, ADJUSTMENT...)",
    as_written=True,
    help=cli_movements.MOVE_DESCRIPTION,
)
def move(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(metavar="SOURCE", help="the sender (till, WMS...)")],
    seq: Annotated[
        int,
        typer.Argument(
            parser=cli_args.seq_or_next,
            metavar="SEQ|next",
            help="the source's sequence number (>= 1), or next: the CLI's durable outbox of the "
            "source numbers it and keeps it until the server acknowledges it",
        ),
    ],
    type_: Annotated[MovementType, typer.Argument(metavar="TYPE", help="the movement's type")],
    line: Annotated[
        Any,
        typer.Argument(
            parser=cli_args.line_of(0),
            metavar="SKU@LOC:QTY",
            help="QTY 1 to 1e9 (a COUNT: 0 to 1e9)",
        ),
    ],
    count_id: Annotated[str, typer.Option(help="COUNT: the count's id")] = "",
    transfer_id: Annotated[str, typer.Option(help="TRANSFER_OUT / TRANSFER_IN: the transfer")] = "",
    counterpart: Annotated[
        str,
        typer.Option(
            metavar="LOC",
            help="TRANSFER_OUT: the destination (required); TRANSFER_IN: the origin (optional)",
        ),
    ] = "",
    reservation_id: Annotated[str, typer.Option(help="PICKUP: the reservation collected")] = "",
    sign: Annotated[
        Sign | None,
        typer.Option(help="ADJUSTMENT (required): + units found, - units damaged, stolen, lost"),
    ] = None,
    reason: Annotated[
        str,
        typer.Option(
            help="ADJUSTMENT (required): why, e.g. damaged, theft, found (at most 1,024 characters)"
        ),
    ] = "",
    condition: Annotated[
        Condition | None,
        typer.Option(help="RETURN or ADJUSTMENT: which units (NON_SELLABLE: damaged, to inspect)"),
    ] = None,
    request_id: Annotated[
        str,
        typer.Option(
            help="with next: an idempotency key (e.g. the document's line): the same command "
            "run again records nothing twice"
        ),
    ] = "",
    wait: Annotated[
        float,
        typer.Option(
            parser=cli_args.seconds,
            metavar="SECONDS",
            help="with next: how long to wait for the server's ack (the movement is kept and "
            "sent later if it does not come)",
        ),
    ] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    sku, loc, qty = line
    if request_id and seq:
        raise usage("argument --request-id: only with next (a SEQ is its own idempotency key)")
    if qty == 0 and type_.value != "COUNT":
        raise usage("argument SKU@LOC:QTY: quantity must be at least 1 (0 only for a COUNT)")
    movement = pb.Movement(
        source_id=source,
        seq=seq,
        sku=sku,
        location_id=loc,
        type=pb.MovementType.Value(type_.value),
        quantity=qty,
        count_id=count_id,
        transfer_id=transfer_id,
        counterpart_location_id=counterpart,
        reservation_id=reservation_id,
        adjustment_sign=cli_movements.SIGNS[sign.value if sign else None],
        reason=reason,
        condition=pb.ItemCondition.Value(
            condition.value if condition else "ITEM_CONDITION_UNSPECIFIED"
        ),
    )
    if seq:
        schedule(ctx, lambda c: cli_movements.move(c, movement, as_json=as_json))
        return
    s = state(ctx)
    schedule(
        ctx,
        lambda c: cli_movements.record(
            c, s.resolved_target, movement, request_id=request_id, wait=wait, as_json=as_json
        ),
        timeout=wait,
    )


@command(
    short_help="move held units of a reservation between locations",
    name="transfer-reservation",
    help="Move held units of an ACTIVE reservation: every move or none. MOVE is "
    "SKU@FROM>TO:QTY. --request-id makes it idempotent (reuse it on retry).",
)
def transfer_reservation(
    ctx: typer.Context,
    reservation_id: IdArg,
    moves: Annotated[list[Any], typer.Argument(parser=cli_args.move, metavar="SKU@FROM>TO:QTY")],
    request_id: Annotated[str, typer.Option(help="idempotency key, the same on retry")],
    as_json: JsonOpt = False,
) -> None:
    _schedule_reservation(
        ctx, lambda c: c.transfer_reservation(reservation_id, request_id, moves), as_json
    )


@command(
    short_help="which locations of a network should serve an order",
    help="Rank a network's locations for an order (FindStock): those that serve every "
    "line alone first, then the nearest, then the deepest stock. SKU or SKU:QTY (1 unit).",
)
def find(
    ctx: typer.Context,
    lines: Annotated[list[Any], typer.Argument(parser=cli_args.sku_qty, metavar="SKU[:QTY]")],
    network: Annotated[str, typer.Option(help="the network")] = "web",
    mode: Annotated[
        Mode, typer.Option(help="the fulfilment mode the locations must offer")
    ] = Mode.SHIP,
    near: Annotated[str, typer.Option(metavar="LOCATION", help="from this location")] = "",
    at: Annotated[
        Any,
        typer.Option(parser=cli_args.lat_lon, metavar="LAT,LON", help="from these coordinates"),
    ] = None,
    max_km: Annotated[
        float,
        typer.Option(parser=cli_args.km, help="only this far (0: any; needs --near or --at)"),
    ] = 0.0,
    limit: Annotated[
        int, typer.Option(parser=cli_args.int_in(1, 100), help="1 to 100 options")
    ] = 10,
    split: Annotated[
        bool, typer.Option("--split", help="also the fewest locations together")
    ] = False,
    variants: Annotated[
        bool, typer.Option("--variants", help="also the model's other sizes/colours")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    if near and at is not None:
        raise usage("argument --at: not allowed with argument --near")
    if max_km and not (near or at):
        raise usage("argument --max-km: needs --near or --at (a distance from where?)")
    schedule(
        ctx,
        lambda c: cli_stock.find(
            c,
            network,
            lines,
            mode.value,
            at=at,
            near=near,
            max_km=max_km,
            limit=limit,
            split=split,
            variants=variants,
            as_json=as_json,
        ),
    )


@command(
    short_help="what a network may promise of SKUs",
    help="Per SKU, the sum of the available of the network's member locations that are "
    "not stale, plus a stale one's share under a DISCOUNT stale policy (NetworkLevel). "
    "--watch: the levels, then every change, until Ctrl-C (a live table on a terminal).",
)
def network(
    ctx: typer.Context,
    network_id: Annotated[str, typer.Argument(metavar="NETWORK")],
    skus: Annotated[
        list[str],
        typer.Argument(
            parser=cli_args.sku_alone, metavar="SKU", help="1 to 500 (with --watch: none = all)"
        ),
    ] = [],  # noqa: B006
    watch: Annotated[
        bool, typer.Option("--watch", help="stream the levels and their changes")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    if not watch and not skus:
        raise usage("give at least one SKU (or --watch for every SKU of the network)")
    schedule(
        ctx,
        lambda c: cli_stock.network(c, network_id, skus, watching=watch, as_json=as_json),
        timeout=None if watch else 10,
    )


@command(
    short_help="a transfer: per SKU shipped, received, in transit, lost",
    help="Show a transfer's record at its destination (LOCATION), or at every destination "
    "that has one. Exit 3 (not found) for an unknown transfer.",
)
def transfer(
    ctx: typer.Context,
    transfer_id: Annotated[str, typer.Argument(metavar="ID")],
    location: Annotated[str, typer.Argument(metavar="LOCATION")] = "",
    as_json: JsonOpt = False,
) -> None:
    schedule(ctx, lambda c: cli_movements.transfer(c, transfer_id, location, as_json=as_json))


@command(
    short_help="close a transfer received short",
    name="close-transfer",
    help="The receiving side (LOCATION, the destination) closes a transfer: units still in "
    "transit are recorded lost in transit. Running it again changes nothing.",
)
def close_transfer(
    ctx: typer.Context,
    transfer_id: Annotated[str, typer.Argument(metavar="ID")],
    location: Annotated[str, typer.Argument(metavar="LOCATION")],
    as_json: JsonOpt = False,
) -> None:
    async def job(c: UnistockClient) -> None:
        closed = await c.close_transfer(transfer_id, location)
        cli_movements.print_transfers([closed], as_json=as_json)

    schedule(ctx, job)


@command(
    short_help="stream levels and changes (a live table)",
    help="Stream levels: the snapshot, then every change, until Ctrl-C. A live table on a "
    "terminal; JSON lines with --json or in a pipe.",
)
def watch(
    ctx: typer.Context,
    sku: Annotated[list[str], typer.Option(help="a SKU (repeatable; none: every SKU)")] = [],  # noqa: B006
    location: Annotated[list[str], typer.Option(help="a location (repeatable)")] = [],  # noqa: B006
    as_json: JsonOpt = False,
) -> None:
    schedule(ctx, lambda c: cli_stock.watch(c, sku, location, as_json=as_json), timeout=None)


@command(
    short_help="stream events (low stock, ready for pickup, ...)",
    help="Events matching every filter given (each repeatable: any of its values), as "
    'JSON lines, until Ctrl-C. The first line is {"startAfterEventId": ...}: pass it, or '
    "the last eventId printed, to --after to resume there. A connection lost once the "
    "stream has started (a server restart) is resumed after the last event printed, with "
    "a note on stderr; a server that cannot be reached at the start is exit 1.",
)
def events(
    ctx: typer.Context,
    type_: Annotated[
        list[EventType], typer.Option("--type", metavar="TYPE", help="an EventType, e.g. LOW_STOCK")
    ] = [],  # noqa: B006
    sku: Annotated[list[str], typer.Option(help="a SKU (repeatable)")] = [],  # noqa: B006
    location: Annotated[list[str], typer.Option(help="a location (repeatable)")] = [],  # noqa: B006
    network: Annotated[list[str], typer.Option(help="a network (repeatable)")] = [],  # noqa: B006
    after: Annotated[
        str | None,
        typer.Option(parser=cli_args.event_id, help="resume after this event id (default: now)"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines (always)")] = False,
) -> None:
    schedule(
        ctx,
        lambda c: _events(c, [t.value for t in type_], sku, location, network, after or ""),
        timeout=None,
    )


async def _events(
    c: UnistockClient,
    types: list[str],
    skus: list[str],
    locations: list[str],
    networks: list[str],
    after: str,
) -> None:
    """Print events as JSON lines (the stream's start point first, once), resuming after the
    last one printed when the stream breaks once started (EventWatcher); raises
    UnistockClientError."""

    def retrying(exc: UnistockClientError, delay: float) -> None:
        _note(f"{exc}; resuming after event {watcher.last_event_id} in {delay:g} s (Ctrl-C stops)")

    watcher = EventWatcher(
        c,
        types=types,
        skus=skus,
        location_ids=locations,
        networks=networks,
        after_event_id=after,
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


@command(
    short_help="the settings in force and where each comes from",
    name="config",
    help="The settings in force (target, token masked, mqtt_url, "
    "metrics_url), each with where it comes from (flag, variable, config file, default), "
    "and the config file's path. Exit 1 when the config file is bad.",
)
def config_(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    s = state(ctx)
    s.local = lambda: _config(s, as_json)


@app.command(
    name="status",
    short_help="the server, its partitions, every store agent, the ledger's lag",
    help=verbatim(cli_status.__doc__ or ""),
    context_settings=CONTEXT,
)
def status(
    ctx: typer.Context,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object, zero fields included")
    ] = False,
    max_lag: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help=f"a feed consumer further behind is degraded (default "
            f"{cli_status.DEFAULT_MAX_LAG:g})",
        ),
    ] = cli_status.DEFAULT_MAX_LAG,
    target: Annotated[
        str | None, typer.Option(metavar="HOST:PORT", help="as unistock --target")
    ] = None,
    token: Annotated[str | None, typer.Option(metavar="TOKEN", help="as unistock --token")] = None,
) -> None:
    """`unistock status` is cli_status's (its own exit codes: 3 is degraded there); --target
    and --token may come before `status` or after it, as its synopsis shows them."""
    s = state(ctx)
    s.local = lambda: cli_status.show_status(
        target or s.target, token or s.token, as_json=as_json, max_lag=max_lag
    )


def _mask(token: str) -> str:
    return token[:4] + "..." if len(token) > 4 else "..."


def _config(s: State, as_json: bool) -> int:
    import json

    from rich.table import Table

    try:
        cfg = ClientConfig.load()
        rows: list[tuple[str, str, str]] = []
        target = cfg.target(s.target)
        rows.append(("target", target.value, target.source))
        try:
            token = cfg.token(s.token)
            rows.append(("token", _mask(token.value), token.source))
        except ConfigError as e:
            rows.append(("token", "", f"none: {e}"))
        mqtt = cfg.mqtt_url()
        rows.append(("mqtt_url", mqtt.value, mqtt.source))
        metrics = cfg.metrics_url()
        rows.append(
            (
                "metrics_url",
                metrics.value if metrics else "",
                metrics.source if metrics else "not set",
            )
        )
    except ConfigError as e:
        raise CliError(str(e)) from None
    exists = cfg.path.is_file()
    if as_json:
        print(json.dumps({
            "configFile": str(cfg.path),
            "configFileExists": exists,
            "settings": {k: {"value": v, "source": src} for k, v, src in rows},
        }))  # fmt: skip
        return DONE
    t = Table(title=f"config file: {cfg.path}{'' if exists else ' (none there)'}",
              title_justify="left")  # fmt: skip
    for header in ("setting", "value", "source"):
        t.add_column(header)
    for row in rows:
        t.add_row(*row)
    show(t)
    return DONE


#: The order `unistock --help` lists the commands in (modules register theirs on import).
_ORDER = [
    "get", "reserve", "release", "show", "fulfil", "extend", "move", "network",
    "transfer-reservation", "find", "transfer", "close-transfer", "watch", "events",
    "reservations", "history", "kpis", "status", "config",
]  # fmt: skip


def _name(info: Any) -> str:
    return str(info.name or info.callback.__name__.replace("_", "-"))


app.registered_commands.sort(key=lambda i: _ORDER.index(_name(i)) if _name(i) in _ORDER else 99)


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
        _hard_exit(INTERRUPTED)

    async def run(self, s: State) -> int:
        """The job of s, or 130 once interrupted."""
        self.loop = asyncio.get_running_loop()
        self.task = asyncio.current_task()
        if self.count:
            return INTERRUPTED
        try:
            return await run(s)
        except asyncio.CancelledError:
            if self.count:
                return INTERRUPTED
            raise


#: The CLI's retries of idempotent calls: a few seconds (a `make run` restarting), not the
#: library's 30 s, so that a server that is down is said at once.
CLI_RETRY = RetryPolicy(deadline=3.0)


async def run(s: State) -> int:
    """Connect and run the chosen command's job; 0, or CliError (1, 3, 4)."""
    assert s.job is not None
    try:
        cfg = ClientConfig.load()
        target = cfg.target(s.target)
        token = cfg.token(s.token)
    except ConfigError as e:
        raise CliError(str(e)) from None
    s.resolved_target = target.value
    async with UnistockClient(target.value, token.value, timeout=s.timeout, retry=CLI_RETRY) as c:
        try:
            await s.job(c)
        except UnistockClientError as exc:
            problem = refused(exc)
            # Say which server and token it was, and where they came from: the user config
            # file may name another checkout's `make run`.
            if exc.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                problem = CliError(
                    f"{problem} (server {target.value}, from {target.source}: is it running? "
                    "`make run` starts one)",
                    problem.code,
                )
            elif exc.code == grpc.StatusCode.UNAUTHENTICATED:
                problem = CliError(f"{problem} (token from {token.source})", problem.code)
            raise problem from None
    return DONE


def _hard_exit(code: int) -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # exiting anyway
            stream.flush()
    os._exit(code)


def _parse(argv: Sequence[str] | None) -> State | int:
    """The State the command line asks for, or the exit code when parsing ended it (help,
    completion: 0; a usage error: 2, its message on stderr)."""
    args = _join_in(list(sys.argv[1:] if argv is None else argv))
    s = State()
    try:
        rv = get_command(app).main(args, prog_name="unistock", standalone_mode=False, obj=s)
    except typer.Exit as e:  # Typer's own Exit (help of a group, completion)
        return e.exit_code
    except ClickException as e:  # a usage error
        _show_usage_error(e)
        return USAGE if e.exit_code == USAGE else e.exit_code
    if isinstance(rv, int):  # --help, --show-completion...: Click's exit code
        return rv
    return s


def _show_usage_error(e: ClickException) -> None:
    """Click's usage error on stderr, a bad value said as `argument NAME: problem` (the name
    as in the usage line: --ttl, SECONDS, SKU@LOC:QTY), as the CLI always said it."""
    if isinstance(e, BadParameter) and not isinstance(e, MissingParameter) and e.param:
        hint = e.param_hint or e.param.get_error_hint()
        names = (hint if isinstance(hint, str) else " / ".join(hint)).replace("'", "")
        text = f"argument {names}: {e.message}"
        e.format_message = lambda: text  # type: ignore[method-assign]
    e.show()


def _main(argv: Sequence[str] | None, interrupt: _Interrupt) -> int:
    parsed = _parse(argv)
    if isinstance(parsed, int):
        return parsed
    if parsed.local is not None and (code := parsed.local()) is not None:
        return code
    if parsed.job is None:
        return DONE
    interrupt.loop_started = True
    return asyncio.run(interrupt.run(parsed))


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
        code = ERROR
    except CliError as exc:
        print(exc.line, file=sys.stderr)
        code = exc.code
    except Exception as exc:  # no traceback for a command-line user
        detail = " ".join(str(exc).split())
        print(
            f"error: {type(exc).__name__}: {detail}" if detail else f"error: {exc!r}",
            file=sys.stderr,
        )
        code = ERROR
    # The outcome is decided: a Ctrl-C from now on changes nothing. Ignored, not left to the
    # handler: the interpreter's shutdown resets Python handlers to the default, and a second
    # Ctrl-C there would kill the process by SIGINT (exit -2) instead of 130.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":
    main()
