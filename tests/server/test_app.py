"""The server as an application: metrics endpoint, TLS, graceful shutdown, settings."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.fixtures.server import TOKENS, MakeServer, ServerProcess, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import RedisServer, free_port
from unistock.server.app.server import UnistockServer, load_tokens
from unistock.server.app.settings import Settings
from unistock.v1 import inventory_pb2 as pb


async def test_metrics_endpoint_exports_unistock_metrics(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url, metrics_port=free_port())
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        with pytest.raises(UnistockClientError, match="FAILED_PRECONDITION"):
            await c.reserve("m-1", [("SKU", "store-1", 1)])
    url = f"http://127.0.0.1:{srv.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url).read().decode())
    for name in (
        "unistock_reservations_total",
        "unistock_grpc_request_duration_seconds_bucket",
        "unistock_flush_duration_seconds",
        "unistock_resident_actors",
        "unistock_watch_subscribers",
    ):
        assert name in body
    assert (
        'unistock_reservations_total{kind="CART",operation="reserve",outcome="insufficient"} 1.0'
        in body
    )
    assert 'code="FAILED_PRECONDITION",method="Reserve"' in body


def make_cert(tmp: Path) -> tuple[Path, Path]:
    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls(make_server: MakeServer, clean_redis_url: str, tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    srv = await make_server(clean_redis_url, tls_cert=cert, tls_key=key)
    async with UnistockClient(
        f"localhost:{srv.grpc_port}", TOKENS["channel"], root_certificates=cert.read_bytes()
    ) as c:
        assert await c.get_availability(keys=[("SKU", "store-1")])
    async with UnistockClient(
        f"localhost:{srv.grpc_port}", TOKENS["channel"], timeout=2, retry=None
    ) as plain:
        with pytest.raises(Exception, match="UNAVAILABLE"):
            await plain.get_availability(keys=[("SKU", "store-1")])


@pytest.mark.slow
async def test_sigterm_flushes_and_exits_zero(redis_server: RedisServer, tmp_path: Path) -> None:
    proc = ServerProcess(redis_server.url, tmp_path / "srv")
    await asyncio.to_thread(proc.start)
    try:
        async with UnistockClient(proc.target, TOKENS["admin"]) as c:
            batch = pb.MovementBatch(
                source_id="wms",
                movements=[
                    pb.Movement(seq=1, sku="S", location_id="L", type=pb.RECEIPT, quantity=4)
                ],
            )
            [ack] = [a async for a in c.apply_movements([batch])]
            assert ack.applied == 1
            held = await c.reserve("keep", [("S", "L", 3)], kind="ORDER")
            assert held.reservation.state == pb.ACTIVE
        assert await asyncio.to_thread(proc.terminate) == 0
        assert "stopped" in proc.log_path.read_text()
        again = ServerProcess(redis_server.url, tmp_path / "srv2")
        await asyncio.to_thread(again.start)
        try:
            async with UnistockClient(again.target, TOKENS["admin"]) as c:
                [level] = await c.get_availability(keys=[("S", "L")])
                assert (level.on_hand, level.reserved, level.available) == (4, 3, 1)
        finally:
            again.stop()
    finally:
        proc.stop()


def test_settings_from_env_and_flags(tmp_path: Path) -> None:
    env = {
        "UNISTOCK_GRPC_PORT": "6000",
        "UNISTOCK_REDIS_URL": "redis://r:1/2",
        "UNISTOCK_PARTITIONS": "16",
    }
    s = Settings.parse(["--grpc-port", "7000", "--data-dir", str(tmp_path)], env)
    assert (s.grpc_port, s.redis_url, s.partitions, s.data_dir) == (
        7000,
        "redis://r:1/2",
        16,
        tmp_path,
    )
    with pytest.raises(SystemExit):
        Settings.parse(["--tls-cert", "x.pem"], {})


def test_tokens_file_and_env(tmp_path: Path) -> None:
    f = tmp_path / "tokens"
    f.write_text(
        "# role token name\nchannel web-shop-token-123456 web\nbackoffice wms-token-1234567890\n"
    )
    tokens, dev = load_tokens(Settings(tokens_file=f), "admin:admin-token-abcdefghij")
    assert dev is None
    assert tokens.lookup("Bearer web-shop-token-123456").role == "channel"  # type: ignore[union-attr]
    assert tokens.lookup("bearer admin-token-abcdefghij").role == "admin"  # type: ignore[union-attr]
    assert tokens.lookup("Bearer nope") is None
    f.write_text("superuser abcdefghijklmnopqrstu\n")
    with pytest.raises(ValueError, match="tokens:1: unknown role 'superuser'"):
        load_tokens(Settings(tokens_file=f))
    _, dev = load_tokens(Settings())
    assert dev is not None
    assert len(dev) >= 16


async def test_stop_is_safe_twice(make_server: MakeServer, clean_redis_url: str) -> None:
    srv: UnistockServer = await make_server(clean_redis_url)
    await srv.stop()
    await srv.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        await srv.start()


def test_the_dev_token_is_kept_across_starts_while_private(tmp_path: Path) -> None:
    """No tokens configured: the token an earlier start wrote to <data dir>/dev-token is used
    again (clients holding it go on working); not when others can read the file, nor a file
    that is not one the server wrote."""
    from unistock.server.app.cli import write_dev_token

    settings = Settings(data_dir=tmp_path)
    _, first = load_tokens(settings)
    assert first is not None
    path = write_dev_token(tmp_path, first)
    _, again = load_tokens(settings)
    assert again == first
    path.chmod(0o644)
    _, public = load_tokens(settings)
    assert public not in (None, first)
    path.write_text("not-a-token\n")
    path.chmod(0o600)
    _, odd = load_tokens(settings)
    assert odd not in (None, first, "not-a-token")
