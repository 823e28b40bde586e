"""`make demo` (python -m unistock.devtools.demo) as a user runs it: real redis-server, mosquitto,
server and three unistock-edge-agent processes. Played through (--fast), the narration gives each
journey's outcome with the server's numbers, and every process it started is gone with its temp
dir; interrupted with SIGINT mid-run, it exits 130 just as clean."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]
import pytest

from tests.docs import ROOT, commands, example
from unistock.devtools import demo as demo_module


def demo(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[bytes], Path]:
    """The demo as a child process, its temp dir under tmp_path/tmp, its output in a file (not
    a terminal: plain text)."""
    env = {k: v for k, v in os.environ.items() if k != "TMPDIR"}
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")
    out = tmp_path / "demo.out"
    with out.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unistock.devtools.demo", *args],
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return proc, out


def wait_for(proc: subprocess.Popen[bytes], out: Path, marker: str) -> None:
    """Until the demo's output has marker (it must not exit before, nor take 2 minutes)."""
    deadline = time.monotonic() + 120
    while marker not in out.read_text():
        assert proc.poll() is None, out.read_text()
        assert time.monotonic() < deadline, out.read_text()
        time.sleep(0.1)


def started(text: str) -> dict[str, int]:
    """What the narration says it started: name -> pid."""
    return {m[1]: int(m[2]) for m in re.finditer(r"started (.+?) pid (\d+)", text)}


def temp_dir(text: str) -> Path:
    m = re.search(r"everything runs in (\S+)", text)
    assert m, text[:2000]
    return Path(m[1])


def assert_nothing_left(text: str, expected: int = 6) -> None:
    """Every process the demo said it started has exited, nothing runs from its temp dir, and
    the temp dir is gone."""
    pids = started(text)
    assert len(pids) == expected, pids
    for name, pid in pids.items():
        assert f"stopped {name} pid {pid}" in text
        try:
            proc = psutil.Process(pid)
            alive = proc.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        assert not alive, f"{name} pid {pid} is still running"
    root = temp_dir(text)
    for proc in psutil.process_iter(["cmdline"]):
        assert str(root) not in " ".join(proc.info["cmdline"] or []), proc
    assert not root.exists(), f"{root} is left"


def effects(text: str) -> list[str]:
    """The effect lines of a narration ("  -> ..."), an outbox's incarnation masked."""
    return [
        re.sub(r"\.[0-9a-f]{8}\b", ".<incarnation>", line)
        for line in text.splitlines()
        if line.startswith("  -> ")
    ]


