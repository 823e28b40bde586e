"""Unistock client library for channel services (cart, order, customer) and back-office systems.

async with UnistockClient("localhost:50051", token) as client:
    levels = await client.get_availability(sku="SHOE-42")
    held = await client.reserve("cart-123", [("SHOE-42", "store-7", 1)], kind="CART")
    async for levels in client.watch(skus=["SHOE-42"]):
        ...
    async for event in EventWatcher(client, types=["READY_FOR_PICKUP"], location_ids=["store-7"]):
        ...
"""

from unistock.client._client import (
    EventWatcher,
    InsufficientStockError,
    UnistockClient,
    UnistockClientError,
    Watcher,
)

__all__ = [
    "EventWatcher",
    "InsufficientStockError",
    "UnistockClient",
    "UnistockClientError",
    "Watcher",
]
