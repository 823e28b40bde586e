"""MovementWriter: a durable, seq-assigning outbox of one back-office source.

    async with UnistockClient(target, token) as client:
        async with MovementWriter(client, "wms-1", "/var/lib/wms/unistock-wms-1.db") as writer:
            await writer.record(movement, request_id="grn-7781-line-1")
            result = await writer.flush(timeout=30)

``record`` gives the movement the next ``seq`` of the source and stores it in the SQLite file
(fsynced) *before* it returns; a background task streams the stored movements over
``ApplyMovements`` and deletes each one only when the server's ack covers its seq, moving the
ones it rejects, with their reason, to the file's ``rejected`` table. Whatever is not
acknowledged is sent again after a reconnect, or by the next writer opened on the file after a
crash: the server recognises a movement it has already applied by ``(source_id, seq)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import grpc

from unistock.client._client import UnistockClient
from unistock.client._errors import UnistockClientError
from unistock.client._movement_store import (
    MovementStore,
    RejectedMovement,
    RequestConflict,
    WriterFileError,
    WriterLocked,
)
from unistock.v1 import inventory_pb2 as pb

__all__ = [
    "FlushResult",
    "FlushTimeout",
    "MovementWriter",
    "Recorded",
    "RejectedMovement",
    "RequestConflict",
    "WriterFailed",
    "WriterFileError",
    "WriterLocked",
]

_log = logging.getLogger(__name__)

#: Errors after which the stream is opened again; any other one stops the writer (WriterFailed).
_TRANSIENT = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
}


@dataclass(frozen=True, slots=True)
class Recorded:
    """What record() did: the movement's ``seq``, and ``new`` False when a call with the same
    request_id had already recorded it (nothing was stored twice)."""

    seq: int
    new: bool


@dataclass(frozen=True, slots=True)
class FlushResult:
    """What the server said about the movements acknowledged since the previous flush (or
    since the writer opened, counting the movements a previous writer left in the file).

    ``applied``: applied for the first time; ``duplicates``: the server had them already (a
    resend after a lost ack); ``rejected``: refused, with reason and detail (final)."""

    applied: int = 0
    duplicates: int = 0
    rejected: list[RejectedMovement] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether nothing was rejected."""
        return not self.rejected


class FlushTimeout(TimeoutError):
    """flush() ran out of time: ``pending`` movements are stored but not acknowledged yet
    (they stay in the file and are sent on; nothing is lost)."""

    def __init__(self, pending: int, timeout: float | None) -> None:
        super().__init__(
            f"{pending} movement(s) not acknowledged by the server within {timeout}s "
            "(kept in the file, sent on when the server answers)"
        )
        self.pending = pending


class WriterFailed(RuntimeError):
    """The server refused the stream for good (``cause``: e.g. UNAUTHENTICATED,
    PERMISSION_DENIED): nothing more is sent; the movements stay in the file."""

    def __init__(self, cause: UnistockClientError) -> None:
        super().__init__(f"the server refused the movement stream: {cause}")
        self.cause = cause


class _Restart(Exception):
    """Open a new stream (what was sent and not settled is sent again)."""