def test_the_demo_plays_every_journey_with_the_servers_numbers(tmp_path: Path) -> None:
    proc, out = demo(tmp_path, "--fast")
    try:
        code = proc.wait(timeout=240)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
    text = out.read_text()
    assert code == 0, text[-4000:]
    assert "\x1b[" not in text, "not a terminal: no colours or cursor moves"
    assert set(started(text)) == {
        "redis-server",
        "mosquitto",
        "unistock-server",
        "agent store-centre",
        "agent store-north",
        "agent store-west",
    }
    for outcome in [
        # opening stock, through the agents and the warehouse system
        "store-north: JKT-RAIN-M on hand 2",
        "dc-east: JKT-RAIN-M on hand 20",
        "web: JKT-RAIN-M available 26",
        # a store is out of her size; the nearest store has it
        "store-centre: JKT-RAIN-M available 0, JKT-RAIN-L available 3",
        "option store-north: 1.2 km away, 2 available",
        "option store-west: 8.6 km away, 4 available",
        "nearest: store-north",
        # e-reservation
        "reservation ERES-1001 ACTIVE",
        "store-north: available 2 -> 1, reserved 0 -> 1",
        "web: available 26 -> 25",
        # pickup at the till
        "reservation ERES-1001 FULFILLED",
        "store-north: on hand 2 -> 1, reserved 1 -> 0, available 1 -> 1",
        "web: available 25 -> 25",  # the unit was held already
        # a return in another store
        "store-centre: on hand 0 -> 1, available 0 -> 1 (sellable again)",
        "web: available 25 -> 26",
        # a damaged return
        "store-west: non-sellable 0 -> 1, available 4 -> 4 (not for sale)",
        # a transfer received short
        "dc-east: on hand 20 -> 14; store-centre: in transit 0 -> 6",
        "store-centre: on hand 1 -> 6, in transit 6 -> 1",
        "transfer T-2026-0042 IN_TRANSIT: shipped 6, received 5, in transit 1",
        "transfer T-2026-0042 CLOSED: units lost in transit 1",
        # a count finding shrinkage
        "12 tag reads, 4 distinct units of JKT-RAIN-M",
        "store-centre: on hand 6 -> 4: shrinkage 2 units",
        "web: available 25 -> 23",
        # events as they arrived (WatchEvents)
        "event: TRANSFER_SHORT JKT-RAIN-M at store-centre",
        "event: COUNT_VARIANCE JKT-RAIN-M at store-centre: count count-centre-1: variance -2",
        "Demo finished: every journey played.",
    ]:
        assert outcome in text, f"{outcome!r} missing from:\n{text}"
    # The e-reservation and the transfer (6 left the warehouse, 5 arrived) each take one.
    assert text.count("web: available 26 -> 25") == 2, text
    # The board follows the watches: after the count, store-centre's row shows 4 on hand.
    last_board = text.rsplit("JKT-RAIN-M: availability", 1)[1]
    assert re.search(r"store-centre\s*│\s*4 │\s*0 │\s*4 │", last_board), last_board
    assert re.search(r"web \(network\)\s*│.*│\s*23 │", last_board), last_board
    # docs/demo.md's sample says what a run says, in the same order.
    assert effects(example("demo-sample").text) == effects(text)
    assert_nothing_left(text)


@pytest.mark.parametrize(
    "when",
    [
        "started agent store-west pid",  # while the agents start
        "4 locations, network web",  # in the pause after the master data (a long pace)
    ],
)
def test_sigint_mid_run_stops_everything_and_exits_130(tmp_path: Path, when: str) -> None:
    proc, out = demo(tmp_path, "--pace", "30")
    try:
        wait_for(proc, out, when)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert code == 130, text[-4000:]
    assert "Interrupted: stopping everything." in text
    assert "Demo finished" not in text
    assert_nothing_left(text)


def test_a_process_dying_mid_run_fails_the_demo_saying_so_and_still_cleans_up(
    tmp_path: Path,
) -> None:
    proc, out = demo(tmp_path, "--pace", "30")
    try:
        wait_for(proc, out, "4 locations, network web")
        server = started(out.read_text())["unistock-server"]
        os.kill(server, signal.SIGKILL)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    assert code == 1, text[-4000:]
    assert re.search(r"Demo failed: UNAVAILABLE", text), text[-4000:]
    assert f"unistock-server pid {server} exited with code -9" in text, text[-4000:]
    assert "Traceback" not in text
    assert_nothing_left(text)


def test_the_documented_make_commands_run_the_demo_with_their_arguments() -> None:
    # docs/demo.md's commands: make runs the module with ARGS (a dry run: the --fast one runs
    # for real above, as python -m), and the demo accepts every ARGS shown.
    lines = commands(example("demo-make"))
    assert len(lines) == 4, lines
    for line in lines:
        words = shlex.split(line)
        assert words[:2] == ["make", "demo"], line
        make_args = [w for w in words[2:] if w.startswith("ARGS=")]
        args = shlex.split(make_args[0].partition("=")[2]) if make_args else []
        dry = subprocess.run(
            ["make", "-n", "-C", str(ROOT), *words[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        assert f"-m unistock.devtools.demo {' '.join(args)}".rstrip() in dry, dry
        assert "unistock.devtools.ensure --no-postgres" in dry, dry
        demo_module.parse(args)  # exits 2 on an unknown flag or a bad pace
