"""`unistock status`: the server's health, partitions, resident positions, every store agent's
state, outbox depth and oldest unacked age, the change feed consumers' lag (the ledger) and the
watch subscribers, from AdminService.GetServerStatus (role admin).

    unistock status [--target HOST:PORT] [--token TOKEN] [--json] [--max-lag SECONDS]

The server and token are found as by every client program (unistock.client.config): flags,
UNISTOCK_TARGET / UNISTOCK_TOKEN, the user config file `make run` writes, the dev token.

Output: Rich panels and tables for a person; with --json one JSON object on stdout, the
protobuf JSON mapping of ServerStatus with every field, zero-valued ones included (e.g.
"outboxDepth": "0"; 64-bit integers are strings, as the mapping says).

Exit codes (a script can rely on them):
  0  healthy: serving, and no store OFFLINE or stale, no feed consumer lagging
  1  not serving (Redis unreachable, MQTT ingestion disconnected, shutting down), or the
     server could not be asked (unreachable, bad token: the error is on stderr)
  2  usage error (a bad flag)
  3  degraded: serving, but a store's agent is OFFLINE, a store is stale for a network, or a
     feed consumer (e.g. the ledger) is more than --max-lag seconds behind (default 60)

A store in master data whose agent was never heard from is shown ("never heard") and does not
make the status degraded by itself (it is degraded once stale for a network with a limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from google.protobuf import json_format
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from unistock.client._client import UnistockClient, UnistockClientError
from unistock.client.config import ClientConfig, ConfigError
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb

#: Exit codes (see the module docstring).
HEALTHY, NOT_SERVING, USAGE, DEGRADED = 0, 1, 2, 3
#: A feed consumer further behind than this (seconds) makes the status degraded.
DEFAULT_MAX_LAG = 60.0


def age(seconds: float) -> str:
    """A duration for people: "0.4 s", "42 s", "3 min 12 s", "2 h 05 min", "3 d 04 h"."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(seconds)
    for unit, size, sub, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60)):
        if s >= size:
            return f"{s // size} {unit} {s % size // sub_size:02d} {sub}"
    return f"{s // 60} min {s % 60:02d} s" if s >= 60 else f"{s} s"


def degraded_reasons(status: apb.ServerStatus, max_lag: float = DEFAULT_MAX_LAG) -> list[str]:
    """Why a serving server is degraded (empty: it is not)."""
    out = [
        f"store {s.store_id} is OFFLINE" for s in status.stores if s.state == pb.AgentStatus.OFFLINE
    ]
    out += [
        f"store {s.store_id} is stale for {', '.join(s.stale_networks)}"
        for s in status.stores
        if s.stale
    ]
    out += [
        f"feed consumer {c.name} is {age(c.lag_seconds)} behind"
        for c in status.feed_consumers
        if c.lag_seconds > max_lag
    ]
    return out


def exit_code(status: apb.ServerStatus, max_lag: float = DEFAULT_MAX_LAG) -> int:
    """HEALTHY, NOT_SERVING or DEGRADED for a status."""
    if not status.health.serving:
        return NOT_SERVING
    return DEGRADED if degraded_reasons(status, max_lag) else HEALTHY


