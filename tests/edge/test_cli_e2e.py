"""The real ``unistock-edge-agent`` process refusing to start, and what the agent logs."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.edge.harness import agent_process, agent_settings, start_agent, stop_agent
from unistock.devtools.services import MosquittoBroker, free_port
from unistock.edge.agent import StoreAgent
from unistock.edge.cli import EXIT_BAD_USAGE, EXIT_START_FAILED
from unistock.edge.outbox import Outbox


async def _refused(data_dir: Path, mqtt_url: str, *args: str, store: str = "s1") -> tuple[int, str]:
    """Exit status and stderr of an agent that must exit at start (quiet logs: warnings only)."""
    async with agent_process(
        data_dir, mqtt_url, "--log-level", "WARNING", *args, store=store, ready=False
    ) as proc:
        _, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, err.decode()


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("unistock-edge-agent: "), err
    return lines[0]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port of 127.0.0.1 another process (here: a listening socket) holds."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


async def test_an_invalid_store_id_is_refused_before_anything_starts(
    tmp_path: Path, mosquitto_url: str
) -> None:
    status, err = await _refused(tmp_path / "agent", mosquitto_url, store="store 8")
    assert status == EXIT_BAD_USAGE == 2
    last = err.splitlines()[-1]
    assert last.startswith("unistock-edge-agent: error: --store-id 'store 8'"), err
    assert "Traceback" not in err
    assert not (tmp_path / "agent").exists()  # no outbox, no lock: nothing was started


async def test_the_intake_port_taken_is_one_line_naming_the_flag(
    tmp_path: Path, mosquitto_url: str, taken_port: int
) -> None:
    status, err = await _refused(
        tmp_path / "agent", mosquitto_url, "--intake-port", str(taken_port)
    )
    assert status == EXIT_START_FAILED == 1
    line = _one_line(err)
    assert line.startswith(f"unistock-edge-agent: --intake-port {taken_port}: "), line
    assert f"127.0.0.1:{taken_port}: Address already in use" in line


async def test_the_metrics_port_taken_is_one_line_naming_the_flag(
    tmp_path: Path, mosquitto_url: str, taken_port: int
) -> None:
    status, err = await _refused(
        tmp_path / "agent", mosquitto_url, "--metrics-port", str(taken_port)
    )
    assert status == EXIT_START_FAILED
    line = _one_line(err)
    assert line.startswith(f"unistock-edge-agent: --metrics-port {taken_port}: "), line
    assert "in use" in line


@pytest.mark.parametrize(
    ("content", "problem"),
    [(None, "No such file"), (b"gtin,sku\n123,A\n", "line 2: "), (b"\xff\xfe\x00", "not UTF-8")],
)
async def test_an_unusable_catalogue_is_one_line_naming_the_flag(
    tmp_path: Path, mosquitto_url: str, content: bytes | None, problem: str
) -> None:
    catalogue = tmp_path / "catalogue.csv"
    if content is not None:
        catalogue.write_bytes(content)
    status, err = await _refused(tmp_path / "agent", mosquitto_url, "--catalogue", str(catalogue))
    assert status == EXIT_START_FAILED
    line = _one_line(err)
    assert line.startswith(f"unistock-edge-agent: --catalogue {catalogue}: "), line
    assert problem in line


async def test_an_unusable_data_dir_is_one_line_naming_the_flag(
    tmp_path: Path, mosquitto_url: str
) -> None:
    (tmp_path / "file").write_text("not a directory")
    data_dir = tmp_path / "file" / "agent"
    status, err = await _refused(data_dir, mosquitto_url)
    assert status == EXIT_START_FAILED
    assert _one_line(err).startswith(f"unistock-edge-agent: --data-dir {data_dir}: ")


async def test_an_outbox_of_another_source_is_one_line_naming_the_flag(
    tmp_path: Path, mosquitto_url: str
) -> None:
    data_dir = tmp_path / "agent"
    data_dir.mkdir()
    Outbox(data_dir / "outbox-s1.sqlite", "till-agent", incarnation=True).close()
    status, err = await _refused(data_dir, mosquitto_url)  # source agent-s1
    assert status == EXIT_START_FAILED
    line = _one_line(err)
    assert line.startswith("unistock-edge-agent: --source-id agent-s1: "), line
    assert "till-agent" in line


async def test_a_bad_mqtt_url_is_a_usage_error(tmp_path: Path) -> None:
    status, err = await _refused(tmp_path / "agent", "http://127.0.0.1:1883")
    assert status == EXIT_BAD_USAGE
    assert err.splitlines()[-1].startswith("unistock-edge-agent: error: --mqtt-url"), err
    assert "Traceback" not in err


async def test_the_agent_logs_the_addresses_it_listens_on(
    tmp_path: Path, mosquitto_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="unistock.edge.agent")
    settings = agent_settings(tmp_path, mosquitto_url, metrics_port=free_port())
    async with StoreAgent(settings) as agent:
        assert f"intake on 127.0.0.1:{agent.intake_port}" in caplog.text
        assert f"metrics on 127.0.0.1:{agent.metrics_port}" in caplog.text
        assert "on :" not in caplog.text


async def test_a_broker_outage_logs_lost_once_then_restored(
    tmp_path: Path, mosquitto_broker: MosquittoBroker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="unistock.edge.reconnect")

    def records(text: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if text in r.getMessage()]

    agent, task = await start_agent(tmp_path, mosquitto_broker)
    try:
        await asyncio.wait_for(agent.connected.wait(), 30)
        await asyncio.to_thread(mosquitto_broker.kill)
        async with asyncio.timeout(60):  # the loss, then two failed attempts to reconnect
            while len(records("broker")) < 3:  # noqa: ASYNC110 (log records: no event)
                await asyncio.sleep(0.05)
        await asyncio.to_thread(mosquitto_broker.start)
        await asyncio.wait_for(agent.connected.wait(), 60)
    finally:
        await stop_agent(agent, task)
    warnings = [r for r in records("broker") if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "broker connection lost" in warnings[0].getMessage()
    restored = records("broker connection restored after ")
    assert len(restored) == 1
    assert restored[0].levelno == logging.INFO
