"""`unistock move`, `transfer` and `close-transfer`: movements and transfers on the command line.

    unistock move SOURCE (SEQ | next) TYPE SKU@LOC:QTY [--sign +|- --reason WHY] [--condition C]
                  [--count-id C] [--transfer-id T] [--counterpart LOC] [--reservation-id R]
                  [--request-id ID] [--wait SECONDS]
    unistock transfer ID [LOCATION] [--json]
    unistock close-transfer ID LOCATION [--json]

`move` ends: 0 applied; 4 `duplicate: ...` when the server had already applied (SOURCE, SEQ)
(nothing changed); 1 `error: ...` when it rejected the movement (the reason and the field).

With `next` instead of a SEQ, the movement goes through the client library's durable
MovementWriter: an outbox file per server and source (`outbox_path`) gives it the source's next
seq and keeps it, fsynced, until the server acknowledges it; one the server did not acknowledge
in time is sent again by the next `move SOURCE next` (of the same server), never lost or sent
twice as another movement.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from unistock.client._client import UnistockClient
from unistock.client._writer import (
    FlushTimeout,
    MovementWriter,
    RequestConflict,
    WriterFailed,
    WriterFileError,
    WriterLocked,
)
from unistock.client.output import (
    DUPLICATE,
    NOT_FOUND,
    CliError,
    count,
    print_json,
    show,
    terminal,
)
from unistock.v1 import inventory_pb2 as pb

SIGNS = {None: pb.ADJUSTMENT_SIGN_UNSPECIFIED, "+": pb.INCREASE, "-": pb.DECREASE}

MOVE_DESCRIPTION = """\
Send one movement (a physical fact about stock) as SOURCE's movement number SEQ.
SEQ: 1, 2, 3... per SOURCE; a (SOURCE, SEQ) sent again is a duplicate: nothing changes
(exit 4). TYPE and what it needs:

  SALE, RETURN, RECEIPT, PICKUP      SKU@LOC:QTY (QTY 1 to 1e9)
  RETURN --condition NON_SELLABLE    a damaged return (kept apart, never sold)
  ADJUSTMENT --sign + | - --reason WHY   damage, theft, found units:
      unistock move backoffice 7 ADJUSTMENT SHOE-42@store-7:2 --sign - --reason damaged
      (--condition NON_SELLABLE with --sign -: write damaged units off)
  COUNT --count-id C                 the units counted (QTY 0 to 1e9)
  TRANSFER_OUT --transfer-id T --counterpart DEST, TRANSFER_IN --transfer-id T

