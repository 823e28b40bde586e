"""Issue 8: every value a client sends is checked at the API edge, with INVALID_ARGUMENT naming
the field and the bound; undecodable bytes are INVALID_ARGUMENT (or an UNPARSEABLE rejection in a
movement stream, which goes on); a watch filter's size is bounded. Real server, real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc import aio

from tests.fixtures.server import TOKENS, MakeServer, target
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb
from unistock.v1 import inventory_pb2_grpc as pb_grpc

SERVICE = "unistock.v1.InventoryService"
ADMIN = (("authorization", f"Bearer {TOKENS['admin']}"),)
YEAR = 366 * 86_400


@pytest.fixture
async def channel(server: UnistockServer) -> AsyncIterator[aio.Channel]:
    async with aio.insecure_channel(
        target(server), options=[("grpc.max_send_message_length", 32 << 20)]
    ) as ch:
        yield ch


@pytest.fixture
def stub(channel: aio.Channel) -> Any:
    return pb_grpc.InventoryServiceStub(channel)


async def refused(call: Any, *words: str) -> str:
    """The details of an INVALID_ARGUMENT answer, which must contain every word."""
    with pytest.raises(aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value
    details = err.value.details() or ""
    for w in words:
        assert w in details, (w, details)
    return details


def ts(seconds: int, nanos: int = 0) -> Timestamp:
    return Timestamp(seconds=seconds, nanos=nanos)


async def stocked_reservation(stub: Any, rid: str) -> pb.Reservation:
    acks = [
        a
        async for a in stub.ApplyMovements(
            iter(
                [
                    pb.MovementBatch(
                        source_id=f"src-{rid}",
                        movements=[
                            pb.Movement(
                                seq=1, sku="LIM", location_id="s1", type=pb.RECEIPT, quantity=50
                            )
                        ],
                    )
                ]
            ),
            metadata=ADMIN,
        )
    ]
    assert acks[0].applied == 1, acks
    reply = await stub.Reserve(
        pb.ReserveRequest(
            reservation_id=rid,
            lines=[pb.ReservationLine(sku="LIM", location_id="s1", quantity=1)],
            kind=pb.CART,
        ),
        metadata=ADMIN,
    )
    found: pb.Reservation = reply.reservation
    return found


# -- 2.1: timestamps and durations --------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_fields", "words"),
    [
        # 9999-12-31T23:59:59.9999Z: rounds to year 10000 once kept to the millisecond.
        ({"expires_at": ts(253_402_300_799, 999_900_000)}, ("expires_at", "366 days")),
        ({"expires_at": ts(253_402_300_800)}, ("expires_at", "9999-12-31")),
        ({"expires_at": ts(-62_135_596_801)}, ("expires_at", "0001-01-01")),
        ({"expires_at": ts(1_900_000_000, -1)}, ("expires_at", "nanos", "999,999,999")),
        ({"expires_at": ts(1_900_000_000, 1_000_000_000)}, ("expires_at", "nanos")),
        ({"expires_at": ts(1_000_000_000)}, ("expires_at", "future")),
        ({"ttl_seconds": 31_622_401}, ("ttl_seconds", "31,622,400")),
        ({"expires_at": ts(2_000_000_000), "ttl_seconds": 60}, ("exactly one", "ttl_seconds")),
        ({}, ("exactly one", "expires_at", "ttl_seconds")),
    ],
    ids=[
        "year-9999-rounding",
        "year-10000",
        "before-year-1",
        "negative-nanos",
        "nanos-overflow",
        "past",
        "ttl-too-long",
        "both",
        "neither",
    ],
)
async def test_extend_reservation_refuses_bad_expiry(
    stub: Any,
    server: UnistockServer,
    request_fields: dict[str, Any],
    words: tuple[str, ...],
) -> None:
    before = await stocked_reservation(stub, "r-ext")
    await refused(
        stub.ExtendReservation(
            pb.ExtendReservationRequest(reservation_id="r-ext", **request_fields),
            metadata=ADMIN,
        ),
        *words,
    )
    # Nothing entered state, and the server still serves (its group commit is alive).
    after = await stub.GetReservation(
        pb.GetReservationRequest(reservation_id="r-ext"), metadata=ADMIN
    )
    assert after.expires_at == before.expires_at
    assert not server.failed
    reply = await stub.ExtendReservation(
        pb.ExtendReservationRequest(reservation_id="r-ext", ttl_seconds=YEAR), metadata=ADMIN
    )
    assert reply.expires_at.seconds > before.expires_at.seconds


async def test_reserve_bounds_ttl_channel_and_customer(stub: Any) -> None:
    await stocked_reservation(stub, "r-first")
    line = [pb.ReservationLine(sku="LIM", location_id="s1", quantity=1)]

    def req(**kw: Any) -> pb.ReserveRequest:
        return pb.ReserveRequest(reservation_id="r-res", lines=line, kind=pb.E_RESERVATION, **kw)

    await refused(
        stub.Reserve(req(ttl_seconds=YEAR + 1), metadata=ADMIN), "ttl_seconds", "31,622,400"
    )
    await refused(stub.Reserve(req(channel="c" * 129), metadata=ADMIN), "channel", "128")
    await refused(stub.Reserve(req(channel="web\nshop"), metadata=ADMIN), "channel", "printable")
    await refused(stub.Reserve(req(customer_id="x" * 257), metadata=ADMIN), "customer_id", "256")
    # The 10 MB customer_id of the issue.
    await refused(
        stub.Reserve(req(customer_id="x" * 10_000_000), metadata=ADMIN), "customer_id", "256"
    )
    await refused(
        stub.Reserve(
            pb.ReserveRequest(reservation_id="r" * 129, lines=line, kind=pb.CART), metadata=ADMIN
        ),
        "reservation_id",
    )
    ok = await stub.Reserve(
        req(ttl_seconds=YEAR, channel="c" * 128, customer_id="é" * 256), metadata=ADMIN
    )
    assert ok.reservation.customer_id == "é" * 256
    assert ok.reservation.channel == "c" * 128


# -- 2.9: undecodable requests --------------------------------------------------------------


NOT_PROTOBUF = [b"\xff\xff\xff\xff", b"\x0a\x02\xc3\x28"]  # garbage; a string of invalid UTF-8


@pytest.mark.parametrize("payload", NOT_PROTOBUF, ids=["garbage", "bad-utf8"])
async def test_undecodable_request_is_invalid_argument(
    channel: aio.Channel, server: UnistockServer, payload: bytes
) -> None:
    d = pb.DESCRIPTOR.services_by_name["InventoryService"]
    for method in d.methods:
        path = f"/{SERVICE}/{method.name}"
        if method.client_streaming:
            continue  # ApplyMovements: see the stream test below
        first = method.input_type.fields_by_number.get(1)
        if payload == NOT_PROTOBUF[1] and (first is None or first.type != first.TYPE_STRING):
            continue  # field 1 is no string (WatchEvents' types): those bytes decode fine
        if method.server_streaming:
            call: Any = channel.unary_stream(path, None, None)(payload, metadata=ADMIN)
            with pytest.raises(aio.AioRpcError) as err:
                async for _ in call:
                    pass
        else:
            with pytest.raises(aio.AioRpcError) as err:
                await channel.unary_unary(path, None, None)(payload, metadata=ADMIN)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, err.value)
        assert method.input_type.name in (err.value.details() or ""), err.value
    assert not server.failed


async def test_movement_stream_survives_an_undecodable_batch(channel: aio.Channel) -> None:
    def batch(seq: int, **extra: Any) -> bytes:
        return pb.MovementBatch(
            source_id="undecodable",
            batch_id=f"b{seq}",
            movements=[
                pb.Movement(
                    seq=seq, sku="UND", location_id="s1", type=pb.RECEIPT, quantity=2, **extra
                )
            ],
        ).SerializeToString()

    call = channel.stream_stream(f"/{SERVICE}/ApplyMovements", None, None)(
        iter(
            [
                batch(1),
                NOT_PROTOBUF[0],
                batch(2),
                NOT_PROTOBUF[1],
                batch(3, occurred_at=ts(1_700_000_000, -5)),
                batch(4),
            ]
        ),
        metadata=ADMIN,
    )
    acks = [pb.MovementAck.FromString(raw) async for raw in call]
    assert [a.applied for a in acks] == [1, 0, 1, 0, 0, 1], acks
    for bad in (acks[1], acks[3]):
        [r] = bad.rejections
        assert r.reason == pb.UNPARSEABLE, r
        assert "MovementBatch" in r.detail, r
    [r] = acks[4].rejections
    assert (r.reason, r.seq) == (pb.INVALID_FIELD, 3), r
    assert "movements[0].occurred_at" in r.detail, r
    stub: Any = pb_grpc.InventoryServiceStub(channel)
    reply = await stub.GetAvailability(
        pb.GetAvailabilityRequest(keys=[pb.StockKey(sku="UND", location_id="s1")]),
        metadata=ADMIN,
    )
    assert reply.levels[0].on_hand == 6


async def test_wrong_role_with_batches_in_flight_is_permission_denied(
    channel: aio.Channel,
) -> None:
    batches = [
        pb.MovementBatch(
            source_id="role",
            movements=[pb.Movement(seq=i, sku="R", location_id="s1", type=pb.RECEIPT, quantity=1)],
        )
        for i in range(1, 200)
    ]
    call = pb_grpc.InventoryServiceStub(channel).ApplyMovements(
        iter(batches), metadata=(("authorization", f"Bearer {TOKENS['channel']}"),)
    )
    with pytest.raises(aio.AioRpcError) as err:
        async for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED, err.value


# -- 2.2: watch filter limits --------------------------------------------------------------------


async def first_answer(call: Any) -> None:
    async for _ in call:
        break


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"skus": [f"S{i}" for i in range(10_001)]}, ("skus", "10,000")),
        ({"location_ids": [f"L{i}" for i in range(1_001)]}, ("location_ids", "1,000")),
        (
            {
                "known_versions": [
                    pb.KnownVersion(sku=f"S{i}", location_id="L") for i in range(100_001)
                ]
            },
            ("known_versions", "100,000"),
        ),
        (
            {
                "skus": [f"S{i}" for i in range(1_001)],
                "location_ids": [f"L{i}" for i in range(1_000)],
            },
            ("skus", "location_ids", "1,000,000"),
        ),
        (
            {"known_versions": [pb.KnownVersion(sku="S", location_id="a b")]},
            ("known_versions[0].location_id",),
        ),
    ],
    ids=["skus", "locations", "known-versions", "positions", "bad-known-location"],
)
async def test_watch_filter_over_a_limit_is_refused(
    stub: Any, fields: dict[str, Any], words: tuple[str, ...]
) -> None:
    await refused(
        first_answer(stub.WatchAvailability(pb.WatchAvailabilityRequest(**fields), metadata=ADMIN)),
        *words,
    )


async def test_watch_skus_times_known_locations_is_bounded(
    stub: Any,
) -> None:
    # The server knows 200 locations: 5,001 SKUs at every location is 1,000,200 positions.
    movements = [
        pb.Movement(seq=i + 1, sku="K", location_id=f"loc-{i}", type=pb.RECEIPT, quantity=1)
        for i in range(200)
    ]
    [ack] = [
        a
        async for a in stub.ApplyMovements(
            iter([pb.MovementBatch(source_id="known", movements=movements)]), metadata=ADMIN
        )
    ]
    assert ack.applied == 200
    skus = [f"S{i}" for i in range(5_001)]
    await refused(
        first_answer(
            stub.WatchAvailability(pb.WatchAvailabilityRequest(skus=skus), metadata=ADMIN)
        ),
        "skus",
        "1,000,000",
    )
    # 5,000 SKUs is exactly the limit: allowed.
    call = stub.WatchAvailability(pb.WatchAvailabilityRequest(skus=skus[:5_000]), metadata=ADMIN)
    async for msg in call:
        if msg.snapshot_complete:
            break
    call.cancel()


async def test_large_watch_snapshot_does_not_hold_up_other_calls(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    async with aio.insecure_channel(target(srv)) as ch:
        stub: Any = pb_grpc.InventoryServiceStub(ch)
        locs = [f"loc-{i:03d}" for i in range(100)]
        skus = [f"SKU-{i:05d}" for i in range(10_000)]
        # Stock at the first location for the first SKUs, so that the snapshot starts with a
        # full message of levels (then reads ~500 chunks of absent positions).
        movements = [
            pb.Movement(seq=i + 1, sku=skus[i], location_id=locs[0], type=pb.RECEIPT, quantity=1)
            for i in range(3_000)
        ]
        async for _ in stub.ApplyMovements(
            iter([pb.MovementBatch(source_id="big", movements=movements)]), metadata=ADMIN
        ):
            pass
        # 10,000 SKUs x 100 locations: 1,000,000 positions, the largest filter allowed.
        watch = stub.WatchAvailability(
            pb.WatchAvailabilityRequest(skus=skus, location_ids=locs), metadata=ADMIN
        )
        events: list[str] = []
        first = asyncio.Event()
        levels = 0

        async def read() -> None:
            nonlocal levels
            async for msg in watch:
                levels += len(msg.levels)
                first.set()
                if msg.snapshot_complete:
                    events.append("snapshot complete")
                    return

        reader = asyncio.create_task(read())
        async with asyncio.timeout(60):
            await first.wait()  # the snapshot is under way
            reply = await stub.GetAvailability(
                pb.GetAvailabilityRequest(keys=[pb.StockKey(sku=skus[0], location_id=locs[0])]),
                metadata=ADMIN,
            )
            events.append("unary answered")
            await reader
        assert reply.levels[0].on_hand == 1
        assert events == ["unary answered", "snapshot complete"]
        assert levels == 3_000
