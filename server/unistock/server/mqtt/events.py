"""Events on MQTT for store apps: `unistock/v1/stores/{store_id}/events`.

Each stored event (persistence.events) is published, QoS 1, on the topic of every store owning
a location it names (its location_id, or its lines' locations; LocationDirectory.store_of) -
STORE_OFFLINE / STORE_ONLINE on the topic of their store_id; NETWORK_* events, which name no
location, nowhere -, several at a time: a message's payload is a binary WatchEventsResponse
holding one or more events (with their event_id) in event_id order. The publisher is a durable consumer of the
event streams: its cursor (the last event id published) is kept in Redis (the layout hash, field
`events-mqtt`) after the broker has acknowledged what it covers (at most every 0.5 s), so a
restart publishes again from there: **at least once**, in event_id order per store; a
store app drops an event whose event_id it already has (ids only grow, compare them as Redis
stream ids: `<ms>-<n>`, numerically part by part). The broker's ACL lets a store read only its
own topic (deploy/mosquitto/unistock.acl). On its first start it publishes the events from then
on (not the retained history: WatchEvents serves that).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable

import aiomqtt
from redis.exceptions import RedisError

from unistock.client.mqtt import broker_args
from unistock.server.actors.events import SEP, EventDeriver
from unistock.server.domain import Unavailable
from unistock.server.metrics import EventMetrics
from unistock.server.mqtt.ingest import TOPIC_ROOT, pause_before_reconnecting
from unistock.server.mqtt.locations import LocationDirectory
from unistock.server.persistence.events import (
    EventId,
    StoredEvent,
    events_response,
    format_event_id,
    parse_event_id,
)
from unistock.server.persistence.store import RedisStore
from unistock.v1 import inventory_pb2 as pb

log = logging.getLogger(__name__)

#: The publisher's cursor: a field of the keyspace's layout hash.
CURSOR_FIELD = "events-mqtt"
#: Events read (and published) per round.
PAGE = 512
#: The deriver's rounds kept in memory for the publisher (see EventPublisher._live).
LIVE_ROUNDS = 64
#: The cursor is saved at most this often (s): a restart publishes again what followed it.
SAVE_EVERY = 0.5


#: Events about a store as a whole (store_id, no location).
_STORE_EVENTS = (pb.STORE_OFFLINE, pb.STORE_ONLINE)


def events_topic(store_id: str) -> str:
    """The topic of a store's events."""
    return f"{TOPIC_ROOT}/{store_id}/events"


class EventPublisher:
    """Publishes the stored events on their stores' MQTT topics (see the module docstring)."""

    def __init__(
        self,
        url: str,
        deriver: EventDeriver,
        locations: LocationDirectory,
        store: RedisStore,
        metrics: EventMetrics,
        *,
        client_id: str = "unistock-server-events",
    ) -> None:
        self.url = url
        self.deriver = deriver
        self.locations = locations
        self._store = store
        self.metrics = metrics
        self.client_id = client_id
        self.connected = asyncio.Event()
        #: Set once the cursor is loaded: every event stored from then on gets published.
        self.ready = asyncio.Event()
        #: The last event id published and acknowledged (None: not loaded yet).
        self.cursor: EventId | None = None
        self._wake = asyncio.Event()
        #: The deriver's rounds as it told them: (watermark before, events, watermark after),
        #: published from memory while they follow on from the cursor (no read back from
        #: Redis); dropped when the publisher falls behind (it then reads the streams).
        self._live: deque[tuple[EventId, list[StoredEvent], EventId]] = deque()
        self._seen = deriver.watermark
        self._saved_at = 0.0
        deriver.listeners.append(self._stored)

    def _stored(self, events: list[StoredEvent], watermark: EventId) -> None:
        before, self._seen = self._seen, watermark
        if len(self._live) < LIVE_ROUNDS:
            self._live.append((before, events, watermark))
        else:
            self._live.clear()
        self._wake.set()

    def stores_of(self, ev: StoredEvent) -> list[str]:
        """The stores whose topic an event goes to, sorted (none: it names no location)."""
        if ev.type in _STORE_EVENTS:  # rare: the body read for its store_id
            return [pb.InventoryEvent.FromString(ev.body).store_id]
        return sorted({self.locations.store_of(loc) for loc in ev.location_id.split(SEP) if loc})

    async def run(self) -> None:
        """Publish until cancelled, reconnecting with jittered backoff (Redis failures too)."""
        backoff = 0.2
        while True:
            try:
                async with aiomqtt.Client(
                    **broker_args(self.url), identifier=self.client_id
                ) as client:
                    self.connected.set()
                    backoff = 0.2
                    await self._serve(client)
            except (aiomqtt.MqttError, Unavailable) as exc:
                self.metrics.mqtt_errors.inc()
                log.warning("mqtt events: %s; publishing again in %.1f s", exc, backoff)
            finally:
                self.connected.clear()
            backoff = await pause_before_reconnecting(backoff)

    async def _serve(self, client: aiomqtt.Client) -> None:
        if self.cursor is None:
            await self.deriver.started.wait()
            self.cursor = await self._load_cursor()
            self.ready.set()
        while True:
            self._wake.clear()
            upto = self.deriver.watermark
            if self.cursor >= upto:
                try:
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                continue
            live = self._live
            while live and live[0][2] <= self.cursor:
                live.popleft()  # published already (read from the streams)
            if live and live[0][0] == self.cursor:
                _, page, done = live.popleft()
            else:
                page = await self.deriver.log.read(self.cursor, upto, PAGE)
                done = page[-1].id if page else upto
            by_store: dict[str, list[StoredEvent]] = {}
            for ev in page:
                for store in self.stores_of(ev):
                    by_store.setdefault(store, []).append(ev)
            # One message per store and page (a message per event cost B1 ~40% of its rate).
            sends: list[Awaitable[None]] = [
                client.publish(events_topic(store), events_response(evs), qos=1)
                for store, evs in by_store.items()
            ]
            await asyncio.gather(*sends)  # every PUBACK, then the cursor
            self.cursor = done
            now = time.monotonic()
            if now - self._saved_at >= SAVE_EVERY:
                self._saved_at = now
                await self._save_cursor(done)
            self.metrics.mqtt_published.inc(sum(len(evs) for evs in by_store.values()))

    async def _load_cursor(self) -> EventId:
        """The saved cursor; the deriver's watermark (from now on), saved, when none is."""
        client, key = self._store.client, self._store.keyspace.meta
        try:
            async with asyncio.timeout(self._store.command_timeout):
                saved = await client.hget(key, CURSOR_FIELD)
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis: {exc!r}") from exc
        if saved is not None:
            return parse_event_id(saved.decode() if isinstance(saved, bytes) else saved)
        now = self.deriver.watermark
        await self._save_cursor(now)
        return now

    async def _save_cursor(self, at: EventId) -> None:
        try:
            async with asyncio.timeout(self._store.command_timeout):
                await self._store.client.hset(
                    self._store.keyspace.meta, CURSOR_FIELD, format_event_id(at)
                )
        except (RedisError, OSError, TimeoutError) as exc:
            raise Unavailable(f"redis: {exc!r}") from exc
