"""The store agent's gRPC ``StoreIntake`` service: what tills, handhelds and readers call.

Each call is turned into the agent's own operations (:class:`unistock.edge.agent.StoreAgent`):
a movement is checked as the server would check it, put on the agent's clock and recorded in
the outbox (idempotently under the till's ``request_id``, with the till's id); count sessions
start, take tag reads and stop; the movements the server rejected after their receipt are
listed, watched and resolved by store staff.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import math
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from unistock.edge.counting import CountCover, ReadOutcome
from unistock.edge.outbox import RejectedMovement, RequestConflict
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.intake.v1 import intake_pb2_grpc as ipb_grpc
from unistock.server.api.convert import movement_from_wire, timestamp_from_wire
from unistock.server.domain import InvalidArgument, check_id
from unistock.v1 import inventory_pb2 as pb

if TYPE_CHECKING:
    from unistock.edge.agent import StoreAgent

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "Intake",
    "now_timestamp",
    "rejection_to_wire",
    "timestamp_at",
]

#: ListRejectedMovements page size when the request says 0, and the largest one allowed.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


def now_timestamp() -> Timestamp:
    """The current time as a protobuf Timestamp."""
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def timestamp_at(seconds: float) -> Timestamp:
    """A protobuf Timestamp of ``seconds`` since the epoch, cut to the microsecond.

    Cut, never rounded up: a time shown to a client is never after the stored one, so that
    passing it back as ``ListRejectedMovementsRequest.since`` includes that rejection.
    """
    ts = Timestamp()
    ts.FromMicroseconds(math.floor(seconds * 1_000_000))
    return ts


def rejection_to_wire(source_id: str, r: RejectedMovement) -> ipb.RejectedMovement:
    """An outbox rejection as the StoreIntake ``RejectedMovement`` message."""
    wire = ipb.RejectedMovement(
        source_id=source_id,
        seq=r.seq,
        device_id=r.device_id,
        request_id=r.request_id,
        reason=r.reason,  # type: ignore[arg-type]
        detail=r.detail,
        rejected_at=timestamp_at(r.rejected_at),
        resolved=r.resolved_at is not None,
        resolved_by=r.resolved_by,
        resolve_note=r.resolve_note,
    )
    if r.movement is not None:
        wire.movement.CopyFrom(r.movement)
    if r.recorded_at is not None:
        wire.recorded_at.CopyFrom(timestamp_at(r.recorded_at))
    if r.resolved_at is not None:
        wire.resolved_at.CopyFrom(timestamp_at(r.resolved_at))
    return wire


class Intake(ipb_grpc.StoreIntakeServicer):
    """gRPC StoreIntake on top of a StoreAgent."""

    def __init__(self, agent: StoreAgent) -> None:
        self.agent = agent

    async def _receipt(
        self,
        m: pb.Movement,
        context: aio.ServicerContext[Any, Any],
        request: ipb.SaleRequest | ipb.ReturnRequest | ipb.RecordMovementRequest,
        device: str,
        prefix: str = "",
    ) -> ipb.IntakeReceipt:
        agent = self.agent
        if not m.location_id:
            m.location_id = agent.settings.location
        try:
            self._check(m, prefix)
            if request.HasField("sent_at"):
                timestamp_from_wire("sent_at", request.sent_at)
        except InvalidArgument as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        sent_at = request.sent_at if request.HasField("sent_at") else None
        agent.to_agent_clock(m, sent_at, device)
        try:
            if request.request_id:
                # A retry of a recorded call: its receipt again, and no count sees it twice.
                seq = await asyncio.to_thread(agent.outbox.request_seq, request.request_id, m)
                if seq is not None:
                    return self._receipt_for(seq, replayed=True)
            before = self._sale_seen(m) if m.type == pb.SALE else None  # RecordMovement too
            if m.type == pb.COUNT and m.count_id:
                before = self._count_seen(m)
            if request.request_id:
                seq, appended = await agent.record_once(
                    m, request.request_id, before, device_id=device
                )
                return self._receipt_for(seq, replayed=not appended)
        except RequestConflict as e:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(e))
        [seq] = await agent.record([m], before, device_id=device)
        return self._receipt_for(seq, replayed=False)

    def _check(self, m: pb.Movement, prefix: str) -> None:
        """Refuse (InvalidArgument naming the field) a movement the server would reject for a
        fault of its own: checked with the server's own validation, so that a receipt is only
        given for a movement the server will apply (the agent assigns source_id, seq and, on
        anything but a COUNT, count_id)."""
        probe = pb.Movement()
        probe.CopyFrom(m)
        probe.seq = 1
        if probe.type != pb.COUNT:
            probe.count_id = ""
        movement_from_wire(probe, prefix, self.agent.outbox.source_id)

    def _receipt_for(self, seq: int, *, replayed: bool) -> ipb.IntakeReceipt:
        return ipb.IntakeReceipt(
            source_id=self.agent.outbox.source_id,
            seq=seq,
            outbox_depth=self.agent.outbox.depth(),
            replayed=replayed,
        )

    def _count_seen(self, m: pb.Movement) -> Callable[[], None] | None:
        """A COUNT a device sent itself (a handheld that counts on its own): from its
        ``occurred_at`` on, it covers its SKU at its location like a session's COUNT. Noted now
        (late sales are marked with it from here on); returns the count store write of it, to
        run just before its append. ``None`` for a count already in the stream: sent again, it
        stands from when it was first counted, as on the server.
        """
        if not m.HasField("occurred_at"):
            m.occurred_at.CopyFrom(now_timestamp())
        cover = CountCover(
            m.location_id, m.sku, m.count_id, m.occurred_at.ToDatetime(tzinfo=datetime.UTC)
        )
        new = self.agent._counts.marks.add([cover])
        if not new:
            return None
        return functools.partial(self.agent.count_store.cover, new)

    def _sale_seen(self, m: pb.Movement) -> Callable[[], None] | None:
        """The sale into the running sessions of its location, now (before its append, which
        puts it before their COUNTs in the stream); returns the count store write of it, to run
        just before the append.

        Both happen even if the append then fails: the till gets an error and retries the
        sale, and the sessions, in memory and on disk, agree in the meantime.
        """
        counts = self.agent._counts
        keys = []
        for count_id, session in counts.running.items():
            if session.location_id == m.location_id:
                session.sale_recorded(m.sku, list(m.epc))
                keys.append(counts.keys[count_id])
        if not keys:
            return None
        epcs = list(m.epc)
        return lambda: self.agent.count_store.sale(keys, epcs)

    async def RecordSale(self, request: ipb.SaleRequest, context: Any) -> ipb.IntakeReceipt:
        m = pb.Movement(
            sku=request.sku,
            type=pb.SALE,
            quantity=request.quantity,
            reservation_id=request.reservation_id,
            epc=request.epc,
            location_id=request.location_id or self.agent.settings.location,
        )
        if request.HasField("occurred_at"):
            m.occurred_at.CopyFrom(request.occurred_at)
        return await self._receipt(m, context, request, request.till_id)

    async def RecordReturn(self, request: ipb.ReturnRequest, context: Any) -> ipb.IntakeReceipt:
        m = pb.Movement(
            sku=request.sku,
            type=pb.RETURN,
            quantity=request.quantity,
            epc=request.epc,
            location_id=request.location_id,
            condition=request.condition,
        )
        if request.HasField("occurred_at"):
            m.occurred_at.CopyFrom(request.occurred_at)
        return await self._receipt(m, context, request, request.till_id)

    async def RecordMovement(
        self, request: ipb.RecordMovementRequest, context: Any
    ) -> ipb.IntakeReceipt:
        m = pb.Movement()
        m.CopyFrom(request.movement)
        if m.source_id or m.seq:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "movement.source_id/seq: assigned by the agent, leave them empty",
            )
        return await self._receipt(m, context, request, request.device_id, "movement.")

    async def StartCount(
        self, request: ipb.StartCountRequest, context: Any
    ) -> ipb.StartCountRequest:
        try:  # the ids go into COUNT movements: the server's rules, checked before they do
            check_id("count_id", request.count_id)
            for i, sku in enumerate(request.skus):
                check_id(f"skus[{i}]", sku)
            if request.location_id:
                check_id("location_id", request.location_id)
        except InvalidArgument as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        await self.agent.start_count(request)
        return request

    async def RecordTagReads(self, request_iterator: Any, context: Any) -> ipb.TagReadSummary:
        summary = ipb.TagReadSummary()
        async for read in request_iterator:
            session = self.agent._counts.running.get(read.count_id)
            summary.reads += 1
            if session is None:
                self.agent.metrics.tag_reads.labels("no_session").inc()
                summary.bad_reads += 1
                continue
            outcome = self.agent.feed_read(
                session,
                read.epc,
                read.reader_id,
                read.antenna,
                read.read_at.ToDatetime(tzinfo=datetime.UTC),
            )
            summary.bad_reads += outcome is ReadOutcome.BAD
            summary.unknown_reads += outcome is ReadOutcome.UNKNOWN
        return summary

    async def StopCount(self, request: ipb.StopCountRequest, context: Any) -> ipb.StopCountResponse:
        try:
            counts = await self.agent.stop_count(request.count_id)
        except KeyError:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no running count {request.count_id!r}")
        return ipb.StopCountResponse(counts=counts)

    # -- rejections --------------------------------------------------------------------------

    def _wire(self, r: RejectedMovement) -> ipb.RejectedMovement:
        return rejection_to_wire(self.agent.outbox.source_id, r)

    async def ListRejectedMovements(
        self, request: ipb.ListRejectedMovementsRequest, context: Any
    ) -> ipb.ListRejectedMovementsResponse:
        size = request.page_size or DEFAULT_PAGE_SIZE
        if size > MAX_PAGE_SIZE:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"page_size: at most {MAX_PAGE_SIZE}"
            )
        before: int | None = None
        if request.page_token:
            if not request.page_token.isdigit():
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"page_token: {request.page_token!r} is not a token this agent gave",
                )
            before = int(request.page_token)
        since = None
        if request.HasField("since"):
            since = request.since.ToMicroseconds() / 1_000_000
        rows = await asyncio.to_thread(
            functools.partial(
                self.agent.outbox.rejections,
                unresolved_only=not request.include_resolved,
                device_id=request.device_id,
                since=since,
                before_number=before,
                limit=size + 1,
            )
        )
        response = ipb.ListRejectedMovementsResponse(
            rejections=[self._wire(r) for r in rows[:size]]
        )
        if len(rows) > size:
            response.next_page_token = str(rows[size - 1].number)
        return response

    async def WatchRejectedMovements(
        self, request: ipb.WatchRejectedMovementsRequest, context: Any
    ) -> AsyncIterator[ipb.WatchRejectedMovementsResponse]:
        outbox = self.agent.outbox
        changed = self.agent.rejections_changed()  # before the reads: later changes set it
        last = await asyncio.to_thread(outbox.last_rejection_number)
        current = await asyncio.to_thread(
            functools.partial(
                outbox.rejections,
                unresolved_only=True,
                device_id=request.device_id,
                before_number=last + 1,
                newest_first=False,
            )
        )
        for r in current:
            yield ipb.WatchRejectedMovementsResponse(rejection=self._wire(r))
        yield ipb.WatchRejectedMovementsResponse(caught_up=True)
        while True:
            await changed.wait()
            changed = self.agent.rejections_changed()
            new = await asyncio.to_thread(
                functools.partial(
                    outbox.rejections,
                    device_id=request.device_id,
                    after_number=last,
                    newest_first=False,
                )
            )
            for r in new:
                last = max(last, r.number)
                yield ipb.WatchRejectedMovementsResponse(rejection=self._wire(r))

    async def ResolveRejectedMovement(
        self,
        request: ipb.ResolveRejectedMovementRequest,
        context: aio.ServicerContext[Any, Any],
    ) -> ipb.RejectedMovement:
        if request.seq == 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "seq: must be >= 1")
        if not request.resolved_by.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "resolved_by: say who handled it")
        rejection = await self.agent.resolve(request.seq, request.resolved_by, request.note)
        if rejection is None:
            await context.abort(
                grpc.StatusCode.NOT_FOUND,
                f"seq {request.seq}: not a rejected movement of {self.agent.outbox.source_id}",
            )
        return self._wire(rejection)
