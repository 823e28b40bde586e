"""Fixtures of the MQTT ingestion tests: the server ingesting a private mosquitto, store s1."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.mqtt.harness import Agent, connect
from unistock.devtools.services import MosquittoBroker
from unistock.server.app.server import UnistockServer


@pytest.fixture
def server(mqtt_server: UnistockServer) -> UnistockServer:
    return mqtt_server


@pytest.fixture
async def agent(server: UnistockServer, mosquitto_broker: MosquittoBroker) -> AsyncIterator[Agent]:
    async with connect(mosquitto_broker, "s1") as a:
        yield a
