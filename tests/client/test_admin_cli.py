"""`unistock admin ...` against a real server (Redis, SQLite): master data imported from CSV
files is exactly what ListLocations / ListNetworks (and the server's products) then hold; a bad
line names FILE:LINE and nothing is sent; a batch the server refuses names its rows and lines;
importing again changes nothing; big files go in batches; the lists print as tables and JSON."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import sys
from pathlib import Path

import pytest

from tests.client.test_cli import cli, server_args
from tests.fixtures.server import TOKENS, target
from unistock.client import UnistockClient
from unistock.server.app.server import UnistockServer
from unistock.v1 import admin_pb2 as apb

LOCATIONS = (
    "\ufefflocation_id,type,name,latitude,longitude,store_id,click_and_collect,"
    "ship_from_store,e_reservation,default_safety_stock\n"
    's1,store,"Store 1, Marienplatz",48.137,11.575,store-1,yes,no,1,2\n'
    "\n"
    "dc,WAREHOUSE,Central DC,,,,false,TRUE,0,\n"
    "mp,Virtual,Marketplace,-33.5,-70.25,,,,,\n"
)
OLD_LOCATIONS = "location_id,store_id\ns2,store-2\ns2-back,store-2\n"
NETWORKS = (
    "network_id,channel,staleness_limit_seconds,location_ids,stale_policy,stale_discount_percent\n"
    "web,web-shop,300,s1; dc ;s2,discount,50\n"
    "stores,,,s1;s2;s2-back;,,\n"
)
#: Networks with a low-stock threshold (optional column): 4 units, and empty (0).
THRESHOLDS = (
    "network_id,channel,staleness_limit_seconds,location_ids,stale_policy,stale_discount_percent,"
    "low_stock_threshold\n"
    "stores,,,s1;s2,,,4\n"
    "\n"
    "dc-only,,,dc,,,\n"
)
PRODUCTS = "sku,gtin,model,size,colour\nSHOE-42,,SHOE,42,black\nBAG,4006381333931,BAG,,brown\n"
CATALOGUE = "gtin,sku\n80614141123458,SHOE-42\n4006381333931,BAG\n96385074,HAT\n"
SAFETY_STOCK = "sku,location_id,units\nSHOE-42,s1,3\nBAG,s1,\nHAT,dc,0\n"

EXPECTED_LOCATIONS = [
    apb.Location(location_id="dc", type=apb.WAREHOUSE, name="Central DC", ship_from_store=True),
    apb.Location(
        location_id="mp",
        type=apb.VIRTUAL,
        name="Marketplace",
        latitude=-33.5,
        longitude=-70.25,
        has_position=True,
    ),
    apb.Location(
        location_id="s1",
        type=apb.STORE,
        name="Store 1, Marienplatz",
        latitude=48.137,
        longitude=11.575,
        has_position=True,
        store_id="store-1",
        click_and_collect=True,
        e_reservation=True,
        default_safety_stock=2,
    ),
    apb.Location(location_id="s2", type=apb.STORE, store_id="store-2"),
    apb.Location(location_id="s2-back", type=apb.STORE, store_id="store-2"),
]
EXPECTED_NETWORKS = [
    apb.Network(
        network_id="stores", location_ids=["s1", "s2", "s2-back"], stale_policy=apb.Network.EXCLUDE
    ),
    apb.Network(
        network_id="web",
        channel="web-shop",
        location_ids=["dc", "s1", "s2"],  # a set: listed sorted
        staleness_limit_seconds=300,
        stale_policy=apb.Network.DISCOUNT,
        stale_discount_percent=50,
    ),
]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def all_files(tmp_path: Path) -> tuple[str, ...]:
    return (
        "--locations",
        write(tmp_path, "locations.csv", LOCATIONS),
        "--networks",
        write(tmp_path, "networks.csv", NETWORKS),
        "--products",
        write(tmp_path, "products.csv", PRODUCTS),
        "--catalogue",
        write(tmp_path, "catalogue.csv", CATALOGUE),
        "--safety-stock",
        write(tmp_path, "safety.csv", SAFETY_STOCK),
    )


async def lists(srv: UnistockServer) -> tuple[list[apb.Location], list[apb.Network]]:
    async with UnistockClient(target(srv), TOKENS["admin"]) as c:
        return await c.list_locations(), await c.list_networks()


async def test_import_of_all_five_files_is_what_the_server_then_holds_and_again_changes_nothing(
    server: UnistockServer, tmp_path: Path
) -> None:
    rc, out, err = await cli(
        server, "admin", "import", "--locations", write(tmp_path, "old.csv", OLD_LOCATIONS)
    )
    assert (rc, err) == (0, f"{tmp_path}/old.csv: 2 locations imported\n")
    summary = [
        f"{tmp_path}/locations.csv: 3 locations imported in 1 batch",
        f"{tmp_path}/networks.csv: 2 networks imported in 1 batch",
        f"{tmp_path}/products.csv: 2 products imported in 1 batch",
        f"{tmp_path}/catalogue.csv: 1 GTIN merged into --products rows, 1 product imported "
        "(SKU and GTIN only) in 1 batch",
        f"{tmp_path}/safety.csv: 3 safety stocks imported (1 of them cleared) in 1 batch",
    ]
    for _ in range(2):  # the second import replaces every row with the same values
        rc, out, err = await cli(server, "admin", "import", *all_files(tmp_path))
        assert rc == 0, err
        assert out.splitlines() == summary
        # stderr is no terminal: a line per file instead of progress bars
        assert err.splitlines()[0] == f"{tmp_path}/locations.csv: 3 locations imported"
        assert len(err.splitlines()) == 5, err
        assert await lists(server) == (EXPECTED_LOCATIONS, EXPECTED_NETWORKS)
        products = {
            sku: (p.gtin, p.model, p.size, p.colour) for sku, p in server.master.products.items()
        }
        assert products == {
            "SHOE-42": ("80614141123458", "SHOE", "42", "black"),  # the catalogue's GTIN merged
            "BAG": ("04006381333931", "BAG", "", "brown"),
            "HAT": ("00000096385074", "", "", ""),  # only in the catalogue
        }
        rc, out, err = await cli(server, "get", "SHOE-42", "s1")
        assert rc == 0, err
        assert json.loads(out)["safetyStock"] == "3"
        rc, out, _ = await cli(server, "get", "BAG", "s1")  # cleared: the location's default
        assert json.loads(out)["safetyStock"] == "2"
        rc, out, _ = await cli(server, "get", "HAT", "dc")  # its own 0 (dc's default is 0 too)
        assert json.loads(out).get("safetyStock", "0") == "0"
    assert server.master.position_safety == {("SHOE-42", "s1"): 3, ("HAT", "dc"): 0}


@pytest.mark.parametrize(
    ("name", "text", "line", "problem"),
    [
        ("locations.csv", LOCATIONS.replace("-70.25", ""), 5, "longitude: empty: give both"),
        ("locations.csv", LOCATIONS.replace("48.137", "91"), 2, "latitude: expected degrees"),
        ("locations.csv", LOCATIONS.replace("Virtual", "shop"), 5, "type: expected STORE"),
        ("locations.csv", LOCATIONS.replace(",yes,", ",maybe,"), 2, "click_and_collect: expected"),
        ("locations.csv", LOCATIONS + "s1,STORE,,,,,,,,\n", 6, "location_id 's1' is already on line 2"),
        ("locations.csv", LOCATIONS.replace("\nmp,", "\nm p,"), 5, "location_id: 'm p' is not"),
        ("locations.csv", "location_id,name\nx,X\n", 1, "the header lacks the column type"),
        ("locations.csv", "location_id,lattitude\nx,1\n", 1, "unknown column 'lattitude'"),
        ("locations.csv", LOCATIONS.replace("Central DC,", "Central DC"), 4, "expected 10 values"),
        ("networks.csv", NETWORKS.replace("300", "soon"), 2, "staleness_limit_seconds: expected a whole number"),
        ("networks.csv", NETWORKS.replace("s2;s2-back", "s2;s2"), 3, "location_ids: 's2' is listed twice"),
        ("networks.csv", NETWORKS.replace(",discount,", ",halve,"), 2, "stale_policy: expected EXCLUDE or DISCOUNT, got 'halve'"),
        ("networks.csv", NETWORKS.replace(",50", ",150"), 2, "stale_discount_percent: "),
        ("networks.csv", NETWORKS.replace(",50", ","), 2, "stale_discount_percent: give 0 to 100 with stale_policy DISCOUNT"),
        ("networks.csv", NETWORKS.replace(",discount,50", ",EXCLUDE,10"), 2, "stale_discount_percent: applies only with"),
        ("networks.csv", THRESHOLDS + "web,,,s1,,,-1\n", 5, "low_stock_threshold: must be 0 to 1,000,000,000, got -1"),
        ("networks.csv", THRESHOLDS + "web,,,s1,,,1000000001\n", 5, "low_stock_threshold: must be 0 to 1,000,000,000, got 1000000001"),
        ("networks.csv", THRESHOLDS.replace(",4\n", ",few\n"), 2, "low_stock_threshold: expected a whole number, got 'few'"),
        ("products.csv", PRODUCTS.replace("4006381333931", "4006381333932"), 3, "gtin: '4006381333932' is not"),
        ("catalogue.csv", CATALOGUE + "4006381333931,HAT\n", 5, "GTIN 04006381333931 names SKU 'BAG' on line 3"),
        ("catalogue.csv", CATALOGUE + "4012345000009,HAT\n", 5, "SKU 'HAT' has GTIN 00000096385074 on line 4"),
        ("catalogue.csv", CATALOGUE.replace(",BAG", ",SHOE-42"), 3, "SKU 'SHOE-42' has GTIN 80614141123458 on line 2"),
        ("catalogue.csv", "gtin,sku\n96385074,BAG\n", 2, "SKU 'BAG' has GTIN 00000096385074 here, but 04006381333931 in"),
        ("safety.csv", SAFETY_STOCK + "SHOE-42,s1,4\n", 5, "sku 'SHOE-42' at location_id 's1' is already on line 2"),
        ("safety.csv", SAFETY_STOCK.replace(",3", ",-3"), 2, "units: must be 0 to 1,000,000,000, got -3"),
        ("safety.csv", "sku,location_id\nA,s1\n", 1, "the header lacks the column units"),
    ],
)  # fmt: skip
async def test_a_bad_line_names_file_and_line_and_nothing_is_imported(
    server: UnistockServer, tmp_path: Path, name: str, text: str, line: int, problem: str
) -> None:
    args = list(all_files(tmp_path))
    bad = write(tmp_path, name, text)  # replaces the good file of that name
    rc, out, err = await cli(server, "admin", "import", *args)
    assert rc == 1
    assert out == ""
    [message] = err.splitlines()
    assert message.startswith(f"error: {bad}:{line}: "), message
    assert problem in message, message
    assert await lists(server) == ([], [])  # not even the files before the bad one
    assert server.master.products == {}
    assert server.master.position_safety == {}


async def test_not_utf8_or_no_header_names_the_line(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes("sku,model\nA,Chaussure\nB,Ch\u00e2le\n".encode("latin-1"))
    empty = write(tmp_path, "empty.csv", "\n\n")
    for path, expected in (
        (str(latin1), f"error: {latin1}:3: not UTF-8 text"),
        (empty, f"error: {empty}:1: empty file: expected the header sku,gtin,model,size,colour"),
    ):
        # checked before any connection: no server needed
        rc, _, err = await run_admin("import", "--products", path, "--dry-run")
        assert rc == 1
        assert err.startswith(expected), err


async def run_admin(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "unistock.client.cli",
        "--target",
        "127.0.0.1:1",
        "--token",
        "unused-token-0123456789",
        "admin",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_a_batch_refused_by_the_server_names_its_rows_and_earlier_batches_stay(
    server: UnistockServer, tmp_path: Path
) -> None:
    networks = write(
        tmp_path,
        "networks.csv",
        "network_id,location_ids\nn1,s1\nn2,s1\n\nn3,s1\nn4,nowhere\nn5,s1\n",
    )
    locations = write(tmp_path, "locations.csv", LOCATIONS)
    rc, out, err = await cli(
        server, "admin", "import", "--locations", locations, "--networks", networks, "--batch", "2"
    )
    assert rc == 1
    assert out == ""
    assert err.splitlines()[-1] == (
        f"error: {networks}: rows 3-4 (lines 5-6): INVALID_ARGUMENT: networks[1].location_ids[0]: "
        "unknown location 'nowhere' (upsert it with UpsertLocations first) (networks[1] is line 6)"
    )
    locs, nets = await lists(server)
    assert [loc.location_id for loc in locs] == ["dc", "mp", "s1"]  # the earlier file stays
    assert [n.network_id for n in nets] == ["n1", "n2"]  # so does the earlier batch


async def test_a_refused_gtin_merged_from_the_catalogue_names_both_lines(
    server: UnistockServer, tmp_path: Path
) -> None:
    taken = write(tmp_path, "taken.csv", "sku,gtin\nOLD-SHOE,80614141123458\n")
    rc, _, err = await cli(server, "admin", "import", "--products", taken)
    assert rc == 0, err
    products = write(tmp_path, "products.csv", PRODUCTS)
    catalogue = write(tmp_path, "catalogue.csv", CATALOGUE)
    rc, out, err = await cli(
        server, "admin", "import", "--products", products, "--catalogue", catalogue
    )
    assert (rc, out) == (1, "")
    assert err.splitlines()[-1] == (
        f"error: {products}: rows 1-2 (lines 2-3): INVALID_ARGUMENT: products[0].gtin: GTIN "
        "80614141123458 already belongs to SKU 'OLD-SHOE' (products[0] is line 2, its GTIN "
        f"from {catalogue}:2)"
    )
    assert set(server.master.products) == {"OLD-SHOE"}


async def test_a_products_file_of_2500_rows_goes_in_3_batches(
    server: UnistockServer, tmp_path: Path
) -> None:
    rows = "".join(f"SKU-{i:04},,M-{i // 10},{i % 10},red\n" for i in range(2500))
    products = write(tmp_path, "products.csv", "sku,gtin,model,size,colour\n" + rows)
    rc, out, err = await cli(server, "admin", "import", "--products", products)
    assert rc == 0, err
    assert out == f"{products}: 2,500 products imported in 3 batches\n"
    assert len(server.master.products) == 2500
    assert server.master.products["SKU-2499"].model == "M-249"
    rc, out, err = await cli(server, "admin", "import", "--products", products, "--batch", "2500")
    assert out == f"{products}: 2,500 products imported in 1 batch\n"


async def test_locations_and_networks_as_tables_and_json(
    server: UnistockServer, tmp_path: Path
) -> None:
    rc, _, err = await cli(server, "admin", "locations")
    assert (rc, err) == (0, "note: no locations in master data\n")
    rc, out, _ = await cli(server, "admin", "networks", "--json")
    assert (rc, json.loads(out)) == (0, [])
    old = write(tmp_path, "old.csv", OLD_LOCATIONS)
    rc, _, err = await cli(server, "admin", "import", "--locations", old)
    assert rc == 0, err
    rc, _, err = await cli(server, "admin", "import", *all_files(tmp_path)[:4])
    assert rc == 0, err
    rc, out, _ = await cli(server, "admin", "locations", "--json")
    assert rc == 0
    locations = json.loads(out)
    assert [loc["locationId"] for loc in locations] == ["dc", "mp", "s1", "s2", "s2-back"]
    assert locations[2] == {
        "locationId": "s1",
        "type": "STORE",
        "name": "Store 1, Marienplatz",
        "latitude": 48.137,
        "longitude": 11.575,
        "hasPosition": True,
        "storeId": "store-1",
        "clickAndCollect": True,
        "shipFromStore": False,
        "eReservation": True,
        "defaultSafetyStock": "2",  # an int64, a string in protobuf's JSON
        "lowStockThreshold": "0",
    }
    assert locations[0]["hasPosition"] is False  # every field, also the defaults
    rc, out, _ = await cli(server, "admin", "networks", "--json")
    assert [(n["networkId"], n["locationIds"]) for n in json.loads(out)] == [
        ("stores", ["s1", "s2", "s2-back"]),
        ("web", ["dc", "s1", "s2"]),
    ]
    rc, out, _ = await cli(server, "admin", "locations")
    assert rc == 0
    assert "5 locations" in out
    row = next(line for line in out.splitlines() if " s1 " in line)
    for cell in (
        "STORE",
        "Store 1, Marienplatz",
        "48.137, 11.575",
        "store-1",
        "click & collect, e-reservation",
    ):
        assert cell in row, out  # one line per location: not wrapped when piped
    rc, out, _ = await cli(server, "admin", "networks")
    row = next(line for line in out.splitlines() if " web " in line)
    for cell in ("web-shop", "300 s", "dc, s1, s2"):
        assert cell in row, out


async def test_progress_bars_on_a_terminal(server: UnistockServer, tmp_path: Path) -> None:
    products = write(tmp_path, "products.csv", "sku\n" + "".join(f"P{i}\n" for i in range(30)))
    leader, follower = pty.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "unistock.client.cli",
            *server_args(server),
            "admin",
            "import",
            "--products",
            products,
            "--batch",
            "10",
            stdout=asyncio.subprocess.PIPE,
            stderr=follower,
            env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
        )
        os.close(follower)
        out, _ = await proc.communicate()
        assert proc.returncode == 0
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other side is closed
                break
            if not chunk:
                break
            screen += chunk
    finally:
        os.close(leader)
    assert out.decode() == f"{products}: 30 products imported in 3 batches\n"
    text = screen.decode(errors="replace")
    assert "30/30" in text, text
    assert "products imported" not in text  # the bar, not the line for non-terminals


async def test_only_an_admin_may_import(server: UnistockServer, tmp_path: Path) -> None:
    locations = write(tmp_path, "locations.csv", LOCATIONS)
    rc, _, err = await cli(server, "admin", "import", "--locations", locations, role="backoffice")
    assert rc == 1
    assert err.splitlines()[-1].startswith(
        f"error: {locations}: rows 1-3 (lines 2-5): PERMISSION_DENIED"
    )


async def test_usage_errors_exit_2(server: UnistockServer) -> None:
    for args in (("import",), ("import", "--products", "p.csv", "--batch", "10001"), ()):
        rc, out, err = await cli(server, "admin", *args)
        assert (rc, out) == (2, ""), err
        assert "Usage: unistock admin" in err  # Click (Typer) says Usage


def table_rows(out: str) -> dict[str, list[str]]:
    """A Rich table's body rows: first cell -> the other cells (stripped)."""
    return {
        cells[1]: cells[2:-1]
        for cells in ([c.strip() for c in line.split("│")] for line in out.splitlines())
        if len(cells) > 2
    }


