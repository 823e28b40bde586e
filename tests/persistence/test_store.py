"""The fenced flush script against a real redis-server: ordering, fencing, stale versions."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from unistock.server.domain import Fenced, Line, Position, ReservationKind, ReserveRequest, reserve
from unistock.server.persistence.codec import (
    decode_position,
    encode_position,
    encode_reservation,
    split_position,
)
from unistock.server.persistence.group_commit import stage_position
from unistock.server.persistence.keys import Keyspace, position_field
from unistock.server.persistence.rindex import index_write
from unistock.server.persistence.store import PartitionWrite, RedisStore, with_hiredis_packing
from unistock.storage.v1 import storage_pb2 as spb

KS = Keyspace("t", 8)


def pos_write(*positions: Position) -> dict[int, PartitionWrite]:
    phase: dict[int, PartitionWrite] = {}
    for p in positions:
        w = phase.setdefault(KS.location_partition(p.key[1]), PartitionWrite())
        stage_position(KS, w, p, encode_position(p))
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


async def test_holds_are_written_apart_with_their_position_and_read_back(
    store: RedisStore,
) -> None:
    """Issue 9 item 1: a position write carries only the holds that changed, in the same
    script call; reading the position back gives every hold."""
    p = Position(("SKU", "store-1"), on_hand=100, version=1)
    for i in range(300):
        p.hold(f"cart-{i}", 1 + i % 3)
    await store.flush([pos_write(p)])
    p.holds_written({rid: p.hold_state(rid) for rid, _ in p.hold_items()})
    assert p.hold_changes is None
    small = len(encode_position(p))
    p.hold("cart-new", 2)
    p.release("cart-0")
    p.ship("cart-1", 1)  # cart-1 held 2: one shipped, one still held
    w = pos_write(p)[KS.location_partition("store-1")]
    [(_, _, changes)] = w.holds
    assert sorted(changes[0::2]) == ["cart-0", "cart-1", "cart-new"]  # not the other 297
    assert len(encode_position(p)) <= small + 2  # the stored form does not carry the holds
    await store.flush([{KS.location_partition("store-1"): w}])
    [q] = await store.read_positions([p.key])
    assert q is not None
    assert dict(q.hold_items()) == dict(p.hold_items())
    assert (q.reserved, q.on_hand, q.shipped_for("cart-1")) == (p.reserved, 99, 1)
    assert q.held("cart-0") == 0


async def test_a_stale_position_write_leaves_the_holds_alone(store: RedisStore) -> None:
    """A flush retried after a timeout may land after a newer one: its position is skipped as
    stale, and so are its holds (they are older too)."""
    newer = Position(("SKU", "store-1"), on_hand=10, version=5)
    newer.hold("r-new", 2)  # version 6
    older = Position(("SKU", "store-1"), on_hand=10, version=3)
    older.hold("r-old", 4)  # version 4
    older.hold("r-new", 9)
    await store.flush([pos_write(newer)])
    assert await store.flush([pos_write(older)]) == (0, 1)
    [q] = await store.read_positions([newer.key])
    assert q is not None
    assert (q.version, q.hold_items(), q.reserved) == (6, (("r-new", 2),), 2)


async def test_the_last_hold_ended_removes_the_holds_hash(store: RedisStore) -> None:
    p = Position(("SKU", "store-1"), on_hand=10, version=1)
    p.hold("r-1", 2)
    await store.flush([pos_write(p)])
    assert await store.client.exists(KS.holds(p.key)) == 1
    p.holds_written({"r-1": p.hold_state("r-1")})
    p.release("r-1")
    await store.flush([pos_write(p)])
    assert await store.client.exists(KS.holds(p.key)) == 0
    [q] = await store.read_positions([p.key])
    assert q is not None
    assert q.holds is None
    assert q.reserved == 0


async def test_thousands_of_hold_changes_fit_one_script_call(store: RedisStore) -> None:
    """Lua's unpack() takes a few thousand values: the script writes holds in slices."""
    p = Position(("SKU", "store-1"), on_hand=50_000, version=1)
    for i in range(12_000):
        p.hold(f"cart-{i}", 1)
    await store.flush([pos_write(p)])
    p.holds_written({rid: p.hold_state(rid) for rid, _ in p.hold_items()})
    for i in range(0, 12_000, 2):
        p.release(f"cart-{i}")
    await store.flush([pos_write(p)])
    [q] = await store.read_positions([p.key])
    assert q is not None
    assert (q.reserved, len(q.hold_items())) == (6_000, 6_000)


async def test_holds_stored_inside_a_position_move_apart_on_its_next_write(
    store: RedisStore,
) -> None:
    """A position written by an earlier version (holds inside its stored form) keeps its holds
    when read, and its next write moves them to the holds hash."""
    p = Position(("SKU", "store-1"), on_hand=10, version=3)
    p.hold("r-1", 2)
    p.hold("r-2", 1)
    legacy = spb.PositionPrivate(
        holds=[
            spb.Hold(reservation_id="r-1", quantity=2),
            spb.Hold(reservation_id="r-2", quantity=1),
        ]
    )
    value = encode_position(p)
    header = value[: len(value) - len(split_position(value)[1])]
    field = position_field(p.key)
    await store.client.hset(
        KS.positions(KS.location_partition("store-1")), field, header + legacy.SerializeToString()
    )
    [q] = await store.read_positions([p.key])
    assert q is not None
    assert (q.reserved, q.hold_changes) == (3, {"r-1", "r-2"})
    q.version += 1
    await store.flush([pos_write(q)])
    assert await store.client.hgetall(KS.holds(p.key)) == {b"r-1": b"2", b"r-2": b"1"}
    [stored] = await store.load_positions([p.key])
    assert stored is not None
    assert not spb.PositionPrivate.FromString(split_position(stored)[1]).holds
    [again] = await store.read_positions([p.key])
    assert again is not None
    assert dict(again.hold_items()) == {"r-1": 2, "r-2": 1}


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
    index = index_write(KS, r, (), 0, 0)
    w = PartitionWrite(
        reservations=[("cart-1", encode_reservation(r), str(1060 * 1000), "0", [], index)]
    )
    await store.flush([{part: w}])
    assert await store.due_reservations(now=1059.0) == []
    assert await store.due_reservations(now=1060.0) == ["cart-1"]
    ended = r.release()
    index = index_write(KS, ended, (), 0, 60000)
    w = PartitionWrite(reservations=[("cart-1", encode_reservation(ended), "", "60000", [], index)])
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
