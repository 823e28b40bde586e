"""Tests for the managed redis-server / mosquitto processes and their fixtures."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import aiomqtt
import pytest
import redis

from unistock.devtools.services import (
    MosquittoBroker,
    RedisServer,
    ServiceError,
    ServiceNotFoundError,
    ensure_binary,
    free_port,
)


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_ensure_binary_finds_installed_redis() -> None:
    assert ensure_binary("redis-server", "redis-server").endswith("redis-server")


def test_ensure_binary_missing_gives_clear_error() -> None:
    with pytest.raises(ServiceNotFoundError, match="unistock-no-such-pkg"):
        ensure_binary("unistock-no-such-binary", "unistock-no-such-pkg", allow_install=False)


def test_redis_survives_kill_9_via_aof(redis_server: RedisServer) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    port, pid = redis_server.port, redis_server.pid
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    client.set("sku:1", "42")
    client.close()

    redis_server.kill()
    assert not redis_server.is_running
    assert redis_server.pid is None
    redis_server.restart()
    assert redis_server.port == port
    assert redis_server.pid != pid

    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    assert client.get("sku:1") == b"42"
    client.close()
    redis_server.stop()
    redis_server.stop()  # idempotent


def test_redis_pause_times_out_then_resume_recovers(redis_server: RedisServer) -> None:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=0.3)
    assert client.ping()
    redis_server.pause()
    assert redis_server.is_paused
    with pytest.raises(redis.exceptions.TimeoutError):
        client.ping()
    redis_server.resume()
    client.close()
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5)
    assert client.ping()
    client.close()


def test_stop_while_paused_does_not_hang(redis_server: RedisServer) -> None:
    redis_server.pause()
    start = time.monotonic()
    assert redis_server.stop(timeout=5) == 0
    assert time.monotonic() - start < 5


def test_second_instance_on_same_data_dir_is_refused(redis_server: RedisServer) -> None:
    other = RedisServer(redis_server.data_dir)
    with pytest.raises(ServiceError, match="already used"):
        other.start()


def test_start_failure_reports_log(tmp_path: Path) -> None:
    srv = RedisServer(tmp_path, extra_args=["--no-such-option", "x"])
    with pytest.raises(ServiceError, match="exited with code"):
        srv.start()
    assert not srv.is_running


def test_shared_fixtures(clean_redis_url: str, redis_url: str, mosquitto_url: str) -> None:
    assert clean_redis_url == redis_url
    client = redis.Redis.from_url(clean_redis_url, socket_timeout=5)
    assert client.dbsize() == 0
    client.close()
    assert mosquitto_url.startswith("mqtt://127.0.0.1:")


async def _roundtrip(port: int, topic: str) -> bytes:
    async with asyncio.timeout(10):
        async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
            await client.subscribe(topic, qos=1)
            await client.publish(topic, b"hello", qos=1)
            async for message in client.messages:
                assert message.qos == 1
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("no message received")


async def test_mosquitto_qos1_roundtrip_and_restart(mosquitto_broker: MosquittoBroker) -> None:
    assert mosquitto_broker.url == f"mqtt://127.0.0.1:{mosquitto_broker.port}"
    assert "set_tcp_nodelay true" in mosquitto_broker.config_path.read_text()
    assert await _roundtrip(mosquitto_broker.port, "unistock/test/a") == b"hello"

    mosquitto_broker.kill()
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1", mosquitto_broker.port, protocol=aiomqtt.ProtocolVersion.V5, timeout=2
        ):
            pass

    await asyncio.to_thread(mosquitto_broker.restart)
    assert await _roundtrip(mosquitto_broker.port, "unistock/test/b") == b"hello"
    mosquitto_broker.stop()
    mosquitto_broker.stop()


async def test_shared_mosquitto(mosquitto_url: str) -> None:
    port = int(mosquitto_url.rsplit(":", 1)[1])
    assert await _roundtrip(port, "unistock/test/shared") == b"hello"
