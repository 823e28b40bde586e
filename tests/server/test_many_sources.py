"""Thousands of sources on one position (issue 8, item 2.6): the stored position stays small
(its marks beyond MAX_MARKS are spilled beside it, in the same atomic write), and every source's
movements stay idempotent, also after a restart that must read the spilled marks back."""

from __future__ import annotations

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, level, mv
from unistock.client import UnistockClient
from unistock.server.persistence.keys import position_field

SOURCES = 2000
KEY = ("POPULAR", "store-1")


async def test_thousands_of_sources_on_one_position(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    batches = [batch(f"till-{i:05d}", mv(1, "RECEIPT", *KEY, 1)) for i in range(SOURCES)]
    srv = await make_server(clean_redis_url)
    async with UnistockClient(target(srv), TOKENS["backoffice"]) as c:
        acks = [a async for a in c.apply_movements(batches)]
        assert sum(a.applied for a in acks) == SOURCES
        again = [a async for a in c.apply_movements(batches)]
        assert sum(a.duplicates for a in again) == SOURCES
        assert (await level(c, *KEY)).on_hand == SOURCES
        ks = srv.store.keyspace
        stored = await srv.store.client.hget(
            ks.positions(ks.location_partition(KEY[1])), position_field(KEY)
        )
        assert len(stored) < 1024, len(stored)  # was ~50 KB: every mark in the value
    await srv.stop()

    srv2 = await make_server(clean_redis_url)
    async with UnistockClient(target(srv2), TOKENS["backoffice"]) as c:
        again = [a async for a in c.apply_movements(batches)]
        assert sum(a.duplicates for a in again) == SOURCES
        assert sum(a.applied for a in again) == 0
        assert (await level(c, *KEY)).on_hand == SOURCES
        # and each source goes on
        more = [a async for a in c.apply_movements([batch("till-00007", mv(2, "SALE", *KEY, 1))])]
        assert more[0].applied == 1
        assert (await level(c, *KEY)).on_hand == SOURCES - 1
