"""Shared helpers of the fault-injection tests: wire builders, level reads, polling."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from unistock.client import UnistockClient
from unistock.v1 import inventory_pb2 as pb

Key = tuple[str, str]
#: (seq, type name, sku, location_id, quantity)
Mv = tuple[int, str, str, str, int]

SIGN = {"RECEIPT": 1, "RETURN": 1, "TRANSFER_IN": 1, "SALE": -1, "TRANSFER_OUT": -1}


def movement_batch(source: str, movements: Iterable[Mv], batch_id: str = "") -> pb.MovementBatch:
    """A MovementBatch of plain signed movements."""
    return pb.MovementBatch(
        source_id=source,
        batch_id=batch_id,
        movements=[
            pb.Movement(
                seq=seq,
                sku=sku,
                location_id=loc,
                type=pb.MovementType.Value(t),
                quantity=q,
                transfer_id="t-1" if t.startswith("TRANSFER") else "",
            )
            for seq, t, sku, loc, q in movements
        ],
    )


async def levels(client: UnistockClient, keys: Sequence[Key]) -> dict[Key, pb.StockLevel]:
    """The current levels of keys, by key."""
    got = await client.get_availability(keys=list(keys))
    return {(lv.sku, lv.location_id): lv for lv in got}


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 20.0, interval: float = 0.1
) -> None:
    """Poll check() until it returns True; fails the test after `within` s (a hang, not a
    timing)."""
    deadline = time.monotonic() + within
    while True:
        try:
            if await check():
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not reached within {within}s")
        await asyncio.sleep(interval)


def sample(registry: object, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of one metric sample of a prometheus registry (0 when absent)."""
    value = registry.get_sample_value(name, labels or {})  # type: ignore[attr-defined]
    return 0.0 if value is None else float(value)
