"""`python -m unistock.devtools.ensure`: `make test` gets everything the tests start (Prometheus
included), `make run` (--no-postgres) only what the server needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from unistock.devtools import ensure
from unistock.devtools.services import ensure_binary


def _asked(monkeypatch: pytest.MonkeyPatch, argv: list[str]) -> list[tuple[str, str]]:
    """(binary, Debian package) pairs ensure.main looks for (each found where it really is)."""
    asked: list[tuple[str, str]] = []

    def recording(name: str, package: str) -> str:
        asked.append((name, package))
        return ensure_binary(name, package, allow_install=False)

    monkeypatch.setattr(ensure, "ensure_binary", recording)
    monkeypatch.setattr(ensure, "ensure_postgres_bindir", lambda: Path("/usr/local/bin"))
    assert ensure.main(argv) == 0
    return asked


def test_make_test_gets_prometheus_and_promtool(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _asked(monkeypatch, [])
    assert ("prometheus", "prometheus") in asked
    assert ("promtool", "prometheus") in asked
    assert ("redis-server", "redis-server") in asked


def test_make_run_does_not_need_prometheus(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _asked(monkeypatch, ["--no-postgres"])
    assert [name for name, _ in asked] == ["redis-server", "mosquitto"]
