"""How large one ``MovementBatch`` may be: the agent's settings, the broker's, the server's.

Three parties limit a batch, and the sender keeps below all of them:

* the agent's own settings (``batch_size`` movements, ``max_payload_bytes``);
* the broker's Maximum Packet Size, announced in its MQTT 5 CONNACK (:class:`ConnackLimits`);
  mosquitto's ``message_size_limit`` is not announced: the agent's budget must stay below it;
* the server's, which it announces only when it refuses a batch whole with
  ``BATCH_TOO_LARGE`` and ``MovementAck.limits`` (:class:`ServerLimits`, learnt once and kept for
  the life of the process: every connection's sender shares it). Until then the agent assumes
  the documented :data:`MAX_BATCH_MOVEMENTS` and no payload limit of the server's own.

Sizes are computed as exact upper bounds of the protobuf encoding (:func:`batch_bytes`), so
that a batch is cut before it is serialised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import aiomqtt
from paho.mqtt import client as paho_mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from unistock.v1 import inventory_pb2 as pb

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "MAX_BATCH_MOVEMENTS",
    "ConnackLimits",
    "ServerLimits",
    "batch_bytes",
    "field_size",
]

_log = logging.getLogger(__name__)

#: Default payload budget of one ``MovementBatch`` (bytes): well under the 1 MiB
#: ``message_size_limit`` of deploy/mosquitto/mosquitto.conf and the server's own limit.
DEFAULT_MAX_PAYLOAD = 256 * 1024

#: Most movements in one ``MovementBatch``: the server refuses a larger one whole (proto).
MAX_BATCH_MOVEMENTS = 10_000

#: Upper bound of a batch_id ("<first seq>-<last seq>#<publish number>", 20 digits each).
MAX_BATCH_ID = 62


def field_size(length: int) -> int:
    """Bytes of one length-delimited protobuf field (tag < 16) with ``length`` bytes of data."""
    return 1 + (max(length, 1).bit_length() + 6) // 7 + length


def batch_bytes(source_id: str, movements: Sequence[pb.Movement] = ()) -> int:
    """An upper bound of the payload of a ``MovementBatch`` of ``movements``."""
    size = field_size(len(source_id.encode())) + field_size(MAX_BATCH_ID)
    return size + sum(field_size(m.ByteSize()) for m in movements)


class ConnackLimits:
    """The Maximum Packet Size the broker announced in its MQTT 5 CONNACK, which aiomqtt drops.

    Neither aiomqtt nor paho keeps the CONNACK properties; created on a client *before* it
    connects, this chains the paho client's ``on_connect`` (aiomqtt's own callback still runs
    after it) and keeps the broker's ``MaximumPacketSize`` of the latest connect, ``None`` when
    the broker announced none (mosquitto announces its ``max_packet_size``; its
    ``message_size_limit`` is not announced).
    """

    def __init__(self, client: aiomqtt.Client) -> None:
        self._paho = client._client
        self._chained = cast(paho_mqtt.CallbackOnConnect_v2 | None, self._paho.on_connect)
        self.max_packet_size: int | None = None
        self._paho.on_connect = self._on_connect

    def _on_connect(
        self,
        paho: paho_mqtt.Client,
        userdata: Any,
        flags: paho_mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        try:
            size = getattr(properties, "MaximumPacketSize", None)
            self.max_packet_size = int(size) if size is not None else None
        finally:
            if self._chained is not None:
                self._chained(paho, userdata, flags, reason, properties)


@dataclass(slots=True)
class ServerLimits:
    """The server's batch limits as far as the agent knows them; they only ever go down.

    One instance lives as long as the agent process and is given to the sender of every
    connection, so that a lesson is learnt once.
    """

    max_movements: int = MAX_BATCH_MOVEMENTS
    max_payload_bytes: int | None = None
    """``None`` until the server has announced it."""
    refusals: int = 0
    """``BATCH_TOO_LARGE`` refusals received."""

    def learn(self, limits: pb.BatchLimits) -> bool:
        """Take the limits of a ``BATCH_TOO_LARGE`` refusal; whether they lowered anything."""
        lowered = False
        if 0 < limits.max_movements < self.max_movements:
            self.max_movements = int(limits.max_movements)
            lowered = True
        payload = int(limits.max_payload_bytes)
        if payload > 0 and (self.max_payload_bytes is None or payload < self.max_payload_bytes):
            self.max_payload_bytes = payload
            lowered = True
        if lowered:
            _log.warning(
                "the server refused a batch as too large: batches now hold at most %d movements "
                "and %s bytes (for the life of this agent process)",
                self.max_movements,
                self.max_payload_bytes if self.max_payload_bytes is not None else "any number of",
            )
        return lowered

    def halve_movements(self) -> None:
        """The server refused a batch that kept within its limits: send fewer movements."""
        self.max_movements = max(1, self.max_movements // 2)
        _log.warning(
            "the server refused a batch within its announced limits: batches now hold at most "
            "%d movements",
            self.max_movements,
        )
