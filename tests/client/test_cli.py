"""The `unistock` command line against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb
from unistock.v1 import inventory_pb2 as pb


async def spawn(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> asyncio.subprocess.Process:
    """The CLI with exactly these arguments, its stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "unistock.client.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=cwd,
    )


async def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    """Run the CLI with exactly these arguments: (exit code, stdout, stderr)."""
    proc = await spawn(*args, env=env, cwd=cwd)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def server_args(srv: UnistockServer, role: str = "admin") -> tuple[str, ...]:
    return ("--target", target(srv), "--token", TOKENS[role])


async def cli(srv: UnistockServer, *args: str, role: str = "admin") -> tuple[int, str, str]:
    return await run_cli(*server_args(srv, role), *args)


async def test_move_get_reserve_show(server: UnistockServer) -> None:
    rc, out, _ = await cli(server, "move", "backoffice", "1", "RECEIPT", "SHOE-42@store-7:3")
    assert rc == 0
    assert json.loads(out)["applied"] == 1
    rc, out, _ = await cli(
        server, "reserve", "hold-1", "SHOE-42@store-7:2", "--kind", "E_RESERVATION"
    )
    assert rc == 0
    assert json.loads(out)["reservation"]["state"] == "ACTIVE"
    rc, out, _ = await cli(server, "get", "SHOE-42")
    level = json.loads(out)
    assert (level["onHand"], level["reserved"], level["available"]) == ("3", "2", "1")
    rc, out, _ = await cli(server, "show", "hold-1")
    assert json.loads(out)["kind"] == "E_RESERVATION"


async def test_errors_exit_non_zero_with_the_reason(server: UnistockServer) -> None:
    rc, _, err = await cli(server, "reserve", "r", "SHOE-42@store-7:5", role="channel")
    assert rc == 1
    assert "FAILED_PRECONDITION" in err
    assert "SHOE-42@store-7" in err
    rc, _, err = await cli(server, "move", "s", "1", "RECEIPT", "X@y:1", role="channel")
    assert rc == 1
    assert "PERMISSION_DENIED" in err


@pytest.mark.parametrize(
    "args",
    [
        # an invalid sku (the space), a seq jump beyond 1,000,000, an ADJUSTMENT without a sign
        ("move", "backoffice", "2", "SALE", "SHOE 42@store-7:1"),
        ("move", "backoffice", "5000000", "RECEIPT", "SHOE-42@store-7:1"),
        ("move", "backoffice", "3", "ADJUSTMENT", "SHOE-42@store-7:1"),
    ],
)
async def test_a_rejected_movement_exits_1_with_the_reason(
    server: UnistockServer, args: tuple[str, ...]
) -> None:
    rc, out, err = await cli(server, *args)
    assert rc == 1
    ack = json.loads(out)
    assert len(ack["rejections"]) == 1
    reason = ack["rejections"][0]["reason"]
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(f"error: 1 movement(s) rejected: {reason} ")
    assert ack["rejections"][0]["detail"] in lines[0]


async def test_a_duplicate_movement_exits_4_and_says_nothing_changed(
    server: UnistockServer,
) -> None:
    """Issue 12: a (source, seq) the server already applied is exit 4 with one `duplicate:`
    line (it was exit 0, silent); the ack is still printed; the level is unchanged."""
    move = ("move", "backoffice", "1", "RECEIPT", "SHOE-42@store-7:3")
    rc, out, err = await cli(server, *move)
    assert (rc, json.loads(out)["applied"]) == (0, 1), err
    rc, out, err = await cli(server, *move)
    assert rc == 4, err
    ack = json.loads(out)
    assert (ack.get("applied", 0), ack["duplicates"]) == (0, 1)
    assert "rejections" not in ack
    [line] = err.strip().splitlines()
    assert line.startswith("duplicate: movement backoffice:1 was already applied")
    rc, out, err = await cli(server, "get", "SHOE-42", "store-7")
    assert (rc, json.loads(out)["onHand"]) == (0, "3"), err


