"""Connection settings for Unistock's MQTT broker, shared by the server and the edge agents."""

from __future__ import annotations

import socket
import urllib.parse
from typing import Any

import aiomqtt


def broker_args(url: str) -> dict[str, Any]:
    """aiomqtt.Client keyword arguments for an `mqtt[s]://user:pass@host:port` URL.

    Always MQTT 5 (only MQTT 5 tells a publisher that the broker refused it) and TCP_NODELAY:
    small QoS 1 packets and their acks must not wait for Nagle's algorithm (~40 ms per round
    trip with delayed ACKs).
    """
    u = urllib.parse.urlsplit(url)
    if u.scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"--mqtt-url must be mqtt://host:port or mqtts://host:port, got {url!r}")
    args: dict[str, Any] = {
        "hostname": u.hostname or "localhost",
        "port": u.port or (8883 if u.scheme == "mqtts" else 1883),
        "username": urllib.parse.unquote(u.username) if u.username else None,
        "password": urllib.parse.unquote(u.password) if u.password else None,
        "protocol": aiomqtt.ProtocolVersion.V5,
        "socket_options": [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
    }
    if u.scheme == "mqtts":
        args["tls_params"] = aiomqtt.TLSParameters()
    return args
