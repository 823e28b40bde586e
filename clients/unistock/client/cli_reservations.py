"""`unistock reservations`: reservations by customer, channel and location on the command line.

    unistock reservations (--customer C | --channel CH | --location LOC)...
                          [--state STATE]... [--newest-first] [--limit N] [--json] [--watch]

A table of the matching reservations (ListReservations, every page up to --limit); --watch
prints the same table for the snapshot, then one line per change as it happens
(WatchReservations) until Ctrl-C.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from rich.table import Table

from unistock.client._client import UnistockClient
from unistock.client.output import count, note, print_json_array, show
from unistock.v1 import inventory_pb2 as pb

COMMANDS = ("reservations",)
_STATES = [s for s in pb.ReservationState.keys() if s != "RESERVATION_STATE_UNSPECIFIED"]  # noqa: SIM118 (an enum wrapper)
#: Reservations listed unless --limit says otherwise.
DEFAULT_LIMIT = 1_000


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `reservations` with the CLI's command(name, help, description=...)."""
    r = command(
        "reservations",
        "reservations of a customer, a channel or a location (table; --watch: live)",
        description="Reservations by customer, channel and/or location (all given must\n"
        "match), oldest first. A location lists the reservations holding units there or\n"
        "fulfilled from there. Ended reservations stay listed for the server's retention\n"
        "(7 days by default). Roles channel, backoffice and admin.",
    )
    r.add_argument("--customer", default="", metavar="C", help="the customer_id")
    r.add_argument("--channel", default="", metavar="CH", help="the channel (web, app...)")
    r.add_argument("--location", default="", metavar="LOC", help="a location of its lines")
    r.add_argument(
        "--state",
        dest="states",
        action="append",
        default=[],
        choices=_STATES,
        metavar="STATE",
        help=f"only this state (repeatable): {', '.join(_STATES)}",
    )
    r.add_argument("--newest-first", action="store_true", help="newest first")
    r.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"at most N reservations (default {DEFAULT_LIMIT:,})",
    )
    r.add_argument("--json", action="store_true", help="one JSON array instead of a table")
    r.add_argument(
        "--watch",
        action="store_true",
        help="the reservations, then every change as it happens (one line each), until Ctrl-C",
    )


def usage_error(args: argparse.Namespace) -> str | None:
    """What makes the arguments unusable (exit 2), None when they are fine."""
    if not (args.customer or args.channel or args.location):
        return "give --customer, --channel or --location (or several)"
    if args.limit < 1:
        return "argument --limit: at least 1"
    if args.watch and (args.json or args.newest_first):
        return "argument --watch: not with --json or --newest-first"
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
        await _watch(c, where)
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


async def _watch(c: UnistockClient, where: dict[str, object]) -> None:
    snapshot: list[pb.Reservation] = []
    live = False
    async for msg in c.watch_reservations(**where):  # type: ignore[arg-type]
        if not live:
            snapshot += [u.reservation for u in msg.updates]
            if msg.snapshot_complete:
                show(table(snapshot))
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
