"""The gRPC InventoryService: transports requests to inventory turns.

Handlers are registered with serialisers that pass pre-serialised bytes through, so a level
fanned out to many watchers, or a snapshot read from Redis, is serialised once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from grpc import aio

from unistock.server.actors import Inventory
from unistock.server.actors.networks import NetworkIndex
from unistock.server.api.convert import (
    MAX_BATCH,
    Undecodable,
    ack_feedback,
    batch_from_wire,
    expiry_from_wire,
    keys_from_wire,
    lenient_deserializer,
    levels_message,
    lines_from_wire,
    reserve_from_wire,
    too_large,
    watch_filter_from_wire,
)
from unistock.server.api.errors import status_code, to_status
from unistock.server.api.events import EventStreams
from unistock.server.api.reservations import (
    ReservationHub,
    list_reservations,
    watch_reservations,
)
from unistock.server.api.sourcing import find_stock
from unistock.server.api.watch import Subscription, WatchHub, send_changes
from unistock.server.domain import (
    InvalidArgument,
    Move,
    NetworkNotFound,
    Unavailable,
    UnistockError,
    check_id,
    validate_lines,
)
from unistock.server.domain.reservation import check_reservation_id
from unistock.server.domain.values import id_ok
from unistock.server.persistence.codec import (
    reservation_message,
    stored_entry,
    transfer_message,
)
from unistock.server.persistence.keys import parse_position_field
from unistock.server.persistence.store import stored_version
from unistock.v1 import inventory_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = "unistock.v1.InventoryService"
Context = aio.ServicerContext[Any, Any]
R = TypeVar("R")

#: Levels per message of a watch stream: live changes, and the initial snapshot.
WATCH_BATCH = 512
SNAPSHOT_BATCH = 2048
#: Moves per TransferReservation call.
MAX_MOVES = 500
#: SKUs per GetNetworkAvailability call.
MAX_NETWORK_SKUS = 500
#: Batches of one ApplyMovements stream being written at once (acks follow in order).
MOVEMENT_WINDOW = 64
_SNAPSHOT_COMPLETE = pb.WatchAvailabilityResponse(snapshot_complete=True).SerializeToString()
_NETWORK_SNAPSHOT_COMPLETE = pb.WatchNetworkAvailabilityResponse(
    snapshot_complete=True
).SerializeToString()
#: Filter bounds of WatchNetworkAvailability.
MAX_WATCHED_NETWORKS = 100
MAX_WATCH_SKUS = 10_000
MAX_KNOWN_VERSIONS = 100_000


def _serialize(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


async def _changes(sub: Subscription, hub: WatchHub, context: Context) -> None:
    """Write a subscription's changes as they come, until it is cut (too far behind:
    RESOURCE_EXHAUSTED; the server stopping: UNAVAILABLE) or the call ends."""
    await send_changes(sub, hub, context, "reconnect with known_versions to resume", WATCH_BATCH)


def _call_ended(context: Context, exc: Exception) -> bool:
    """Whether exc only says the call was already over (grpc's ExecuteBatchError on a call
    that is cancelled or done)."""
    if type(exc).__name__ != "ExecuteBatchError":
        return False
    try:
        return bool(context.cancelled() or context.done())
    except Exception:  # a context that cannot even tell: treat it as over
        return True


class _Service(Protocol):
    def _latency(self, method: str, code: str) -> Any: ...


S = TypeVar("S", bound=_Service)


def rpc(
    fn: Callable[[S, Any, Context], Awaitable[R]],
) -> Callable[[S, Any, Context], Awaitable[R]]:
    """Map domain errors to statuses (in one place) and record latency by method and code.

    An undecodable request is INVALID_ARGUMENT naming its message; an unexpected exception is
    INTERNAL with a message that says where to look (never a class name or a traceback).
    """
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: S, request: Any, context: Context) -> R:
        started = time.perf_counter()
        code = "OK"
        try:
            if isinstance(request, Undecodable):
                raise request.problem()
            return await fn(self, request, context)
        except UnistockError as exc:
            code = status_code(exc).name
            await context.abort_with_status(to_status(exc))  # type: ignore[attr-defined]
            raise  # not reached: abort raises
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except aio.AbortError:
            c = context.code()
            code = c.name if isinstance(c, grpc.StatusCode) else "ABORTED"
            raise
        except grpc.aio.UsageError:
            raise  # grpc's own complaint about this call: nothing more to send
        except Exception as exc:
            if _call_ended(context, exc):
                # The call is over (the client went away, the server is stopping) while the
                # handler was still writing or ending it: nobody to tell, nothing failed here.
                code = "CANCELLED"
                raise asyncio.CancelledError from exc
            code = "INTERNAL"
            log.exception("%s failed", name)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"{name}: internal error (see the server log)"
            )
            raise  # not reached: abort raises
        finally:
            self._latency(name, code).observe(time.perf_counter() - started)

    return wrapper


class InventoryService:
    """Implements unistock.v1.InventoryService on an Inventory and a WatchHub."""

    def __init__(
        self,
        inventory: Inventory,
        hub: WatchHub,
        networks: NetworkIndex | None = None,
        network_hub: WatchHub | None = None,
    ) -> None:
        self.inventory = inventory
        self.hub = hub
        self.networks = networks
        self.network_hub = network_hub
        #: WatchEvents' source (None: events off)
        self.events: EventStreams | None = None
        self._metrics = inventory.metrics
        self._latencies: dict[tuple[str, str], Any] = {}

        #: WatchReservations' fan-out of the durable reservation records
        self.reservation_hub = ReservationHub(inventory.metrics)
        inventory.commit.reservation_listeners.append(self.reservation_hub.publish)

    def _latency(self, method: str, code: str) -> Any:
        key = (method, code)
        h = self._latencies.get(key)
        if h is None:
            h = self._latencies[key] = self._metrics.grpc_latency.labels(method, code)
        return h

    # -- levels --------------------------------------------------------------------------------

    @rpc
    async def GetAvailability(self, request: pb.GetAvailabilityRequest, context: Context) -> bytes:
        if request.keys and request.sku:
            raise InvalidArgument("sku", "give either keys or sku, not both")
        if request.keys:
            positions = await self.inventory.levels(keys_from_wire(request.keys))
        elif request.sku:
            positions = await self.inventory.levels_of_sku(check_id("sku", request.sku))
        else:
            raise InvalidArgument("keys", "give keys or a sku")
        return levels_message(positions)

    @rpc
    async def WatchAvailability(
        self, request: pb.WatchAvailabilityRequest, context: Context
    ) -> None:
        skus, locations, known = watch_filter_from_wire(request, len(self.inventory.locations))
        sub = self.hub.subscribe(skus, locations)
        try:
            await self._snapshot(sub.pending, skus, locations, known, context)
            await context.write(_SNAPSHOT_COMPLETE)
            await _changes(sub, self.hub, context)
        finally:
            sub.close()

    async def _snapshot(
        self,
        pending: dict[tuple[str, str], tuple[int, bytes]],
        skus: frozenset[str],
        locations: frozenset[str],
        known: dict[tuple[str, str], int],
        context: Context,
    ) -> None:
        # Levels come from Redis (durable); a change buffered meanwhile that is as new or newer
        # wins (it is sent after the snapshot); an older one is dropped.
        # Reading the next chunk from Redis overlaps with encoding and sending this one.
        chunks: asyncio.Queue[list[tuple[bytes, bytes]] | None] = asyncio.Queue(2)

        async def read() -> None:
            async for chunk in self.inventory.store.scan_levels(
                skus, locations, self.inventory.locations
            ):
                await chunks.put(chunk)
            await chunks.put(None)

        reader = asyncio.create_task(read(), name="watch-snapshot-reader")
        try:
            out: list[bytes] = []
            while (chunk := await chunks.get()) is not None:
                for field, value in chunk:
                    if known or pending:
                        key = parse_position_field(field.decode())
                        version = stored_version(value)
                        if known.get(key, -1) >= version:
                            continue
                        buffered = pending.get(key)
                        if buffered is not None:
                            if buffered[0] >= version:
                                continue
                            del pending[key]
                    out.append(stored_entry(field, value))
                    if len(out) >= SNAPSHOT_BATCH:
                        await context.write(b"".join(out))
                        out = []
            if out:
                await context.write(b"".join(out))
            await reader  # re-raises a read failure
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    # -- movements -----------------------------------------------------------------------------

    @rpc
    async def ApplyMovements(
        self, requests: AsyncIterator[pb.MovementBatch], context: Context
    ) -> None:
        acks: asyncio.Queue[tuple[asyncio.Future[None], pb.MovementAck] | None] = asyncio.Queue(
            MOVEMENT_WINDOW
        )

        async def send_acks() -> None:
            while (item := await acks.get()) is not None:
                durable, ack = item
                await durable
                await context.write(ack)

        writer = asyncio.create_task(send_acks(), name="apply-movements-acks")

        async def enqueue(item: tuple[asyncio.Future[None], pb.MovementAck] | None) -> bool:
            # Wait for room in the window, unless the ack writer ended (client gone, or a
            # write failed): then stop reading and let `await writer` report why.
            put = asyncio.ensure_future(acks.put(item))
            await asyncio.wait((put, writer), return_when=asyncio.FIRST_COMPLETED)
            if not put.done():
                put.cancel()
                return False
            return True

        try:
            async for batch in requests:
                if isinstance(batch, Undecodable):
                    # One undecodable batch is rejected; the stream goes on with the next.
                    self._metrics.movements_rejected.labels("UNPARSEABLE").inc()
                    bad = pb.Rejection(reason=pb.UNPARSEABLE, detail=str(batch.problem()))
                    if not await enqueue(
                        (self.inventory.commit.barrier(), pb.MovementAck(rejections=[bad]))
                    ):
                        break
                    continue
                if len(batch.movements) > MAX_BATCH:
                    # Refused whole, no progress: the client splits it and sends the same seqs.
                    self._metrics.movements_rejected.labels("BATCH_TOO_LARGE").inc()
                    detail = (
                        f"{len(batch.movements)} movements exceed the limit of {MAX_BATCH} "
                        "per batch"
                    )
                    refusal = too_large(batch, detail, 0)
                    if not await enqueue((self.inventory.commit.barrier(), refusal)):
                        break
                    continue
                movements, rejected = batch_from_wire(batch)
                notices: list[pb.Notice] = []
                if movements:
                    result, durable = await self.inventory.submit_movements(movements)
                    applied, duplicates = result.applied, result.duplicates
                    notices, refused = ack_feedback(result.notices, result.refused)
                    rejected.extend(refused)
                else:
                    durable = self.inventory.commit.barrier()
                    applied = duplicates = 0
                for r in rejected:
                    self._metrics.movements_rejected.labels(pb.RejectReason.Name(r.reason)).inc()
                top = max((m.seq for m in batch.movements), default=0)
                # A batch refused whole (no valid source_id) makes no progress of any source.
                whole = not movements and not id_ok(batch.source_id)
                ack = pb.MovementAck(
                    sources=(
                        [pb.SourceAck(source_id=batch.source_id, seq=top)]
                        if top and not whole
                        else []
                    ),
                    rejections=rejected,
                    batch_id=batch.batch_id,
                    applied=applied,
                    duplicates=duplicates,
                    notices=notices,
                )
                if not await enqueue((durable, ack)):
                    break
            await enqueue(None)
            await writer
        finally:
            if not writer.done():
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)

    # -- reservations --------------------------------------------------------------------------

    @rpc
    async def Reserve(self, request: pb.ReserveRequest, context: Context) -> pb.ReserveResponse:
        reservation, replayed = await self.inventory.reserve(reserve_from_wire(request))
        return pb.ReserveResponse(reservation=reservation_message(reservation), replayed=replayed)

    @rpc
    async def ReleaseReservation(
        self, request: pb.ReleaseReservationRequest, context: Context
    ) -> pb.Reservation:
        rid = check_reservation_id(request.reservation_id)
        return reservation_message(await self.inventory.release(rid))

    @rpc
    async def FulfilReservation(
        self, request: pb.FulfilReservationRequest, context: Context
    ) -> pb.Reservation:
        rid = check_reservation_id(request.reservation_id)
        lines = validate_lines(lines_from_wire(request.lines), allow_empty=True)
        request_id = check_id("request_id", request.request_id) if request.request_id else ""
        return reservation_message(await self.inventory.fulfil(rid, lines, request_id))

    @rpc
    async def ExtendReservation(
        self, request: pb.ExtendReservationRequest, context: Context
    ) -> pb.Reservation:
        rid = check_reservation_id(request.reservation_id)
        at = expiry_from_wire(request, self.inventory.clock())
        return reservation_message(await self.inventory.extend(rid, at))

    @rpc
    async def TransferReservation(
        self, request: pb.TransferReservationRequest, context: Context
    ) -> pb.Reservation:
        rid = check_reservation_id(request.reservation_id)
        request_id = check_id("request_id", request.request_id)
        if len(request.moves) > MAX_MOVES:
            raise InvalidArgument("moves", f"at most {MAX_MOVES} moves, got {len(request.moves)}")
        moves = [
            Move(m.sku, m.from_location_id, m.to_location_id, m.quantity) for m in request.moves
        ]
        return reservation_message(
            await self.inventory.transfer_reservation(rid, request_id, moves)
        )

    @rpc
    async def GetReservation(
        self, request: pb.GetReservationRequest, context: Context
    ) -> pb.Reservation:
        rid = check_reservation_id(request.reservation_id)
        return reservation_message(await self.inventory.get_reservation(rid))

    @rpc
    async def ListReservations(
        self, request: pb.ListReservationsRequest, context: Context
    ) -> pb.ListReservationsResponse:
        return await list_reservations(self.inventory.reservation_index, request)

    @rpc
    async def WatchReservations(
        self, request: pb.WatchReservationsRequest, context: Context
    ) -> None:
        await watch_reservations(
            self.inventory.reservation_index,
            self.reservation_hub,
            self.inventory.commit.flushed,
            request,
            context,
        )

    @rpc
    async def GetTransfer(
        self, request: pb.GetTransferRequest, context: Context
    ) -> pb.GetTransferResponse:
        tid = check_id("transfer_id", request.transfer_id)
        location = check_id("location_id", request.location_id) if request.location_id else ""
        found = await self.inventory.get_transfer(tid, location)
        return pb.GetTransferResponse(transfers=[transfer_message(t) for t in found])

    @rpc
    async def CloseTransfer(
        self, request: pb.CloseTransferRequest, context: Context
    ) -> pb.Transfer:
        tid = check_id("transfer_id", request.transfer_id)
        location = check_id("location_id", request.location_id)
        return transfer_message(await self.inventory.close_transfer(tid, location))

    @rpc
    async def GetNetworkAvailability(
        self, request: pb.GetNetworkAvailabilityRequest, context: Context
    ) -> pb.GetNetworkAvailabilityResponse:
        network = check_id("network", request.network)
        if not 1 <= len(request.skus) <= MAX_NETWORK_SKUS:
            raise InvalidArgument(
                "skus", f"give 1 to {MAX_NETWORK_SKUS} SKUs, got {len(request.skus)}"
            )
        skus = [check_id(f"skus[{i}]", s) for i, s in enumerate(request.skus)]
        index = self.networks
        if index is None or not index.known(network):
            raise NetworkNotFound(network)
        await index.ready.wait()
        return pb.GetNetworkAvailabilityResponse(
            levels=[index.message(network, sku) for sku in skus]
        )

    @rpc
    async def FindStock(
        self, request: pb.FindStockRequest, context: Context
    ) -> pb.FindStockResponse:
        index = self.networks
        if index is None:
            raise NetworkNotFound(request.network)
        await index.ready.wait()
        return find_stock(request, index)

    @rpc
    async def WatchNetworkAvailability(
        self, request: pb.WatchNetworkAvailabilityRequest, context: Context
    ) -> None:
        index, hub = self.networks, self.network_hub
        if not 1 <= len(request.networks) <= MAX_WATCHED_NETWORKS:
            raise InvalidArgument(
                "networks",
                f"give 1 to {MAX_WATCHED_NETWORKS} networks, got {len(request.networks)}",
            )
        if len(request.skus) > MAX_WATCH_SKUS:
            raise InvalidArgument("skus", f"at most {MAX_WATCH_SKUS:,}, got {len(request.skus):,}")
        if len(request.known_versions) > MAX_KNOWN_VERSIONS:
            raise InvalidArgument(
                "known_versions",
                f"at most {MAX_KNOWN_VERSIONS:,}, got {len(request.known_versions):,}",
            )
        networks = [check_id(f"networks[{i}]", n) for i, n in enumerate(request.networks)]
        skus = [check_id(f"skus[{i}]", s) for i, s in enumerate(request.skus)]
        for network in networks:
            if index is None or hub is None or not index.known(network):
                raise NetworkNotFound(network)
        assert index is not None
        assert hub is not None
        known = {(k.sku, k.network): k.version for k in request.known_versions}
        await index.ready.wait()
        # Subscribed before the snapshot is taken, both in this loop pass: nothing between.
        sub = hub.subscribe(skus, networks)
        try:
            snapshot = [
                index.entry(network, sku)
                for network in networks
                for sku in (skus or index.skus_of(network))
                if (version := index.level(network, sku)[1]) > 0
                and version > known.get((sku, network), -1)
            ]
            for i in range(0, len(snapshot), SNAPSHOT_BATCH):
                await context.write(b"".join(snapshot[i : i + SNAPSHOT_BATCH]))
            await context.write(_NETWORK_SNAPSHOT_COMPLETE)
            await _changes(sub, hub, context)
        finally:
            sub.close()

    # -- events --------------------------------------------------------------------------------

    @rpc
    async def WatchEvents(self, request: pb.WatchEventsRequest, context: Context) -> None:
        if self.events is None:
            raise Unavailable("events are off on this server (--events 0)")
        await self.events.watch(request, context)

    # -- registration --------------------------------------------------------------------------

    def handler(self) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
        """The generic handler serving every method of the service."""
        return generic_handler(self, pb, "InventoryService")


def generic_handler(impl: object, module: Any, name: str) -> grpc.GenericRpcHandler:  # type: ignore[type-arg]
    """A handler serving every method of service `name` of a generated module by impl's
    methods of the same names (requests decoded leniently, responses passed through when
    already bytes)."""
    d = module.DESCRIPTOR.services_by_name[name]
    handlers = {}
    for method in d.methods:
        fn = getattr(impl, method.name)
        kwargs = {
            "request_deserializer": lenient_deserializer(getattr(module, method.input_type.name)),
            "response_serializer": _serialize,
        }
        if method.client_streaming and method.server_streaming:
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(fn, **kwargs)
        elif method.server_streaming:
            handlers[method.name] = grpc.unary_stream_rpc_method_handler(fn, **kwargs)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(fn, **kwargs)
    return grpc.method_handlers_generic_handler(d.full_name, handlers)