@pytest.mark.parametrize("command", [(), ("get",), ("move",), ("admin", "import")])
async def test_help_documents_the_exit_codes(command: tuple[str, ...]) -> None:
    """The same exit codes in `unistock --help` and in each command's help (Typer on Click)."""
    rc, text, err = await run_cli(*command, "--help")
    assert rc == 0, err
    assert "exit codes" in text.lower()
    for code in ("0", "1", "2", "3", "4", "130"):
        assert re.search(rf"^\s*{code}\s", text, re.MULTILINE), code


@pytest.mark.parametrize(
    ("args", "argument"),
    [
        (("extend", "hold-2", "--", "-5"), "SECONDS"),
        (("extend", "hold-2", "0"), "SECONDS"),
        (("extend", "hold-2", "99999999999"), "SECONDS"),
        (("extend", "hold-2", "31622401"), "SECONDS"),
        (("reserve", "r", "--ttl", "-1", "SHOE-42@store-7:1"), "--ttl"),
        (("reserve", "r", "--ttl", "31622401", "SHOE-42@store-7:1"), "--ttl"),
        (("reserve", "r", "SHOE-42@store-7:99999999999999999999"), "SKU@LOC:QTY"),
        (("reserve", "r", "SHOE-42@store-7:0"), "SKU@LOC:QTY"),
        (("reserve", "r", "SHOE-42@store-7:1000000001"), "SKU@LOC:QTY"),
        (("move", "backoffice", "--", "-1", "SALE", "SHOE-42@store-7:1"), "SEQ"),
        (("move", "backoffice", "0", "SALE", "SHOE-42@store-7:1"), "SEQ"),
        (("move", "backoffice", "99999999999999999999999", "SALE", "SHOE-42@store-7:1"), "SEQ"),
        (("move", "backoffice", "1", "SALE", "SHOE-42@store-7:-1"), "SKU@LOC:QTY"),
        (("move", "backoffice", "1", "SALE", "SHOE-42@store-7:0"), "SKU@LOC:QTY"),
        (("move", "backoffice", "1", "COUNT", "SHOE-42@store-7:1000000001"), "SKU@LOC:QTY"),
        (("fulfil", "r", "SHOE-42@store-7:0", "--request-id", "q"), "SKU@LOC:QTY"),
    ],
)
async def test_out_of_range_numbers_are_usage_errors_naming_the_argument(
    server: UnistockServer, args: tuple[str, ...], argument: str
) -> None:
    rc, out, err = await cli(server, *args)
    assert rc == 2
    assert out == ""
    assert "Traceback" not in err
    assert f"argument {argument}" in err


async def test_a_count_of_zero_is_accepted(server: UnistockServer) -> None:
    rc, out, err = await cli(
        server, "move", "backoffice", "1", "COUNT", "SHOE-42@store-7:0", "--count-id", "c-1"
    )
    assert rc == 0, err
    assert json.loads(out)["applied"] == 1


async def test_an_unexpected_failure_is_one_error_line_not_a_traceback(
    server: UnistockServer,
) -> None:
    # a lone surrogate cannot be encoded as UTF-8 into the request
    rc, _, err = await cli(server, "get", "SHOE-\udc80")
    assert rc == 1
    assert "Traceback" not in err
    assert err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1


async def test_get_of_an_unknown_sku_or_position_is_not_found_exit_3(
    server: UnistockServer,
) -> None:
    """Issue 12: `get UNKNOWN` printed nothing and exited 0; now exit 3 with a `not found:`
    line. The position form still prints the never-seen position's zeros (version 0)."""
    rc, out, err = await cli(server, "get", "NOPE")
    assert (rc, out) == (3, "")
    assert err.strip() == "not found: no position for sku 'NOPE' at any location"
    rc, out, err = await cli(server, "get", "NOPE", "store-7")
    assert rc == 3
    level = json.loads(out)
    assert level["version"] == "0"
    assert err.startswith("not found: no position for sku 'NOPE' at 'store-7'")
    rc, _, err = await cli(server, "move", "backoffice", "1", "RECEIPT", "NOPE@store-7:1")
    assert rc == 0, err
    for args in (("get", "NOPE"), ("get", "NOPE", "store-7")):
        rc, out, err = await cli(server, *args)
        assert (rc, err) == (0, ""), args
        assert json.loads(out)["onHand"] == "1"


