"""`unistock move`, `transfer` and `close-transfer`: movements and transfers on the command line.

    unistock move SOURCE SEQ TYPE SKU@LOC:QTY [--sign +|- --reason WHY] [--condition C]
                  [--count-id C] [--transfer-id T] [--counterpart LOC] [--reservation-id R]
    unistock transfer ID [LOCATION] [--json]
    unistock close-transfer ID LOCATION [--json]

`move` ends: 0 applied; 4 `duplicate: ...` when the server had already applied (SOURCE, SEQ)
(nothing changed); 1 `error: ...` when it rejected the movement (the reason and the field).
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table
from rich.text import Text

from unistock.client._client import UnistockClient
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
