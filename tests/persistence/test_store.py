"""The fenced flush script against a real redis-server: ordering, fencing, stale versions."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from unistock.server.domain import Fenced, Line, Position, ReservationKind, ReserveRequest, reserve
from unistock.server.persistence.codec import decode_position, encode_position, encode_reservation
from unistock.server.persistence.keys import Keyspace, position_field
from unistock.server.persistence.store import PartitionWrite, RedisStore, with_hiredis_packing

KS = Keyspace("t", 8)


def pos_write(*positions: Position) -> dict[int, PartitionWrite]:
    phase: dict[int, PartitionWrite] = {}
    for p in positions:
        w = phase.setdefault(KS.location_partition(p.key[1]), PartitionWrite())
        w.positions += [position_field(p.key), encode_position(p)]
        w.locations.append(p.key[1])
    return phase


@pytest.fixture
async def store(clean_redis_url: str) -> RedisStore:
    s = RedisStore.from_url(clean_redis_url, KS)
    await s.open()
    yield s  # type: ignore[misc]
    await s.close()


async def test_flush_writes_and_loads(store: RedisStore) -> None:
    a = Position(("SKU", "store-1"), on_hand=4, version=3)
    b = Position(("SKU", "store-2"), on_hand=9, version=1)
    written, stale = await store.flush([pos_write(a, b)])
    assert (written, stale) == (2, 0)
    loaded = await store.load_positions([a.key, b.key, ("SKU", "nowhere")])
    assert loaded[2] is None
    assert decode_position(a.key, loaded[0]).on_hand == 4  # type: ignore[arg-type]
    assert decode_position(b.key, loaded[1]).version == 1  # type: ignore[arg-type]
    assert await store.locations() == {"store-1", "store-2"}


async def test_older_version_never_replaces_newer(store: RedisStore) -> None:
    new = Position(("SKU", "store-1"), on_hand=10, version=5)
    old = Position(("SKU", "store-1"), on_hand=1, version=4)
    await store.flush([pos_write(new)])
    written, stale = await store.flush([pos_write(old)])
    assert (written, stale) == (0, 1)
    [data] = await store.load_positions([new.key])
    assert decode_position(new.key, data).on_hand == 10  # type: ignore[arg-type]


async def test_second_owner_fences_the_first(store: RedisStore, clean_redis_url: str) -> None:
    taker = RedisStore.from_url(clean_redis_url, KS)
    await taker.open()
    try:
        p = Position(("SKU", "store-1"), on_hand=1, version=1)
        with pytest.raises(Fenced):
            await store.flush([pos_write(p)])
        assert await store.load_positions([p.key]) == [None]
        assert await taker.flush([pos_write(p)]) == (1, 0)
    finally:
        await taker.close()


async def test_partition_count_is_checked(store: RedisStore, clean_redis_url: str) -> None:
    other = RedisStore.from_url(clean_redis_url, Keyspace("t", 16))
    try:
        with pytest.raises(ValueError, match="8 partitions"):
            await other.open()
    finally:
        await other.close()


async def test_reservation_records_and_expiry_index(
    store: RedisStore, clean_redis_url: str
) -> None:
    p = Position(("SKU", "store-1"), on_hand=3)
    req = ReserveRequest.build("cart-1", [Line("SKU", "store-1", 2)], ReservationKind.CART, 60)
    r = reserve(req, {p.key: p}, now=1000.0)
    part = KS.reservation_partition("cart-1")
    w = PartitionWrite(reservations=[("cart-1", encode_reservation(r), str(1060 * 1000), "0")])
    await store.flush([{part: w}])
    assert await store.due_reservations(now=1059.0) == []
    assert await store.due_reservations(now=1060.0) == ["cart-1"]
    ended = r.release()
    w = PartitionWrite(reservations=[("cart-1", encode_reservation(ended), "", "60000")])
    await store.flush([{part: w}])
    assert await store.due_reservations(now=2000.0) == []
    client = aioredis.Redis.from_url(clean_redis_url)
    try:
        ttl = await client.pttl(KS.reservation(part, "cart-1"))
        assert 0 < ttl <= 60000
    finally:
        await client.aclose()


async def test_script_is_reloaded_after_redis_forgets_it(
    store: RedisStore, clean_redis_url: str
) -> None:
    client = aioredis.Redis.from_url(clean_redis_url)
    try:
        await client.script_flush()
    finally:
        await client.aclose()
    p = Position(("SKU", "store-1"), on_hand=1, version=1)
    assert await store.flush([pos_write(p)]) == (1, 0)


async def test_source_progress_is_only_ever_raised(store: RedisStore) -> None:
    part = KS.source_partition("agent-7")
    await store.flush([{part: PartitionWrite(sources=[("agent-7", 120)])}])
    await store.flush([{part: PartitionWrite(sources=[("agent-7", 80)])}])
    assert await store.load_sources(["agent-7", "never-seen"]) == [120, 0]


@pytest.mark.parametrize(
    "args",
    [
        ("SET", "k", "v"),
        ("SCRIPT LOAD", "return 1"),
        (b"CLIENT SETNAME", b"x"),
        ("EVALSHA", "abc", 2, b"k1", "k2", b"\x00\xff", 12345678901234, "é", 1.5, -7),
        ("SET", bytearray(b"k"), memoryview(b"v")),
    ],
)
def test_hiredis_packing_sends_the_same_bytes_as_redis_py(args: tuple[object, ...]) -> None:
    plain = aioredis.Connection()
    fast = with_hiredis_packing(aioredis.Connection)()
    assert b"".join(fast.pack_command(*args)) == b"".join(plain.pack_command(*args))