async def test_low_stock_thresholds_import_from_their_column(
    server: UnistockServer, tmp_path: Path
) -> None:
    csv = "location_id,type,low_stock_threshold\ns1,STORE,4\ns2,STORE,\n"
    rc, _, err = await cli(
        server, "admin", "import", "--locations", write(tmp_path, "thresholds.csv", csv)
    )
    assert rc == 0, err
    locations, _ = await lists(server)
    assert [(loc.location_id, loc.low_stock_threshold) for loc in locations] == [
        ("s1", 4),
        ("s2", 0),
    ]
    assert server.master.low_stock_threshold("s1") == 4
    rc, out, _ = await cli(server, "admin", "locations")
    assert rc == 0
    assert "low stock" in out, out
    rows = table_rows(out)
    assert rows["s1"][-1] == "1 to 4", out  # the last column
    assert rows["s2"][-1] == "off", out


async def test_network_low_stock_thresholds_import_from_their_column_and_show(
    server: UnistockServer, tmp_path: Path
) -> None:
    locations = write(tmp_path, "locations.csv", LOCATIONS)
    old = write(tmp_path, "old.csv", OLD_LOCATIONS)
    rc, _, err = await cli(server, "admin", "import", "--locations", locations)
    assert rc == 0, err
    rc, _, err = await cli(server, "admin", "import", "--locations", old)
    assert rc == 0, err
    rc, _, err = await cli(
        server, "admin", "import", "--networks", write(tmp_path, "thresholds.csv", THRESHOLDS)
    )
    assert rc == 0, err
    _, networks = await lists(server)
    assert [(n.network_id, n.low_stock_threshold) for n in networks] == [
        ("dc-only", 0),
        ("stores", 4),
    ]
    assert server.master.networks["stores"].low_stock_threshold == 4
    rc, out, _ = await cli(server, "admin", "networks", "--json")
    assert rc == 0
    assert [(n["networkId"], n["lowStockThreshold"]) for n in json.loads(out)] == [
        ("dc-only", "0"),  # an int64, a string in protobuf's JSON
        ("stores", "4"),
    ]
    rc, out, _ = await cli(server, "admin", "networks")
    assert rc == 0
    assert "low stock" in out, out
    rows = table_rows(out)
    assert "1 to 4" in rows["stores"], out
    assert "off" in rows["dc-only"], out
    # A file without the column: its networks are replaced whole, the threshold back to 0.
    rc, _, err = await cli(
        server, "admin", "import", "--networks", write(tmp_path, "networks.csv", NETWORKS)
    )
    assert rc == 0, err
    _, networks = await lists(server)
    assert [(n.network_id, n.low_stock_threshold) for n in networks] == [
        ("dc-only", 0),
        ("stores", 0),
        ("web", 0),
    ]
    assert server.master.networks["stores"].low_stock_threshold == 0