SEQ `next`: the CLI numbers the source itself, through a durable outbox file per server and
source ($UNISTOCK_OUTBOX_DIR, else ~/.local/state/unistock/outbox): the movement is kept there
until the server acknowledges it, and one not acknowledged within --wait seconds is sent again
by the next `move SOURCE next`. Give --request-id (e.g. the document's line) and a retried
command records nothing twice. Use a SOURCE of its own for `next` (a SOURCE numbered by hand
too would collide: exit 4).
"""


def rejected_line(ack: pb.MovementAck) -> str:
    """`N movement(s) rejected: REASON detail` (the detail names the field)."""
    first = ack.rejections[0]
    reason = pb.RejectReason.Name(first.reason)
    return f"{len(ack.rejections)} movement(s) rejected: {reason} {first.detail}"


def ack_table(ack: pb.MovementAck) -> Table:
    """A MovementAck: applied, duplicates, each rejection and notice."""
    t = Table(
        title=f"{count(ack.applied, 'movement')} applied, {count(ack.duplicates, 'duplicate')}",
        title_justify="left",
    )
    t.add_column("outcome", no_wrap=True)
    t.add_column("source:seq", no_wrap=True)
    t.add_column("reason")
    t.add_column("detail")
    for r in ack.rejections:
        t.add_row("rejected", Text(f"{r.source_id}:{r.seq}"), pb.RejectReason.Name(r.reason),
                  Text(r.detail))  # fmt: skip
    for n in ack.notices:
        t.add_row("notice", Text(f"{n.source_id}:{n.seq}"), pb.NoticeKind.Name(n.kind),
                  Text(n.detail))  # fmt: skip
    for s in ack.sources:
        t.add_row("durable", Text(f"{s.source_id}:{s.seq}"), "", "up to this seq")
    return t


async def move(c: UnistockClient, movement: pb.Movement, *, as_json: bool) -> None:
    """Send one movement and print its ack; CliError 1 when rejected, 4 when a duplicate."""
    batch = pb.MovementBatch(source_id=movement.source_id, movements=[movement])
    problem: CliError | None = None
    async for ack in c.apply_movements([batch]):
        if as_json or not terminal():
            print_json(ack, zeros=as_json)
        else:
            show(ack_table(ack))
        if ack.rejections:
            problem = CliError(rejected_line(ack))
        elif ack.duplicates and not ack.applied:
            problem = CliError(
                f"movement {movement.source_id}:{movement.seq} was already applied: nothing "
                "changed (the next seq of this source is a new movement)",
                DUPLICATE,
            )
    if problem is not None:
        raise problem


OUTBOX_DIR_ENV = "UNISTOCK_OUTBOX_DIR"


def outbox_path(target: str, source: str) -> Path:
    """The outbox file of `move SOURCE next` for that server: one per (server, source), as a
    source's seqs are the server's. `$UNISTOCK_OUTBOX_DIR`, else
    `$XDG_STATE_HOME/unistock/outbox` (`~/.local/state/unistock/outbox`)."""
    base = os.environ.get(OUTBOX_DIR_ENV) or str(
        Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
        / "unistock"
        / "outbox"
    )
    return Path(base).expanduser() / _file_name(target) / f"{_file_name(source)}.sqlite"


def _file_name(text: str) -> str:
    """text as one file name (a target's ':' and any other unsafe character become '_')."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


async def record(
    c: UnistockClient,
    target: str,
    movement: pb.Movement,
    *,
    request_id: str,
    wait: float,
    as_json: bool,
) -> None:
    """`move SOURCE next`: record through the source's durable outbox, then wait up to `wait`
    seconds for the server's ack. Prints what the server said; CliError 1 when it rejected
    the movement (or did not answer in time: it stays in the outbox), 4 when a duplicate."""
    path = outbox_path(target, movement.source_id)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise CliError(
            f"cannot make the outbox directory {path.parent}: {e.strerror or e}"
        ) from None
    try:
        async with MovementWriter(c, movement.source_id, path) as writer:
            try:
                rec = await writer.record(movement, request_id=request_id)
            except RequestConflict as e:
                raise CliError(str(e)) from None
            try:
                result = await writer.flush(timeout=wait)
            except FlushTimeout as e:
                raise CliError(
                    f"recorded as {movement.source_id}:{rec.seq} in {path}, but the server "
                    f"did not acknowledge it within {wait:g} s ({e.pending} waiting): it is "
                    f"kept and sent by the next `unistock move {movement.source_id} next ...`"
                ) from None
            except WriterFailed as e:
                raise CliError(
                    f"{e.cause} (recorded as {movement.source_id}:{rec.seq} in {path})"
                ) from None
    except (WriterLocked, WriterFileError) as e:
        raise CliError(str(e)) from None
    summary = {
        "sourceId": movement.source_id,
        "seq": str(rec.seq),
        "recorded": rec.new,
        "applied": result.applied,
        "duplicates": result.duplicates,
        "rejected": [
            {"seq": str(r.seq), "reason": r.reason_name, "detail": r.detail}
            for r in result.rejected
        ],
        "outbox": str(path),
    }
    if as_json or not terminal():
        print(json.dumps(summary))
    else:
        t = Table(title=f"{movement.source_id}:{rec.seq}", title_justify="left")
        for key in ("recorded", "applied", "duplicates", "outbox"):
            t.add_row(key, Text(str(summary[key])))
        for r in result.rejected:
            t.add_row("rejected", Text(f"seq {r.seq}: {r.reason_name} {r.detail}"))
        show(t)
    mine = [r for r in result.rejected if r.seq == rec.seq]
    if mine:
        raise CliError(f"movement rejected: {mine[0].reason_name} {mine[0].detail}")
    if result.rejected:  # earlier movements of this outbox, sent now
        raise CliError(
            f"{len(result.rejected)} earlier movement(s) of {path} rejected: "
            f"{result.rejected[0].reason_name} {result.rejected[0].detail}"
        )
    if not rec.new:
        return  # a retry of a recorded request: what it did is done
    if result.duplicates and not result.applied:
        raise CliError(
            f"the server already had {movement.source_id}:{rec.seq}: nothing changed (the source "
            "was numbered elsewhere too; give `next` a source of its own)",
            DUPLICATE,
        )


def transfer_table(transfers: Sequence[pb.Transfer]) -> Table:
    """Transfers, one row per (transfer, SKU): shipped, received, in transit, lost."""
    t = Table(title=count(len(transfers), "transfer record"), title_justify="left")
    t.add_column("transfer", no_wrap=True)
    t.add_column("from > to", no_wrap=True)
    t.add_column("state")
    t.add_column("sku", no_wrap=True)
    for header in ("shipped", "received", "in transit", "lost", "unexpected"):
        t.add_column(header, justify="right")
    t.add_column("discrepancies")
    for tr in transfers:
        kinds = ", ".join(pb.DiscrepancyKind.Name(d.kind) for d in tr.discrepancies)
        for i, ln in enumerate(tr.lines or [pb.TransferLine()]):
            t.add_row(
                Text(tr.transfer_id),
                Text(f"{tr.origin_location_id} > {tr.destination_location_id}"),
                pb.TransferState.Name(tr.state),
                Text(ln.sku),
                f"{ln.shipped:,}",
                f"{ln.received:,}",
                f"{ln.in_transit:,}",
                f"{ln.lost:,}",
                f"{ln.unexpected:,}",
                kinds if i == 0 else "",
            )
    return t


def print_transfers(transfers: Sequence[pb.Transfer], *, as_json: bool) -> None:
    """Transfers as JSON lines (--json: zeros too; in a pipe: as the CLI always printed them)
    or, on a terminal, a table."""
    if as_json or not terminal():
        for t in transfers:
            print_json(t, zeros=as_json)
    else:
        show(transfer_table(transfers))


async def transfer(c: UnistockClient, transfer_id: str, location: str, *, as_json: bool) -> None:
    """`unistock transfer`; CliError NOT_FOUND (exit 3) for an unknown transfer."""
    transfers = await c.get_transfer(transfer_id, location)
    if not transfers:
        raise CliError(f"no transfer {transfer_id!r}", NOT_FOUND)
    print_transfers(transfers, as_json=as_json)
