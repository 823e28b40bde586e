"""`python -m unistock.devtools.ensure`: what `make test` (everything: Node.js for the Node.js example, Prometheus for deploy/) and `make run`
(--no-postgres: the server's services only) check and install."""

from __future__ import annotations

import subprocess
import sys


def ensure(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unistock.devtools.ensure", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_make_test_gets_node_npm_and_prometheus_for_the_tests() -> None:
    done = ensure()
    assert done.returncode == 0, done.stderr
    tools = [line.split(":")[0] for line in done.stdout.splitlines()]
    assert tools[:6] == ["redis-server", "mosquitto", "node", "npm", "prometheus", "promtool"]
    assert tools[6].startswith("postgres")


def test_make_run_gets_the_servers_services_only() -> None:
    done = ensure("--no-postgres")
    assert done.returncode == 0, done.stderr
    assert [line.split(":")[0] for line in done.stdout.splitlines()] == [
        "redis-server",
        "mosquitto",
    ]
