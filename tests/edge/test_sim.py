"""unistock-sim against a real server: every simulated movement lands exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.fixtures.server import MakeServer
from unistock.devtools.services import MosquittoBroker
from unistock.edge.sim import Summary, main, simulate


async def test_simulated_stores_lose_and_double_nothing(
    make_server: MakeServer,
    clean_redis_url: str,
    mosquitto_broker: MosquittoBroker,
    tmp_path: Path,
) -> None:
    srv = await make_server(clean_redis_url, mqtt_url=mosquitto_broker.url)
    assert srv.ingestor is not None
    async with asyncio.timeout(20):
        await srv.ingestor.connected.wait()

    summary: Summary = await simulate(
        stores=2,
        tills=2,
        mqtt_url=mosquitto_broker.url,
        duration=2,
        rate=20,
        skus=5,
        seed=7,
        data_dir=tmp_path / "sim",
        count_every=1,
        initial_stock=50,
        drain_timeout=20,
        ack_timeout=3.0,  # a lost batch is resent after this (see the report), keep the test short
    )

    assert summary.drained
    assert summary.sales > 50
    assert summary.counts > 0
    assert [s.store_id for s in summary.stores] == ["store-0001", "store-0002"]
    for store in summary.stores:
        assert store.outbox_depth == 0
        assert store.count_sessions >= 1
        keys = [(sku, store.store_id) for sku in sorted(store.expected_on_hand)]
        positions = await srv.inventory.levels(keys)
        for (sku, _), p in zip(keys, positions, strict=True):
            # one version per movement the simulator recorded: nothing lost, nothing twice
            assert p.version == store.movements[sku], (store.store_id, sku)
            # sales name their EPC, so counts are exact and the shelf model is the truth
            assert p.on_hand == store.expected_on_hand[sku], (store.store_id, sku)
    assert "2 stores" in summary.render()


def test_cli_rejects_nonsense(capsys: object) -> None:
    assert main(["--stores", "0", "--duration", "0"]) == 2
