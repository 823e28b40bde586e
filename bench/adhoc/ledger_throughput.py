"""How fast the ledger writer empties the change feed into SQL, alone (issue 11, B11's limit).

    .venv/bin/python -m bench.adhoc.ledger_throughput [--movements 200000] [--pg-url URL]

Fills a private redis-server's feed through Inventory + group commit (batches of 100 receipts
and sales from 8 sources over 3,000 positions, as B1's agents send), then drains it with the
ledger writer (FeedReader + LedgerStore, as `unistock-ledger` does) into a fresh SQLite file and,
when PostgreSQL is found (bench.baselines.pg), into a fresh database there. Prints rows/s and
the writer process's CPU seconds per 1,000 rows: what the writer can sustain, and what it costs
the machine while it does.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import resource
import tempfile
import time

from bench.scenarios.b11 import fresh_postgres
from unistock.devtools.services import RedisServer
from unistock.server.actors import Inventory
from unistock.server.actors.ledger import CONSUMER, LedgerWriter
from unistock.server.domain import Movement, MovementType
from unistock.server.metrics import LedgerMetrics, Metrics
from unistock.server.persistence.feed import FeedReader
from unistock.server.persistence.group_commit import GroupCommit
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.ledger import LedgerStore
from unistock.server.persistence.sql import MasterDataStore
from unistock.server.persistence.store import RedisStore


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def fill(store: RedisStore, movements: int) -> None:
    commit = GroupCommit(store, Metrics())
    inv = Inventory(store, commit, Metrics())
    await inv.start()
    flusher = asyncio.create_task(commit.run())
    rng = random.Random(11)
    seqs = dict.fromkeys(range(8), 0)
    pending = []
    for n in range(0, movements, 100):
        src = (n // 100) % 8
        batch = []
        for _ in range(100):
            seqs[src] += 1
            kind = MovementType.RECEIPT if rng.random() < 0.6 else MovementType.SALE
            batch.append(
                Movement(f"agent-{src}", seqs[src], f"SKU-{rng.randrange(300)}",
                         f"store-{src}", kind, rng.randint(1, 3))
            )  # fmt: skip
        pending.append((await inv.submit_movements(batch))[1])
        if len(pending) >= 64:
            await asyncio.gather(*pending)
            pending = []
    await asyncio.gather(*pending)
    await commit.close()
    await flusher
    await inv.close()


async def register(store: RedisStore, consumer: str) -> None:
    pipe = store.client.pipeline(transaction=False)
    for p in range(store.keyspace.partitions):
        pipe.hset(store.keyspace.feed_cursors(p), consumer, "0-0")
    await pipe.execute()


async def drain(store: RedisStore, url: str, prefix: str) -> tuple[int, float, float]:
    """(rows, seconds, CPU seconds) to write the whole feed into the database at url."""
    sql = MasterDataStore(url)
    sql.migrate()
    feed = FeedReader(store.client, store.keyspace, f"{CONSUMER}-{prefix}")
    writer = LedgerWriter(feed, LedgerStore(sql.engine), LedgerMetrics())
    t0, c0 = time.perf_counter(), cpu()
    while await writer.drain_once():
        pass
    secs, cpu_s = time.perf_counter() - t0, cpu() - c0
    rows = LedgerStore(sql.engine).count()
    sql.close()
    return rows, secs, cpu_s


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--movements", type=int, default=200_000)
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="ledger-throughput-")
    with RedisServer(tmp + "/redis") as redis:
        ks = Keyspace(prefix="lt", partitions=64)
        store = RedisStore.from_url(redis.url, ks)
        await store.open()
        store.feed_max_entries = 10_000_000
        t0 = time.perf_counter()
        await fill(store, args.movements)
        print(f"feed filled: {args.movements:,} movements in {time.perf_counter() - t0:.1f} s")
        targets = [("SQLite", f"sqlite:///{tmp}/ledger.db")]
        async with fresh_postgres() as (pg, how):
            if pg:
                targets.append((f"PostgreSQL ({how})", pg))
            for name, _ in targets:  # every writer holds the feed until it has read it
                await register(store, f"{CONSUMER}-{name.split()[0]}")
            for name, url in targets:
                rows, secs, cpu_s = await drain(store, url, name.split()[0])
                print(
                    f"{name}: {rows:,} rows in {secs:.2f} s = {rows / secs:,.0f} rows/s, "
                    f"writer CPU {cpu_s / rows * 1000:.4f} s per 1,000 rows"
                )
        await store.close()


if __name__ == "__main__":
    asyncio.run(main())
