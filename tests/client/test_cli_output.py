"""Issue 12: what `unistock` prints and how it ends, against real servers: `--json` with every
zero-valued field on every command that prints data, exit 3 (not found) and 4 (duplicate),
Rich tables and the live watch table on a terminal (a real pseudo-terminal), shell
completion, and `unistock config`."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.client.test_cli import cli, run_cli, spawn
from tests.client.test_ledger_cli import day  # noqa: F401 (a fixture: a server whose ledger is written)
from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb


async def json_of(srv: UnistockServer, *args: str) -> object:
    """The JSON the command prints with --json (exit 0)."""
    rc, out, err = await cli(srv, *args, "--json")
    assert rc == 0, (args, err)
    return json.loads(out)


async def test_json_includes_zero_valued_fields_on_every_command(server: UnistockServer) -> None:
    """`"onHand": "0"` is information: --json prints every field, zeros too (without --json in
    a pipe, some commands leave zeros out as they always did)."""
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await c.upsert_locations(
            [apb.Location(location_id="s1", type=apb.STORE, ship_from_store=True),
             apb.Location(location_id="s2", type=apb.STORE, ship_from_store=True)]
        )  # fmt: skip
        await c.upsert_networks([apb.Network(network_id="web", location_ids=["s1", "s2"])])
    ack = await json_of(server, "move", "wms", "1", "RECEIPT", "SHOE@s1:2")
    assert ack == {
        "sources": [{"sourceId": "wms", "seq": "1"}],
        "rejections": [],
        "batchId": "",
        "applied": 1,
        "duplicates": 0,
        "notices": [],
    }
    rc, out, _ = await cli(server, "move", "wms", "2", "RECEIPT", "SHOE@s1:1")
    assert "duplicates" not in json.loads(out)  # in a pipe without --json: as always
    level = await json_of(server, "get", "SHOE", "s1")
    assert isinstance(level, dict)
    assert (level["onHand"], level["reserved"], level["inTransit"], level["atRisk"]) == (
        "3", "0", "0", False,
    )  # fmt: skip
    reserved = await json_of(server, "reserve", "r-1", "SHOE@s1:1")
    assert isinstance(reserved, dict)
    assert (reserved["replayed"], reserved["reservation"]["customerId"]) == (False, "")
    shown = await json_of(server, "show", "r-1")
    assert isinstance(shown, dict)
    assert (shown["fulfilled"], shown["customerId"]) == ([], "")
    net = await json_of(server, "network", "web", "SHOE")
    assert isinstance(net, dict)
    assert (net["available"], net["locations"], net["staleLocations"]) == ("2", 2, 0)
    found = await json_of(server, "find", "SHOE")
    assert isinstance(found, dict)
    assert (found["split"], found["splitCoversAll"], found["variants"]) == ([], False, [])
    assert found["options"][0]["stale"] is False
    listed = await json_of(server, "reservations", "--location", "s1")
    assert isinstance(listed, list)
    assert listed[0]["fulfilled"] == []
    [loc, _] = await json_of(server, "admin", "locations")  # type: ignore[misc]
    assert (loc["defaultSafetyStock"], loc["eReservation"]) == ("0", False)
    [network] = await json_of(server, "admin", "networks")  # type: ignore[misc]
    assert network["stalenessLimitSeconds"] == 0
    rc, _, err = await cli(server, "move", "wms", "3", "TRANSFER_OUT", "SHOE@s1:1",
                           "--transfer-id", "T1", "--counterpart", "s2")  # fmt: skip
    assert rc == 0, err
    for _ in range(50):  # the shipment reaches the destination just after the ack
        rc, out, _ = await cli(server, "transfer", "T1")
        if rc == 0:
            break
        await asyncio.sleep(0.1)
    transfer = await json_of(server, "transfer", "T1")
    assert isinstance(transfer, dict)
    assert transfer["lines"] == [
        {"sku": "SHOE", "shipped": "1", "received": "0", "inTransit": "1", "lost": "0",
         "unexpected": "0"}
    ]  # fmt: skip
    assert transfer["discrepancies"] == []
    rc, out, _ = await cli(server, "transfer", "T1")
    assert "lost" not in json.loads(out)["lines"][0]  # in a pipe without --json: as always


async def test_json_of_the_ledger_includes_zeros(day: UnistockServer) -> None:  # noqa: F811
    entries = await json_of(day, "history", "SHOE@s2")
    assert isinstance(entries, list)
    [receipt] = entries
    assert (receipt["type"], receipt["variance"], receipt["reservationId"]) == ("RECEIPT", "0", "")
    kpis = await json_of(day, "kpis", "--location", "s1")
    assert isinstance(kpis, dict)
    [group] = kpis["groups"]
    assert (group["key"], group["lostInTransit"], group["reservationsExpired"]) == ("s1", "0", "0")


async def test_not_found_is_exit_3_with_one_line(server: UnistockServer) -> None:
    for args in (("show", "nope"), ("release", "nope"), ("transfer", "T-none"),
                 ("get", "NOPE"), ("network", "nope", "SHOE")):  # fmt: skip
        rc, out, err = await cli(server, *args)
        assert (rc, out) == (3, ""), (args, err)
        [line] = err.strip().splitlines()
        assert line.startswith("not found: "), args
    rc, _, err = await cli(server, "release", "nope", role="channel")
    assert rc == 3, err


async def test_a_rejected_adjustment_names_its_field_and_a_good_one_is_recorded(
    server: UnistockServer,
) -> None:
    """ADJUSTMENT: --sign and --reason are what the server needs; without them the movement is
    rejected (exit 1) with the reason and the field; with them it is applied."""
    rc, _, err = await cli(server, "move", "bo", "1", "RECEIPT", "SHOE@s1:5")
    assert rc == 0, err
    rc, _, err = await cli(server, "move", "bo", "2", "ADJUSTMENT", "SHOE@s1:2", "--sign", "-")
    assert rc == 1
    [line] = err.strip().splitlines()
    assert line.startswith("error: 1 movement(s) rejected: ")
    assert "reason" in line
    rc, out, err = await cli(server, "move", "bo", "3", "ADJUSTMENT", "SHOE@s1:2",
                             "--sign", "-", "--reason", "damaged")  # fmt: skip
    assert rc == 0, err
    rc, out, _ = await cli(server, "get", "SHOE", "s1")
    assert json.loads(out)["onHand"] == "3"
    rc, text, _ = await run_cli("move", "--help")
    assert "ADJUSTMENT --sign + | - --reason WHY" in text


async def test_tables_on_a_terminal(server: UnistockServer) -> None:
    """Without --json, on a terminal (UNISTOCK_FORCE_TERMINAL stands for one): Rich tables."""
    rc, _, err = await cli(server, "move", "bo", "1", "RECEIPT", "SHOE@s1:5")
    assert rc == 0, err
    env = dict(os.environ, UNISTOCK_FORCE_TERMINAL="1", COLUMNS="200", NO_COLOR="1")
    args = ("--target", target(server), "--token", TOKENS["admin"])
    rc, out, err = await run_cli(*args, "get", "SHOE", env=env)
    assert rc == 0, err
    [row] = [ln for ln in out.splitlines() if "SHOE" in ln and "s1" in ln]
    assert [c.strip() for c in row.split("│")[1:-1]][:6] == ["SHOE", "s1", "5", "0", "0", "5"]
    assert "on hand" in out
    assert "available" in out
    rc, out, err = await run_cli(*args, "move", "bo", "1", "RECEIPT", "SHOE@s1:5", env=env)
    assert rc == 4
    assert "0 movements applied, 1 duplicate" in out
    rc, out, err = await run_cli(*args, "get", "SHOE", "--json", env=env)
    assert json.loads(out)["onHand"] == "5"  # --json wins over the terminal


def _read_until(fd: int, wanted: list[str], deadline: float) -> str:
    """What the pseudo-terminal shows until every string of wanted appeared (or deadline)."""
    seen = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
        text = seen.decode(errors="replace")
        if all(w in text for w in wanted):
            return text
    return seen.decode(errors="replace")


@pytest.mark.parametrize(
    ("command", "before", "change", "after"),
    [
        (("watch", "--sku", "SHOE"), " 5 │", ("move", "bo", "2", "SALE", "SHOE@s1:2"), " 3 │"),
        (("network", "web", "--watch"), " 4 │", ("move", "bo", "2", "SALE", "SHOE@s1:2"), " 2 │"),
        (
            ("reservations", "--location", "s1", "--watch"),
            "r-1",
            ("reserve", "r-2", "SHOE@s1:1"),
            "r-2",
        ),
    ],
)
async def test_watching_on_a_terminal_is_a_live_table(
    server: UnistockServer, command: tuple[str, ...], before: str, change: tuple[str, ...],
    after: str,
) -> None:  # fmt: skip
    """`unistock watch`, `network --watch`, `reservations --watch` in a real pseudo-terminal:
    one table redrawn in place (Rich Live) that shows a change as it happens; Ctrl-C ends it
    with exit 130."""
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await c.upsert_locations([apb.Location(location_id="s1", type=apb.STORE)])
        await c.upsert_networks([apb.Network(network_id="web", location_ids=["s1"])])
    for setup in (("move", "bo", "1", "RECEIPT", "SHOE@s1:5"), ("reserve", "r-1", "SHOE@s1:1")):
        rc, _, err = await cli(server, *setup)
        assert rc == 0, err
    master, slave = pty.openpty()
    env = dict(os.environ, COLUMNS="160", LINES="40", TERM="xterm")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "unistock.client.cli", "--target", target(server),
        "--token", TOKENS["admin"], *command,
        stdout=slave, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    os.close(slave)
    loop = asyncio.get_running_loop()
    live = "live: changes as they happen"
    try:
        first = await loop.run_in_executor(
            None, _read_until, master, [live, before], time.monotonic() + 30
        )
        assert live in first, first
        assert before in first, first
        rc, _, err = await cli(server, *change)
        assert rc == 0, err
        later = await loop.run_in_executor(
            None, _read_until, master, [after], time.monotonic() + 30
        )
        assert after in later, later
        assert "\x1b[" in later  # redrawn in place (cursor movements), not lines appended
        assert "{" not in first + later  # no JSON on a terminal
        proc.send_signal(signal.SIGINT)
        _, err_bytes = await proc.communicate()
        assert proc.returncode == 130, err_bytes
        assert b"Traceback" not in err_bytes
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.close(master)


async def test_shell_completion_completes_a_subcommand_name() -> None:
    """Typer's completion protocol (what `unistock --install-completion` installs for bash)."""
    env = dict(os.environ, _UNISTOCK_COMPLETE="complete_bash", COMP_WORDS="unistock reser",
               COMP_CWORD="1")  # fmt: skip
    rc, out, err = await run_cli(env=env)
    assert rc == 0, err
    assert out.split() == ["reserve", "reservations"]
    # --show-completion detects the shell it runs in: bash here (`; true`: bash stays the parent)
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f"{sys.executable} -m unistock.client.cli --show-completion; true",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out_b, err_b = await proc.communicate()
    assert proc.returncode == 0, err_b
    out = out_b.decode()
    assert "_UNISTOCK_COMPLETE=complete_bash" in out


