"""RFID tag reads from the store's local MQTT broker, where fixed readers publish them.

Fixed readers such as the Zebra FX7500/FX9600 (IoT Connector) publish every tag read as a JSON
"data event" over MQTT. The agent's :class:`ReaderListener` subscribes to those topics on the
store's reader broker (``--reader-mqtt-url``; it may be the uplink broker) and hands every read to
the agent, which feeds it to the running count sessions of the reader's location.

Accepted payloads (one JSON value per message):

* Zebra IoT Connector tag data event::

      {"data": {"idHex": "3034257bf400b7800004cb2f", "antenna": 1, "peakRssi": -55,
                "eventNum": 1, "format": "epc"},
       "timestamp": "2021-03-24T16:22:35.342+0000", "type": "SIMPLE"}

* the Unistock form: ``{"epc": "3034...", "reader_id": "r1", "antenna": 1,
  "read_at": "2021-03-24T16:22:35Z"}`` (``reader_id``, ``antenna``, ``read_at`` optional);
* a JSON array of either (readers batching their events).

The reader id is the payload's ``reader_id`` if it has one, else the topic level matched by the
first ``+`` of the subscribed filter (``unistock/v1/stores/s1/readers/+/tags`` on
``.../readers/fx9600-door/tags`` gives ``fx9600-door``), else the whole topic.

Read times are kept for diagnostics only (:meth:`CountSession.read`): what counts is whether the
read reaches the agent while the session is open. :meth:`ReaderListener.sync` is the barrier
that makes "while it is open" well defined at ``StopCount`` (see its docstring).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomqtt

from unistock.client.mqtt import broker_args
from unistock.edge.reconnect import reraise_if_cancelling

__all__ = [
    "DEFAULT_READER_TOPIC",
    "PayloadError",
    "ReaderListener",
    "TagReadEvent",
    "parse_tag_reads",
    "reader_from_topic",
]

log = logging.getLogger(__name__)

#: Default reader topic filter; ``{store_id}`` is replaced by the agent's store id.
DEFAULT_READER_TOPIC = "unistock/v1/stores/{store_id}/readers/+/tags"


class PayloadError(ValueError):
    """A reader message, or one event of it, that is not a tag read."""


@dataclass(frozen=True, slots=True)
class TagReadEvent:
    """One tag read as a reader reported it."""

    epc: str
    reader_id: str
    antenna: int
    read_at: datetime.datetime


def reader_from_topic(topic: str, topic_filter: str) -> str:
    """The topic level matched by the filter's first ``+``; the whole topic if there is none."""
    levels = topic.split("/")
    for k, level in enumerate(topic_filter.split("/")):
        if level == "#" or k >= len(levels):
            break
        if level == "+":
            return levels[k]
    return topic


def _time(value: Any, default: datetime.datetime) -> datetime.datetime:
    # Diagnostics only: an unreadable or naive reader timestamp must not drop the read.
    if not isinstance(value, str):
        return default
    try:
        at = datetime.datetime.fromisoformat(value)
    except ValueError:
        return default
    return at if at.tzinfo is not None else default


def _event(obj: Any, reader_id: str, received_at: datetime.datetime) -> TagReadEvent:
    if not isinstance(obj, dict):
        raise PayloadError("a tag read must be a JSON object")
    data = obj.get("data")
    if isinstance(data, dict):  # Zebra IoT Connector data event
        epc, antenna, at = data.get("idHex"), data.get("antenna", 0), obj.get("timestamp")
        fmt = data.get("format", "epc")
        if fmt != "epc":
            raise PayloadError(f"data.format: {fmt!r} is not an EPC read")
    else:
        epc, antenna, at = obj.get("epc"), obj.get("antenna", 0), obj.get("read_at")
        named = obj.get("reader_id")
        if named is not None:
            if not isinstance(named, str) or not named:
                raise PayloadError("reader_id: must be a non-empty string")
            reader_id = named
    if not isinstance(epc, str) or not epc.strip():
        raise PayloadError("the EPC (idHex / epc) must be a non-empty string")
    if isinstance(antenna, bool) or not isinstance(antenna, int) or antenna < 0:
        raise PayloadError("antenna: must be a non-negative integer")
    return TagReadEvent(epc.strip().upper(), reader_id, antenna, _time(at, received_at))


