"""The client config (unistock.client.config): flag > UNISTOCK_* variable > the user config
file > default, for the target, the token and the broker; errors that name the file and the
key; the file `make run` manages and the one it leaves alone."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from unistock.client import config
from unistock.client.config import ClientConfig, ConfigError
from unistock.edge.cli import parse as parse_agent


def load(tmp_path: Path, text: str | None, **env: str) -> ClientConfig:
    path = tmp_path / "config.toml"
    if text is not None:
        path.write_text(text)
    return ClientConfig.load(
        {"UNISTOCK_CONFIG": str(path), "UNISTOCK_DATA_DIR": str(tmp_path / "nodata"), **env}
    )


def test_the_config_file_path_follows_unistock_config_then_xdg(tmp_path: Path) -> None:
    assert config.config_path({"UNISTOCK_CONFIG": "/x/c.toml"}) == Path("/x/c.toml")
    assert config.config_path({"XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/unistock/config.toml")
    assert config.config_path({}) == Path.home() / ".config" / "unistock" / "config.toml"


def test_flag_wins_over_variable_over_file_over_default(tmp_path: Path) -> None:
    file = 'target = "file:1"\nmqtt_url = "mqtt://file:2"\ntoken = "file-token"\n'
    c = load(tmp_path, file)
    assert c.target() == config.Setting("file:1", str(tmp_path / "config.toml"))
    assert c.mqtt_url().value == "mqtt://file:2"
    assert c.token().value == "file-token"
    c = load(tmp_path, file, UNISTOCK_TARGET="env:1", UNISTOCK_MQTT_URL="mqtt://env:2",
             UNISTOCK_TOKEN="env-token")  # fmt: skip
    assert (c.target().value, c.target().source) == ("env:1", "UNISTOCK_TARGET")
    assert c.mqtt_url().value == "mqtt://env:2"
    assert c.token().value == "env-token"
    assert c.target("flag:1") == config.Setting("flag:1", "--target")
    assert c.mqtt_url("mqtt://flag:2").value == "mqtt://flag:2"
    assert c.token("flag-token").value == "flag-token"
    c = load(tmp_path / "none", None)
    assert c.target() == config.Setting(config.DEFAULT_TARGET, "default")
    assert c.mqtt_url() == config.Setting(config.DEFAULT_MQTT_URL, "default")


def test_a_token_file_is_read_and_a_missing_one_is_explained(tmp_path: Path) -> None:
    token_file = tmp_path / "dev-token"
    c = load(tmp_path, f'token_file = "{token_file}"\n')
    with pytest.raises(ConfigError, match=r"token_file .*dev-token.*make run"):
        c.token()
    token_file.write_text("abc\n")
    assert c.token() == config.Setting("abc", str(token_file))
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        c.token()


def test_no_token_anywhere_names_every_way_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, None).token()
    for way in ("--token", "UNISTOCK_TOKEN", str(tmp_path / "config.toml"), "UNISTOCK_DATA_DIR"):
        assert way in str(e.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('targt = "x:1"\n', r"unknown key 'targt' \(known: target, token"),
        ("target = 50051\n", "target must be a non-empty string"),
        ('target = ""\n', "target must be a non-empty string"),
        ('target = "x:1\n', "not valid TOML: .*line 1"),
    ],
)
def test_a_bad_config_file_is_an_error_naming_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        load(tmp_path, text)
    assert str(tmp_path / "config.toml") in str(e.value)


def test_make_run_rewrites_only_a_file_it_manages(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "config.toml"
    assert config.write_managed(path, {"target": "localhost:1"}, origin="test")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert config.read_config(path) == {"target": "localhost:1"}
    assert config.write_managed(
        path, {"target": "localhost:2", "mqtt_url": "mqtt://h:3"}, origin="t"
    )
    assert config.read_config(path) == {"target": "localhost:2", "mqtt_url": "mqtt://h:3"}
    own = path.read_text().replace(config.MANAGED_MARKER + "\n", "")  # the user took it over
    path.write_text(own)
    assert not config.write_managed(path, {"target": "localhost:9"}, origin="test")
    assert path.read_text() == own
    assert [p.name for p in path.parent.iterdir()] == ["config.toml"]  # no temporary left
    with pytest.raises(ValueError, match="unknown config keys"):
        config.write_managed(tmp_path / "x.toml", {"tokn": "x"}, origin="test")


def test_the_agent_takes_its_broker_from_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "config.toml"
    monkeypatch.setenv("UNISTOCK_CONFIG", str(path))
    monkeypatch.delenv("UNISTOCK_MQTT_URL", raising=False)
    assert parse_agent(["--store-id", "store-7"]).mqtt_url == config.DEFAULT_MQTT_URL
    path.write_text('mqtt_url = "mqtt://127.0.0.1:1890"\n')
    assert parse_agent(["--store-id", "store-7"]).mqtt_url == "mqtt://127.0.0.1:1890"
    monkeypatch.setenv("UNISTOCK_MQTT_URL", "mqtt://env:1")
    assert parse_agent(["--store-id", "store-7"]).mqtt_url == "mqtt://env:1"
    assert (
        parse_agent(["--store-id", "store-7", "--mqtt-url", "mqtt://flag:1"]).mqtt_url
        == "mqtt://flag:1"
    )
