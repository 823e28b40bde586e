"""`make run` (python -m unistock.devtools.run): private Redis and Mosquitto, the server and the
ledger writer beside it; a movement reaches the SQLite ledger in ./var; a writer killed -9 is
started again (and the next movement reaches the ledger too); SIGTERM stops all of them cleanly
(exit 0); a metrics port taken by another `make run` falls back to a free one."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from tests.fixtures.server import TOKENS
from unistock.client import config
from unistock.devtools import run
from unistock.devtools.services import free_port


def wait_for(path: Path, text: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text(errors="replace"):
        assert proc.poll() is None, path.read_text()[-3000:]
        assert time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.1)


def start_runner(cwd: Path, env: dict[str, str], out: Path) -> subprocess.Popen[bytes]:
    """`make run` (python -m unistock.devtools.run) in cwd, its output going to the file out."""
    with out.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "unistock.devtools.run"],
            cwd=cwd,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
        )


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """After a failure, the runner's whole tree: the server, the writer, Redis and Mosquitto."""
    if proc.poll() is None:
        tree = psutil.Process(proc.pid).children(recursive=True)
        proc.kill()
        proc.wait()
        for child in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


def send(grpc_port: int, seq: int, quantity: int) -> subprocess.CompletedProcess[str]:
    """A receipt of quantity A at s1 (source wms, seq) through the API, from a child process."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio, sys\n"
            "from unistock.client import UnistockClient\n"
            "from unistock.v1 import inventory_pb2 as pb\n"
            "async def main():\n"
            f"    async with UnistockClient('127.0.0.1:{grpc_port}', sys.argv[1]) as c:\n"
            f"        b = pb.MovementBatch(source_id='wms', movements=[pb.Movement(seq={seq},"
            f" sku='A', location_id='s1', type=pb.RECEIPT, quantity={quantity})])\n"
            "        [a async for a in c.apply_movements([b])]\n"
            "asyncio.run(main())\n",
            TOKENS["admin"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_make_run_starts_the_server_and_the_ledger_writer(tmp_path: Path) -> None:
    grpc_port = free_port()
    env = dict(os.environ)
    for name in ("UNISTOCK_REDIS_URL", "UNISTOCK_MQTT_URL", "UNISTOCK_DATABASE_URL"):
        env.pop(name, None)
    env |= {
        "UNISTOCK_GRPC_PORT": str(grpc_port),
        "UNISTOCK_METRICS_PORT": "0",
        "UNISTOCK_DEV_REDIS_PORT": str(free_port()),
        "UNISTOCK_DEV_MQTT_PORT": str(free_port()),
        "UNISTOCK_LEDGER_METRICS_PORT": str(free_port()),
        "UNISTOCK_TOKENS": f"admin:{TOKENS['admin']}",
        "UNISTOCK_CONFIG": str(tmp_path / "config.toml"),  # not the suite's shared path
    }
    out = tmp_path / "run.out"
    proc = start_runner(tmp_path, env, out)
    try:
        wait_for(out, "unistock-server ready", proc)
        wait_for(out, "unistock-ledger ready", proc)
        assert "server metrics: disabled (UNISTOCK_METRICS_PORT=0)" in out.read_text()
        sent = send(grpc_port, 1, 5)
        assert sent.returncode == 0, sent.stderr
        db = tmp_path / "var" / "unistock.db"
        rows: list[tuple[str, str, int]] = []
        deadline = time.monotonic() + 30
        while not rows and time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                rows = conn.execute(
                    "select sku, location_id, on_hand_delta from ledger_entries"
                ).fetchall()
            time.sleep(0.1)
        assert rows == [("A", "s1", 5)]
        # The ledger writer killed: make run says so and starts it again; nothing is lost.
        [writer] = [
            c
            for c in psutil.Process(proc.pid).children()
            if "unistock.server.app.ledger" in " ".join(c.cmdline())
        ]
        writer.kill()
        wait_for(out, "ledger writer exited with code -9: restarting it", proc)
        assert send(grpc_port, 2, 7).returncode == 0
        deadline = time.monotonic() + 30
        while len(rows) < 2 and time.monotonic() < deadline:
            with sqlite3.connect(db) as conn:
                rows = conn.execute(
                    "select sku, location_id, on_hand_delta from ledger_entries"
                ).fetchall()
            time.sleep(0.1)
        assert rows == [("A", "s1", 5), ("A", "s1", 7)]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        text = out.read_text()
        assert "ledger writer exited with code 0" in text
        assert "stopped redis" in text
    finally:
        kill_tree(proc)


def test_a_taken_metrics_port_falls_back_to_a_free_one(tmp_path: Path) -> None:
    """A second `make run` (9464 taken by the first one's server): the runner gives the server
    a free metrics port instead of letting it fail on 9464, and says where it is."""
    env = dict(os.environ)
    for name in ("UNISTOCK_REDIS_URL", "UNISTOCK_MQTT_URL", "UNISTOCK_METRICS_PORT"):
        env.pop(name, None)
    env |= {
        "UNISTOCK_GRPC_PORT": str(free_port()),
        "UNISTOCK_DEV_REDIS_PORT": str(free_port()),
        "UNISTOCK_DEV_MQTT_PORT": str(free_port()),
        "UNISTOCK_DEV_LEDGER": "0",
        "UNISTOCK_TOKENS": f"admin:{TOKENS['admin']}",
        "UNISTOCK_CONFIG": str(tmp_path / "config.toml"),  # not the suite's shared path
    }
    out = tmp_path / "run.out"
    with socket.socket() as taken:
        with contextlib.suppress(OSError):  # if it cannot be bound, something else holds it
            taken.bind(("127.0.0.1", 9464))
            taken.listen()
        proc = start_runner(tmp_path, env, out)
        try:
            wait_for(out, "unistock-server ready", proc)
            text = out.read_text()
            assert "port 9464 is taken; using free port" in text
            [port] = re.findall(r"server metrics: http://127\.0\.0\.1:(\d+)/metrics", text)
            assert port != "9464"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                assert b"unistock_" in r.read()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0
        finally:
            kill_tree(proc)


def test_make_run_tells_the_user_config_where_it_is(tmp_path: Path) -> None:
    """The runner writes the user config file (server address, dev token file, broker URL):
    the CLI run from another directory, with no flag or variable, reaches the server with the
    dev token, and an agent's default broker is the one `make run` started."""
    grpc_port, mqtt_port = free_port(), free_port()
    config_file = tmp_path / "home" / "config.toml"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("UNISTOCK_") or k == "UNISTOCK_CONFIG"
    }
    env |= {
        "UNISTOCK_CONFIG": str(config_file),
        "UNISTOCK_GRPC_PORT": str(grpc_port),
        "UNISTOCK_METRICS_PORT": "0",
        "UNISTOCK_DEV_REDIS_PORT": str(free_port()),
        "UNISTOCK_DEV_MQTT_PORT": str(mqtt_port),
        "UNISTOCK_DEV_LEDGER": "0",
    }
    (tmp_path / "checkout").mkdir()
    out = tmp_path / "run.out"
    proc = start_runner(tmp_path / "checkout", env, out)
    try:
        wait_for(out, "unistock-server ready", proc)
        assert f"client config: {config_file}" in out.read_text()
        assert config.read_config(config_file) == {
            "target": f"localhost:{grpc_port}",
            "mqtt_url": f"mqtt://127.0.0.1:{mqtt_port}",
            "token_file": str(tmp_path / "checkout" / "var" / "dev-token"),
        }
        # ...and the checkout's data dir the ports, for the next run (the config may not be
        # its own by then)
        assert run._previous_ports(tmp_path / "checkout" / "var") == {
            "target": grpc_port,
            "mqtt_url": mqtt_port,
        }
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "unistock.client.cli",
                "move",
                "backoffice",
                "1",
                "RECEIPT",
                "SHOE-42@store-7:2",
            ],
            cwd=elsewhere,
            env={k: v for k, v in env.items() if not k.startswith("UNISTOCK_GRPC")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        assert '"applied": 1' in cli.stdout.replace('"applied":1', '"applied": 1')
        agent = subprocess.run(
            [
                sys.executable,
                "-c",
                "from unistock.edge.cli import parse; "
                "print(parse(['--store-id', 'store-7']).mqtt_url)",
            ],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert agent.stdout.strip() == f"mqtt://127.0.0.1:{mqtt_port}", agent.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        kill_tree(proc)


def test_a_restart_keeps_the_ports_the_last_run_used_when_the_defaults_are_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("UNISTOCK_GRPC_PORT", raising=False)
    assert run._previous_ports(tmp_path) == {}
    previous = free_port()
    run._save_ports(tmp_path / "var", {"target": previous, "mqtt_url": 1})
    assert run._previous_ports(tmp_path / "var") == {"target": previous, "mqtt_url": 1}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        default = taken.getsockname()[1]
        assert run._pick_port("UNISTOCK_GRPC_PORT", default, previous) == previous
        with socket.socket() as also:
            also.bind(("127.0.0.1", previous))
            also.listen()
            port = run._pick_port("UNISTOCK_GRPC_PORT", default, previous)
            assert port not in (default, previous)
    (tmp_path / "var" / run.PORTS_FILE).write_text("not json")
    assert run._previous_ports(tmp_path / "var") == {}


def test_the_runner_reads_the_server_flags_it_cares_about_as_argparse_would() -> None:
    args = ["--grpc-port", "50071", "--metrics-port=0", "--log-level", "DEBUG", "--grpc-port=1"]
    assert run._flag_value(args, "--grpc-port") == "1"  # the last one wins
    assert run._flag_value(args, "--metrics-port") == "0"
    assert run._flag_value(args, "--tokens-file") is None
    assert run._flag_value(["--grpc-port"], "--grpc-port") is None  # no value given
