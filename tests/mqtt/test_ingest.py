"""MQTT ingestion end to end: a real mosquitto, a real redis-server, the server in process."""

from __future__ import annotations

import asyncio
import json
import os

import pytest

from tests.fixtures.server import MakeServer
from tests.mqtt.harness import Agent, batch, level
from unistock.devtools.services import MosquittoBroker
from unistock.server.app.server import UnistockServer
from unistock.server.mqtt.ingest import MAX_PAYLOAD
from unistock.v1 import inventory_pb2 as pb


async def test_a_batch_is_applied_and_acked_after_it_is_durable(
    server: UnistockServer, agent: Agent
) -> None:
    await agent.send(batch("agent-s1", 1, 100, "s1"))
    ack = await agent.ack()
    assert [(s.source_id, s.seq) for s in ack.sources] == [("agent-s1", 100)]
    assert (ack.applied, ack.duplicates, list(ack.rejections)) == (100, 0, [])
    assert (await level(server, "SKU-1", "s1")).on_hand == 100
    assert await server.store.load_sources(["agent-s1"]) == [100]  # what the ack claimed


async def test_the_same_batch_1000_times_is_applied_once(
    server: UnistockServer, agent: Agent
) -> None:
    b = batch("agent-s1", 1, 5, "s1", qty=2)
    for _ in range(1000):
        await agent.send(b)
    acks = [await agent.ack() for _ in range(1000)]
    assert {a.sources[0].seq for a in acks} == {5}
    assert sum(a.applied for a in acks) == 5
    assert sum(a.duplicates for a in acks) == 999 * 5
    assert (await level(server, "SKU-1", "s1")).on_hand == 10


async def test_a_gap_is_not_applied_until_the_missing_batch_arrives(
    server: UnistockServer, agent: Agent
) -> None:
    await agent.send(batch("agent-s1", 101, 100, "s1"))  # 1-100 were lost in between
    ack = await agent.ack()
    assert ack.sources[0].seq == 0
    assert ack.applied == 0
    assert (await level(server, "SKU-1", "s1")).version == 0
    # The agent resends from 1 (go-back-N): everything lands once.
    await agent.send(batch("agent-s1", 1, 100, "s1"))
    await agent.send(batch("agent-s1", 101, 100, "s1"))
    assert (await agent.ack()).sources[0].seq == 100
    assert (await agent.ack()).sources[0].seq == 200
    assert (await level(server, "SKU-1", "s1")).on_hand == 200


async def test_a_movement_for_another_store_is_rejected(
    server: UnistockServer, agent: Agent
) -> None:
    b = batch("agent-s1", 1, 2, "s1")
    b.movements[1].location_id = "s2"
    await agent.send(b)
    ack = await agent.ack()
    assert ack.sources[0].seq == 2  # rejections are final: the agent drops seq 2
    [r] = ack.rejections
    assert (r.seq, r.reason) == (2, pb.WRONG_STORE)
    assert "s2" in r.detail
    assert (await level(server, "SKU-1", "s2")).version == 0
    assert (await level(server, "SKU-1", "s1")).on_hand == 1


async def test_json_payload_with_content_type(server: UnistockServer, agent: Agent) -> None:
    doc = {
        "sourceId": "till-script",
        "movements": [
            {"seq": 1, "sku": "SKU-J", "locationId": "s1", "type": "RECEIPT", "quantity": "3"}
        ],
    }
    await agent.send(json.dumps(doc).encode(), json_content=True)
    ack = await agent.ack()
    assert ack.applied == 1
    assert (await level(server, "SKU-J", "s1")).on_hand == 3


