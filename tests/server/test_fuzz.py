"""Issue 8: a fuzz test of every RPC of InventoryService against the real server (a child
process) on a real Redis. Whatever a client sends (any field values, invalid Timestamps, bytes
that are not protobuf, the wrong role), the server never dies, never answers UNKNOWN or
INTERNAL, a movement stream answers every batch, and the state it keeps equals what a restart
on the same Redis reads back."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.server import TOKENS, ServerProcess
from unistock.v1 import inventory_pb2 as pb

SERVICE = "unistock.v1.InventoryService"
METHODS = {m.name: m for m in pb.DESCRIPTOR.services_by_name["InventoryService"].methods}
NOW = int(time.time())
INT64 = st.integers(-(2**63), 2**63 - 1)
UINT32 = st.integers(0, 2**32 - 1)
UINT64 = st.integers(0, 2**64 - 1)

# Mostly ids that hit the same few positions and reservations; sometimes anything at all.
SKUS = ["F1", "F2", "F3"]
LOCS = ["s1", "s2"]
RIDS = ["r1", "r2", "r3", "r4"]
text = st.text(max_size=300)
sku = st.one_of(st.sampled_from(SKUS), text)
loc = st.one_of(st.sampled_from(LOCS), text)
rid = st.one_of(st.sampled_from(RIDS), text, st.just("x" * 129))
quantity = st.one_of(st.integers(-3, 20), INT64)
# Seconds that are absurd, at the edges of the Timestamp range, or an hour to 400 days ahead;
# never so close that a hold could end during the test (its state would then differ from the
# restart's for a good reason).
seconds = st.one_of(
    INT64,
    st.sampled_from([-62_135_596_801, -62_135_596_800, 253_402_300_799, 253_402_300_800, 0]),
    st.integers(NOW + 3_600, NOW + 400 * 86_400),
).filter(lambda s: not NOW - 60 <= s < NOW + 3_600)
timestamp = st.builds(
    Timestamp,
    seconds=seconds,
    nanos=st.one_of(st.integers(0, 999_999_999), st.integers(-(2**31), 2**31 - 1)),
)
ttl = st.one_of(
    st.just(0), st.integers(3_600, 2**32 - 1), st.sampled_from([31_622_400, 31_622_401])
)
line = st.builds(pb.ReservationLine, sku=sku, location_id=loc, quantity=quantity)
key = st.builds(pb.StockKey, sku=sku, location_id=loc)
movement = st.builds(
    pb.Movement,
    source_id=st.one_of(st.just(""), text),
    seq=st.one_of(st.integers(0, 50), UINT64),
    sku=sku,
    location_id=loc,
    type=st.integers(0, 8),
    quantity=quantity,
    occurred_at=st.one_of(st.none(), timestamp),
    reservation_id=st.one_of(st.just(""), rid),
    reason=st.one_of(st.just(""), st.just("damage"), text),
    count_id=st.one_of(st.just(""), text),
    transfer_id=st.one_of(st.just(""), st.just("tr-1"), text),
    adjustment_sign=st.integers(0, 3),
    counterpart_location_id=st.one_of(st.just(""), loc, text),
)
batch = st.builds(
    pb.MovementBatch,
    source_id=st.one_of(st.sampled_from(["fz-a", "fz-b"]), text),
    movements=st.lists(movement, max_size=5),
    batch_id=text,
)
REQUESTS: dict[str, st.SearchStrategy[Any]] = {
    "GetAvailability": st.builds(
        pb.GetAvailabilityRequest,
        keys=st.lists(key, max_size=4),
        sku=st.one_of(st.just(""), sku),
    ),
    "WatchAvailability": st.builds(
        pb.WatchAvailabilityRequest,
        skus=st.lists(sku, max_size=3),
        location_ids=st.lists(loc, max_size=3),
        known_versions=st.lists(
            st.builds(pb.KnownVersion, sku=sku, location_id=loc, version=UINT64), max_size=3
        ),
    ),
    "Reserve": st.builds(
        pb.ReserveRequest,
        reservation_id=rid,
        lines=st.lists(line, max_size=3),
        kind=st.integers(0, 6),
        ttl_seconds=ttl,
        channel=st.one_of(st.just("web"), text, st.just("c" * 129)),
        customer_id=st.one_of(st.just(""), text, st.just("c" * 257)),
    ),
    "ReleaseReservation": st.builds(pb.ReleaseReservationRequest, reservation_id=rid),
    "FulfilReservation": st.builds(
        pb.FulfilReservationRequest,
        reservation_id=rid,
        lines=st.lists(line, max_size=2),
        request_id=st.one_of(st.just(""), text),
    ),
    "ExtendReservation": st.builds(
        pb.ExtendReservationRequest,
        reservation_id=rid,
        expires_at=st.one_of(st.none(), timestamp),
        ttl_seconds=st.one_of(st.just(0), ttl),
    ),
    "GetReservation": st.builds(pb.GetReservationRequest, reservation_id=rid),
    "GetTransfer": st.builds(
        pb.GetTransferRequest,
        transfer_id=st.one_of(st.just("tr-1"), text),
        location_id=st.one_of(st.just(""), loc, text),
    ),
    "GetNetworkAvailability": st.builds(
        pb.GetNetworkAvailabilityRequest,
        network=st.one_of(st.just("web"), text),
        skus=st.lists(sku, max_size=3),
    ),
    "WatchNetworkAvailability": st.builds(
        pb.WatchNetworkAvailabilityRequest,
        networks=st.lists(st.one_of(st.just("web"), text), max_size=2),
        skus=st.lists(sku, max_size=3),
        known_versions=st.lists(
            st.builds(pb.NetworkKnownVersion, sku=sku, network=text, version=UINT64), max_size=2
        ),
    ),
    "TransferReservation": st.builds(
        pb.TransferReservationRequest,
        reservation_id=rid,
        request_id=st.one_of(st.just(""), st.just("t1"), text),
        moves=st.lists(
            st.builds(
                pb.ReservationMove,
                sku=sku,
                from_location_id=loc,
                to_location_id=loc,
                quantity=quantity,
            ),
            max_size=3,
        ),
    ),
    "FindStock": st.builds(
        pb.FindStockRequest,
        lines=st.lists(st.builds(pb.StockLine, sku=sku, quantity=quantity), max_size=3),
        mode=st.integers(0, 4),
        network=st.one_of(st.just("web"), text),
        near_location_id=st.one_of(st.just(""), loc),
        max_distance_km=st.one_of(st.just(0.0), st.floats(allow_nan=True)),
        limit=st.integers(0, 200),
        allow_split=st.booleans(),
        include_variants=st.booleans(),
    ),
    "CloseTransfer": st.builds(
        pb.CloseTransferRequest,
        transfer_id=st.one_of(st.just("tr-1"), text),
        location_id=st.one_of(st.just(""), loc, text),
    ),
    "ListReservations": st.builds(
        pb.ListReservationsRequest,
        customer_id=st.one_of(st.just(""), st.just("ann"), text),
        channel=st.one_of(st.just(""), st.just("web"), text),
        location_id=st.one_of(st.just(""), loc),
        states=st.lists(st.integers(0, 6), max_size=3),
        page_size=st.one_of(st.just(0), st.integers(0, 2**32 - 1)),
        page_token=st.one_of(st.just(""), text),
        newest_first=st.booleans(),
    ),
    "WatchReservations": st.builds(
        pb.WatchReservationsRequest,
        customer_id=st.one_of(st.just(""), st.just("ann"), text),
        channel=st.one_of(st.just(""), st.just("web"), text),
        location_id=st.one_of(st.just(""), loc),
        states=st.lists(st.integers(0, 6), max_size=3),
    ),
    "WatchEvents": st.builds(
        pb.WatchEventsRequest,
        types=st.lists(st.integers(0, 25), max_size=3),
        skus=st.lists(sku, max_size=2),
        location_ids=st.lists(loc, max_size=2),
        networks=st.lists(st.one_of(st.just("web"), text), max_size=2),
        after_event_id=st.one_of(st.just(""), st.just("0-0"), text),
    ),
}
assert set(REQUESTS) | {"ApplyMovements"} == set(METHODS)

# A unary call: a method, its request (a message, or raw bytes) and the caller's role.
payload = st.one_of(st.binary(max_size=200), st.just(b"\x0a\x02\xc3\x28"))
call = st.one_of(
    *(st.tuples(st.just(name), s) for name, s in REQUESTS.items()),
    st.tuples(st.sampled_from(sorted(REQUESTS)), payload),
    st.tuples(
        st.just("ApplyMovements"), st.lists(st.one_of(batch, payload), min_size=1, max_size=3)
    ),
)
role = st.sampled_from(["admin", "admin", "admin", "channel", "backoffice"])
BAD = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE}
#: The server-streaming calls: read until their snapshot is complete (WatchEvents: its first
#: message, which names where it starts).
STREAMS: dict[str, Any] = {
    "WatchAvailability": pb.WatchAvailabilityResponse,
    "WatchNetworkAvailability": pb.WatchNetworkAvailabilityResponse,
    "WatchReservations": pb.WatchReservationsResponse,
    "WatchEvents": pb.WatchEventsResponse,
}


def raw(message: Any) -> bytes:
    return message if isinstance(message, bytes) else message.SerializeToString()


def invoke(channel: grpc.Channel, name: str, request: Any, who: str) -> None:
    """One call; fails on UNKNOWN/INTERNAL/UNAVAILABLE or a stream that lost an answer."""
    path = f"/{SERVICE}/{name}"
    md = (("authorization", f"Bearer {TOKENS[who]}"),)
    failed: grpc.RpcError | None = None
    try:
        if name == "ApplyMovements":
            acks = list(
                channel.stream_stream(path, None, None)(
                    iter([raw(b) for b in request]), metadata=md, timeout=20
                )
            )
            assert len(acks) == len(request), (request, acks)
        elif name in STREAMS:
            stream = channel.unary_stream(path, None, None)(raw(request), metadata=md, timeout=20)
            for message in stream:
                got = STREAMS[name].FromString(message)
                if name == "WatchEvents" or got.snapshot_complete:
                    stream.cancel()  # type: ignore[no-untyped-call]
                    break
        else:
            channel.unary_unary(path, None, None)(raw(request), metadata=md, timeout=20)
    except grpc.RpcError as exc:
        failed = exc
    if failed is not None:
        code = failed.code()
        if not (code == grpc.StatusCode.CANCELLED and name in STREAMS):
            assert code not in BAD, (name, request, code, failed.details())


def state(channel: grpc.Channel) -> tuple[list[bytes], list[bytes | str]]:
    """The levels of every position and the record of every reservation the fuzzing could
    have touched (through valid ids), read through the API."""
    md = (("authorization", f"Bearer {TOKENS['admin']}"),)
    keys = [pb.StockKey(sku=s, location_id=lc) for s in SKUS for lc in LOCS]
    levels = channel.unary_unary(f"/{SERVICE}/GetAvailability", None, None)(
        pb.GetAvailabilityRequest(keys=keys).SerializeToString(), metadata=md, timeout=20
    )
    found: list[bytes | str] = []
    for r in RIDS:
        try:
            found.append(
                channel.unary_unary(f"/{SERVICE}/GetReservation", None, None)(
                    pb.GetReservationRequest(reservation_id=r).SerializeToString(),
                    metadata=md,
                    timeout=20,
                )
            )
        except grpc.RpcError as exc:
            found.append(exc.code().name)
    return [
        lv.SerializeToString() for lv in pb.GetAvailabilityResponse.FromString(levels).levels
    ], found


@pytest.mark.slow
def test_fuzz_every_rpc(clean_redis_url: str, tmp_path: Path) -> None:
    proc = ServerProcess(clean_redis_url, tmp_path / "server").start()
    try:
        with grpc.insecure_channel(proc.target) as channel:
            # Some stock, so that reservations and pickups have something to work on.
            invoke(
                channel,
                "ApplyMovements",
                [
                    pb.MovementBatch(
                        source_id="fz-seed",
                        movements=[
                            pb.Movement(
                                seq=i + 1, sku=s, location_id=lc, type=pb.RECEIPT, quantity=20
                            )
                            for i, (s, lc) in enumerate((s, lc) for s in SKUS for lc in LOCS)
                        ],
                    )
                ],
                "admin",
            )

            @settings(
                max_examples=600,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
            )
            @given(st.lists(st.tuples(call, role), min_size=1, max_size=4))
            def fuzz(calls: list[tuple[tuple[str, Any], str]]) -> None:
                for (name, request), who in calls:
                    invoke(channel, name, request, who)
                    assert proc.proc is not None
                    assert proc.proc.poll() is None, proc.log_path.read_text()[-3000:]

            fuzz()
            # A TRANSFER_OUT's shipment reaches its destination just after the ack: read until
            # two reads agree.
            before, again = state(channel), None
            while again != before:
                time.sleep(0.3)
                before, again = again or before, state(channel)
        assert proc.terminate() == 0, proc.log_path.read_text()[-3000:]
        proc.start()
        with grpc.insecure_channel(proc.target) as channel:
            after = state(channel)
        assert after == before
        assert any(isinstance(r, bytes) for r in before[1]) or before[0]
        log = proc.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]
    finally:
        proc.stop()
