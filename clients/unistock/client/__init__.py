"""Unistock client library for channel services (cart, order, customer) and back-office systems.

async with UnistockClient("localhost:50051", token) as client:
    levels = await client.get_availability(sku="SHOE-42")
    held = await client.reserve("cart-123", [("SHOE-42", "store-7", 1)], kind="CART")
    async for levels in client.watch(skus=["SHOE-42"]):
        ...
"""

from unistock.client._client import (
    InsufficientStockError,
    UnistockClient,
    UnistockClientError,
    Watcher,
)

__all__ = ["InsufficientStockError", "UnistockClient", "UnistockClientError", "Watcher"]
