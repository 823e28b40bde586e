"""The dashboard and the alert rules against what Unistock really exports.

A real Prometheus (its own process, config and data directory, a free loopback port, scraping
every second, the rules loaded) scrapes a running server (with MQTT ingestion), the ledger writer
in its own process (`unistock-ledger`) and a real `unistock-edge-agent` process connected through
a real mosquitto, as deploy/prometheus/prometheus.yml does. A small scenario goes through them:
movements from a till through the agent (one for a location of another store, rejected; a sale of
stock never received, negative), reservations (one held, one refused for lack of stock, one that
expires, one about to), a sale leaving a reservation at risk, and a watch stream kept open. Then
every expression of the dashboard and of the rules is evaluated through Prometheus's HTTP API:
each must evaluate, the ones the scenario feeds must return data, and every metric they name must
be one Prometheus scraped (so a renamed metric fails here, not at 3 a.m.)."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio

from tests.deploy.prometheus import (
    RULES,
    PrometheusProcess,
    alerting_rules,
    dashboard_targets,
    metric_names,
    signals,
    substitute,
)
from tests.edge.harness import agent_process
from tests.fixtures.ledger import LedgerProcess
from tests.fixtures.server import TOKENS, MakeServer, start_mqtt_server, target
from unistock.devtools.services import MosquittoBroker, free_port
from unistock.intake.v1 import intake_pb2 as ipb
from unistock.intake.v1 import intake_pb2_grpc as ipb_grpc
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb
from unistock.v1 import inventory_pb2_grpc as pb_grpc

#: Metrics that have no series until a rare event the scenario does not cause (labelled
#: counters get their first series at their first increment). Each must still be exported
#: (its `# TYPE` line is on a target's /metrics), and an expression may return no data only
#: if it reads one of them.
RARE = {
    # a Redis operation failed
    "unistock_redis_errors_total",
    # the broker refused an agent's publish (MQTT 5 reason >= 128: the ACL)
    "unistock_agent_publish_refused_total",
}

STORE = "s1"


async def _until(what: str, check: Callable[[], Awaitable[bool]], limit: float = 60) -> None:
    """Poll check until it holds (every 0.2 s), failing with `what` after limit seconds."""
    try:
        async with asyncio.timeout(limit):
            while not await check():  # noqa: ASYNC110 (polling a process: no event)
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"still not true after {limit} s: {what}") from None


async def _on_hand(srv: UnistockServer, sku: str) -> int:
    [level] = await srv.inventory.levels([(sku, STORE)])
    return level.on_hand


@pytest.fixture
async def stack(
    tmp_path: Path,
    mosquitto_broker: MosquittoBroker,  # set up first, torn down after the server
    make_server: MakeServer,
    clean_redis_url: str,
) -> AsyncIterator[tuple[UnistockServer, int, PrometheusProcess]]:
    """(server, the agent's intake port, Prometheus scraping the server, the ledger writer and
    the agent, with the rules loaded)."""
    server_metrics, ledger_metrics = free_port(), free_port()
    agent_metrics, intake_port = free_port(), free_port()
    srv = await start_mqtt_server(
        make_server,
        clean_redis_url,
        mosquitto_broker,
        metrics_port=server_metrics,
        expiry_interval_s=0.2,
    )
    ledger = LedgerProcess(
        clean_redis_url,
        f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        tmp_path / "ledger",
        "--ledger-metrics-port",
        str(ledger_metrics),
    )
    await asyncio.to_thread(ledger.start)
    flags = ("--metrics-port", str(agent_metrics), "--intake-port", str(intake_port))
    try:
        async with agent_process(tmp_path / "agent", mosquitto_broker.url, *flags, store=STORE):
            prom = PrometheusProcess(
                tmp_path / "prometheus",
                {
                    "unistock-server": [(f"127.0.0.1:{server_metrics}", {})],
                    "unistock-ledger": [(f"127.0.0.1:{ledger_metrics}", {})],
                    "unistock-agent": [(f"127.0.0.1:{agent_metrics}", {"store": STORE})],
                },
                rule_files=[RULES],
            )
            await asyncio.to_thread(prom.start)
            try:
                yield srv, intake_port, prom
            finally:
                await asyncio.to_thread(prom.stop)
    finally:
        await asyncio.to_thread(ledger.stop)


async def scenario(srv: UnistockServer, intake_port: int) -> None:
    """Movements through the agent, reservations through the server (see the module doc)."""
    async with aio.insecure_channel(f"127.0.0.1:{intake_port}") as ch:
        till = ipb_grpc.StoreIntakeStub(ch)
        receipt = pb.Movement(sku="SHOE", type=pb.RECEIPT, quantity=10)
        await till.RecordMovement(ipb.RecordMovementRequest(device_id="bo", movement=receipt))
        await till.RecordSale(ipb.SaleRequest(till_id="t1", sku="SHOE", quantity=1))
        # Rejected by the server: a location of no store of this agent's.
        elsewhere = pb.Movement(sku="SHOE", type=pb.RECEIPT, quantity=1, location_id="elsewhere")
        await till.RecordMovement(ipb.RecordMovementRequest(device_id="bo", movement=elsewhere))
        # Never received: on_hand goes below zero.
        await till.RecordSale(ipb.SaleRequest(till_id="t1", sku="GHOST", quantity=2))

    async def applied() -> bool:
        return await _on_hand(srv, "SHOE") == 9 and await _on_hand(srv, "GHOST") == -2

    await _until("the agent's movements applied", applied)
    metadata = (("authorization", f"Bearer {TOKENS['channel']}"),)
    async with aio.insecure_channel(target(srv)) as ch:
        api = pb_grpc.InventoryServiceStub(ch)

        async def reserve(rid: str, quantity: int, ttl: int = 600) -> None:
            line = pb.ReservationLine(sku="SHOE", location_id=STORE, quantity=quantity)
            request = pb.ReserveRequest(
                reservation_id=rid, lines=[line], kind=pb.CART, ttl_seconds=ttl
            )
            await api.Reserve(request, metadata=metadata)

        await reserve("held", 7)
        with pytest.raises(aio.AioRpcError) as refused:
            await reserve("oversell", 100)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        await reserve("short", 1, ttl=1)  # expires
        await reserve("soon", 1, ttl=120)  # within --expiring-soon-s: warned of at once
    # A sale leaving fewer on hand than reserved: the reservation is at risk.
    async with aio.insecure_channel(f"127.0.0.1:{intake_port}") as ch:
        till = ipb_grpc.StoreIntakeStub(ch)
        await till.RecordSale(ipb.SaleRequest(till_id="t1", sku="SHOE", quantity=3))

    async def sold() -> bool:
        return await _on_hand(srv, "SHOE") == 6

    await _until("the last sale applied", sold)


#: What Prometheus must have scraped before the expressions are evaluated: the scenario's
#: effects, on both targets.
SCRAPED = [
    f'unistock_agent_outbox_depth{{store="{STORE}"}} == 0',
    f'unistock_agent_movements_acked_total{{store="{STORE}"}} >= 5',
    f'unistock_store_silent_seconds{{store="{STORE}"}}',
    'sum(unistock_reservations_total{operation="reserve", outcome="insufficient"}) >= 1',
    "unistock_reservations_expired_total >= 1",
    'sum(unistock_reservations_total{operation="expiring_soon"}) >= 1',
    "unistock_reservations_at_risk_total >= 1",
    "unistock_negative_positions_total >= 1",
    "sum(unistock_movements_rejected_total) >= 1",
    "unistock_watch_subscribers >= 1",
    "unistock_ledger_entries_total >= 1",
]


async def scraped(prom: PrometheusProcess) -> None:
    """Until Prometheus has every effect of the scenario, then two more scrapes of each target
    (a rate needs two samples of a series that just appeared)."""

    async def seen(expr: str) -> bool:
        return bool(await asyncio.to_thread(prom.query, expr))

    for expr in SCRAPED:
        await _until(expr, lambda e=expr: seen(e))  # type: ignore[misc]
    samples = "min(count_over_time(up[10m]))"
    [before] = await asyncio.to_thread(prom.query, samples)
    wanted = float(before["value"][1]) + 2
    await _until("two more scrapes", lambda: seen(f"{samples} >= {wanted}"))


def exported_families(prom: PrometheusProcess) -> set[str]:
    """Every metric named by a `# TYPE` line on the targets' /metrics."""
    out = set()
    for t in prom.api("targets")["activeTargets"]:
        with urllib.request.urlopen(t["scrapeUrl"], timeout=10) as r:
            text = r.read().decode()
        out |= set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    return out


