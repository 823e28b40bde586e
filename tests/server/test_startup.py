"""Starting the server wrong, as a newcomer does: each mistake is one clear line and a non-zero
exit, and never harms a server already running (new-user trial of issue 8)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, mv, send
from unistock.client import UnistockClient
from unistock.server.app.server import StartupError


async def test_a_second_server_on_the_same_port_fails_and_harms_nothing(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    first = await make_server(clean_redis_url)
    with pytest.raises(StartupError, match=r"--grpc-port.*another unistock-server"):
        await make_server(clean_redis_url, grpc_port=first.grpc_port)
    # It failed before taking the partitions: the first one still writes.
    async with UnistockClient(target(first), TOKENS["backoffice"]) as c:
        [ack] = await send(c, batch("wms", mv(1, "RECEIPT", "TEE", "s1", 1)))
        assert ack.applied == 1
    assert not first.failed


async def test_an_unreachable_redis_is_one_line(make_server: MakeServer) -> None:
    with pytest.raises(StartupError, match=r"--redis-url: cannot use redis://127\.0\.0\.1:1/0"):
        await make_server("redis://127.0.0.1:1/0", redis_timeout_s=1.0)


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNISTOCK_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "unistock.server.app.cli", "--grpc-port", "0",
         "--metrics-port", "0", "--data-dir", str(tmp_path), *args],
        capture_output=True, text=True, env=environ, timeout=60,
    )  # fmt: skip


def test_bad_tokens_and_unreachable_redis_exit_without_a_traceback(tmp_path: Path) -> None:
    short = run_cli(
        tmp_path, "--redis-url", "redis://127.0.0.1:1/0", UNISTOCK_TOKENS="admin:too-short"
    )
    assert short.returncode == 2
    assert "Traceback" not in short.stderr
    assert "shorter than 16 characters" in short.stderr
    down = run_cli(tmp_path, "--redis-url", "redis://127.0.0.1:1/0")
    assert down.returncode == 1
    assert "Traceback" not in down.stderr
    assert "unistock-server: cannot start: --redis-url" in down.stderr


def test_a_stale_dev_token_is_removed_once_tokens_are_configured(
    clean_redis_url: str, tmp_path: Path
) -> None:
    (tmp_path / "dev-token").write_text("left-by-an-earlier-run\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "unistock.server.app.cli", "--redis-url", clean_redis_url,
         "--grpc-port", "0", "--metrics-port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "UNISTOCK_TOKENS": f"admin:{TOKENS['admin']}"},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "unistock-server ready" in line:
                break
        assert not (tmp_path / "dev-token").exists()
    finally:
        proc.terminate()
        proc.wait(20)


async def test_a_failed_start_releases_the_grpc_port(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    """Found by review: a start that failed after binding kept the gRPC port bound, so the
    next start in the same process was told another server runs there."""
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = int(free.getsockname()[1])
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(StartupError, match="--metrics-port"):
            await make_server(
                clean_redis_url,
                grpc_host="127.0.0.1",
                grpc_port=port,
                metrics_port=busy.getsockname()[1],
            )
    srv = await make_server(clean_redis_url, grpc_host="127.0.0.1", grpc_port=port)
    assert srv.grpc_port == port


def started(redis_url: str, data_dir: Path) -> str:
    """Start unistock-server without tokens until ready, stop it; its output."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("UNISTOCK_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "unistock.server.app.cli", "--redis-url", redis_url,
         "--grpc-port", "0", "--metrics-port", "0", "--data-dir", str(data_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environ,
    )  # fmt: skip
    out = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if "unistock-server ready" in line:
                break
    finally:
        proc.terminate()
        proc.wait(20)
    return "".join(out)


def test_the_dev_token_survives_a_restart(clean_redis_url: str, tmp_path: Path) -> None:
    """Issue 12's first friction: a client holding the dev token goes on working after the
    server (make run) starts again."""
    first = started(clean_redis_url, tmp_path)
    token = (tmp_path / "dev-token").read_text().strip()
    assert f"Bearer {token}" in first
    assert "generated a dev admin token" in first
    second = started(clean_redis_url, tmp_path)
    assert (tmp_path / "dev-token").read_text().strip() == token
    assert f"Bearer {token}" in second
    assert "since an earlier start (delete it for a new one)" in second, second
