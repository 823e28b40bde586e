"""Prometheus metrics of the server. Names start with `unistock_` (contract.md).

Every metric lives in one registry owned by `Metrics`, so tests and several servers in one
process do not collide on the global default registry.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from unistock.server.actors.liveness import StoreLiveness

_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)

#: Stores with their own unistock_store_* series (as unistock_mqtt_store_last_seen's).
MAX_STORE_SERIES = 10_000
#: The label of the series shared by stores beyond MAX_STORE_SERIES ('|' is never in an id).
OTHER_STORES = "|other"


class StoreLivenessCollector(Collector):
    """unistock_store_silent_seconds{store} and unistock_store_reported_backlog_seconds{store},
    computed when scraped from the server's store liveness (`liveness`; None: no MQTT
    ingestion, no series). The first `limit` stores by id have their own series; the others
    share store="|other", with the largest value among them."""

    def __init__(self, limit: int = MAX_STORE_SERIES) -> None:
        self.limit = limit
        #: set by the server when it ingests MQTT
        self.liveness: StoreLiveness | None = None

    def collect(self) -> Iterator[Metric]:
        silent = GaugeMetricFamily(
            "unistock_store_silent_seconds",
            "Seconds since the server last heard from the store's edge agent: an accepted "
            "movement batch or an ONLINE status (agents publish one every 10 s). It "
            "grows while the agent is stopped (OFFLINE), dead or cut off; a store of master "
            "data never heard from counts from when the server first knew of it. Kept across "
            "server restarts.",
            labels=["store"],
        )
        backlog = GaugeMetricFamily(
            "unistock_store_reported_backlog_seconds",
            "Age of the oldest movement not yet acknowledged, as the store's agent reported "
            "in its last status (0: none, or no status yet). Above a network's staleness "
            "limit the store's units leave the network's availability, as when it is silent.",
            labels=["store"],
        )
        live = self.liveness
        if live is not None:
            other: tuple[float, float] | None = None
            for i, store in enumerate(sorted(live.stores())):
                values = (live.silent_for(store), live.backlog(store))
                if i < self.limit:
                    silent.add_metric([store], values[0])
                    backlog.add_metric([store], values[1])
                elif other is None:
                    other = values
                else:
                    other = (max(other[0], values[0]), max(other[1], values[1]))
            if other is not None:
                silent.add_metric([OTHER_STORES], other[0])
                backlog.add_metric([OTHER_STORES], other[1])
        yield silent
        yield backlog


class LedgerMetrics:
    """The metrics of the ledger writer (its own process, `unistock-ledger`, or in the server)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.ledger_entries = Counter(
            "unistock_ledger_entries_total",
            "Changes written to the SQL ledger (each once).",
            registry=r,
        )
        self.ledger_lag = Gauge(
            "unistock_ledger_lag_seconds",
            "How far behind the change feed the SQL ledger is: the age of the oldest change not "
            "yet in SQL as of the last round (0: caught up).",
            registry=r,
        )
        self.ledger_delay = Histogram(
            "unistock_ledger_delay_seconds",
            "Per feed entry, from its flush (its feed id's time) to its rows committed in SQL.",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.ledger_errors = Counter(
            "unistock_ledger_errors_total",
            "Ledger rounds that failed (SQL or Redis unavailable); retried, nothing lost.",
            registry=r,
        )
        self.feed_lost = feed_lost_counter(r)
        self.feed_retained = Gauge(
            "unistock_feed_retained_entries",
            "Entries the change feed's streams hold (not yet trimmed behind every durable "
            "consumer), summed over partitions.",
            registry=r,
        )


class Metrics:
    """Every metric the server exports (the ledger writer's only with ledger=True)."""

    def __init__(self, registry: CollectorRegistry | None = None, *, ledger: bool = False) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.movements = Counter(
            "unistock_movements_total",
            "Movements received, by type and outcome (applied, duplicate, count_correction, rejected).",
            ["type", "outcome"],
            registry=r,
        )
        self.movements_rejected = Counter(
            "unistock_movements_rejected_total",
            "Movements rejected, by reason.",
            ["reason"],
            registry=r,
        )
        self.count_variance = Counter(
            "unistock_count_variance_units_total",
            "Sum of absolute count variances (shrinkage and finds), by direction.",
            ["direction"],
            registry=r,
        )
        self.at_risk = Counter(
            "unistock_reservations_at_risk_total",
            "Times a movement or count left on_hand below reserved on a position.",
            registry=r,
        )
        self.reservations = Counter(
            "unistock_reservations_total",
            "Reservation operations by operation, kind and outcome.",
            ["operation", "kind", "outcome"],
            registry=r,
        )
        self.reservations_expired = Counter(
            "unistock_reservations_expired_total",
            "Reservations whose hold ran out.",
            registry=r,
        )
        self.resident_actors = Gauge(
            "unistock_resident_actors",
            "Stock positions resident in memory.",
            registry=r,
        )
        self.activations = Counter(
            "unistock_actor_activations_total",
            "Positions loaded from Redis into memory.",
            registry=r,
        )
        self.passivations = Counter(
            "unistock_actor_passivations_total",
            "Clean positions dropped from memory (idle or over the resident cap).",
            registry=r,
        )
        self.holds_reconciled = Counter(
            "unistock_orphan_hold_units_total",
            "Units of holds found without an ACTIVE reservation record at activation and freed.",
            registry=r,
        )
        self.fulfilments_reconciled = Counter(
            "unistock_fulfilment_units_reconciled_total",
            "Units of fulfilments found in a reservation record but not yet on its position at "
            "activation (a crash between the two writes), taken off hold and on_hand then.",
            registry=r,
        )
        self.pickup_mismatches = Counter(
            "unistock_pickup_mismatches_total",
            "SALEs naming a reservation that holds nothing of their SKU at their location "
            "(applied as plain sales, reported in the ack).",
            registry=r,
        )
        self.transfer_discrepancies = Counter(
            "unistock_transfer_discrepancies_total",
            "Discrepancies recorded on transfers, by kind (received before shipped, over received, "
            "closed short, shipped or received after close); see GetTransfer.",
            ["kind"],
            registry=r,
        )
        self.transfer_units_lost = Counter(
            "unistock_transfer_units_lost_total",
            "Units recorded lost in transit (transfers closed short by their destination).",
            registry=r,
        )
        self.shipments_pending = Gauge(
            "unistock_transfer_shipments_pending",
            "TRANSFER_OUT shipments durable at their origin and not yet applied to their "
            "transfer record (normally 0; they stay in Redis until applied).",
            registry=r,
        )
        self.reservations_healed = Counter(
            "unistock_reservation_units_resourced_total",
            "Units of network lines the server moved from a location where a sale left them at "
            "risk to another location of the network (self-healing).",
            registry=r,
        )
        self.reservations_unhealed = Counter(
            "unistock_reservations_left_at_risk_total",
            "Times a position stayed at risk because no location of its reservations' "
            "networks could take the units (reported for the order manager).",
            registry=r,
        )
        self.negative_positions = Counter(
            "unistock_negative_positions_total",
            "Times a position's on_hand went below zero (a fact the server must not refuse: "
            "investigate the position).",
            registry=r,
        )
        self.flush_batch = Histogram(
            "unistock_flush_batch_positions",
            "Positions written per group-commit flush.",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.flush_latency = Histogram(
            "unistock_flush_duration_seconds",
            "Duration of a group-commit flush (one pipelined, fenced write).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.flush_stale = Counter(
            "unistock_flush_stale_writes_total",
            "Writes the flush script skipped because Redis held a newer version.",
            registry=r,
        )
        self.feed_changes = Counter(
            "unistock_feed_changes_total",
            "Changes appended to the change feed (movements applied, fulfilments' shipments, "
            "reservation transitions), with the state they describe.",
            registry=r,
        )
        #: the ledger writer's metrics, in this registry when it runs inside the server
        #: (--ledger-in-process 1; else unistock-ledger exports them on its own port)
        self.ledger = LedgerMetrics(r if ledger else CollectorRegistry())
        self.feed_fill = Gauge(
            "unistock_feed_fill_ratio",
            "The fullest partition's change feed over its cap (--feed-max-entries), sampled every "
            "5 s: at 1 a durable consumer that far behind (the ledger) starts losing entries. "
            "Alert well before (e.g. > 0.5).",
            registry=r,
        )
        self.redis_errors = Counter(
            "unistock_redis_errors_total",
            "Redis operations that failed, by operation.",
            ["operation"],
            registry=r,
        )
        self.watch_subscribers = Gauge(
            "unistock_watch_subscribers",
            "Open WatchAvailability streams.",
            registry=r,
        )
        self.watch_updates = Counter(
            "unistock_watch_updates_total",
            "Position updates offered to watch subscribers, by outcome (queued, coalesced).",
            ["outcome"],
            registry=r,
        )
        self.watch_dropped = Counter(
            "unistock_watch_subscribers_dropped_total",
            "Watch streams cut because they fell too far behind.",
            registry=r,
        )
        self.reservation_watchers = Gauge(
            "unistock_reservation_watchers",
            "Open WatchReservations streams.",
            registry=r,
        )
        self.reservation_watch_dropped = Counter(
            "unistock_reservation_watchers_dropped_total",
            "WatchReservations streams cut because they fell too far behind.",
            registry=r,
        )
        self.reservation_index_swept = Counter(
            "unistock_reservation_index_swept_total",
            "Ended reservations whose index entries were removed once their record's retention "
            "ran out (the expiry loop's sweep).",
            registry=r,
        )
        self.reservation_index_backfilled = Counter(
            "unistock_reservation_index_backfilled_total",
            "Reservation records stored before the indexes existed, indexed at start-up.",
            registry=r,
        )
        self.mqtt_messages = Counter(
            "unistock_mqtt_messages_total",
            "MQTT movement messages by outcome (received, applied, nothing_new, out_of_order; "
            "refused whole: unparseable, too_large, refused (no valid source_id or no movement), "
            "wrong_store (a source of another store), bad_topic (invalid store id)).",
            ["outcome"],
            registry=r,
        )
        self.mqtt_movements = Counter(
            "unistock_mqtt_movements_received_total",
            "Movements received over MQTT (before validation and deduplication).",
            registry=r,
        )
        self.mqtt_ingest_latency = Histogram(
            "unistock_mqtt_ingest_to_durable_seconds",
            "From an MQTT message's arrival to its ack being published (durable).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.mqtt_queued = Gauge(
            "unistock_mqtt_queued_messages",
            "Messages taken from the broker and not yet applied (queued per store, served in "
            "rotation).",
            registry=r,
        )
        self.mqtt_store_last_seen = Gauge(
            "unistock_mqtt_store_last_seen_timestamp_seconds",
            "When a store's agent last sent a batch that was accepted (Unix time); the first "
            '10,000 stores have their own series, later ones share store="|other".',
            ["store"],
            registry=r,
        )
        self.mqtt_connected = Gauge(
            "unistock_mqtt_connected",
            "1 while the server is connected and subscribed to the broker.",
            registry=r,
        )
        #: unistock_store_silent_seconds / unistock_store_reported_backlog_seconds{store}
        self.stores = StoreLivenessCollector()
        r.register(self.stores)
        self.grpc_latency = Histogram(
            "unistock_grpc_request_duration_seconds",
            "gRPC request latency by method and status code (streams: until the stream ends).",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )


def feed_lost_counter(registry: CollectorRegistry) -> Counter:
    """unistock_feed_entries_lost_total{consumer}: one per registry, shared by the durable feed
    consumers of a process (the ledger writer, the events deriver)."""
    return Counter(
        "unistock_feed_entries_lost_total",
        "Feed entries a durable consumer found trimmed by the feed's cap "
        "(--feed-max-entries) before it read them. Any increase is an incident.",
        ["consumer"],
        registry=registry,
    )


class EventMetrics:
    """The metrics of events (actors.events, api.events), in the server's registry; feed_lost:
    the ledger's counter when the ledger writer runs in the server too (same name)."""

    def __init__(self, registry: CollectorRegistry, feed_lost: Counter | None = None) -> None:
        r = registry
        self.feed_lost = feed_lost if feed_lost is not None else feed_lost_counter(r)
        self.events = Counter(
            "unistock_events_total",
            "Events derived from the change feed and stored (each once), by type.",
            ["type"],
            registry=r,
        )
        self.lag = Gauge(
            "unistock_events_lag_seconds",
            "How far behind the change feed the events are: the age of the oldest feed entry "
            "not yet derived as of the last round (0: caught up).",
            registry=r,
        )
        self.errors = Counter(
            "unistock_events_errors_total",
            "Event derivation rounds that failed (Redis unavailable); retried, nothing lost.",
            registry=r,
        )
        self.subscribers = Gauge(
            "unistock_event_subscribers",
            "Open WatchEvents streams.",
            registry=r,
        )
        self.dropped = Counter(
            "unistock_event_subscribers_dropped_total",
            "WatchEvents streams ended because the subscriber fell too far behind "
            "(RESOURCE_EXHAUSTED; it resumes with after_event_id).",
            registry=r,
        )
        self.mqtt_published = Counter(
            "unistock_events_mqtt_published_total",
            "Events published on stores' MQTT topics and acknowledged by the broker (an event "
            "naming two stores counts twice; again after a reconnect: at least once).",
            registry=r,
        )
        self.mqtt_errors = Counter(
            "unistock_events_mqtt_errors_total",
            "Event publishing interrupted (broker or Redis unavailable); resumed from the last "
            "acknowledged event.",
            registry=r,
        )
