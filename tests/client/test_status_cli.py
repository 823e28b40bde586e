"""`unistock status` (clients/unistock/client/cli_status.py) against a real server: the tables a
person reads, the JSON a script reads (zero fields included) and the exit codes."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from tests.edge.test_network_staleness_e2e import LIMIT, web_with
from tests.fixtures.server import TOKENS, MakeServer, target
from tests.server.test_api import batch, mv, send
from unistock.client import UnistockClient
from unistock.client.cli_status import (
    DEGRADED,
    HEALTHY,
    NOT_SERVING,
    USAGE,
    age,
    main_status,
    ranges,
    run_status,
)
from unistock.devtools.services import RedisServer, free_port
from unistock.server.app.server import UnistockServer


def console() -> Console:
    return Console(file=io.StringIO(), width=200, record=True, color_system=None)


async def status(
    srv: UnistockServer, *, as_json: bool = False, max_lag: float = 60
) -> tuple[int, str]:
    """(exit code, what was printed)."""
    out = console()
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        code = await run_status(c, as_json=as_json, console=out, max_lag=max_lag)
    return code, out.export_text()


async def until_events_caught_up(c: UnistockClient) -> None:
    """Until the events deriver read every feed entry."""
    async with asyncio.timeout(30):
        while True:
            got = await c.get_server_status()
            if [x.entries_behind for x in got.feed_consumers if x.name == "events"] == [0]:
                return
            await asyncio.sleep(0.05)


def row(text: str, first: str) -> list[str]:
    """The cells of the table row whose first cell is `first`."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


async def test_a_healthy_server_exits_0_with_its_tables(server: UnistockServer) -> None:
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await send(c, batch("wms", mv(1, "RECEIPT", "JACKET", "dc", 10)))
        await until_events_caught_up(c)
    code, text = await status(server)
    assert code == HEALTHY, text
    assert "SERVING" in text
    assert "NOT SERVING" not in text
    assert "off (no --mqtt-url)" in text
    assert "partitions          64 (owned here: all)" in text
    assert "watch subscribers   availability 0, network 0, reservations 0, events 0" in text
    assert row(text, "events")[1:3] == ["0.0 s", "0"]
    ledger = row(text, "ledger")  # registered by the server, no ledger process: behind
    assert int(ledger[2]) >= 1
    assert "no store known" in text


async def test_stale_and_never_heard_stores_are_degraded_and_json_has_zero_fields(
    mqtt_server: UnistockServer,
) -> None:
    async with UnistockClient(target(mqtt_server), TOKENS["admin"]) as c:
        await web_with(c, "s1")  # s1 in web (staleness limit LIMIT s), no agent: silent
    deadline = time.monotonic() + 30
    code, text = await status(mqtt_server)
    while code != DEGRADED and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        code, text = await status(mqtt_server)
    assert code == DEGRADED, text
    assert "DEGRADED" in text
    assert "store s1 is stale for web" in text
    cells = row(text, "s1")
    assert cells[1:7] == ["never heard", "—", "0", "—", "0", "0"]
    assert cells[7].startswith("never (")
    assert cells[8] == "STALE: web"

    code, text = await status(mqtt_server, as_json=True)
    assert code == DEGRADED
    got = json.loads(text)
    [s1] = got["stores"]
    assert s1["storeId"] == "s1"
    assert s1["state"] == "STATE_UNSPECIFIED"
    assert (s1["outboxDepth"], s1["lastAckedSeq"], s1["oldestUnackedAgeSeconds"]) == ("0", "0", 0)
    assert (s1["hasBeenHeard"], s1["stale"], s1["staleNetworks"]) == (False, True, ["web"])
    assert s1["rejectedUnresolved"] == "0"
    assert got["positions"]["passivated"] == "0"
    assert got["watchSubscribers"] == {
        "availability": 0, "network": 0, "reservations": 0, "events": 0
    }  # fmt: skip
    assert got["health"]["mqttEnabled"] is True
    assert got["health"]["mqttConnected"] is True
    assert got["partitions"]["count"] == 64
    assert len(got["partitions"]["owned"]) == 64
    assert {c["name"] for c in got["feedConsumers"]} == {"events", "ledger"}
    assert LIMIT > 0


async def test_a_lagging_feed_consumer_is_degraded_past_max_lag(server: UnistockServer) -> None:
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await send(c, batch("wms", mv(1, "RECEIPT", "JACKET", "dc", 10)))
    await asyncio.sleep(0.1)  # the ledger's oldest unread change is older than 0.05 s
    code, text = await status(server, max_lag=0.05)
    assert code == DEGRADED, text
    assert "feed consumer ledger is" in text


async def test_redis_down_is_not_serving(
    make_server: MakeServer, redis_server: RedisServer
) -> None:
    srv = await make_server(redis_server.url, redis_timeout_s=0.5)
    redis_server.stop()
    code, text = await status(srv)
    assert code == NOT_SERVING, text
    assert "NOT SERVING" in text
    assert "UNREACHABLE" in text
    assert "not known: Redis is unreachable" in text
    code, text = await status(srv, as_json=True)
    got = json.loads(text)
    assert (got["health"]["serving"], got["health"]["redisReachable"]) == (False, False)
    assert got["feedConsumers"] == []
    assert code == NOT_SERVING


def test_main_status_unreachable_server_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    assert main_status(["--target", f"127.0.0.1:{port}", "--token", "x" * 20]) == NOT_SERVING
    assert "error: cannot get the server's status: UNAVAILABLE" in capsys.readouterr().err
    assert main_status(["--max-lag", "soon"]) == USAGE


async def command(*args: str) -> tuple[int | None, bytes, bytes]:
    """main_status run as a process: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from unistock.client.cli_status import main_status; "
        "sys.exit(main_status(sys.argv[1:]))", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    return proc.returncode, out, err


async def test_main_status_as_a_command(server: UnistockServer) -> None:
    code, out, err = await command("--target", target(server), "--token", TOKENS["admin"], "--json")
    assert code == HEALTHY, err
    assert json.loads(out)["health"]["serving"] is True
    code, out, err = await command("--target", target(server), "--token", TOKENS["channel"])
    assert code == NOT_SERVING
    assert b"PERMISSION_DENIED" in err
    assert out == b""


async def test_main_status_finds_the_server_in_the_user_config_file(
    server: UnistockServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text(f'target = "{target(server)}"\ntoken = "{TOKENS["admin"]}"\n')
    monkeypatch.setenv("UNISTOCK_CONFIG", str(config))
    code, out, err = await command("--json")
    assert code == HEALTHY, err
    assert json.loads(out)["partitions"]["count"] == 64


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.42, "0.4 s"), (42, "42 s"), (192, "3 min 12 s"), (7500, "2 h 05 min"),
     (3 * 86400 + 4 * 3600, "3 d 04 h")],
)  # fmt: skip
def test_age(seconds: float, text: str) -> None:
    assert age(seconds) == text


def test_ranges() -> None:
    assert ranges([0, 1, 2, 5, 7, 8]) == "0-2, 5, 7-8"
    assert ranges([]) == ""