class MovementWriter:
    """The durable movement outbox of one source, an async context manager.

    Args:
        client: the connection (a token with role ``backoffice`` or ``admin``).
        source_id: the ``source_id`` of every movement; a source has one file, for ever: a new
            file under a used source_id would hand out seqs the server has seen (dropped as
            duplicates).
        path: the SQLite file, created if missing. Another writer on it (in any process)
            is refused with WriterLocked; a file of another source with WriterFileError.
        batch_size: most movements per batch (1 to 10,000); halved when the server refuses a
            batch for its size (BATCH_TOO_LARGE, or a message over the channel limit).
        max_in_flight: batches sent and not yet acknowledged, at most.
        request_retention: seconds a record() request_id is remembered (default 7 days).
        retry_delay, max_retry_delay: pause before reopening a broken stream (seconds,
            doubling up to the max while the server stays unreachable).
    """

    def __init__(
        self,
        client: UnistockClient,
        source_id: str,
        path: str | Path,
        *,
        batch_size: int = 500,
        max_in_flight: int = 4,
        request_retention: float = 7 * 24 * 3600.0,
        retry_delay: float = 0.2,
        max_retry_delay: float = 5.0,
    ) -> None:
        if not 1 <= batch_size <= 10_000:
            raise ValueError("batch_size: 1 to 10,000")
        if max_in_flight < 1:
            raise ValueError("max_in_flight: at least 1")
        self.client = client
        self.source_id = source_id
        self.path = Path(path)
        self.batch_size = batch_size
        self.max_in_flight = max_in_flight
        self.request_retention = request_retention
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._store: MovementStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._progress = asyncio.Condition()
        self._failed: WriterFailed | None = None
        self._applied = 0
        self._duplicates = 0
        self._rejected: list[RejectedMovement] = []
        self._delivered = False  # whether the current stream got an ack
        #: The server's last transient error, while it lasts (None once a stream works).
        self.last_error: UnistockClientError | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Open (lock) the file and start sending what it holds."""
        if self._store is not None:
            raise RuntimeError("this MovementWriter is already open")
        self._store = await asyncio.to_thread(
            MovementStore, self.path, self.source_id, self.request_retention
        )
        self._task = asyncio.create_task(self._run(), name=f"movement-writer:{self.source_id}")
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop sending and close the file (safe twice). Unacknowledged movements stay in it
        and are sent by the next writer; call flush() first to wait for them."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        store, self._store = self._store, None
        if store is not None:
            await asyncio.to_thread(store.close)

    def _open_store(self) -> MovementStore:
        if self._store is None:
            raise RuntimeError("MovementWriter is not open: use `async with MovementWriter(...)`")
        return self._store

    # -- the API ---------------------------------------------------------------------------

    async def record(self, movement: pb.Movement, *, request_id: str = "") -> Recorded:
        """Give movement the next seq of the source (set on it, with source_id) and store it
        durably; once this returns it survives a crash and will reach the server.

        request_id (optional, any string): a retry of a call whose answer was lost returns
        the first call's seq (``Recorded.new`` False) instead of recording twice, for
        request_retention seconds, across restarts. Raises RequestConflict when the
        request_id was recorded for another movement (seq, source and occurred_at aside)."""
        store = self._open_store()
        seq, new = await asyncio.to_thread(store.append, movement, request_id)
        self._wake.set()
        return Recorded(seq, new)

    async def flush(self, timeout: float | None = None) -> FlushResult:  # noqa: ASYNC109 (a CLI passes its --timeout)
        """Wait until every movement recorded so far is acknowledged or rejected; returns
        what the server said since the previous flush (FlushResult) and starts a new tally.

        Raises FlushTimeout after timeout seconds (None: wait for ever), WriterFailed when the
        server refused the stream for good (e.g. a token without role backoffice)."""
        store = self._open_store()
        target = await asyncio.to_thread(store.highest_recorded)

        async def settled() -> None:
            async with self._progress:
                while True:
                    if self._failed is not None:
                        raise self._failed
                    low = await asyncio.to_thread(store.lowest_pending)
                    if low is None or low > target:
                        return
                    await self._progress.wait()

        try:
            async with asyncio.timeout(timeout):
                await settled()
        except TimeoutError:
            pending = await asyncio.to_thread(store.count_pending)
            raise FlushTimeout(pending, timeout) from None
        result = FlushResult(self._applied, self._duplicates, self._rejected)
        self._applied, self._duplicates, self._rejected = 0, 0, []
        return result

    async def pending(self) -> int:
        """How many recorded movements wait for the server's ack."""
        return await asyncio.to_thread(self._open_store().count_pending)

    async def rejected(self) -> list[RejectedMovement]:
        """Every movement of this file the server ever rejected, by seq, with its reason."""
        return await asyncio.to_thread(self._open_store().rejected)

    # -- sending ---------------------------------------------------------------------------

    async def _run(self) -> None:
        delay = self.retry_delay
        while True:
            self._delivered = False
            try:
                await self._stream()
            except _Restart:  # after a pause: a server refusing a batch whole is not spun on
                delay = self.retry_delay
            except UnistockClientError as exc:
                if exc.code not in _TRANSIENT:
                    self._failed = WriterFailed(exc)
                    _log.error("%s", self._failed)
                    async with self._progress:
                        self._progress.notify_all()
                    return
                self.last_error = exc
                if exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED:  # a batch over the message
                    self.batch_size = max(1, self.batch_size // 2)  # size limit: send smaller
                if self._delivered:  # the stream worked: a new outage starts short
                    delay = self.retry_delay
                _log.warning(
                    "movement stream of %s broke (%s); again in %.1fs", self.source_id, exc, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.max_retry_delay)

    async def _stream(self) -> None:
        """One ApplyMovements stream: everything stored, then what is recorded, until it breaks."""
        store = self._open_store()
        in_flight: list[list[int]] = []  # seqs of each batch sent, oldest first
        room = asyncio.Semaphore(self.max_in_flight)
        sent_upto = 0
        n = 0

        async def batches() -> AsyncIterator[pb.MovementBatch]:
            nonlocal sent_upto, n
            while True:
                await room.acquire()
                self._wake.clear()
                movements = await asyncio.to_thread(store.pending, sent_upto, self.batch_size)
                if not movements:
                    room.release()
                    await self._wake.wait()
                    continue
                sent_upto = movements[-1].seq
                in_flight.append([m.seq for m in movements])
                n += 1
                yield pb.MovementBatch(
                    source_id=self.source_id, movements=movements, batch_id=str(n)
                )

        acks = self.client.apply_movements(batches())
        async with contextlib.aclosing(acks):  # leaving cancels the call
            await self._settle(store, acks, in_flight, room)

    async def _settle(
        self,
        store: MovementStore,
        acks: AsyncIterator[pb.MovementAck],
        in_flight: list[list[int]],
        room: asyncio.Semaphore,
    ) -> None:
        async for ack in acks:
            self.last_error, self._delivered = None, True
            seqs = in_flight.pop(0)
            room.release()
            if any(r.reason == pb.BATCH_TOO_LARGE for r in ack.rejections):
                limit = ack.limits.max_movements or len(seqs) // 2
                self.batch_size = max(1, min(self.batch_size, len(seqs) // 2, limit))
                raise _Restart
            acked = max((s.seq for s in ack.sources if s.source_id == self.source_id), default=0)
            rejected = await asyncio.to_thread(store.settle, seqs, acked, list(ack.rejections))
            self._applied += ack.applied
            self._duplicates += ack.duplicates
            self._rejected.extend(rejected)
            for r in rejected:
                _log.warning(
                    "movement %s/%d rejected: %s %s", self.source_id, r.seq, r.reason_name, r.detail
                )
            async with self._progress:
                self._progress.notify_all()
            if seqs[-1] > acked:  # refused whole (nothing advanced): send it again
                raise _Restart
