"""Developer tooling: managed Redis / Mosquitto / PostgreSQL processes for tests and local runs."""

from unistock.devtools.services import (
    MosquittoBroker,
    PostgresServer,
    RedisServer,
    ServiceError,
    ServiceNotFoundError,
    ensure_binary,
    free_port,
)

__all__ = [
    "MosquittoBroker",
    "PostgresServer",
    "RedisServer",
    "ServiceError",
    "ServiceNotFoundError",
    "ensure_binary",
    "free_port",
]
