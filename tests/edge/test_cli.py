"""unistock-edge-agent's flags and their environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from unistock.edge.cli import parse


def test_every_setting_comes_from_its_flag_or_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UNISTOCK_AGENT_STORE_ID", "s9")
    monkeypatch.setenv("UNISTOCK_AGENT_WINDOW", "3")
    monkeypatch.setenv("UNISTOCK_AGENT_SOURCE_ID", "from-env")
    s = parse(["--source-id", "till-agent-9", "--intake-port", "5", "--data-dir", "/x"])
    assert (s.store_id, s.source, s.window, s.intake_port, s.data_dir) == (
        "s9", "till-agent-9", 3, 5, Path("/x")
    )  # fmt: skip
    assert (s.batch_size, s.catalogue, s.mqtt_url) == (100, None, "mqtt://127.0.0.1:1883")


def test_the_store_id_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNISTOCK_AGENT_STORE_ID", raising=False)
    with pytest.raises(SystemExit):
        parse([])
    assert parse(["--store-id", "s1"]).source == "agent-s1"
