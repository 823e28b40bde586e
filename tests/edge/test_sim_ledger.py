"""A busy day of unistock-sim (stores, tills, RFID counts over MQTT) with the ledger writer as
its own process: the SQL ledger equals what was applied - per position, one MOVEMENT row per
movement applied (its version), the rows' on_hand deltas summing to on_hand (invariant 9),
every sale the simulator made and every count variance - on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from tests.fixtures.ledger import LedgerProcess, rows_settle
from tests.fixtures.server import MakeServer
from unistock.devtools.services import MosquittoBroker
from unistock.edge.sim import Summary, simulate
from unistock.server.persistence.ledger import MOVEMENT
from unistock.v1 import inventory_pb2 as pb


async def test_the_ledger_of_a_busy_day_equals_what_was_applied(
    make_server: MakeServer,
    clean_redis_url: str,
    mosquitto_broker: MosquittoBroker,
    sql_url: str,
    tmp_path: Path,
) -> None:
    srv = await make_server(clean_redis_url, mqtt_url=mosquitto_broker.url, database_url=sql_url)
    assert srv.ingestor is not None
    ledger = LedgerProcess(clean_redis_url, sql_url, tmp_path / "ledger").start()
    try:
        async with asyncio.timeout(20):
            await srv.ingestor.connected.wait()
        summary: Summary = await simulate(
            stores=3,
            tills=2,
            mqtt_url=mosquitto_broker.url,
            duration=3,
            rate=15,
            skus=6,
            seed=11,
            data_dir=tmp_path / "sim",
            count_every=1,
            initial_stock=40,
            drain_timeout=30,
            ack_timeout=3.0,
        )
        assert summary.drained
        keys = [(sku, s.store_id) for s in summary.stores for sku in sorted(s.expected_on_hand)]
        levels = dict(zip(keys, await srv.inventory.levels(keys), strict=True))
        applied = sum(p.version for p in levels.values())
        rows = await rows_settle(sql_url, applied, wait=60)
    finally:
        ledger.kill()
    moves = [r for r in rows if r.kind == MOVEMENT]
    per_position = Counter((r.sku, r.location_id) for r in moves)
    deltas: Counter[tuple[str, str]] = Counter()
    for r in moves:
        deltas[(r.sku, r.location_id)] += r.on_hand_delta
    for key, p in levels.items():
        assert per_position[key] == p.version, key  # every movement applied, once
        assert deltas[key] == p.on_hand, key  # invariant 9
    assert len({(r.source_id, r.seq) for r in moves}) == len(moves)
    kinds = Counter(r.movement_type for r in moves)
    assert kinds[pb.SALE] == summary.sales > 50
    assert kinds[pb.RETURN] == summary.returns
    assert kinds[pb.COUNT] == summary.counts > 0
