"""Broker URLs shared by the server and the edge agents."""

from __future__ import annotations

import pytest

from unistock.client.mqtt import broker_args


def test_plain_url_with_credentials() -> None:
    a = broker_args("mqtt://store-7:p%40ss@broker.local:1890")
    assert (a["hostname"], a["port"], a["username"], a["password"]) == (
        "broker.local",
        1890,
        "store-7",
        "p@ss",
    )
    assert "tls_params" not in a


def test_tls_url_defaults_to_8883() -> None:
    a = broker_args("mqtts://broker.local")
    assert a["port"] == 8883
    assert "tls_params" in a


def test_other_schemes_are_refused_naming_the_flag() -> None:
    with pytest.raises(ValueError, match="--mqtt-url"):
        broker_args("tcp://broker.local:1883")
