"""`unistock get`, `watch`, `network` and `find`: stock levels on the command line.

    unistock get SKU [LOCATION] [--json]        levels of a SKU (everywhere or at one location)
    unistock watch [--sku S]... [--location L]... [--json]
    unistock network NETWORK SKU... [--watch] [--json]
    unistock find SKU[:QTY]... [--near LOC | --at LAT,LON] ... [--json]

Output as unistock.client.output says: a table on a terminal, JSON lines with --json or in a
pipe (levels always with their zero fields). `watch` and `network --watch` on a terminal
without --json redraw one live table (Rich Live) as levels change, until Ctrl-C.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import Message
from rich.live import Live
from rich.table import Table
from rich.text import Text

from unistock.client._client import UnistockClient
from unistock.client.output import (
    NOT_FOUND,
    CliError,
    console,
    count,
    note,
    print_json,
    show,
    terminal,
)
from unistock.v1 import inventory_pb2 as pb


def levels_table(levels: Sequence[pb.StockLevel], title: str = "") -> Table:
    """Stock levels, one row per position (units; flags at risk / negative)."""
    t = Table(title=title or count(len(levels), "position"), title_justify="left")
    t.add_column("sku", no_wrap=True)
    t.add_column("location", no_wrap=True)
    for header in ("on hand", "reserved", "safety", "available", "in transit", "non-sellable"):
        t.add_column(header, justify="right")
    t.add_column("flags")
    t.add_column("version", justify="right")
    for lv in levels:
        flags = [f for f, on in (("at risk", lv.at_risk), ("negative", lv.negative)) if on]
        t.add_row(
            Text(lv.sku),
            Text(lv.location_id),
            f"{lv.on_hand:,}",
            f"{lv.reserved:,}",
            f"{lv.safety_stock:,}",
            f"{lv.available:,}",
            f"{lv.in_transit:,}",
            f"{lv.non_sellable:,}",
            Text(", ".join(flags), style="bold red" if flags else ""),
            f"{lv.version:,}",
        )
    return t


def network_table(levels: Sequence[pb.NetworkLevel], title: str = "") -> Table:
    """Network levels, one row per (network, SKU)."""
    t = Table(title=title or count(len(levels), "network level"), title_justify="left")
    t.add_column("network", no_wrap=True)
    t.add_column("sku", no_wrap=True)
    t.add_column("available", justify="right")
    t.add_column("locations", justify="right")
    t.add_column("stale locations", justify="right")
    t.add_column("version", justify="right")
    for lv in levels:
        t.add_row(
            Text(lv.network),
            Text(lv.sku),
            f"{lv.available:,}",
            f"{lv.locations:,}",
            f"{lv.stale_locations:,}",
            f"{lv.version:,}",
        )
    return t


def _lines(lines: Sequence[pb.StockLine]) -> str:
    return " ".join(f"{ln.sku}:{ln.quantity:,}" for ln in lines)


def find_table(found: pb.FindStockResponse, *, split: bool, variants: bool) -> Table:
    """A FindStock answer: the ranked options, then the split and the variants when asked."""
    t = Table(title=count(len(found.options), "option"), title_justify="left")
    t.add_column("", no_wrap=True)
    t.add_column("location", no_wrap=True)
    t.add_column("km", justify="right")
    t.add_column("lines (SKU:units)")
    t.add_column("covers all")
    t.add_column("stale")
    rows: list[tuple[str, pb.FindStockOption]] = [
        (f"#{i}", o) for i, o in enumerate(found.options, 1)
    ]
    rows += [("split", o) for o in found.split]
    for rank, o in rows:
        t.add_row(
            rank,
            Text(o.location_id),
            f"{o.distance_km:,.1f}",
            Text(_lines(o.lines)),
            "yes" if o.covers_all else "no",
            "stale" if o.stale else "",
        )
    if split:
        t.caption = (
            "the split covers every line"
            if found.split_covers_all
            else ("no split covers every line" if found.split else "no split")
        )
    if variants:
        for v in found.variants:
            t.add_row(
                "variant",
                Text(v.location_id),
                f"{v.distance_km:,.1f}",
                Text(f"{v.sku}:{v.available:,} ({v.size} {v.colour}, for {v.of_sku})"),
                "",
                "",
            )
    return t


async def get(c: UnistockClient, sku: str, location: str | None, *, as_json: bool) -> None:
    """Print the levels of sku (everywhere, or at location); CliError NOT_FOUND (exit 3) when
    the server has no level for it: no location holds sku, or the position was never seen and
    is all zeros (printed first: version 0)."""
    keys = [(sku, location)] if location else []
    levels = await c.get_availability(keys=keys, sku="" if keys else sku)
    if as_json or not terminal():
        for level in levels:  # every number, zeros too (as events and watches)
            print_json(level)
    elif levels:
        show(levels_table(levels))
    if not levels:
        raise CliError(f"no position for sku {sku!r} at any location", NOT_FOUND)
    if keys and _unknown(levels[0]):
        raise CliError(
            f"no position for sku {sku!r} at {location!r} (never seen: zeros)", NOT_FOUND
        )


def _unknown(level: pb.StockLevel) -> bool:
    """A position the server knows nothing of: never seen (version 0) and every number zero
    (a safety stock set by master data, or units in transit, are something known)."""
    return level.version == 0 and level == pb.StockLevel(
        sku=level.sku, location_id=level.location_id
    )


async def watch_table(
    updates: AsyncIterator[Any],
    key: Callable[[Any], tuple[str, str]],
    table: Callable[[Sequence[Any], str], Table],
    *,
    as_json: bool,
) -> None:
    """Print a watch stream: JSON lines (every message, zeros too) with --json or when stdout
    is no terminal; else one Rich Live table of the latest level per key, redrawn as updates
    come (the snapshot first), until the stream ends or Ctrl-C."""
    if as_json or not terminal():
        async for msg in updates:
            print_json(msg)
        return
    latest: dict[tuple[str, str], Message] = {}
    live_since = False

    def render() -> Table:
        rows = [latest[k] for k in sorted(latest)]
        state = "live: changes as they happen (Ctrl-C stops)" if live_since else "snapshot..."
        return table(rows, f"{count(len(rows), 'row')}, {state}")

    with Live(render(), console=console(), auto_refresh=False) as live:
        async for msg in updates:
            for lv in msg.levels:
                latest[key(lv)] = lv
            live_since = live_since or msg.snapshot_complete
            live.update(render(), refresh=True)


async def watch(c: UnistockClient, skus: list[str], locations: list[str], *, as_json: bool) -> None:
    """`unistock watch`: levels, then every change."""
    await watch_table(
        c.watch(skus, locations),
        lambda lv: (lv.sku, lv.location_id),
        levels_table,
        as_json=as_json,
    )


async def network(
    c: UnistockClient, network_id: str, skus: list[str], *, watching: bool, as_json: bool
) -> None:
    """`unistock network`: a network's levels of skus, or (watching) them and their changes."""
    if watching:
        await watch_table(
            c.watch_networks([network_id], skus),
            lambda lv: (lv.network, lv.sku),
            network_table,
            as_json=as_json,
        )
        return
    levels = await c.get_network_availability(network_id, skus)
    if as_json or not terminal():
        for level in levels:
            print_json(level)
    else:
        show(network_table(levels, f"network {network_id}: {count(len(levels), 'SKU')}"))


async def find(
    c: UnistockClient,
    network_id: str,
    lines: list[tuple[str, int]],
    mode: str,
    *,
    at: tuple[float, float] | None,
    near: str,
    max_km: float,
    limit: int,
    split: bool,
    variants: bool,
    as_json: bool,
) -> None:
    """`unistock find`: FindStock's answer (every field asked for shown, also when empty)."""
    resp = await c.find_stock(
        network_id,
        lines,
        mode,
        near=at,
        near_location_id=near,
        max_distance_km=max_km,
        limit=limit,
        allow_split=split,
        include_variants=variants,
    )
    if as_json:
        print_json(resp)
        return
    if terminal():
        show(find_table(resp, split=split, variants=variants))
        if not resp.options:
            note("no location of the network has any of these units")
        return
    found = json_format.MessageToDict(resp)
    # What was asked for is always shown, also when empty (no options: "options": []).
    found.setdefault("options", [])
    if split:
        found.setdefault("split", [])
        found.setdefault("splitCoversAll", False)
    if variants:
        found.setdefault("variants", [])
    print(json.dumps(found))
