"""`unistock-edge-agent rejections`: store staff list, watch and resolve rejected movements.

A movement the server rejects after the till got its receipt (a mistyped location: WRONG_STORE)
is kept by the store's agent until someone resolves it. This command asks the agent's local
``StoreIntake`` service (``ListRejectedMovements``, ``WatchRejectedMovements``,
``ResolveRejectedMovement``) and prints a Rich table, or JSON with ``--json``.

argparse (like the daemon's flags, so one ``--help`` style) and Rich (tables; the same output
helpers as the ``unistock`` command) rather than hand-made formatting.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
from collections.abc import Sequence

import grpc
from google.protobuf import json_format
from grpc import aio
from rich.table import Table

from unistock.client.output import print_json_array, show
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.intake.v1 import intake_pb2_grpc as ipb_grpc
from unistock.v1 import inventory_pb2 as pb

__all__ = [
    "EXIT_AGENT_REFUSED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "main",
]

EXIT_OK = 0
#: The agent answered with an error other than NOT_FOUND (the message is on stderr).
EXIT_AGENT_REFUSED = 1
#: Bad command line (argparse's usage error).
EXIT_USAGE = 2
#: --resolve SEQ: the agent has no rejected movement with that seq.
EXIT_NOT_FOUND = 3
#: The agent's intake could not be reached (EX_UNAVAILABLE).
EXIT_UNREACHABLE = 69

_DEFAULT_INTAKE = "127.0.0.1:50061"

_EPILOG = f"""\
examples:
  unistock-edge-agent rejections                      unresolved rejections, newest first
  unistock-edge-agent rejections --all --till till-3  every rejection of till-3
  unistock-edge-agent rejections --watch --json       current ones, then each new one (NDJSON)
  unistock-edge-agent rejections --resolve 42 --by ana --note "sold again at s1"

exit status:
  {EXIT_OK}   done (also when there is no rejection to show)
  {EXIT_AGENT_REFUSED}   the agent refused the request (its message is on stderr)
  {EXIT_USAGE}   bad command line
  {EXIT_NOT_FOUND}   --resolve SEQ: the agent has no rejected movement with that seq
  {EXIT_UNREACHABLE}  the agent's intake cannot be reached at --intake
