"""`unistock reservations`: reservations by customer, channel and location on the command line.

    unistock reservations (--customer C | --channel CH | --location LOC)...
                          [--state STATE]... [--newest-first] [--limit N] [--json] [--watch]

A table of the matching reservations (ListReservations, every page up to --limit); --watch
prints the same table for the snapshot, then one line per change as it happens
(WatchReservations) until Ctrl-C.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated

import typer
from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from rich.live import Live
from rich.table import Table

from unistock.client._client import UnistockClient
from unistock.client.cli_app import JsonOpt, command, schedule, usage
from unistock.client.output import (
    console,
    count,
    note,
    print_json,
    print_json_array,
    show,
    terminal,
)
from unistock.v1 import inventory_pb2 as pb

_STATES = [s for s in pb.ReservationState.keys() if s != "RESERVATION_STATE_UNSPECIFIED"]  # noqa: SIM118 (an enum wrapper)
#: Reservations listed unless --limit says otherwise.
DEFAULT_LIMIT = 1_000


State = Enum("State", {st: st for st in _STATES})  # type: ignore[misc]


@command(
    short_help="reservations of a customer, a channel or a location (table; --watch: live)",
    help="Reservations by customer, channel and/or location (all given must match), oldest "
    "first. A location lists the reservations holding units there or fulfilled from there. "
    "Ended reservations stay listed for the server's retention (7 days by default). Roles "
    "channel, backoffice and admin. --watch: the reservations, then every change as it "
    "happens, until Ctrl-C: a live table on a terminal; in a pipe the table, then one line "
    "per change; with --json, JSON lines (every WatchReservations message).",
)
def reservations(
    ctx: typer.Context,
    customer: Annotated[str, typer.Option(metavar="C", help="the customer_id")] = "",
    channel: Annotated[str, typer.Option(metavar="CH", help="the channel (web, app...)")] = "",
    location: Annotated[str, typer.Option(metavar="LOC", help="a location of its lines")] = "",
    states: Annotated[
        list[State],
        typer.Option("--state", metavar="STATE", help="only this state (repeatable)"),
    ] = [],  # noqa: B006 (Typer reads the default, never mutates it)
    newest_first: Annotated[bool, typer.Option("--newest-first", help="newest first")] = False,
    limit: Annotated[
        int, typer.Option(metavar="N", help=f"at most N reservations (default {DEFAULT_LIMIT:,})")
    ] = DEFAULT_LIMIT,
    as_json: JsonOpt = False,
    watch: Annotated[
        bool, typer.Option("--watch", help="the reservations, then every change, until Ctrl-C")
    ] = False,
) -> None:
    args = argparse.Namespace(
        customer=customer, channel=channel, location=location,
        states=[st.value for st in states], newest_first=newest_first, limit=limit,
        json=as_json, watch=watch,
    )  # fmt: skip
    if problem := usage_error(args):
        raise usage(problem)
    schedule(ctx, lambda c: run(c, args), timeout=None if watch else 10)


def usage_error(args: argparse.Namespace) -> str | None:
    """What makes the arguments unusable (exit 2), None when they are fine."""
    if not (args.customer or args.channel or args.location):
        return "give --customer, --channel or --location (or several)"
    if args.limit < 1:
        return "argument --limit: at least 1"
    if args.watch and args.newest_first:
        return "argument --watch: not with --newest-first (changes come as they happen)"
    return None


async def run(c: UnistockClient, args: argparse.Namespace) -> None:
    """Execute `reservations`; raises UnistockClientError."""
    where = {
        "customer_id": args.customer,
        "channel": args.channel,
        "location_id": args.location,
        "states": args.states,
    }
    if args.watch:
        await _watch(c, where, args.json)
        return
    found = [
        r
        async for r in c.reservations(
            limit=args.limit,
            page_size=min(args.limit, 1_000),
            newest_first=args.newest_first,
            **where,
        )
    ]
    if args.json:
        print_json_array(found)
        return
    show(table(found))
    if len(found) == args.limit:
        note(f"showing the first {args.limit:,} (--limit)")


async def _watch(c: UnistockClient, where: dict[str, object], as_json: bool) -> None:
    """--watch: JSON lines (--json); a live table (a terminal); else the snapshot's table,
    then one line per change (change_line)."""
    updates = c.watch_reservations(**where)  # type: ignore[arg-type]
    if as_json:
        async for msg in updates:
            print_json(msg)
        return
    latest: dict[str, pb.Reservation] = {}
    live = False
    if terminal():
        with Live(table([]), console=console(), auto_refresh=False) as screen:
            async for msg in updates:
                latest.update((u.reservation.reservation_id, u.reservation) for u in msg.updates)
                live = live or msg.snapshot_complete
                t = table(list(latest.values()))
                if live:
                    t.title = f"{t.title}, live: changes as they happen (Ctrl-C stops)"
                screen.update(t, refresh=True)
        return
    async for msg in updates:
        if not live:
            latest.update((u.reservation.reservation_id, u.reservation) for u in msg.updates)
            if msg.snapshot_complete:
                show(table(list(latest.values())))
                note("watching: one line per change (Ctrl-C to stop)")
                live = True
            continue
        for u in msg.updates:
            print(change_line(u), flush=True)


def table(reservations: Sequence[pb.Reservation]) -> Table:
    """The reservations as a table: id, state, kind, customer, channel, lines, times."""
    t = Table(title=count(len(reservations), "reservation"), title_justify="left")
    t.add_column("reservation", no_wrap=True)
    t.add_column("state")
    t.add_column("kind")
    t.add_column("customer")
    t.add_column("channel")
    t.add_column("lines (SKU@LOC:units)")
    t.add_column("created", no_wrap=True)
    t.add_column("expires", no_wrap=True)
    for r in reservations:
        t.add_row(
            r.reservation_id,
            pb.ReservationState.Name(r.state),
            pb.ReservationKind.Name(r.kind),
            r.customer_id,
            r.channel,
            " ".join(f"{ln.sku}@{ln.location_id}:{ln.quantity}" for ln in r.lines),
            _time(r.created_at) if r.HasField("created_at") else "",
            _time(r.expires_at) if r.HasField("expires_at") else "",
        )
    return t


def change_line(u: pb.ReservationUpdate) -> str:
    """One change: when, what happened, the reservation after it (JSON)."""
    at = datetime.fromtimestamp(u.at_ms / 1000, UTC).isoformat(timespec="milliseconds")
    what = ",".join(pb.ReservationUpdate.Transition.Name(t) for t in u.transitions)
    body = json_format.MessageToJson(u.reservation, indent=None)
    return f"{at} {what} {body}"


def _time(ts: Timestamp) -> str:
    return ts.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")
