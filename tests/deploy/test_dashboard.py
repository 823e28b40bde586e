"""deploy/grafana/unistock.json: a dashboard Grafana can import or provision as it is (its data
source is a template variable, every panel and query uses it), laid out without overlaps, with a
`store` filter on every per-store query, covering what issue 12 asks SREs to see.

Every query is evaluated against a real Prometheus in test_prometheus_e2e.py.
"""

from __future__ import annotations

import json
from typing import Any

from tests.deploy.prometheus import DASHBOARD, alerting_rules, dashboard_targets, metric_names

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}

#: What the dashboard must show, each by one metric it reads.
COVERED = {
    "ingestion": "unistock_movements_total",
    "rejections": "unistock_movements_rejected_total",
    "ingest lag": "unistock_mqtt_ingest_to_durable_seconds_bucket",
    "flush latency": "unistock_flush_duration_seconds_bucket",
    "flush batch sizes": "unistock_flush_batch_positions_bucket",
    "reservations by outcome": "unistock_reservations_total",
    "expiry": "unistock_reservations_expired_total",
    "watch subscribers": "unistock_watch_subscribers",
    "watch coalesced": "unistock_watch_updates_total",
    "watch cut": "unistock_watch_subscribers_dropped_total",
    "stores online / stale": "unistock_store_silent_seconds",
    "stores' reported backlog": "unistock_store_reported_backlog_seconds",
    "outbox depth": "unistock_agent_outbox_depth",
    "outbox age": "unistock_agent_oldest_unacked_age_seconds",
    "ledger lag": "unistock_ledger_lag_seconds",
    "ledger write delay": "unistock_ledger_delay_seconds_bucket",
    "events": "unistock_events_total",
    "reservations at risk": "unistock_reservations_at_risk_total",
    "negative stock": "unistock_negative_positions_total",
    "Redis errors": "unistock_redis_errors_total",
}

#: Metrics with one series per store (the server's store_* and last-seen, the agents' own
#: metrics carry the `store` label their scrape config gives them).
PER_STORE = ("unistock_store_", "unistock_agent_", "unistock_mqtt_store_last_seen")


def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panels() -> list[dict[str, Any]]:
    return [p for p in _doc()["panels"] if p["type"] != "row"]


def test_the_data_source_is_a_template_variable_used_everywhere() -> None:
    variables = {v["name"]: v for v in _doc()["templating"]["list"]}
    ds = variables["DS_PROMETHEUS"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    store = variables["store"]
    assert store["datasource"] == DS
    assert store["query"]["query"] == "label_values(unistock_store_silent_seconds, store)"
    assert store["includeAll"], "All stores"
    assert store["multi"], "several stores"
    assert store["allValue"] == ".*"
    for panel in _panels():
        assert panel["datasource"] == DS, panel["title"]
        for t in panel["targets"]:
            assert t["datasource"] == DS, panel["title"]


def test_every_panel_has_a_title_a_description_and_queries() -> None:
    panels = _panels()
    assert len({p["id"] for p in _doc()["panels"]}) == len(_doc()["panels"]), "unique ids"
    for panel in panels:
        assert panel["title"], panel
        assert panel.get("description"), panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() for t in panel["targets"]), panel["title"]
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"])


def test_panels_do_not_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in _doc()["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] < g["x"] + g["w"] <= 24, panel["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]


def test_every_per_store_query_follows_the_store_variable() -> None:
    for title, expr in dashboard_targets():
        if any(m.startswith(PER_STORE) for m in metric_names(expr)):
            assert 'store=~"$store"' in expr, f"{title}: {expr}"


def test_it_shows_what_sres_need() -> None:
    read = set().union(*(metric_names(e) for _, e in dashboard_targets()))
    missing = {what: m for what, m in COVERED.items() if m not in read}
    assert not missing, missing


def test_every_alert_has_a_panel_that_names_it() -> None:
    described = " ".join(p["description"] for p in _panels())
    for rule in alerting_rules():
        assert f"alert {rule['alert']}" in described, rule["alert"]