"""


def _parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="unistock-edge-agent rejections",
        description="The movements the server rejected after the till got its receipt, as the "
        "store's agent keeps them until store staff resolve them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EPILOG,
    )
    p.add_argument(
        "--intake",
        default=env.get("UNISTOCK_AGENT_INTAKE") or _DEFAULT_INTAKE,
        metavar="HOST:PORT",
        help=f"the agent's StoreIntake address [env UNISTOCK_AGENT_INTAKE; {_DEFAULT_INTAKE}]",
    )
    p.add_argument("--all", action="store_true", help="resolved rejections too")
    p.add_argument("--till", default="", metavar="ID", help="only this till's (or device's)")
    p.add_argument(
        "--since",
        type=_when,
        metavar="TIME",
        help="only those rejected at or after TIME (ISO 8601, e.g. 2026-12-07T09:00:00Z)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="print the unresolved ones, then each new one as it comes, until Ctrl-C",
    )
    p.add_argument("--resolve", type=int, metavar="SEQ", help="mark rejection SEQ handled")
    p.add_argument("--by", default="", metavar="NAME", help="who handled it (with --resolve)")
    p.add_argument("--note", default="", metavar="TEXT", help="what was done (with --resolve)")
    p.add_argument(
        "--json",
        action="store_true",
        help="JSON (protobuf mapping, zero fields included): an array; NDJSON with --watch",
    )
    return p


def _when(text: str) -> datetime.datetime:
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time") from None
    return when if when.tzinfo else when.replace(tzinfo=datetime.UTC)


def _time(ts: object, present: bool) -> str:
    if not present:
        return ""
    assert hasattr(ts, "ToDatetime")
    when: datetime.datetime = ts.ToDatetime(tzinfo=datetime.UTC)
    return when.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _table(rows: Sequence[ipb.RejectedMovement], *, resolved: bool) -> Table:
    table = Table(title="Rejected movements", title_justify="left")
    for column in ("seq", "till", "request id", "movement", "location", "reason", "detail"):
        table.add_column(column, justify="right" if column == "seq" else "left")
    table.add_column("rejected at")
    if resolved:
        for column in ("resolved by", "resolved at", "note"):
            table.add_column(column)
    for r in rows:
        m = r.movement
        what = (
            f"{pb.MovementType.Name(m.type)} {m.quantity} x {m.sku}"
            if r.HasField("movement")
            else ""
        )
        cells = [
            str(r.seq),
            r.device_id,
            r.request_id,
            what,
            m.location_id,
            pb.RejectReason.Name(r.reason)
            if r.reason in pb.RejectReason.values()
            else str(r.reason),
            r.detail,
            _time(r.rejected_at, r.HasField("rejected_at")),
        ]
        if resolved:
            cells += [
                r.resolved_by,
                _time(r.resolved_at, r.HasField("resolved_at")),
                r.resolve_note,
            ]
        table.add_row(*cells)
    return table


async def _list(stub: ipb_grpc.StoreIntakeAsyncStub, a: argparse.Namespace) -> None:
    request = ipb.ListRejectedMovementsRequest(
        device_id=a.till, include_resolved=a.all, page_size=1000
    )
    if a.since is not None:
        request.since.FromDatetime(a.since)
    rows: list[ipb.RejectedMovement] = []
    while True:
        page = await stub.ListRejectedMovements(request)
        rows += page.rejections
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    if a.json:
        print_json_array(rows)
    elif rows:
        show(_table(rows, resolved=a.all))
    else:
        print("no " + ("" if a.all else "unresolved ") + "rejected movements")


def _json_line(message: ipb.WatchRejectedMovementsResponse | ipb.RejectedMovement) -> str:
    return json.dumps(json_format.MessageToDict(message, always_print_fields_with_no_presence=True))


async def _watch(stub: ipb_grpc.StoreIntakeAsyncStub, a: argparse.Namespace) -> None:
    current: list[ipb.RejectedMovement] | None = []  # None once caught up
    stream = stub.WatchRejectedMovements(ipb.WatchRejectedMovementsRequest(device_id=a.till))
    async for message in stream:
        if a.json:
            print(_json_line(message))
        elif message.caught_up:
            assert current is not None
            if current:
                show(_table(current, resolved=False))
            print(f"{len(current)} unresolved; watching for new rejections (Ctrl-C stops)")
            current = None
        elif current is not None:
            current.append(message.rejection)
        else:
            show(_table([message.rejection], resolved=False))
        sys.stdout.flush()


async def _resolve(stub: ipb_grpc.StoreIntakeAsyncStub, a: argparse.Namespace) -> None:
    resolved = await stub.ResolveRejectedMovement(
        ipb.ResolveRejectedMovementRequest(seq=a.resolve, resolved_by=a.by, note=a.note)
    )
    if a.json:
        print(_json_line(resolved))
    else:
        show(_table([resolved], resolved=True))


async def _run(a: argparse.Namespace) -> int:
    async with aio.insecure_channel(a.intake) as channel:
        stub = ipb_grpc.StoreIntakeStub(channel)
        try:
            if a.resolve is not None:
                await _resolve(stub, a)
            elif a.watch:
                await _watch(stub, a)
            else:
                await _list(stub, a)
        except aio.AioRpcError as e:
            code = e.code()
            if code == grpc.StatusCode.UNAVAILABLE:
                print(
                    f"unistock-edge-agent rejections: cannot reach the agent at {a.intake}: "
                    f"{e.details()}",
                    file=sys.stderr,
                )
                return EXIT_UNREACHABLE
            print(f"unistock-edge-agent rejections: {code.name}: {e.details()}", file=sys.stderr)
            return EXIT_NOT_FOUND if code == grpc.StatusCode.NOT_FOUND else EXIT_AGENT_REFUSED
    return EXIT_OK


def main(argv: Sequence[str]) -> int:
    """Run the command (``argv`` after ``rejections``); returns the exit status (EXIT_*)."""
    p = _parser()
    a = p.parse_args(argv)
    if a.resolve is not None:
        if a.resolve < 1:
            p.error(f"--resolve {a.resolve}: a seq is >= 1")
        if not a.by.strip():
            p.error("--resolve needs --by NAME (who handled it)")
        if a.watch:
            p.error("--resolve and --watch do not go together")
    elif a.by or a.note:
        p.error("--by and --note go with --resolve SEQ")
    if a.watch and (a.all or a.since):
        p.error("--watch shows the unresolved rejections, then new ones: no --all or --since")
    try:
        return asyncio.run(_run(a))
    except KeyboardInterrupt:
        return EXIT_OK
