"""A source belongs to one store, with real agents: a store's outbox file copied to another
store's agent (a machine imaged from another store's) cannot make the first store's movements
be dropped as duplicates; the copy's movements are rejected WRONG_STORE instead."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.edge.harness import drained, on_hand, start_agent, stop_agent
from tests.edge.test_agent_e2e import server
from unistock.devtools.services import MosquittoBroker
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

__all__ = ["server"]  # the fixture, imported for its use below


def receipts(n: int) -> list[pb.Movement]:
    return [pb.Movement(sku="SHOE", type=pb.RECEIPT, quantity=1) for _ in range(n)]


async def test_an_outbox_copied_to_another_store_loses_none_of_the_first_stores_movements(
    server: UnistockServer, tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    a, task = await start_agent(tmp_path, mosquitto_broker, "s1")
    await a.record(receipts(2))  # seqs 1-2
    await drained(a)
    source = a.outbox.source_id
    await stop_agent(a, task)
    copy = tmp_path / "agent-s2" / "outbox-s2.sqlite"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(tmp_path / "agent-s1" / "outbox-s1.sqlite", copy)

    a, task = await start_agent(tmp_path, mosquitto_broker, "s1")
    b, b_task = await start_agent(tmp_path, mosquitto_broker, "s2", source_id="agent-s1")
    try:
        assert b.outbox.source_id == source  # the copy goes on with s1's source
        await b.record(receipts(5))  # seqs 3-7, at s2
        await drained(b)
        await a.record(receipts(3))  # seqs 3-5, at s1: new movements, not duplicates
        await drained(a)
        assert a.outbox.last_acked == 5
        assert a.outbox.rejected() == []
        rejected = b.outbox.rejected()
    finally:
        await stop_agent(b, b_task)
        await stop_agent(a, task)
    assert [(r.seq, r.reason) for r in rejected] == [(s, pb.WRONG_STORE) for s in range(3, 8)]
    assert all(source in r.detail and "'s1'" in r.detail for r in rejected)
    assert await on_hand(server, "SHOE", "s1") == 5
    assert await on_hand(server, "SHOE", "s2") == 0
    assert await server.store.load_sources([source]) == [5]
