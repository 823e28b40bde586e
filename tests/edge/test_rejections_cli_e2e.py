"""`unistock-edge-agent rejections` (store staff's command) against a real agent, mosquitto and
server; docs/store-rejections.md's worked example runs as written (only the agent's port is
this test's)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import sys

from tests.docs import example
from tests.edge.harness import drained, intake
from tests.edge.test_rejections_e2e import agent, mistyped_sale, server, status_where
from unistock.devtools.services import MosquittoBroker, free_port
from unistock.edge.agent import StoreAgent

DOC_INTAKE = "127.0.0.1:50061"
DEADLINE = 60

__all__ = ["agent", "server"]  # the fixtures, imported for their use below


def doc_commands() -> list[list[str]]:
    """Every `$ unistock-edge-agent rejections ...` line of the doc's worked example (its
    console blocks, store-rejections-1 to 5), in order, as argv."""
    blocks = (
        example("store-rejections-1"),
        example("store-rejections-2"),
        example("store-rejections-3"),
        example("store-rejections-4"),
        example("store-rejections-5"),
    )
    text = "".join(b.text for b in blocks)
    lines = re.findall(r"^\$ (unistock-edge-agent rejections .*)$", text, flags=re.M)
    return [shlex.split(line)[1:] for line in lines]


async def run(*argv: str) -> tuple[int, str, str]:
    """unistock-edge-agent with argv: (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "unistock.edge.cli", *argv,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("UNISTOCK_")},
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), DEADLINE)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_docs_worked_example_runs_as_written(
    agent: StoreAgent, mosquitto_broker: MosquittoBroker
) -> None:
    async with intake(agent) as till:
        receipt = await till.RecordSale(mistyped_sale("till-3/4711/1"))
    assert receipt.seq == 1  # the seq the doc resolves
    await drained(agent)
    commands = doc_commands()
    assert len(commands) == 5, "the doc lost (or gained) steps of its worked example"
    here = f"127.0.0.1:{agent.intake_port}"
    outputs = []
    for argv in commands:
        assert argv[1:3] == ["--intake", DOC_INTAKE]
        code, out, err = await run(*[here if a == DOC_INTAKE else a for a in argv])
        assert (code, err) == (0, ""), argv
        outputs.append(out)
    listed, as_json, resolved, after, history = outputs
    assert "till-3/4711/1" in listed
    assert "WRONG_STORE" in listed
    assert "does not belong to store 's1'" in listed
    [r] = json.loads(as_json)
    assert (r["seq"], r["deviceId"], r["requestId"], r["reason"]) == (
        "1",
        "till-3",
        "till-3/4711/1",
        "WRONG_STORE",
    )
    assert (r["movement"]["locationId"], r["resolved"], r["resolvedBy"]) == ("s2", False, "")
    assert "ana" in resolved
    assert "sold again at s1" in resolved
    assert after.strip() == "no unresolved rejected movements"
    [h] = json.loads(history)
    assert (h["resolved"], h["resolvedBy"], h["resolveNote"]) == (True, "ana", "sold again at s1")
    status = await status_where(mosquitto_broker, lambda s: s.rejected_unresolved == 0)
    assert not status.HasField("last_rejected_at")


async def test_exit_statuses_say_what_happened(agent: StoreAgent) -> None:
    here = f"127.0.0.1:{agent.intake_port}"
    code, out, err = await run("rejections", "--intake", here, "--resolve", "9", "--by", "ana")
    assert code == 3
    assert "NOT_FOUND" in err
    assert "seq 9" in err
    assert out == ""
    code, _, err = await run("rejections", "--intake", here, "--by", "ana")
    assert code == 2
    assert "--by and --note go with --resolve SEQ" in err
    code, _, err = await run("rejections", "--intake", here, "--resolve", "1")
    assert code == 2
    assert "--by NAME" in err
    code, _, err = await run("rejections", "--intake", f"127.0.0.1:{free_port()}")
    assert code == 69
    assert "cannot reach the agent at" in err
    code, out, _ = await run("rejections", "--help")
    assert code == 0
    assert "69  the agent's intake cannot be reached" in out


async def test_watch_prints_the_current_ones_then_each_new_one(agent: StoreAgent) -> None:
    async with intake(agent) as till:
        first = await till.RecordSale(mistyped_sale("till-3/1/1"))
        await drained(agent)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "unistock.edge.cli", "rejections", "--watch", "--json",
            "--intake", f"127.0.0.1:{agent.intake_port}", "--till", "till-3",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stdout is not None

            async def line() -> dict[str, object]:
                got = json.loads(await asyncio.wait_for(proc.stdout.readline(), DEADLINE))  # type: ignore[union-attr]
                assert isinstance(got, dict)
                return got

            current, caught_up = await line(), await line()
            assert current["rejection"]["seq"] == str(first.seq)  # type: ignore[index]
            assert (current["caughtUp"], caught_up["caughtUp"]) == (False, True)
            second = await till.RecordSale(mistyped_sale("till-3/2/1"))
            new = await line()
            assert new["rejection"]["seq"] == str(second.seq)  # type: ignore[index]
            assert new["rejection"]["requestId"] == "till-3/2/1"  # type: ignore[index]
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            assert await asyncio.wait_for(proc.wait(), DEADLINE) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
