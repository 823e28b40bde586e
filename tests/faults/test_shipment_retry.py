"""A Redis failure while a TRANSFER_OUT's shipment is applied to its transfer record delays it
and nothing else: the shipments task retries (the outbox keeps the shipment meanwhile) and the
server keeps serving. Reported by a reviewer: one read timeout there used to stop the server.

The fault is injected into our own loader (Redis cannot be made to fail exactly between an ack
and the shipment's first read from outside); everything else is real."""

from __future__ import annotations

from tests.faults.helpers import eventually
from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, level, mv, send
from unistock.client import UnistockClient
from unistock.server.domain import Unavailable


async def test_a_redis_failure_while_applying_a_shipment_is_retried(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    inventory = srv.inventory
    real = inventory.transfers.load
    failures = 0

    async def load_once_failing(keys: object) -> None:
        nonlocal failures
        wanted = list(keys)  # type: ignore[call-overload]
        if wanted and failures == 0:
            failures += 1
            raise Unavailable("redis read failed (injected)")
        await real(wanted)

    inventory.transfers.load = load_once_failing  # type: ignore[method-assign]
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        await send(
            c,
            batch(
                "bo",
                mv(1, "RECEIPT", "J", "s1", 5),
                mv(2, "TRANSFER_OUT", "J", "s1", 3, transfer_id="T", counterpart_location_id="s2"),
            ),
        )

        async def arrived() -> bool:
            return (await level(c, "J", "s2")).in_transit == 3

        await eventually(arrived)
        assert failures == 1
        assert not srv.failed
        ended = [t.get_name() for t in srv._tasks if t.done() and (t.cancelled() or t.exception())]
        assert not ended  # (a one-off task such as the index backfill may have returned)
        [t] = await c.get_transfer("T")
        assert t.lines[0].shipped == 3
        registry = srv.metrics.registry
        assert (
            registry.get_sample_value("unistock_redis_errors_total", {"operation": "shipments"})
            == 1
        )
        assert registry.get_sample_value("unistock_transfer_shipments_pending") == 0