def _env_without_token(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("UNISTOCK_TOKEN", "UNISTOCK_DATA_DIR")}
    env.update(extra)
    return env


async def test_a_missing_token_names_the_paths_tried_and_the_ways_to_give_one(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    rc, out, err = await run_cli(
        "get", "SHOE-42", env=_env_without_token(UNISTOCK_DATA_DIR=str(data_dir)), cwd=tmp_path
    )
    assert (rc, out) == (1, "")
    assert "Traceback" not in err
    assert str(data_dir / "dev-token") in err
    for way in ("--token", "UNISTOCK_TOKEN", "UNISTOCK_DATA_DIR"):
        assert way in err
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    rc, out, err = await run_cli("get", "SHOE-42", env=_env_without_token(), cwd=cwd)
    assert rc == 1
    for tried in (cwd, tmp_path / "a", tmp_path):
        assert str(tried / "var" / "dev-token") in err


async def test_the_dev_token_is_found_from_a_subdirectory(
    server: UnistockServer, tmp_path: Path
) -> None:
    (tmp_path / "var").mkdir(exist_ok=True)  # the server's data dir (its SQLite file) too
    (tmp_path / "var" / "dev-token").write_text(TOKENS["admin"] + "\n")
    cwd = tmp_path / "src" / "deep"
    cwd.mkdir(parents=True)
    args = ("--target", target(server), "move", "backoffice", "1", "RECEIPT", "SHOE-42@store-7:3")
    rc, out, err = await run_cli(*args, env=_env_without_token(), cwd=cwd)
    assert rc == 0, err
    assert json.loads(out)["applied"] == 1


async def test_partial_fulfil_with_a_request_id_fulfils_once(server: UnistockServer) -> None:
    rc, _, err = await cli(server, "move", "backoffice", "1", "RECEIPT", "SHOE-42@store-7:5")
    assert rc == 0, err
    rc, _, err = await cli(server, "reserve", "hold-1", "SHOE-42@store-7:3", "--kind", "ORDER")
    assert rc == 0, err
    for _ in range(2):  # the retry fulfils nothing more
        rc, out, err = await cli(
            server, "fulfil", "hold-1", "SHOE-42@store-7:1", "--request-id", "ship-1"
        )
        assert rc == 0, err
        res = json.loads(out)
        assert res["state"] == "ACTIVE"
        assert res["fulfilled"] == [{"sku": "SHOE-42", "locationId": "store-7", "quantity": "1"}]
        assert res["lines"][0]["quantity"] == "2"
    rc, out, _ = await cli(server, "get", "SHOE-42", "store-7")
    level = json.loads(out)
    assert (level["onHand"], level["reserved"]) == ("4", "2")
    rc, out, err = await cli(server, "fulfil", "hold-1")
    assert rc == 0, err
    assert json.loads(out)["state"] == "FULFILLED"


async def test_partial_fulfil_without_a_request_id_is_a_usage_error(
    server: UnistockServer,
) -> None:
    rc, out, err = await cli(server, "fulfil", "hold-1", "SHOE-42@store-7:1")
    assert (rc, out) == (2, "")
    assert "--request-id" in err


async def test_extend_by_seconds_or_until_a_time(server: UnistockServer) -> None:
    rc, _, err = await cli(server, "move", "backoffice", "1", "RECEIPT", "SHOE-42@store-7:5")
    assert rc == 0, err
    rc, _, err = await cli(server, "reserve", "hold-2", "SHOE-42@store-7:1", "--kind", "ORDER")
    assert rc == 0, err
    before = datetime.now(UTC)
    rc, out, err = await cli(server, "extend", "hold-2", "3600")
    assert rc == 0, err
    expires = datetime.fromisoformat(json.loads(out)["expiresAt"])
    assert before + timedelta(seconds=3600) <= expires <= datetime.now(UTC) + timedelta(hours=1)
    until = (datetime.now(UTC) + timedelta(days=3)).replace(microsecond=0)
    rc, out, err = await cli(server, "extend", "hold-2", "--until", until.isoformat())
    assert rc == 0, err
    assert datetime.fromisoformat(json.loads(out)["expiresAt"]) == until
    local = until.astimezone(timezone(timedelta(hours=2)))
    rc, out, err = await cli(server, "extend", "hold-2", "--until", local.isoformat())
    assert rc == 0, err
    assert datetime.fromisoformat(json.loads(out)["expiresAt"]) == until


@pytest.mark.parametrize(
    "args",
    [
        ("extend", "hold-2"),
        ("extend", "hold-2", "60", "--until", "2030-01-01T00:00:00Z"),
        ("extend", "hold-2", "--until", "2030-01-01T00:00:00"),  # no UTC offset
        ("extend", "hold-2", "--until", "tomorrow"),
    ],
)
async def test_extend_needs_exactly_one_valid_expiry(
    server: UnistockServer, args: tuple[str, ...]
) -> None:
    rc, out, err = await cli(server, *args)
    assert (rc, out) == (2, "")
    assert "Traceback" not in err


async def test_extend_help_says_what_seconds_means() -> None:
    rc, text, _ = await run_cli("extend", "--help")
    assert rc == 0
    assert "from now" in text


async def test_client_extend_by_ttl_positionally_or_to_an_absolute_time(
    admin: UnistockClient,
) -> None:
    backoffice = admin
    receipt = pb.Movement(
        source_id="bo", seq=1, sku="SHOE-42", location_id="store-7", type=pb.RECEIPT, quantity=1
    )
    async for ack in admin.apply_movements([pb.MovementBatch(source_id="bo", movements=[receipt])]):
        assert ack.applied == 1
    await backoffice.reserve("hold-3", [("SHOE-42", "store-7", 1)], kind="ORDER")
    res = await backoffice.extend("hold-3", 600)
    assert res.HasField("expires_at")
    at = (datetime.now(UTC) + timedelta(days=2)).replace(microsecond=0)
    res = await backoffice.extend("hold-3", expires_at=at)
    assert res.expires_at.ToDatetime(tzinfo=UTC) == at
    with pytest.raises(ValueError, match="exactly one"):
        await backoffice.extend("hold-3", 600, expires_at=at)
    with pytest.raises(ValueError, match="exactly one"):
        await backoffice.extend("hold-3")


async def _watch_then_interrupt(
    srv: UnistockServer, lines_before: int, signals: int = 1
) -> tuple[int, str]:
    """`unistock watch`, SIGINT(s) once it printed lines_before lines (0: as soon as it runs)."""
    proc = await spawn(*server_args(srv), "watch")
    assert proc.stdout is not None
    for _ in range(lines_before):
        assert await proc.stdout.readline()
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
    _, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_ctrl_c_on_watch_exits_130_without_a_traceback(server: UnistockServer) -> None:
    rc, _, err = await cli(server, "move", "backoffice", "1", "RECEIPT", "SHOE-42@store-7:3")
    assert rc == 0, err
    for run in range(int(os.environ.get("CTRLC_RUNS", "12"))):
        rc, err = await _watch_then_interrupt(server, lines_before=2 if run % 3 else 0)
        if run % 3 == 0 and ("Fatal Python error" in err or "Could not import runpy" in err):
            continue  # SIGINT while the interpreter itself starts, before any code of ours
        assert "Traceback" not in err, err
        assert "KeyboardInterrupt" not in err, err
        if run % 3:  # interrupted while watching (earlier, Python may die of SIGINT itself)
            assert rc == 130, err


async def test_a_second_ctrl_c_also_exits_130_without_a_traceback(server: UnistockServer) -> None:
    for _ in range(5):
        rc, err = await _watch_then_interrupt(server, lines_before=1, signals=2)
        assert rc == 130, err
        assert "Traceback" not in err, err


async def test_a_transfer_from_the_command_line(server: UnistockServer) -> None:
    """Issue 9: move --counterpart ships to a destination; `transfer` shows it in transit;
    close-transfer at the destination records the missing unit lost (twice: changes nothing);
    exit 1 and the reason for an unknown transfer or a TRANSFER_OUT without a destination."""
    rc, _, err = await cli(server, "move", "dc-sys", "1", "RECEIPT", "SHOE-42@dc-1:10")
    assert rc == 0, err
    rc, _, err = await cli(
        server, "move", "dc-sys", "2", "TRANSFER_OUT", "SHOE-42@dc-1:3", "--transfer-id", "TR-7"
    )
    assert rc == 1
    assert "movements[0].counterpart_location_id: must not be empty" in err
    rc, _, err = await cli(
        server, "move", "dc-sys", "3", "TRANSFER_OUT", "SHOE-42@dc-1:3",
        "--transfer-id", "TR-7", "--counterpart", "store-7",
    )  # fmt: skip
    assert rc == 0, err
    for _ in range(50):  # the shipment reaches the destination just after the ack
        rc, out, _ = await cli(server, "get", "SHOE-42", "store-7")
        if json.loads(out).get("inTransit") == "3":
            break
        await asyncio.sleep(0.1)
    assert json.loads(out)["inTransit"] == "3"
    rc, _, err = await cli(
        server, "move", "till-7", "1", "TRANSFER_IN", "SHOE-42@store-7:2", "--transfer-id", "TR-7"
    )
    assert rc == 0, err
    rc, out, err = await cli(server, "transfer", "TR-7")
    assert rc == 0, err
    t = json.loads(out)
    assert (t["state"], t["originLocationId"], t["destinationLocationId"]) == (
        "IN_TRANSIT",
        "dc-1",
        "store-7",
    )
    assert t["lines"] == [{"sku": "SHOE-42", "shipped": "3", "received": "2", "inTransit": "1"}]
    for _ in range(2):
        rc, out, err = await cli(server, "close-transfer", "TR-7", "store-7")
        assert rc == 0, err
        closed = json.loads(out)
        assert closed["state"] == "CLOSED"
        assert closed["lines"][0]["lost"] == "1"
        assert [d["kind"] for d in closed["discrepancies"]] == ["CLOSED_SHORT"]
    rc, out, _ = await cli(server, "get", "SHOE-42", "store-7")
    assert json.loads(out)["inTransit"] == "0"  # every number printed, zeros too
    rc, out, err = await cli(server, "transfer", "TR-none")
    assert (rc, out) == (3, "")
    assert err.startswith("not found: ")
    assert "TR-none" in err


async def test_a_damaged_return_and_its_write_off_from_the_command_line(
    server: UnistockServer,
) -> None:
    rc, _, err = await cli(server, "move", "till-1", "1", "RECEIPT", "COAT@store-7:2")
    assert rc == 0, err
    rc, _, err = await cli(
        server, "move", "till-1", "2", "RETURN", "COAT@store-7:1", "--condition", "NON_SELLABLE"
    )
    assert rc == 0, err
    rc, _, err = await cli(
        server, "move", "bo-1", "1", "ADJUSTMENT", "COAT@store-7:1",
        "--sign", "-", "--reason", "torn", "--condition", "NON_SELLABLE",
    )  # fmt: skip
    assert rc == 0, err
    rc, out, _ = await cli(server, "get", "COAT", "store-7")
    level = json.loads(out)
    assert (level["onHand"], level.get("nonSellable", "0")) == ("2", "0")


async def test_find_from_the_command_line(server: UnistockServer) -> None:
    """Issue 10: unistock find ranks a network's locations; usage errors exit 2."""
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await c.upsert_locations(
            [
                apb.Location(location_id="s1", type=apb.STORE, latitude=48.1372,
                             longitude=11.5756, has_position=True, ship_from_store=True),
                apb.Location(location_id="s2", type=apb.STORE, latitude=48.1480,
                             longitude=11.5756, has_position=True, ship_from_store=True),
            ]
        )  # fmt: skip
        await c.upsert_networks([apb.Network(network_id="web", location_ids=["s1", "s2"])])
    rc, _, err = await cli(server, "move", "wms", "1", "RECEIPT", "SHOE-42@s2:2")
    assert rc == 0, err
    rc, out, err = await cli(server, "find", "SHOE-42:2", "--near", "s1")
    assert rc == 0, err
    [option] = json.loads(out)["options"]
    assert (option["locationId"], round(option["distanceKm"], 1), option["coversAll"]) == (
        "s2",
        1.2,
        True,
    )
    # Nothing found, asked for a split: every field asked for is shown, empty.
    rc, out, err = await cli(server, "find", "BAG-1", "--split", "--near", "s1")
    assert rc == 0, err
    assert json.loads(out) == {"options": [], "split": [], "splitCoversAll": False}
    for args, words in [
        (["SHOE-42:0"], "SKU[:QTY]"),
        (["SHOE-42", "--at", "91,0"], "argument --at: latitude must be -90 to 90, got 91"),
        (["SHOE-42", "--at", "0,-181"], "argument --at: longitude must be -180 to 180"),
        (["SHOE-42", "--max-km", "5"], "argument --max-km: needs --near or --at"),
        (["SHOE-42", "--max-km", "-1", "--near", "s1"], "argument --max-km: must be 0"),
        (["SHOE-42", "--limit", "0"], "argument --limit"),
        (["SHOE-42@s1:1"], "no @LOCATION here"),
    ]:
        rc, _, err = await cli(server, "find", *args)
        assert rc == 2, (args, err)
        assert words in err, (args, err)
    rc, _, err = await cli(server, "find", "SHOE-42", "--network", "nope")
    assert rc == 3
    assert err.startswith("not found: ")
    assert "nope" in err


async def test_reserve_a_line_anywhere_in_a_network(server: UnistockServer) -> None:
    """Issue 10: reserve --in NETWORK SKU[:QTY]: the server chooses the location; no line at
    all is a usage error."""
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        await c.upsert_locations([apb.Location(location_id="dc", type=apb.WAREHOUSE)])
        await c.upsert_networks([apb.Network(network_id="web", location_ids=["dc"])])
    rc, _, err = await cli(server, "move", "wms", "1", "RECEIPT", "SHOE-42@dc:5")
    assert rc == 0, err
    rc, out, err = await cli(server, "reserve", "cart-7", "--in", "web", "SHOE-42:2")
    assert rc == 0, err
    [line] = json.loads(out)["reservation"]["lines"]
    assert line == {"sku": "SHOE-42", "locationId": "dc", "quantity": "2", "network": "web"}
    rc, _, err = await cli(server, "reserve", "cart-8")
    assert rc == 2
    assert "--in NETWORK" in err
    rc, _, err = await cli(server, "reserve", "cart-8", "--in", "web", "SHOE-42@dc:1")
    assert rc == 2
    assert "give SKU[:QTY]; the network chooses the location" in err


async def test_transfer_reservation_from_the_command_line(server: UnistockServer) -> None:
    rc, _, err = await cli(server, "move", "wms", "1", "RECEIPT", "SHOE-42@s1:2")
    assert rc == 0, err
    rc, _, err = await cli(server, "move", "wms", "2", "RECEIPT", "SHOE-42@s2:2")
    assert rc == 0, err
    rc, _, err = await cli(server, "reserve", "o-9", "SHOE-42@s1:2", "--kind", "ORDER")
    assert rc == 0, err
    for _ in range(2):  # the retry moves nothing more
        rc, out, err = await cli(
            server, "transfer-reservation", "o-9", "SHOE-42@s1>s2:1", "--request-id", "m1"
        )
        assert rc == 0, err
        got = sorted((ln["locationId"], ln["quantity"]) for ln in json.loads(out)["lines"])
        assert got == [("s1", "1"), ("s2", "1")]
    rc, _, err = await cli(
        server, "transfer-reservation", "o-9", "SHOE-42@s1:1", "--request-id", "m2"
    )
    assert rc == 2
    assert "SKU@FROM>TO:QTY" in err
