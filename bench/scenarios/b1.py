"""B1 — movements/s end to end: MQTT QoS 1 → decode → actor → durable in Redis → ack to the agent.

Both sides: a private mosquitto (``set_tcp_nodelay true``) and ``STORES`` simulated store agents
in this process (``bench.mqtt_side.StoreAgent``: one aiomqtt client each, source
``agent-<store>``, batches of ``BATCH`` SALE/RECEIPT movements over ``SKUS`` SKUs at the store's
own location, QoS 1, TCP_NODELAY).

* Baseline: the sink subprocess (``bench.baselines.mqtt_raw``: one raw aiomqtt client subscribed
  QoS 1 to ``unistock/v1/stores/+/movements``, discarding) and the same publishers, each store
  with ``WINDOW`` concurrent publishes that await only the broker's PUBACK. Figure: messages the
  sink received over the window × ``BATCH`` per second.
* Unistock: the server subprocess (``--mqtt-url`` of the broker, private redis-server with AOF
  ``appendfsync always``); each agent keeps ``WINDOW`` batches not yet covered by the server's
  MovementAck (the server acks once durable). A movement counts when an ack covering its seq
  arrives inside the window; latency = publish → that ack, per batch.

``UNISTOCK_BENCH_PYSPY=/tmp/b1.raw`` records the server with py-spy (raw format, nonblocking)
during the Unistock window (at most 5 s); summarise with ``python -m bench.pyspy_summary``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench._procs import RedisProc, python_child
from bench.baselines.mqtt_raw import SinkProbe
from bench.harness import (
    Config,
    CpuMeter,
    Result,
    log,
    percentiles_ms,
    prefixed,
    row,
    scenario,
    try_unistock,
)
from bench.mqtt_side import StoreAgent, broker_pid, mosquitto, stop_all, store_ids
from bench.unistock_side import ServerProc, unistock_server

ID = "B1"
NAME = "movements/s end to end (MQTT QoS 1 → durable → ack), batches of 100"
TARGET = "≥ 0.6 × baseline; ≥ 50k movements/s"
STORES = 8
BATCH = 100
WINDOW = 8  # unacked batches per store
SKUS = 300  # per store


def duration(cfg: Config) -> float:
    return cfg.n(10.0, 3.0)


def warmup(cfg: Config) -> float:
    return cfg.n(1.5, 0.75)


@dataclass
class Throughput:
    movements_per_s: float
    messages_per_s: float
    duration_s: float
    published_per_s: float  # messages the agents published per second (the window's count)
    p50_ms: float = float("nan")  # per batch: publish → server ack covering it
    p99_ms: float = float("nan")
    batches: int = 0
    rejections: int = 0
    cpu_s: dict[str, float] = field(default_factory=dict)


def make_agents(port: int, n: int = STORES, prefix: str = "store") -> list[StoreAgent]:
    return [
        StoreAgent(s, port, skus=SKUS, batch_size=BATCH, window=WINDOW, rng_seed=i)
        for i, s in enumerate(store_ids(n, prefix))
    ]


async def baseline(cfg: Config) -> Throughput:
    with (
        mosquitto() as broker,
        python_child(
            "bench.baselines.mqtt_raw", "--port", str(broker.port), ready_prefix="READY"
        ) as (sink, _),
    ):
        agents = make_agents(broker.port)
        async with contextlib.AsyncExitStack() as stack:
            for a in agents:
                await stack.enter_async_context(a.connected(acks=False))
            probe = await stack.enter_async_context(SinkProbe(broker.port).connected())
            tasks = [
                asyncio.create_task(a.raw_publisher(probe)) for a in agents for _ in range(WINDOW)
            ]
            try:
                await asyncio.sleep(warmup(cfg))
                cpu = CpuMeter(sink=sink.pid, mosquitto=broker_pid(broker)).start()
                c0, t0 = await probe.count()
                w0 = time.perf_counter()
                for a in agents:
                    a.measuring = True
                await asyncio.sleep(duration(cfg))
                for a in agents:
                    a.measuring = False
                pub_s = time.perf_counter() - w0
                c1, t1 = await probe.count()
                cpu_s = cpu.stop()
            finally:
                await stop_all(agents, tasks)
    secs = (t1 - t0) / 1e9
    msgs = (c1 - c0) / secs
    return Throughput(
        movements_per_s=msgs * BATCH,
        messages_per_s=msgs,
        duration_s=round(secs, 3),
        published_per_s=sum(a.sent for a in agents) / pub_s,
        cpu_s=cpu_s,
    )


@contextlib.contextmanager
def pyspy(pid: int, seconds: float) -> Any:
    """py-spy on ``pid`` for ``seconds`` when UNISTOCK_BENCH_PYSPY names an output file."""
    out = os.environ.get("UNISTOCK_BENCH_PYSPY")
    if not out:
        yield
        return
    exe = Path(sys.executable).parent / "py-spy"
    cmd = [str(exe), "record", "--pid", str(pid), "-d", str(max(1, int(seconds))),
           "--format", "raw", "-o", out, "--nonblocking"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log(f"py-spy profile of the server written to {out} (exit {proc.returncode})")


async def agents_online(srv: ServerProc, agents: list[StoreAgent], stack: Any) -> None:
    """Connect every agent and get its first batch acked (the server is subscribed)."""
    for a in agents:
        await stack.enter_async_context(a.connected())
    try:
        await asyncio.gather(*(a.prime() for a in agents))
    except TimeoutError:
        raise RuntimeError(f"no ack from the server: {srv.tail()}") from None


#: Started beside the server before the agents, stopped after the measure (B11: the ledger).
Beside = Callable[[ServerProc, RedisProc], contextlib.AbstractAsyncContextManager[object]]


async def unistock(
    cfg: Config, *, server_args: tuple[str, ...] = (), beside: Beside | None = None
) -> Throughput:
    with mosquitto() as broker:
        async with (
            unistock_server("--mqtt-url", broker.url, *server_args) as (srv, redis),
            contextlib.AsyncExitStack() as stack,
        ):
            pids = {"server": srv.pid, "redis": redis.pid, "mosquitto": broker_pid(broker)}
            if beside is not None:
                started = await stack.enter_async_context(beside(srv, redis))
                if isinstance(getattr(started, "pid", None), int):  # a process (B11's writer)
                    pids["beside"] = started.pid
            agents = make_agents(broker.port)
            await agents_online(srv, agents, stack)
            tasks = [asyncio.create_task(a.closed_loop()) for a in agents]
            try:
                await asyncio.sleep(warmup(cfg))
                cpu = CpuMeter({"postgres": "postgres"}, **pids)  # client: the agents
                with pyspy(srv.pid, min(5.0, duration(cfg))):
                    cpu.start()
                    t0 = time.perf_counter()
                    for a in agents:
                        a.measuring = True
                    await asyncio.sleep(duration(cfg))
                    for a in agents:
                        a.measuring = False
                    secs = time.perf_counter() - t0
                    cpu_s = cpu.stop()
            finally:
                await stop_all(agents, tasks)
            if srv.proc is not None and srv.proc.poll() is not None:
                raise RuntimeError(f"server exited: {srv.tail()}")
    done = sum(a.done for a in agents)
    lat = [x for a in agents for x in a.lat]
    pct = percentiles_ms(lat)
    return Throughput(
        movements_per_s=done / secs,
        messages_per_s=done / BATCH / secs,
        duration_s=round(secs, 3),
        published_per_s=sum(a.sent for a in agents) / secs,
        p50_ms=pct["p50_ms"],
        p99_ms=pct["p99_ms"],
        batches=len(lat),
        rejections=sum(a.rejections for a in agents),
        cpu_s=cpu_s,
    )


@scenario(ID, NAME, target=TARGET)
async def run(cfg: Config) -> list[Result]:
    base = await baseline(cfg)
    log(f"B1 baseline: {base.movements_per_s:,.0f} movements/s ({base.cpu_s})")
    uni, status, note = await try_unistock(unistock, cfg)
    if uni:
        log(f"B1 unistock: {uni.movements_per_s:,.0f} movements/s p50 {uni.p50_ms} ms "
            f"p99 {uni.p99_ms} ms ({uni.cpu_s})")  # fmt: skip
        if uni.rejections:
            status, note = "error", f"{uni.rejections} movements rejected by the server"
    cpu = prefixed("baseline", base.cpu_s) | prefixed("unistock", uni.cpu_s if uni else None)
    extra: dict[str, Any] = {
        "stores": STORES, "batch": BATCH, "window": WINDOW, "skus_per_store": SKUS,
        "baseline": asdict(base), "unistock": asdict(uni) if uni else None,
    }  # fmt: skip
    return [
        row(ID, f"durable movements/s ({STORES} stores × window {WINDOW})", "mv/s",
            uni.movements_per_s if uni else None, base.movements_per_s,
            status=status, note=note, extra=extra, cpu_s=cpu),
        row(ID, "ack latency p50 per batch of 100 (publish→ack)", "ms",
            uni.p50_ms if uni else None, None, status=status, note=note, target="-"),
        row(ID, "ack latency p99 per batch of 100 (publish→ack)", "ms",
            uni.p99_ms if uni else None, None, status=status, note=note, target="-"),
    ]  # fmt: skip