@pytest.mark.parametrize(
    ("payload", "json_content", "reason", "detail"),
    [
        (os.urandom(64), False, pb.UNPARSEABLE, "cannot parse"),
        (batch("a", 1, 3, "s1").SerializeToString()[:-3], False, pb.UNPARSEABLE, "cannot parse"),
        (b'{"sourceId": "a", "movements": [', True, pb.UNPARSEABLE, "cannot parse"),
        (b'{"sourceId": "a", "bogus": 1}', True, pb.UNPARSEABLE, "cannot parse"),
        (b"x" * (MAX_PAYLOAD + 1), False, pb.BATCH_TOO_LARGE, "exceeds the limit"),
        # 10 MB of a valid-looking batch: refused unparsed (the test broker has no size limit;
        # the production one refuses it first, see tests/deploy)
        # (concatenated protobuf messages merge: one batch repeated is one big valid batch)
        (
            batch("agent-s1", 1, 1, "s1").SerializeToString() * 350_000,
            False,
            pb.BATCH_TOO_LARGE,
            "exceeds the limit",
        ),
    ],
    ids=[
        "random-bytes",
        "truncated-protobuf",
        "bad-json",
        "unknown-json-field",
        "too-large",
        "10-MB-batch",
    ],
)
async def test_unparseable_payloads_are_rejected_and_ingestion_goes_on(
    server: UnistockServer,
    agent: Agent,
    payload: bytes,
    json_content: bool,
    reason: int,
    detail: str,
) -> None:
    await agent.send(payload, json_content=json_content)
    ack = await agent.ack()
    [r] = ack.rejections
    assert r.reason == reason
    assert detail in r.detail
    assert (r.seq, list(ack.sources), ack.applied) == (0, [], 0)
    await agent.send(batch("agent-s1", 1, 1, "s1"))
    assert (await agent.ack()).applied == 1


@pytest.mark.parametrize(
    ("field", "value", "reason", "named"),
    [
        ("quantity", -5, pb.BAD_QUANTITY, "movements[0].quantity"),
        ("quantity", 10**12, pb.BAD_QUANTITY, "movements[0].quantity"),
        ("type", 99, pb.INVALID_FIELD, "movements[0].type"),
        ("sku", "", pb.INVALID_FIELD, "movements[0].sku"),
    ],
)
async def test_bad_movements_are_rejected_with_the_field_and_change_nothing(
    server: UnistockServer, agent: Agent, field: str, value: object, reason: int, named: str
) -> None:
    b = batch("agent-s1", 1, 1, "s1")
    setattr(b.movements[0], field, value)
    await agent.send(b)
    ack = await agent.ack()
    [r] = ack.rejections
    assert (r.seq, r.reason) == (1, reason)
    assert named in r.detail
    assert ack.applied == 0
    assert (await level(server, "SKU-1", "s1")).version == 0


async def test_a_movement_without_a_seq_is_rejected_naming_it_and_the_rest_applies(
    server: UnistockServer, agent: Agent
) -> None:
    b = batch("agent-s1", 1, 2, "s1")
    b.movements.insert(0, pb.Movement(seq=0, sku="SKU-1", location_id="s1", type=pb.RECEIPT,
                                      quantity=1))  # fmt: skip
    await agent.send(b)
    ack = await agent.ack()
    [r] = ack.rejections
    assert (r.seq, r.reason) == (0, pb.INVALID_FIELD)
    assert "movements[0].seq" in r.detail
    assert (ack.applied, ack.duplicates) == (2, 0)
    assert [(s.source_id, s.seq) for s in ack.sources] == [("agent-s1", 2)]


async def test_progress_survives_a_restart(
    make_server: MakeServer, clean_redis_url: str, mosquitto_broker: MosquittoBroker,
    server: UnistockServer, agent: Agent,
) -> None:  # fmt: skip
    await agent.send(batch("agent-s1", 1, 10, "s1"))
    assert (await agent.ack()).sources[0].seq == 10
    await server.stop()
    again = await make_server(clean_redis_url, mqtt_url=mosquitto_broker.url)
    assert again.ingestor is not None
    async with asyncio.timeout(20):
        await again.ingestor.connected.wait()
    await agent.send(batch("agent-s1", 11, 10, "s1"))  # not a gap after the restart
    ack = await agent.ack()
    assert (ack.sources[0].seq, ack.applied) == (20, 10)
    assert (await level(again, "SKU-1", "s1")).on_hand == 20
