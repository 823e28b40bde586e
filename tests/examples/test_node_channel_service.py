"""The Node.js channel service example (examples/node-channel-service) against a real server: the
commands of its README run as written (npm ci, then node cart.js with the contract from proto/
and from reflection), print what the README shows, and leave the server as they promise; its
errors exit 1 naming the call and the gRPC code."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient, UnistockClientError
from unistock.devtools.services import ensure_binary
from unistock.server.app.server import UnistockServer
from unistock.v1 import inventory_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "node-channel-service"
README = EXAMPLE / "README.md"
#: Put first on PATH: the README's `.venv/bin/unistock` is the CLI of the Python running the tests.
VENV_BIN = Path(sys.executable).parent


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def readme_commands() -> list[str]:
    """Every command line of the README's sh blocks, in order, comments stripped."""
    return [
        line.split("  #")[0].strip()
        for block in readme_blocks("sh")
        for line in block.splitlines()
        if line.strip()
    ]


def normalised(output: str) -> str:
    """The journey's output without what differs between runs: the cart's id (cart-<time>), its
    expiry and the path of proto/."""
    output = re.sub(r"\bcart-[0-9a-z]+", "cart-ID", output)
    output = re.sub(r"expires \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "expires TIME", output)
    return re.sub(r"from \S*/proto/unistock/v1/inventory.proto", "from PROTO", output)


def npm_env(cache: Path) -> dict[str, str]:
    """npm with its cache under pytest's cache directory (a second run installs offline)."""
    return dict(
        os.environ,
        npm_config_cache=str(cache),
        npm_config_prefer_offline="true",
        npm_config_audit="false",
        npm_config_fund="false",
        npm_config_update_notifier="false",
    )


@pytest.fixture(scope="session")
def installed(pytestconfig: pytest.Config) -> None:
    """Node.js and npm present (installed from Debian when missing, as root), then the README's
    `npm ci` run in the example's directory."""
    ensure_binary("node", "nodejs")
    ensure_binary("npm", "npm")
    [npm] = [c for c in readme_commands() if c.startswith("npm ")]
    assert npm == "npm ci"
    # pytest's cache directory, or npm's own (~/.npm) when pytest runs with -p no:cacheprovider.
    pytest_cache = getattr(pytestconfig, "cache", None)
    cache = pytest_cache.mkdir("npm") if pytest_cache is not None else Path.home() / ".npm"
    done = subprocess.run(
        npm,
        shell=True,
        cwd=EXAMPLE,
        env=npm_env(cache),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


async def sh(command: str, cwd: Path, **env: str) -> tuple[int, str, str]:
    """Run command in a shell in cwd with these environment variables (UNISTOCK_PROTO_DIR unset
    unless given): (exit code, stdout, stderr)."""
    environ = {k: v for k, v in os.environ.items() if k != "UNISTOCK_PROTO_DIR"}
    environ.update(env, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = await asyncio.create_subprocess_shell(
        command,
        cwd=cwd,
        env=environ,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cart(
    srv: UnistockServer, *args: str, token: str = TOKENS["channel"]
) -> tuple[int, str, str]:
    """node cart.js with these arguments, as a channel service of srv."""
    command = " ".join(["node", "cart.js", *args])
    return await sh(command, EXAMPLE, UNISTOCK_TARGET=target(srv), UNISTOCK_TOKEN=token)


async def level(srv: UnistockServer, sku: str, location: str) -> pb.StockLevel:
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        [lvl] = await c.get_availability([(sku, location)])
        return lvl


async def test_the_readme_runs_as_written_and_prints_what_it_shows(
    installed: None, server: UnistockServer
) -> None:
    commands = readme_commands()
    assert commands == [
        ".venv/bin/unistock move backoffice 1 RECEIPT SHOE-42@store-7:3",
        "cd examples/node-channel-service",
        "npm ci",
        'export UNISTOCK_TOKEN="$(cat ../../var/dev-token)"',
        "node cart.js SHOE-42 store-7",
        "node cart.js --from-reflection SHOE-42 store-7",
    ]
    # The receipt, from the repository root as a user with make run's admin token.
    rc, _, err = await sh(
        commands[0].replace(".venv/bin/", ""),
        ROOT,
        UNISTOCK_TARGET=target(server),
        UNISTOCK_TOKEN=TOKENS["admin"],
    )
    assert rc == 0, err
    # npm ci ran in the fixture; the token is a channel one here: that role is enough.
    rc, out, err = await cart(server, "SHOE-42", "store-7")
    assert (rc, err) == (0, "")
    [shown] = [b for b in readme_blocks("text") if b.startswith("reflection")]
    assert normalised(out) == normalised(shown)
    cart_id = re.search(r"^reserve +(cart-[0-9a-z]+) CART ACTIVE", out, flags=re.M)
    assert cart_id is not None, out

    rc, out, err = await cart(server, "--from-reflection", "SHOE-42", "store-7")
    assert (rc, err) == (0, "")
    assert "contract    unistock.v1.InventoryService from reflection v1alpha\n" in out
    assert re.search(
        r"^oversell +cart-\w+-oversell of 3 refused, FAILED_PRECONDITION: "
        r"SHOE-42@store-7 requested 3, available 2, shortfall 1$",
        out,
        flags=re.M,
    ), out
    assert "available 2 -> 3, reserved 1 -> 0 (version 5)" in out

    # Both carts released, the oversells never made: the shelf is whole again.
    lvl = await level(server, "SHOE-42", "store-7")
    assert (lvl.on_hand, lvl.reserved, lvl.available, lvl.version) == (3, 0, 3, 5)
    async with UnistockClient(target(server), TOKENS["admin"]) as c:
        made = await c.get_reservation(cart_id.group(1))
        assert made.state == pb.RELEASED
        with pytest.raises(UnistockClientError) as refused:
            await c.get_reservation(cart_id.group(1) + "-oversell")
    assert refused.value.code.name == "NOT_FOUND"


async def test_a_missing_token_exits_1_saying_so(installed: None) -> None:
    rc, out, err = await sh("node cart.js SHOE-42 store-7", EXAMPLE, UNISTOCK_TOKEN="")
    assert (rc, out) == (1, "")
    assert err.startswith("error: UNISTOCK_TOKEN is not set"), err


async def test_help_lists_every_setting_of_the_readme(installed: None) -> None:
    rc, out, err = await sh("node cart.js --help", EXAMPLE)
    assert (rc, err) == (0, "")
    table = README.read_text().split("## Settings")[1].split("##")[0]
    settings = re.findall(r"`((?:UNISTOCK_|--?)[\w-]+)", table)
    assert len(settings) == 8, settings
    for setting in settings:
        assert setting in out, setting


async def test_errors_exit_1_naming_the_call_and_the_grpc_code(
    installed: None, server: UnistockServer
) -> None:
    rc, out, err = await cart(server, "SHOE-42", "store-7", token="not-a-token-0123456789")
    assert rc == 1
    assert err.startswith("error: GetAvailability failed: UNAUTHENTICATED: "), err
    assert "health      unistock.v1.InventoryService: SERVING\n" in out

    # Nothing on the shelf: the cart itself is refused, its short line decoded.
    rc, out, err = await cart(server, "--quantity", "2", "SHOE-43", "store-7")
    assert rc == 1
    assert err.startswith("error: Reserve failed: FAILED_PRECONDITION: "), err
    assert err.rstrip().endswith("(short: SHOE-43@store-7 requested 2, available 0, shortfall 2)")
    assert "\nreserve " not in out


async def test_a_cart_id_already_used_is_an_error(installed: None, server: UnistockServer) -> None:
    async with UnistockClient(target(server), TOKENS["backoffice"]) as c:
        receipt = pb.Movement(
            source_id="bo", seq=1, sku="SHOE-42", location_id="store-7", type=pb.RECEIPT, quantity=1
        )
        async for ack in c.apply_movements([pb.MovementBatch(source_id="bo", movements=[receipt])]):
            assert ack.applied == 1
    rc, out, err = await cart(server, "--reservation-id", "basket-7", "SHOE-42", "store-7")
    assert (rc, err) == (0, "")
    assert "reserve     basket-7 CART ACTIVE: 1 x SHOE-42@store-7, expires " in out
    assert "oversell    basket-7-oversell of 1 refused, FAILED_PRECONDITION: " in out
    rc, out, err = await cart(server, "--reservation-id", "basket-7", "SHOE-42", "store-7")
    assert rc == 1
    assert err == (
        "error: Reserve failed: basket-7 was made before (now RELEASED): "
        "give another --reservation-id\n"
    )
    assert (await level(server, "SHOE-42", "store-7")).available == 1