def ranges(numbers: Sequence[int]) -> str:
    """Ascending numbers as runs: [0, 1, 2, 5] -> "0-2, 5"."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _yes(ok: bool, yes: str, no: str) -> Text:
    return Text(yes, style="green") if ok else Text(no, style="bold red")


def _overview(status: apb.ServerStatus, max_lag: float) -> Panel:
    h = status.health
    code = exit_code(status, max_lag)
    verdict = {
        HEALTHY: Text("SERVING", style="bold green"),
        DEGRADED: Text("DEGRADED", style="bold yellow"),
        NOT_SERVING: Text("NOT SERVING", style="bold red"),
    }[code]
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    t.add_row("status", verdict)
    started = status.started_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S UTC")
    t.add_row("version", f"{status.version}, up {age(status.uptime_seconds)} (since {started})")
    redis = _yes(h.redis_reachable, "reachable", f"UNREACHABLE: {h.redis_error}")
    t.add_row("redis", redis)
    flushed = (
        "none since the start"
        if h.last_flush_age_seconds < 0
        else (f"{age(h.last_flush_age_seconds)} ago")
    )
    t.add_row("last flush", flushed)
    mqtt = (
        _yes(h.mqtt_connected, "connected", "DISCONNECTED")
        if h.mqtt_enabled
        else Text("off (no --mqtt-url)", style="dim")
    )
    t.add_row("mqtt ingestion", mqtt)
    p = status.partitions
    owned = "all" if len(p.owned) == p.count else ranges(list(p.owned)) or "none"
    t.add_row("partitions", f"{p.count:,} (owned here: {owned})")
    pos = status.positions
    t.add_row(
        "resident positions",
        f"{pos.resident:,} of {pos.max_resident:,} (activated {pos.activated:,}, "
        f"passivated {pos.passivated:,} since the start)",
    )
    w = status.watch_subscribers
    t.add_row(
        "watch subscribers",
        f"availability {w.availability:,}, network {w.network:,}, "
        f"reservations {w.reservations:,}, events {w.events:,}",
    )
    for reason in degraded_reasons(status, max_lag) if code == DEGRADED else []:
        t.add_row("", Text(reason, style="yellow"))
    return Panel(t, title="Unistock server", expand=False)


def _consumers(status: apb.ServerStatus, max_lag: float) -> Table:
    t = Table(title="Change feed consumers", title_justify="left")
    t.add_column("consumer")
    t.add_column("lag", justify="right")
    t.add_column("entries behind", justify="right")
    t.add_column("partitions without cursor", justify="right")
    for c in status.feed_consumers:
        style = "red" if c.lag_seconds > max_lag else ""
        behind = f"≥ {c.entries_behind:,}" if c.entries_behind_at_least else f"{c.entries_behind:,}"
        t.add_row(
            c.name,
            Text(age(c.lag_seconds), style=style),
            behind,
            str(c.partitions_without_cursor),
        )
    if not status.health.redis_reachable:
        t.caption = "not known: Redis is unreachable"
    return t


_STATES = {
    pb.AgentStatus.ONLINE: Text("ONLINE", style="green"),
    pb.AgentStatus.OFFLINE: Text("OFFLINE", style="bold red"),
}


def _stores(status: apb.ServerStatus) -> Table:
    t = Table(title="Store agents", title_justify="left")
    for name, justify in (
        ("store", "left"),
        ("state", "left"),
        ("source", "left"),
        ("outbox", "right"),
        ("oldest unacked", "right"),
        ("last acked seq", "right"),
        ("rejected", "right"),
        ("last heard", "right"),
        ("stale", "left"),
    ):
        t.add_column(name, justify=justify)  # type: ignore[arg-type]
    for s in status.stores:
        state = _STATES.get(s.state, Text("never heard", style="yellow"))
        heard = (
            Text("—", style="dim")
            if not s.HasField("last_heard")
            else Text(f"{age(s.silent_seconds)} ago")
            if s.has_been_heard
            else Text(f"never ({age(s.silent_seconds)} known)", style="yellow")
        )
        stale = (
            Text("STALE: " + ", ".join(s.stale_networks), style="bold red")
            if s.stale
            else Text("no", style="green")
        )
        outbox = Text(f"{s.outbox_depth:,}", style="yellow" if s.outbox_depth else "")
        t.add_row(
            s.store_id,
            state,
            s.source_id or "—",
            outbox,
            age(s.oldest_unacked_age_seconds) if s.outbox_depth else "—",
            f"{s.last_acked_seq:,}",
            Text(f"{s.rejected_unresolved:,} unresolved", style="bold red")
            if s.rejected_unresolved
            else "0",
            heard,
            stale,
        )
    if not status.stores:
        t.caption = "no store known (none in master data, none heard over MQTT)"
    return t


def render(status: apb.ServerStatus, console: Console, max_lag: float = DEFAULT_MAX_LAG) -> None:
    """The status for people: an overview panel, the feed consumers and the store agents."""
    console.print(Group(_overview(status, max_lag), _consumers(status, max_lag), _stores(status)))


def to_json(status: apb.ServerStatus) -> str:
    """The protobuf JSON mapping of status, zero-valued fields included."""
    return json.dumps(json_format.MessageToDict(status, always_print_fields_with_no_presence=True))


async def run_status(
    client: UnistockClient,
    *,
    as_json: bool,
    console: Console,
    max_lag: float = DEFAULT_MAX_LAG,
) -> int:
    """Ask the server for its status and print it on console (tables, or JSON with as_json);
    returns the exit code (see the module docstring). A failed call prints `error: ...` on
    stderr and returns NOT_SERVING."""
    try:
        status = await client.get_server_status()
    except UnistockClientError as exc:
        print(f"error: cannot get the server's status: {exc}", file=sys.stderr)
        return NOT_SERVING
    if as_json:
        console.out(to_json(status), highlight=False)
    else:
        render(status, console, max_lag)
    return exit_code(status, max_lag)


def parser() -> argparse.ArgumentParser:
    """`unistock status`'s flags (the integrator wires the command into `unistock`)."""
    p = argparse.ArgumentParser(
        prog="unistock status",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 2)[2] if __doc__ else None,
    )
    p.add_argument(
        "--target",
        help="server host:port (else UNISTOCK_TARGET, the user config file, localhost:50051)",
    )
    p.add_argument(
        "--token",
        help="an admin token (else UNISTOCK_TOKEN, the user config file, the dev token)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object, zero fields included")
    p.add_argument(
        "--max-lag",
        type=float,
        default=DEFAULT_MAX_LAG,
        metavar="SECONDS",
        help=f"a feed consumer further behind is degraded (default {DEFAULT_MAX_LAG:g})",
    )
    return p


def show_status(
    target: str | None, token: str | None, *, as_json: bool, max_lag: float = DEFAULT_MAX_LAG
) -> int:
    """`unistock status`: find the server and token (target/token, else as every client
    program does), ask, print; returns the exit code."""
    try:  # flags, UNISTOCK_* variables, the user config file, as every client program
        config = ClientConfig.load()
        where, secret = config.target(target).value, config.token(token).value
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return NOT_SERVING

    async def ask() -> int:
        # No retries: a server that cannot be reached now is what the status is about.
        async with UnistockClient(where, secret, retry=None) as client:
            console = Console(highlight=False, soft_wrap=False)
            if not console.is_terminal:  # no wrapped cells in a file or a pipe
                console = Console(highlight=False, width=200)
            return await run_status(client, as_json=as_json, console=console, max_lag=max_lag)

    return asyncio.run(ask())


def main_status(argv: Sequence[str] | None = None) -> int:
    """`unistock status` from an argument list (its argparse flags): the exit code."""
    try:
        args = parser().parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    return show_status(args.target, args.token, as_json=args.json, max_lag=args.max_lag)
