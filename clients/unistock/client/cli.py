"""`unistock`: a command line for the inventory API (ops, demos, scripts).

    unistock get SKU [LOCATION]               levels of a SKU (everywhere or at one location)
    unistock reserve ID SKU@LOC:QTY...        hold units (all lines or none)
    unistock release ID | show ID
    unistock fulfil ID [SKU@LOC:QTY... --request-id R]   ship all, or these lines
    unistock extend ID (SECONDS | --until RFC3339)       hold SECONDS from now, or until then
    unistock move SOURCE SEQ TYPE SKU@LOC:QTY [--count-id C] [--transfer-id T] [--sign +|-]
    unistock watch [--sku S]... [--location L]...

Target and token: --target / UNISTOCK_TARGET (default localhost:50051), --token /
UNISTOCK_TOKEN, else the dev token `make run` wrote: $UNISTOCK_DATA_DIR/dev-token when
UNISTOCK_DATA_DIR is set, otherwise var/dev-token in the current directory or the nearest
parent directory that has one, or in the checkout this CLI runs from.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from types import FrameType

from google.protobuf import json_format

from unistock.client._client import UnistockClient, UnistockClientError
from unistock.v1 import inventory_pb2 as pb

EPILOG = """\
exit codes:
  0    done (a movement applied, or recognised as a duplicate of an applied one)
  1    refused by the server, a movement rejected, no token, server unreachable, other errors
  2    usage error (bad or out-of-range arguments)
  130  interrupted (Ctrl-C)
"""

_SIGNS = {None: pb.ADJUSTMENT_SIGN_UNSPECIFIED, "+": pb.INCREASE, "-": pb.DECREASE}
MAX_QUANTITY = 1_000_000_000
MAX_TTL_SECONDS = 31_622_400  # 366 days
MAX_UINT64 = 2**64 - 1


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


def _rfc3339(text: str) -> datetime:
    """An argparse type: a time with a UTC offset, e.g. 2030-01-31T18:00:00Z."""
    try:
        at = datetime.fromisoformat(text)
    except ValueError:
        at = None
    if at is None or at.utcoffset() is None:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time with a UTC offset, e.g. 2030-01-31T18:00:00Z, got {text!r}"
        )
    return at


def _token_paths() -> list[pathlib.Path]:
    """Where the dev token may be, in the order they are tried."""
    if os.environ.get("UNISTOCK_DATA_DIR"):
        return [pathlib.Path(os.environ["UNISTOCK_DATA_DIR"]) / "dev-token"]
    cwd = pathlib.Path.cwd()
    paths = [d / "var" / "dev-token" for d in (cwd, *cwd.parents)]
    checkout = pathlib.Path(__file__).resolve().parents[3]  # clients/unistock/client/cli.py
    if (checkout / "pyproject.toml").exists():
        paths.append(checkout / "var" / "dev-token")
    return list(dict.fromkeys(paths))


def _token(arg: str | None) -> str:
    if arg:
        return arg
    if os.environ.get("UNISTOCK_TOKEN"):
        return os.environ["UNISTOCK_TOKEN"]
    paths = _token_paths()
    for path in paths:
        if path.is_file():
            return path.read_text().strip()
    raise CliError(
        "no token: pass --token or set UNISTOCK_TOKEN; the dev token `make run` writes was not "
        f"found at {', '.join(map(str, paths))} (set UNISTOCK_DATA_DIR to the server's data "
        "directory to look there)"
    )


def _print(message: object) -> None:
    print(json_format.MessageToJson(message, indent=None))  # type: ignore[arg-type]


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(
        prog="unistock",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--target", default=os.environ.get("UNISTOCK_TARGET", "localhost:50051"))
    p.add_argument("--token", default=None)
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help_: str, **kwargs: str) -> argparse.ArgumentParser:
        c = sub.add_parser(
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
    r.add_argument("lines", nargs="+", type=line, metavar="SKU@LOC:QTY")
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
    return p


def _check(args: argparse.Namespace) -> None:
    """What the argparse types cannot check alone; a usage error (exit 2) otherwise."""
    sub: argparse.ArgumentParser = args.command_parser
    if args.command == "move" and args.line[2] == 0 and args.type != "COUNT":
        sub.error("argument SKU@LOC:QTY: quantity must be at least 1 (0 only for a COUNT)")
    if args.command == "fulfil" and args.lines and not args.request_id:
        sub.error(
            "argument --request-id: required with lines (without it, running the command "
            "again would fulfil the lines twice)"
        )
    if args.command == "extend" and args.seconds is None and args.until is None:
        sub.error("give SECONDS (hold time from now) or --until RFC3339")


def _rejected(ack: pb.MovementAck) -> str:
    first = ack.rejections[0]
    reason = pb.RejectReason.Name(first.reason)
    return f"{len(ack.rejections)} movement(s) rejected: {reason} {first.detail}"


async def run(args: argparse.Namespace) -> int:
    """Execute one command; returns the exit code."""
    async with UnistockClient(
        args.target, _token(args.token), timeout=None if args.command == "watch" else 10
    ) as c:
        try:
            return await _command(c, args)
        except UnistockClientError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


async def _command(c: UnistockClient, args: argparse.Namespace) -> int:
    if args.command == "get":
        keys = [(args.sku, args.location)] if args.location else []
        levels = await c.get_availability(keys=keys, sku="" if keys else args.sku)
        for level in levels:
            _print(level)
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
            _print(msg)
    elif args.command == "transfer":
        for t in await c.get_transfer(args.transfer_id, args.location):
            _print(t)
    elif args.command == "close-transfer":
        _print(await c.close_transfer(args.transfer_id, args.location))
    return 0


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
    sys.exit(code)


if __name__ == "__main__":
    main()
