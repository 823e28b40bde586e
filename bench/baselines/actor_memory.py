"""B4 baseline: memory per actor of a naive one-task-per-position design.

Each actor = a dict {sku, location_id, on_hand, reserved, safety_stock, version} + its own
``asyncio.Queue`` + an ``asyncio.Task`` running ``while True: msg = await q.get(); ...``.
Measured in a *fresh* subprocess (``python -m bench.baselines.actor_memory N MODE``): RSS delta
(psutil, without tracemalloc running) and, in a second fresh process, the tracemalloc delta.
"""

from __future__ import annotations

import asyncio
import gc
import json
import subprocess
import sys
import tracemalloc
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped,unused-ignore]


@dataclass
class ActorMemory:
    n: int
    rss_bytes_per_actor: float
    tracemalloc_bytes_per_actor: float
    rss_delta_mb: float
    tracemalloc_delta_mb: float


async def _actor(state: dict[str, Any], q: asyncio.Queue[Any]) -> None:
    while True:
        msg = await q.get()
        state["on_hand"] += msg
        state["version"] += 1


async def _build(n: int, mode: str) -> dict[str, float]:
    proc = psutil.Process()
    await asyncio.sleep(0)
    gc.collect()
    if mode == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = proc.memory_info().rss
    actors: list[tuple[dict[str, Any], asyncio.Queue[Any], asyncio.Task[None]]] = []
    for i in range(n):
        state = {
            "sku": f"SKU-{i // 100:07d}",
            "location_id": f"store-{i % 100:04d}",
            "on_hand": 100,
            "reserved": 0,
            "safety_stock": 5,
            "version": 1,
        }
        q: asyncio.Queue[Any] = asyncio.Queue()
        actors.append((state, q, asyncio.create_task(_actor(state, q))))
    for _ in range(3):  # let every task start and park on q.get()
        await asyncio.sleep(0)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if mode == "tracemalloc" else proc.memory_info().rss
    delta = after - before
    for _, _, t in actors:
        t.cancel()
    return {"n": n, "delta": float(delta)}


def measure(n: int) -> ActorMemory:
    """Run the two measurements in fresh interpreters and return bytes/actor."""
    out: dict[str, float] = {}
    for mode in ("rss", "tracemalloc"):
        res = subprocess.run(
            [sys.executable, "-m", "bench.baselines.actor_memory", str(n), mode],
            capture_output=True,
            text=True,
            check=True,
        )
        out[mode] = json.loads(res.stdout)["delta"]
    return ActorMemory(
        n=n,
        rss_bytes_per_actor=out["rss"] / n,
        tracemalloc_bytes_per_actor=out["tracemalloc"] / n,
        rss_delta_mb=round(out["rss"] / 2**20, 2),
        tracemalloc_delta_mb=round(out["tracemalloc"] / 2**20, 2),
    )


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_build(int(sys.argv[1]), sys.argv[2]))))
