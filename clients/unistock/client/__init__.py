"""Unistock client library for channel services (cart, order, customer) and back-office systems.

async with UnistockClient("localhost:50051", token) as client:
    levels = await client.get_availability(sku="SHOE-42")
    held = await client.reserve("cart-123", [("SHOE-42", "store-7", 1)], kind="CART")
    async for levels in client.watch(skus=["SHOE-42"]):
        ...
    async for event in EventWatcher(client, types=["READY_FOR_PICKUP"], location_ids=["store-7"]):
        ...

async with MovementWriter(client, "wms-1", "wms-1.outbox") as writer:
    await writer.record(movement)   # durable locally once it returns; seq assigned
    result = await writer.flush(30)  # applied / duplicates / rejected

The guide is docs/client-library.md.
"""

import logging

from unistock.client._client import UnistockClient
from unistock.client._errors import (
    AlreadyExistsError,
    AuthenticationError,
    FailedPreconditionError,
    InsufficientStockError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    UnistockClientError,
)
from unistock.client._retry import RetryPolicy
from unistock.client._watchers import EventWatcher, NetworkWatcher, ReservationWatcher, Watcher
from unistock.client._writer import (
    FlushResult,
    FlushTimeout,
    MovementWriter,
    Recorded,
    RejectedMovement,
    RequestConflict,
    WriterFailed,
    WriterFileError,
    WriterLocked,
)

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "EventWatcher",
    "FailedPreconditionError",
    "FlushResult",
    "FlushTimeout",
    "InsufficientStockError",
    "InvalidArgumentError",
    "MovementWriter",
    "NetworkWatcher",
    "NotFoundError",
    "PermissionDeniedError",
    "Recorded",
    "RejectedMovement",
    "RequestConflict",
    "ReservationWatcher",
    "RetryPolicy",
    "UnavailableError",
    "UnistockClient",
    "UnistockClientError",
    "Watcher",
    "WriterFailed",
    "WriterFileError",
    "WriterLocked",
]

# A library logs, the application decides where to: nothing reaches stderr unless it
# configures logging (the writer's warnings on rejected movements, the watchers' reconnects).
logging.getLogger("unistock.client").addHandler(logging.NullHandler())