def parse_tag_reads(
    payload: bytes, reader_id: str, received_at: datetime.datetime
) -> tuple[list[TagReadEvent], int]:
    """The tag reads in one reader message, and how many of its events were not reads.

    Args:
        payload: the MQTT payload (UTF-8 JSON).
        reader_id: the reader, from the topic; a payload's own ``reader_id`` wins.
        received_at: used as the read time when the payload has none (or an unreadable one).

    Raises:
        PayloadError: the payload is not JSON, or neither an event nor an array of events.
    """
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise PayloadError(f"not JSON: {e}") from None
    if not isinstance(doc, list):
        return [_event(doc, reader_id, received_at)], 0
    reads, bad = [], 0
    for obj in doc:
        try:
            reads.append(_event(obj, reader_id, received_at))
        except PayloadError:
            bad += 1
    return reads, bad


class ReaderListener:
    """Subscribes to the readers' topics on the store's reader broker, reconnecting for ever.

    Args:
        url: the reader broker, ``mqtt[s]://user:pass@host:port``.
        topic_filters: the filters to subscribe to (QoS 1).
        identifier: the MQTT client id (distinct from the uplink's: it may be the same broker).
        sync_topic: a topic of this listener's own for :meth:`sync`; it must not be one readers
            publish on.
        on_message: called with ``(topic, payload)`` for every reader message, in arrival order.
    """

    def __init__(
        self,
        url: str,
        topic_filters: Sequence[str],
        identifier: str,
        sync_topic: str,
        on_message: Callable[[str, bytes], None],
    ) -> None:
        if not topic_filters:
            raise ValueError("at least one reader topic filter is needed")
        self.url = url
        self.topic_filters = tuple(topic_filters)
        self.identifier = identifier
        self.sync_topic = sync_topic
        self.on_message = on_message
        self.connected = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self._syncs: dict[bytes, asyncio.Future[None]] = {}

    async def session(self, on_connected: Callable[[], None]) -> None:
        """One connection: subscribe and dispatch until it fails (``aiomqtt.MqttError``)."""
        async with aiomqtt.Client(**broker_args(self.url), identifier=self.identifier) as client:
            for topic_filter in (*self.topic_filters, self.sync_topic):
                await client.subscribe(topic_filter, qos=1)
                reraise_if_cancelling()  # else a stop would wait for the dispatcher for ever
            self._client = client
            self.connected.set()
            on_connected()
            log.info("reader broker: subscribed to %s", ", ".join(self.topic_filters))
            try:
                async for message in client.messages:
                    topic = str(message.topic)
                    payload = message.payload
                    data = payload if isinstance(payload, bytes) else str(payload).encode()
                    if topic == self.sync_topic:
                        future = self._syncs.pop(data, None)
                        if future is not None and not future.done():
                            future.set_result(None)
                        continue
                    self.on_message(topic, data)
            finally:
                self._client = None
                self.connected.clear()

    async def sync(self, within: float) -> bool:
        """Wait until every reader message the broker accepted before this call is dispatched.

        A marker published now on :attr:`sync_topic` comes back through the broker behind every
        message the broker already queued for this client (one queue per client, QoS 1 both
        ways), and the dispatcher handles messages in order: when the marker is back, all of
        them went to ``on_message``. Used at ``StopCount``.

        Returns:
            ``False`` (without waiting) when not connected, or when the marker did not come back
            within ``within`` seconds; reads arriving later are late for the count.
        """
        client = self._client
        if client is None:
            return False
        nonce = uuid.uuid4().hex.encode()
        future = asyncio.get_running_loop().create_future()
        self._syncs[nonce] = future
        try:
            async with asyncio.timeout(within):
                await client.publish(self.sync_topic, nonce, qos=1)
                await future
        except (TimeoutError, aiomqtt.MqttError):
            return False
        finally:
            self._syncs.pop(nonce, None)
        return True