async def test_config_shows_each_setting_and_its_source(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('target = "db.example:50051"\nmetrics_url = "http://m:9464/metrics"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNISTOCK_")}
    env.update(UNISTOCK_CONFIG=str(path), UNISTOCK_TOKEN="secret-token-1")
    rc, out, err = await run_cli("config", "--json", env=env)
    assert rc == 0, err
    shown = json.loads(out)
    assert shown["configFile"] == str(path)
    assert shown["settings"] == {
        "target": {"value": "db.example:50051", "source": str(path)},
        "token": {"value": "secr...", "source": "UNISTOCK_TOKEN"},
        "mqtt_url": {"value": "mqtt://127.0.0.1:1883", "source": "default"},
        "metrics_url": {"value": "http://m:9464/metrics", "source": str(path)},
    }
    rc, out, err = await run_cli("--target", "x:1", "config", env=env)
    assert rc == 0, err
    assert "secret-token-1" not in out
    [row] = [ln for ln in out.splitlines() if "x:1" in ln]
    assert "--target" in row
    path.write_text('targt = "x"\n')
    rc, out, err = await run_cli("config", env=env)
    assert (rc, out) == (1, "")
    assert (
        err.strip()
        == f"error: config file {path}: unknown key 'targt' (known: target, token, token_file, mqtt_url, metrics_url)"
    )


async def test_status_is_a_command_of_unistock(server: UnistockServer) -> None:
    """`unistock status` (cli_status) runs from `unistock`, --target/--token before or after
    `status`, with cli_status's own output and exit codes."""
    where = ("--target", target(server), "--token", TOKENS["admin"])
    for args in ((*where, "status", "--json"), ("status", "--json", *where)):
        rc, out, err = await run_cli(*args)
        assert rc == 0, (args, err)
        assert isinstance(json.loads(out), dict)
    rc, _, err = await run_cli("status", "--target", target(server), "--token", "wrong")
    assert rc == 1
    assert err.startswith("error: cannot get the server's status: UNAUTHENTICATED")


async def test_reservations_watch_json_is_json_lines(server: UnistockServer) -> None:
    """`reservations --watch --json`: every WatchReservations message as a JSON line (zeros
    included), the snapshot first; Ctrl-C ends it (130)."""
    for setup in (("move", "bo", "1", "RECEIPT", "SHOE@s1:5"), ("reserve", "r-1", "SHOE@s1:1")):
        rc, _, err = await cli(server, *setup)
        assert rc == 0, err
    proc = await spawn(
        "--target", target(server), "--token", TOKENS["admin"],
        "reservations", "--location", "s1", "--watch", "--json",
    )  # fmt: skip
    assert proc.stdout is not None
    messages = []
    while not messages or not messages[-1]["snapshotComplete"]:
        messages.append(json.loads(await proc.stdout.readline()))
    [reservation] = [u["reservation"] for m in messages for u in m["updates"]]
    assert (reservation["reservationId"], reservation["customerId"]) == ("r-1", "")
    rc, _, err = await cli(server, "reserve", "r-2", "SHOE@s1:1")
    assert rc == 0, err
    change = json.loads(await proc.stdout.readline())
    assert [u["reservation"]["reservationId"] for u in change["updates"]] == ["r-2"]
    proc.send_signal(signal.SIGINT)
    await proc.communicate()
    assert proc.returncode == 130
