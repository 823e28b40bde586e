"""What the MQTT ingestion refuses, and that a refusal never moves a source's progress.

A source belongs to the first store that sends it; another store's batch naming it changes
nothing. A batch refused as a whole (too large, no valid source, empty) is acked without a
SourceAck, so its seqs are not burned. Per-store and per-source state stays bounded whatever
topics and sources arrive.
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import generate_latest

from tests.fixtures.server import MakeServer
from tests.mqtt.harness import Agent, batch, connect, level
from unistock.devtools.services import MosquittoBroker
from unistock.server.app.server import UnistockServer
from unistock.server.mqtt.ingest import MAX_PAYLOAD
from unistock.v1 import inventory_pb2 as pb

#: The label shared by stores beyond the series limit (documented; "|" is never in an id).
OTHER_STORES = "|other"
LIMITS = pb.BatchLimits(max_movements=10_000, max_payload_bytes=MAX_PAYLOAD)


async def owner(srv: UnistockServer, source: str) -> str | None:
    ks = srv.store.keyspace
    value = await srv.store.client.hget(ks.source_owners(ks.source_partition(source)), source)
    return None if value is None else value.decode() if isinstance(value, bytes) else value


async def restarted(
    make_server: MakeServer, redis_url: str, broker: MosquittoBroker, srv: UnistockServer
) -> UnistockServer:
    await srv.stop()
    again = await make_server(redis_url, mqtt_url=broker.url)
    assert again.ingestor is not None
    async with asyncio.timeout(20):
        await again.ingestor.connected.wait()
    return again


def assert_wrong_store(ack: pb.MovementAck, source: str, seqs: list[int], owner: str) -> None:
    """Every movement rejected WRONG_STORE naming the source and its store; no progress."""
    assert list(ack.sources) == []
    assert (ack.applied, ack.duplicates) == (0, 0)
    assert [(r.source_id, r.seq, r.reason) for r in ack.rejections] == [
        (source, s, pb.WRONG_STORE) for s in seqs
    ]
    assert all(repr(source) in r.detail and repr(owner) in r.detail for r in ack.rejections)


# -- 2.3: a source belongs to one store ----------------------------------------------------------


@pytest.mark.parametrize("location", ["s1", "s2"], ids=["owner's-location", "own-location"])
async def test_another_store_naming_a_source_changes_nothing_and_loses_none_of_its_movements(
    server: UnistockServer, agent: Agent, mosquitto_broker: MosquittoBroker, location: str
) -> None:
    await agent.send(batch("agent-s1", 1, 3, "s1"))
    assert (await agent.ack()).sources[0].seq == 3
    async with connect(mosquitto_broker, "s2") as other:
        b = batch("agent-s1", 4, 3, location)
        b.batch_id = "b-4"
        await other.send(b)
        ack = await other.ack()
    assert ack.batch_id == "b-4"
    assert_wrong_store(ack, "agent-s1", [4, 5, 6], "s1")
    assert await server.store.load_sources(["agent-s1"]) == [3]
    assert (await level(server, "SKU-1", "s2")).version == 0
    # The owner's own seqs 4-6 are new movements, not duplicates of the refused ones.
    await agent.send(batch("agent-s1", 4, 3, "s1"))
    ack = await agent.ack()
    assert ([(s.source_id, s.seq) for s in ack.sources], ack.applied) == ([("agent-s1", 6)], 3)
    assert (await level(server, "SKU-1", "s1")).on_hand == 6


async def test_two_stores_racing_for_a_new_source_one_owns_it(
    server: UnistockServer, mosquitto_broker: MosquittoBroker
) -> None:
    async with connect(mosquitto_broker, "s1") as s1, connect(mosquitto_broker, "s2") as s2:
        # Both first batches are queued before either is applied (one flush writes both).
        await asyncio.gather(
            s1.send(batch("fresh", 1, 2, "s1")), s2.send(batch("fresh", 1, 2, "s2"))
        )
        acks = {"s1": await s1.ack(), "s2": await s2.ack()}
    [winner] = [store for store, ack in acks.items() if ack.sources]
    assert await owner(server, "fresh") == winner
    loser = "s2" if winner == "s1" else "s1"
    won = acks[winner]
    assert ([(s.source_id, s.seq) for s in won.sources], won.applied) == ([("fresh", 2)], 2)
    assert_wrong_store(acks[loser], "fresh", [1, 2], winner)
    assert (await level(server, "SKU-1", winner)).on_hand == 2
    assert (await level(server, "SKU-1", loser)).version == 0


async def test_a_sources_store_is_remembered_across_a_restart(
    make_server: MakeServer, clean_redis_url: str, mosquitto_broker: MosquittoBroker,
    server: UnistockServer, agent: Agent,
) -> None:  # fmt: skip
    # A first batch that makes no progress (a gap) claims the source all the same.
    await agent.send(batch("agent-s1", 5, 1, "s1"))
    assert (await agent.ack()).sources[0].seq == 0
    again = await restarted(make_server, clean_redis_url, mosquitto_broker, server)
    async with connect(mosquitto_broker, "s2") as other:
        await other.send(batch("agent-s1", 1, 2, "s2"))
        assert_wrong_store(await other.ack(), "agent-s1", [1, 2], "s1")
    await agent.send(batch("agent-s1", 1, 2, "s1"))
    ack = await agent.ack()
    assert (ack.sources[0].seq, ack.applied) == (2, 2)
    assert (await level(again, "SKU-1", "s2")).version == 0


# -- 2.4 and 1.9: a batch refused whole burns no seqs ----------------------------------------


async def test_a_batch_of_too_many_movements_is_refused_whole_and_its_seqs_apply_when_split(
    server: UnistockServer, agent: Agent
) -> None:
    big = batch("agent-s1", 1, 10_001, "s1")
    big.batch_id = "big"
    await agent.send(big)
    ack = await agent.ack()
    [r] = ack.rejections
    assert (r.source_id, r.seq, r.reason) == ("agent-s1", 0, pb.BATCH_TOO_LARGE)
    assert "10001 movements exceed the limit of 10000" in r.detail
    assert (ack.limits, ack.batch_id, list(ack.sources), ack.applied) == (LIMITS, "big", [], 0)
    assert await server.store.load_sources(["agent-s1"]) == [0]
    for first in range(1, 10_002, 100):
        await agent.send(batch("agent-s1", first, min(100, 10_002 - first), "s1"))
    acks = [await agent.ack() for _ in range(101)]
    assert (sum(a.applied for a in acks), sum(a.duplicates for a in acks)) == (10_001, 0)
    assert acks[-1].sources[0].seq == 10_001
    assert (await level(server, "SKU-1", "s1")).on_hand == 10_001


async def test_a_payload_over_the_limit_is_refused_with_the_limits_and_its_seqs_apply_when_split(
    server: UnistockServer, agent: Agent
) -> None:
    big = batch("agent-s1", 1, 2_000, "s1", type_=pb.ADJUSTMENT)
    for m in big.movements:
        m.adjustment_sign = pb.INCREASE
        m.reason = "r" * 600
    assert big.ByteSize() > MAX_PAYLOAD
    await agent.send(big)
    ack = await agent.ack()
    [r] = ack.rejections
    assert (r.seq, r.reason) == (0, pb.BATCH_TOO_LARGE)
    assert f"exceeds the limit of {MAX_PAYLOAD} bytes" in r.detail
    assert (ack.limits, list(ack.sources), ack.applied) == (LIMITS, [], 0)
    half = len(big.movements) // 2
    for part in (big.movements[:half], big.movements[half:]):
        await agent.send(pb.MovementBatch(source_id="agent-s1", movements=part))
    acks = [await agent.ack(), await agent.ack()]
    assert [(a.sources[0].seq, a.applied) for a in acks] == [(1_000, 1_000), (2_000, 1_000)]


@pytest.mark.parametrize(
    ("source", "movements", "named"),
    [
        ("agent s1", 2, "source_id"),
        ("a" * 129, 2, "source_id"),
        ("", 2, "source_id"),
        ("agent-s1", 0, "movements"),
    ],
    ids=["source-with-space", "source-too-long", "no-source", "no-movement"],
)
async def test_a_batch_without_a_valid_source_or_movement_advances_no_progress(
    server: UnistockServer, agent: Agent, source: str, movements: int, named: str
) -> None:
    await agent.send(batch(source, 1, movements, "s1"))
    ack = await agent.ack()
    assert (list(ack.sources), ack.applied) == ([], 0)
    assert ack.rejections
    assert all(named in r.detail for r in ack.rejections)
    assert await server.store.load_sources([source or "-"]) == [0]
    assert (await level(server, "SKU-1", "s1")).version == 0


async def test_a_seq_of_2_64_minus_1_cannot_blackhole_its_source(
    server: UnistockServer, agent: Agent
) -> None:
    top = 2**64 - 1
    b = batch("agent-s1", 1, 2, "s1")
    b.movements.add(seq=top, sku="SKU-1", location_id="s1", type=pb.RECEIPT, quantity=1)
    await agent.send(b)
    ack = await agent.ack()
    assert (ack.sources[0].seq, ack.applied) == (2, 2)
    await agent.send(batch("agent-s1", top, 1, "s1"))
    ack = await agent.ack()
    assert (ack.sources[0].seq, ack.applied) == (2, 0)
    await agent.send(batch("agent-s1", 3, 1, "s1"))  # the next seq still applies
    ack = await agent.ack()
    assert (ack.sources[0].seq, ack.applied, ack.duplicates) == (3, 1, 0)
    assert (await level(server, "SKU-1", "s1")).on_hand == 3
    assert await server.store.load_sources(["agent-s1"]) == [3]


# -- 2.7: bounded per-store and per-source state ---------------------------------------------


async def test_made_up_store_topics_and_sources_leave_bounded_state(
    server: UnistockServer, mosquitto_broker: MosquittoBroker
) -> None:
    ingestor = server.ingestor
    assert ingestor is not None
    ingestor.store_series.limit = 3
    ingestor.sources.limit = 4
    bad = ["bad store", "x" * 129]
    async with connect(mosquitto_broker, "any", "unistock/v1/stores/+/acks") as client:
        for i in range(30):
            await client.send(
                batch(f"src-{i}", 1, 1, f"fake-{i}"), topic=f"unistock/v1/stores/fake-{i}/movements"
            )
        for store in bad:
            await client.send(
                batch("src-x", 1, 1, store), topic=f"unistock/v1/stores/{store}/movements"
            )
        acks = [await client.ack() for _ in range(32)]
    assert sum(a.applied for a in acks) == 30
    refused = [r for a in acks for r in a.rejections]
    assert [(r.reason, "topic store_id" in r.detail) for r in refused] == [
        (pb.INVALID_FIELD, True)
    ] * 2
    body = generate_latest(server.metrics.registry).decode()
    series = [
        line for line in body.splitlines()
        if line.startswith("unistock_mqtt_store_last_seen_timestamp_seconds{")
    ]  # fmt: skip
    assert len(series) == 4
    assert any(f'store="{OTHER_STORES}"' in line for line in series)
    assert not any("bad store" in line or "x" * 129 in line for line in series)
    assert len(ingestor.sources) == 4
    # An evicted source comes back from Redis with its store and progress.
    await client_resend_is_duplicate(mosquitto_broker, "fake-0", "src-0")


async def client_resend_is_duplicate(broker: MosquittoBroker, store: str, source: str) -> None:
    async with connect(broker, store) as again:
        await again.send(batch(source, 1, 1, store))
        ack = await again.ack()
    assert ([(s.source_id, s.seq) for s in ack.sources], ack.duplicates) == ([(source, 1)], 1)


# -- 1.4: notices of applied movements -------------------------------------------------------


async def test_a_sale_naming_no_reservation_it_can_take_is_applied_with_a_notice(
    server: UnistockServer, agent: Agent
) -> None:
    await agent.send(batch("agent-s1", 1, 1, "s1", qty=5))
    await agent.ack()
    sale = batch("agent-s1", 2, 1, "s1", qty=2, type_=pb.SALE)
    sale.movements[0].reservation_id = "r-unknown"
    await agent.send(sale)
    ack = await agent.ack()
    assert (ack.applied, list(ack.rejections)) == (1, [])
    [n] = ack.notices
    assert (n.source_id, n.seq, n.kind, n.reservation_id) == (
        "agent-s1", 2, pb.PICKUP_MISMATCH, "r-unknown"
    )  # fmt: skip
    assert n.detail
    assert (await level(server, "SKU-1", "s1")).on_hand == 3
