"""Movements/s on ONE stock position from N distinct sources sending in turn (issue 8, item 2.6),
through Inventory + group commit on a private redis-server, against 10 sources in the same run.

    .venv/bin/python -m bench.adhoc.many_sources [--sources 12000] [--movements 5000]

A position keeps 16 sources' marks itself and spills the rest; this is the worst case for that
(every movement's source is a spilled one). Prints movements/s and the stored position's size.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time

from unistock.devtools.services import RedisServer
from unistock.server.actors import Inventory
from unistock.server.domain import Movement, MovementType
from unistock.server.metrics import Metrics
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.keys import Keyspace, position_field
from unistock.server.persistence.store import RedisStore

KEY = ("HOT", "s1")


async def measure(url: str, sources: int, movements: int) -> tuple[float, int]:
    """(movements/s, stored bytes of the position) for `sources` sources sending in turn."""
    ks = Keyspace(prefix=f"many{sources}", partitions=8)
    store = RedisStore.from_url(url, ks)
    await store.open()
    commit = GroupCommit(store, Metrics())
    inv = Inventory(store, commit, Metrics())
    await inv.start()
    flusher = asyncio.create_task(commit.run())

    def mv(i: int, seq: int) -> Movement:
        return Movement(f"src-{i:05d}", seq, *KEY, MovementType.RECEIPT, 1)

    for i in range(sources):  # every source has sent once: its mark exists (most are spilled)
        await inv.submit_movements([mv(i, 1)])
    await commit.barrier()
    seqs = dict.fromkeys(range(sources), 1)
    started = time.perf_counter()
    pending = []
    for n in range(movements):
        i = n % sources
        seqs[i] += 1
        pending.append((await inv.submit_movements([mv(i, seqs[i])]))[1])
        if len(pending) >= 256:  # as many in flight as a busy stream would have
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    rate = movements / (time.perf_counter() - started)
    stored = await store.client.hget(
        ks.positions(ks.location_partition(KEY[1])), position_field(KEY)
    )
    await commit.close()
    await flusher
    await inv.close()
    await store.close()
    return rate, len(stored or b"")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=12_000)
    parser.add_argument("--movements", type=int, default=5_000)
    args = parser.parse_args()
    with RedisServer(tempfile.mkdtemp(prefix="many-sources-")) as redis:
        for n in (10, args.sources):
            rate, size = await measure(redis.url, n, args.movements)
            print(f"sources={n:>6}  movements/s={rate:>9,.0f}  stored position={size:,} B")


if __name__ == "__main__":
    asyncio.run(main())
