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


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """The usage error of a refused command line (exit status 2)."""
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.splitlines()[-1]


@pytest.mark.parametrize(
    "store_id",
    ["store 8", "", "a|b", "x" * 129, "caf\u00e9", "s+1", "s#1", "s/1", "tab\there"],
)
def test_an_invalid_store_id_is_refused_naming_the_flag_and_the_rule(
    capsys: pytest.CaptureFixture[str], store_id: str
) -> None:
    line = _refused(capsys, ["--store-id", store_id])
    assert line.startswith("unistock-edge-agent: error: --store-id")
    assert "1-128 printable ASCII characters" in line
    assert "'+', '#' or '/'" in line


def test_an_invalid_store_id_from_the_environment_is_refused(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNISTOCK_AGENT_STORE_ID", "store 8")
    assert "--store-id" in _refused(capsys, [])


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--source-id", "till 1"], "--source-id"),
        (["--source-id", "x" * 120], "--source-id"),  # the outbox adds '.' and 8 hex digits
        (["--location-id", "back room"], "--location-id"),
        (["--reader-location", "reader 1=back"], "--reader-location"),
        (["--reader-location", "r1=back|room"], "--reader-location"),
        (["--reader-location", "r1"], "--reader-location"),
        (["--intake-port", "70000"], "--intake-port"),
        (["--metrics-port", "-1"], "--metrics-port"),
        (["--mqtt-url", "http://broker:1883"], "--mqtt-url"),
        (["--mqtt-url", "mqtt://broker:notaport"], "--mqtt-url"),
        (["--reader-mqtt-url", "tcp://readers"], "--reader-mqtt-url"),
    ],
)
def test_every_id_and_address_flag_is_checked(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    line = _refused(capsys, ["--store-id", "s1", *argv])
    assert line.startswith(f"unistock-edge-agent: error: {flag}"), line


def test_a_store_id_too_long_for_the_default_source_id_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # agent-<store id> plus the outbox's incarnation must stay a valid source id.
    line = _refused(capsys, ["--store-id", "s" * 128])
    assert "--source-id" in line
    assert parse(["--store-id", "s" * 128, "--source-id", "agent-long"]).store_id == "s" * 128


def test_a_bad_number_in_a_variable_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UNISTOCK_AGENT_INTAKE_PORT", "fifty")
    assert "--intake-port" in _refused(capsys, ["--store-id", "s1"])


def test_valid_ids_are_taken() -> None:
    s = parse(
        ["--store-id", "store-8_A.b", "--source-id", "till~agent", "--location-id", "s8:back",
         "--reader-location", "r-1=s8/back"]
    )  # fmt: skip
    assert (s.store_id, s.source, s.location, dict(s.reader_locations)) == (
        "store-8_A.b", "till~agent", "s8:back", {"r-1": "s8/back"}
    )  # fmt: skip


def test_help_shows_only_meaningful_defaults_and_the_exit_statuses(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("UNISTOCK_AGENT_SOURCE_ID", "UNISTOCK_AGENT_CATALOGUE", "UNISTOCK_READER_TOPIC"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as exit_:
        parse(["--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert "(default: )" not in text
    assert "(default: None)" not in text
    assert "(default: [])" not in text
    assert "(default: 50061)" in text
    assert "exit status:" in text.lower()
    for status in ("0 ", "1 ", "2 ", "75 "):
        assert status in text
