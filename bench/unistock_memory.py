"""B4 Unistock side: memory per resident position, measured in a fresh interpreter.

``python -m bench.unistock_memory N MODE STRINGS`` builds what the server's ``Directory`` holds
for N positions — ``dict[StockKey, Position]`` of real ``unistock.server.domain.Position`` objects,
each changed once by a RECEIPT from a store agent (so it carries a source mark and a version) —
and prints the delta of RSS (``MODE=rss``, tracemalloc off) or of tracemalloc (``MODE=tracemalloc``).
``STRINGS=shared``: sku and location strings are shared between positions (one object per sku and
per location); ``STRINGS=own``: every key has its own two strings, as when keys are built from
request or HSCAN bytes without interning.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped,unused-ignore]

STORES = 100


@dataclass
class PositionMemory:
    n: int
    strings: str
    rss_bytes_per_position: float
    tracemalloc_bytes_per_position: float


def _build(n: int, mode: str, strings: str) -> float:
    from unistock.server.domain import Movement, MovementType, Position, StockKey

    agent = "store-0001-agent"
    locs = [f"store-{i:04d}" for i in range(STORES)]
    skus = [f"SKU-{i:07d}" for i in range((n + STORES - 1) // STORES)]
    gc.collect()
    proc = psutil.Process()
    if mode == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = proc.memory_info().rss
    resident: dict[StockKey, Position] = {}
    receipt = MovementType.RECEIPT
    for i in range(n):
        if strings == "shared":
            sku, loc = skus[i // STORES], locs[i % STORES]
        else:
            sku, loc = f"SKU-{i // STORES:07d}", f"store-{i % STORES:04d}"
        key = (sku, loc)
        p = Position(key)
        p.apply(Movement(agent, 1_000_000 + i, sku, loc, receipt, 10 + i % 97))
        resident[key] = p
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else proc.memory_info().rss
    assert len(resident) == n
    return float(after - before)


def measure(n: int, strings: str = "shared") -> PositionMemory:
    """RSS and tracemalloc bytes/position, each in a fresh interpreter."""
    out: dict[str, float] = {}
    for mode in ("rss", "tracemalloc"):
        res = subprocess.run(
            [sys.executable, "-m", "bench.unistock_memory", str(n), mode, strings],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(res.stdout)["delta"]
    return PositionMemory(n, strings, out["rss"] / n, out["tracemalloc"] / n)


if __name__ == "__main__":
    print(json.dumps({"delta": _build(int(sys.argv[1]), sys.argv[2], sys.argv[3])}))
