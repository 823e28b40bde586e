"""`unistock`: a command line for the inventory API (ops, demos, scripts).

    unistock get SKU [LOCATION]               levels of a SKU (everywhere or at one location)
    unistock reserve ID SKU@LOC:QTY...        hold units (all lines or none)
    unistock release ID | fulfil ID | show ID
    unistock extend ID SECONDS
    unistock move SOURCE SEQ TYPE SKU@LOC:QTY [--count-id C] [--transfer-id T] [--sign +|-]
    unistock watch [--sku S]... [--location L]...

Target and token: --target / UNISTOCK_TARGET (default localhost:50051), --token /
UNISTOCK_TOKEN, else the dev token `make run` wrote to ./var/dev-token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import sys
from collections.abc import Sequence

from google.protobuf import json_format

from unistock.client._client import UnistockClient, UnistockClientError
from unistock.v1 import inventory_pb2 as pb

_SIGNS = {None: pb.ADJUSTMENT_SIGN_UNSPECIFIED, "+": pb.INCREASE, "-": pb.DECREASE}


def _line(text: str) -> tuple[str, str, int]:
    try:
        key, qty = text.rsplit(":", 1)
        sku, loc = key.split("@", 1)
        return sku, loc, int(qty)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SKU@LOCATION:QTY, got {text!r}") from None


def _token(arg: str | None) -> str:
    if arg:
        return arg
    if os.environ.get("UNISTOCK_TOKEN"):
        return os.environ["UNISTOCK_TOKEN"]
    dev = pathlib.Path(os.environ.get("UNISTOCK_DATA_DIR", "var")) / "dev-token"
    if dev.exists():
        return dev.read_text().strip()
    raise SystemExit("no token: pass --token, set UNISTOCK_TOKEN, or run `make run` first")


def _print(message: object) -> None:
    print(json_format.MessageToJson(message, indent=None))  # type: ignore[arg-type]


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="unistock", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--target", default=os.environ.get("UNISTOCK_TARGET", "localhost:50051"))
    p.add_argument("--token", default=None)
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("get", help="levels of a SKU")
    g.add_argument("sku")
    g.add_argument("location", nargs="?")
    r = sub.add_parser("reserve", help="hold units")
    r.add_argument("reservation_id")
    r.add_argument("lines", nargs="+", type=_line)
    r.add_argument(
        "--kind",
        default="CART",
        choices=[k for k in pb.ReservationKind.keys() if k != "RESERVATION_KIND_UNSPECIFIED"],  # noqa: SIM118 (an enum wrapper, not a dict),
    )
    r.add_argument("--ttl", type=int, default=0)
    r.add_argument("--channel", default="cli")
    for name in ("release", "fulfil", "show"):
        c = sub.add_parser(name, help=f"{name} a reservation")
        c.add_argument("reservation_id")
    e = sub.add_parser("extend", help="move a reservation's expiry")
    e.add_argument("reservation_id")
    e.add_argument("seconds", type=int)
    m = sub.add_parser("move", help="send one movement")
    m.add_argument("source")
    m.add_argument("seq", type=int)
    m.add_argument(
        "type",
        choices=[t for t in pb.MovementType.keys() if t != "MOVEMENT_TYPE_UNSPECIFIED"],  # noqa: SIM118
    )
    m.add_argument("line", type=_line)
    m.add_argument("--count-id", default="")
    m.add_argument("--transfer-id", default="")
    m.add_argument("--reservation-id", default="")
    m.add_argument("--sign", choices=["+", "-"], default=None)
    w = sub.add_parser("watch", help="stream levels and changes")
    w.add_argument("--sku", action="append", default=[])
    w.add_argument("--location", action="append", default=[])
    return p


async def run(args: argparse.Namespace) -> int:
    """Execute one command; returns the exit code."""
    async with UnistockClient(
        args.target, _token(args.token), timeout=None if args.command == "watch" else 10
    ) as c:
        try:
            if args.command == "get":
                keys = [(args.sku, args.location)] if args.location else []
                for level in await c.get_availability(keys=keys, sku="" if keys else args.sku):
                    _print(level)
            elif args.command == "reserve":
                _print(
                    await c.reserve(
                        args.reservation_id,
                        args.lines,
                        kind=args.kind,
                        ttl_seconds=args.ttl,
                        channel=args.channel,
                    )
                )
            elif args.command == "release":
                _print(await c.release(args.reservation_id))
            elif args.command == "fulfil":
                _print(await c.fulfil(args.reservation_id))
            elif args.command == "show":
                _print(await c.get_reservation(args.reservation_id))
            elif args.command == "extend":
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
                    reservation_id=args.reservation_id,
                    adjustment_sign=_SIGNS[args.sign],
                )
                async for ack in c.apply_movements(
                    [pb.MovementBatch(source_id=args.source, movements=[mv])]
                ):
                    _print(ack)
            elif args.command == "watch":
                async for msg in c.watch(args.sku, args.location):
                    _print(msg)
        except UnistockClientError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    try:
        sys.exit(asyncio.run(run(args)))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