async def test_every_dashboard_and_rule_expression_evaluates_on_real_metrics(
    stack: tuple[UnistockServer, int, PrometheusProcess],
) -> None:
    srv, intake_port, prom = stack
    metadata = (("authorization", f"Bearer {TOKENS['channel']}"),)
    async with aio.insecure_channel(target(srv)) as ch:
        watch = pb_grpc.InventoryServiceStub(ch).WatchAvailability(
            pb.WatchAvailabilityRequest(skus=["SHOE"], location_ids=[STORE]), metadata=metadata
        )
        await watch.read()  # the snapshot: the stream is open
        await scenario(srv, intake_port)
        await scraped(prom)

        exprs = [(f"dashboard: {title}", substitute(e)) for title, e in dashboard_targets()]
        for rule in alerting_rules():
            exprs.append((f"rule {rule['alert']}", rule["expr"]))
            exprs += [(f"rule {rule['alert']} (signal)", s) for s in signals(rule["expr"])]

        names = await asyncio.to_thread(prom.names)
        families = await asyncio.to_thread(exported_families, prom)
        problems = []
        for where, expr in exprs:
            missing = {
                m
                for m in metric_names(expr)
                if m not in names and not (m in RARE and m in families)
            }
            if missing:
                problems.append(f"{where}: no such metric {sorted(missing)} in {expr!r}")
                continue
            try:
                result = await asyncio.to_thread(prom.query, expr)
            except AssertionError as exc:
                problems.append(f"{where}: {exc}")
                continue
            alert = where.startswith("rule ") and not where.endswith("(signal)")
            may_be_empty = alert or metric_names(expr) & RARE
            if not result and not may_be_empty:
                problems.append(f"{where}: no data for {expr!r}")
        watch.cancel()
    assert not problems, "\n".join(problems)
    # Prometheus evaluated every rule itself, without error.
    rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert {r["name"] for r in rules} == {r["alert"] for r in alerting_rules()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # The dashboard's store variable lists the store.
    stores = prom.api("label/store/values", **{"match[]": "unistock_store_silent_seconds"})
    assert STORE in stores
