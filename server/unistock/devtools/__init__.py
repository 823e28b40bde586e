"""Developer tooling: managed Redis / Mosquitto processes for tests and local runs."""

from unistock.devtools.services import (
    MosquittoBroker,
    RedisServer,
    ServiceError,
    ServiceNotFoundError,
    ensure_binary,
    free_port,
)

__all__ = [
    "MosquittoBroker",
    "RedisServer",
    "ServiceError",
    "ServiceNotFoundError",
    "ensure_binary",
    "free_port",
]
