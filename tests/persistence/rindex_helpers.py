"""What the reservation indexes hold, and what they should hold given the stored records."""

from __future__ import annotations

from typing import cast

from unistock.server.persistence.codec import decode_reservation
from unistock.server.persistence.keys import Keyspace
from unistock.server.persistence.rindex import index_keys, index_member
from unistock.server.persistence.store import RedisStore

Entries = set[tuple[str, str]]


async def stored_index(store: RedisStore) -> Entries:
    """Every (index key, member) in Redis."""
    ks = store.keyspace
    out: Entries = set()
    async for key in store.client.scan_iter(match=f"{ks.prefix}:*:rix:*", count=1000):
        for member in await store.client.zrange(key, 0, -1):
            out.add((key.decode(), cast(bytes, member).decode()))
    return out


async def expected_index(store: RedisStore) -> Entries:
    """The (index key, member) pairs of every stored reservation record."""
    ks: Keyspace = store.keyspace
    out: Entries = set()
    async for key in store.client.scan_iter(match=f"{ks.prefix}:*:res:*", count=1000):
        [data] = await store.load_reservations([key.decode().partition(":res:")[2]])
        if data is None:
            continue
        r = decode_reservation(data)
        out |= {(k, index_member(r)) for k in index_keys(ks, r)}
    return out
