"""`unistock move SOURCE next ...`: the CLI numbers the source through the client library's
durable MovementWriter (an outbox file per server and source): nothing recorded is lost while
the server is down, a retried command with --request-id records nothing twice, a rejection and
a collision with hand-numbered seqs say so (exit 1, 4)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.client.test_cli import run_cli
from tests.fixtures.server import TOKENS, MakeServer
from unistock.client import UnistockClient
from unistock.client.cli_movements import outbox_path
from unistock.devtools.services import free_port


async def on_hand(where: str, sku: str = "SHOE-42", location: str = "store-7") -> int:
    async with UnistockClient(where, TOKENS["admin"]) as c:
        (level,) = await c.get_availability(keys=[(sku, location)])
    return level.on_hand


async def test_next_keeps_what_the_server_did_not_ack_and_sends_it_with_the_next(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    port = free_port()
    where = f"127.0.0.1:{port}"
    args = ("--target", where, "--token", TOKENS["admin"], "move", "wms")
    # No server yet: the receipt is recorded durably, and the CLI says it is not applied yet.
    rc, out, err = await run_cli(*args, "next", "RECEIPT", "SHOE-42@store-7:3", "--wait", "1")
    assert (rc, out) == (1, "")
    path = outbox_path(where, "wms")
    assert f"error: recorded as wms:1 in {path}, but the server did not acknowledge it" in err
    assert "kept and sent by the next `unistock move wms next ...`" in err
    assert path == Path(os.environ["UNISTOCK_OUTBOX_DIR"]) / f"127.0.0.1_{port}" / "wms.sqlite"
    await make_server(clean_redis_url, grpc_port=port)
    rc, out, err = await run_cli(*args, "next", "RECEIPT", "SHOE-42@store-7:2")
    assert rc == 0, err
    got = json.loads(out)
    assert (got["seq"], got["recorded"], got["applied"], got["duplicates"]) == ("2", True, 2, 0)
    assert await on_hand(where) == 5  # both: the one kept while the server was down too
    # A retried command with its request id records nothing twice.
    for recorded in (True, False):
        rc, out, err = await run_cli(
            *args, "next", "SALE", "SHOE-42@store-7:1", "--request-id", "till-9/1"
        )
        assert rc == 0, err
        assert (json.loads(out)["seq"], json.loads(out)["recorded"]) == ("3", recorded)
    assert await on_hand(where) == 4
    # The same request id for another movement is refused, nothing recorded.
    rc, _, err = await run_cli(
        *args, "next", "SALE", "SHOE-42@store-7:2", "--request-id", "till-9/1"
    )
    assert rc == 1
    assert "till-9/1" in err
    # A rejection names its reason and field (an ADJUSTMENT without --sign).
    rc, out, err = await run_cli(*args, "next", "ADJUSTMENT", "SHOE-42@store-7:1", "--reason", "x")
    assert rc == 1
    assert err.startswith("error: movement rejected: "), err
    assert json.loads(out)["rejected"][0]["seq"] == "4"
    assert await on_hand(where) == 4


async def test_next_on_a_source_numbered_by_hand_is_a_duplicate(
    make_server: MakeServer, clean_redis_url: str
) -> None:
    srv = await make_server(clean_redis_url)
    where = f"127.0.0.1:{srv.grpc_port}"
    args = ("--target", where, "--token", TOKENS["admin"], "move", "backoffice")
    rc, _, err = await run_cli(*args, "1", "RECEIPT", "SHOE-42@store-7:3")
    assert rc == 0, err
    rc, _, err = await run_cli(*args, "next", "RECEIPT", "SHOE-42@store-7:3")
    assert rc == 4
    assert err.startswith("duplicate: the server already had backoffice:1: nothing changed"), err
    assert await on_hand(where) == 3
    rc, _, err = await run_cli(*args, "1", "RECEIPT", "SHOE-42@store-7:3", "--request-id", "r")
    assert rc == 2
    assert "argument --request-id: only with next" in err
