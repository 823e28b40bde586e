"""Benchmark harness: results, scenario registry, runner, table and JSON output.

Every scenario runs its baseline in the same run and reports ``ratio = unistock / baseline``.
Each scenario runs in its own ``python -m bench --run-one ID`` subprocess so that memory
measurements and leftover threads/event loops of one scenario cannot affect another.
Benchmarks are never tests: nothing here asserts on a target; the table only shows it.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil  # type: ignore[import-untyped,unused-ignore]

SCENARIO_MODULES = (
    "bench.scenarios.b1",
    "bench.scenarios.b2",
    "bench.scenarios.b3",
    "bench.scenarios.b4",
    "bench.scenarios.b5",
    "bench.scenarios.b6",
    "bench.scenarios.b7",
    "bench.scenarios.b8",
    "bench.scenarios.b9",
    "bench.scenarios.b10",
    "bench.scenarios.b11",
)
DEFAULT_JSON = Path(__file__).resolve().parent / "results" / "latest.json"

T = TypeVar("T")


@dataclass(frozen=True)
class Config:
    quick: bool = False

    def n(self, full: T, quick: T) -> T:
        """Pick the full-size or the ``--quick`` parameter."""
        return quick if self.quick else full


@dataclass
class Result:
    scenario: str
    name: str
    metric: str
    unit: str
    value: float | None  # the Unistock side; None while pending / on error
    baseline: float | None
    ratio: float | None  # value / baseline
    target: str
    status: str = "ok"  # ok | pending | error | skipped
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # p50/p99, sizes, ... per side
    cpu_s: dict[str, float] = field(default_factory=dict)  # "<side>.<process>" -> CPU seconds


@dataclass(frozen=True)
class Scenario:
    id: str
    name: str
    target: str
    fn: Callable[[Config], Any]
    timeout_s: float
    quick_timeout_s: float


REGISTRY: dict[str, Scenario] = {}


def scenario(
    sid: str, name: str, *, target: str = "", timeout_s: float = 900, quick_timeout_s: float = 300
) -> Callable[[Callable[[Config], Any]], Callable[[Config], Any]]:
    """Register ``fn(cfg) -> list[Result]`` (sync or async) as scenario ``sid``."""

    def deco(fn: Callable[[Config], Any]) -> Callable[[Config], Any]:
        REGISTRY[sid] = Scenario(sid, name, target, fn, timeout_s, quick_timeout_s)
        return fn

    return deco


def load_scenarios() -> dict[str, Scenario]:
    for mod in SCENARIO_MODULES:
        importlib.import_module(mod)
    return dict(sorted(REGISTRY.items(), key=lambda kv: int(kv[0][1:])))


# --------------------------------------------------------------------------- measurement helpers


class CpuMeter:
    """CPU seconds consumed by named processes between ``start()`` and ``stop()``.

    The current (benchmark client) process is always measured as ``"client"``; ``"machine"`` is
    the busy (non-idle) CPU seconds of the whole machine, so ``machine - sum(others)`` shows how
    much CPU unrelated processes took during the window (a noisy-machine indicator). ``by_name`` maps
    a label to a process name (e.g. ``{"postgres": "postgres"}``): CPU of all processes with that
    name is summed (processes born during the window count from zero)."""

    def __init__(self, by_name: dict[str, str] | None = None, **pids: int) -> None:
        self.pids = {"client": os.getpid(), **pids}
        self.by_name = by_name or {}
        self._t0: dict[str, float] = {}
        self._n0: dict[str, dict[int, float]] = {}
        self._m0 = 0.0

    @staticmethod
    def _cpu(pid: int) -> float:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            return float("nan")
        return float(t.user + t.system)

    @staticmethod
    def _named(name: str) -> dict[int, float]:
        out = {}
        for p in psutil.process_iter(["name", "cpu_times"]):
            if p.info["name"] == name and p.info["cpu_times"] is not None:
                out[p.pid] = float(p.info["cpu_times"].user + p.info["cpu_times"].system)
        return out

    def start(self) -> CpuMeter:
        self._t0 = {k: self._cpu(p) for k, p in self.pids.items()}
        self._n0 = {k: self._named(n) for k, n in self.by_name.items()}
        self._m0 = self._machine()
        return self

    @staticmethod
    def _machine() -> float:
        t = psutil.cpu_times()
        not_busy = ("idle", "iowait", "guest", "guest_nice")  # guest time is already in user
        return float(sum(t) - sum(getattr(t, f, 0.0) for f in not_busy))

    def stop(self) -> dict[str, float]:
        out = {k: round(self._cpu(p) - self._t0[k], 3) for k, p in self.pids.items()}
        for k, n in self.by_name.items():
            t0 = self._n0.get(k, {})
            out[k] = round(sum(c - t0.get(pid, 0.0) for pid, c in self._named(n).items()), 3)
        out["machine"] = round(self._machine() - self._m0, 3)
        return out


def percentiles_ms(lat_ns: Sequence[int], ps: Sequence[float] = (50, 99)) -> dict[str, float]:
    """``{"p50_ms": .., "p99_ms": ..}`` from latencies in nanoseconds (nearest rank)."""
    if not lat_ns:
        return {f"p{p:g}_ms": float("nan") for p in ps}
    s = sorted(lat_ns)
    out = {}
    for p in ps:
        idx = min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))
        out[f"p{p:g}_ms"] = round(s[idx] / 1e6, 3)
    return out


async def try_unistock(fn: Callable[..., Awaitable[T]], *args: Any) -> tuple[T | None, str, str]:
    """Run a Unistock-side measurement. Returns (value, status, note): status is ``ok``,
    ``pending`` (fn raised NotImplementedError) or ``error`` (anything else, traceback on stderr)."""
    try:
        return await fn(*args), "ok", ""
    except NotImplementedError as e:
        return None, "pending", str(e) or "pending"
    except Exception as e:
        traceback.print_exc()
        return None, "error", f"{type(e).__name__}: {e}"


def row(
    sc_id: str,
    metric: str,
    unit: str,
    value: float | None,
    baseline: float | None,
    *,
    status: str = "ok",
    note: str = "",
    extra: dict[str, Any] | None = None,
    cpu_s: dict[str, float] | None = None,
    target: str | None = None,
) -> Result:
    """Build one table row; name/target default to the registered scenario's."""
    sc = REGISTRY[sc_id]
    ratio = None
    if value is not None and baseline:
        ratio = value / baseline
    if status == "ok" and value is None:
        status = "pending"
    return Result(
        scenario=sc_id,
        name=sc.name,
        metric=metric,
        unit=unit,
        value=value,
        baseline=baseline,
        ratio=ratio,
        target=sc.target if target is None else target,
        status=status,
        note=note,
        extra=extra or {},
        cpu_s=cpu_s or {},
    )


def prefixed(prefix: str, d: dict[str, float] | None) -> dict[str, float]:
    return {f"{prefix}.{k}": v for k, v in (d or {}).items()}


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- runner


def run_scenario_inline(sc: Scenario, cfg: Config) -> list[Result]:
    t0 = time.perf_counter()
    try:
        out = sc.fn(cfg)
        if inspect.isawaitable(out):
            out = asyncio.run(_await(out))
        results = list(out)
    except Exception as e:
        traceback.print_exc()
        results = [_error_result(sc, f"{type(e).__name__}: {e}")]
    for r in results:
        r.extra.setdefault("scenario_wall_s", round(time.perf_counter() - t0, 2))
    return results


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def _error_result(sc: Scenario, note: str, status: str = "error") -> Result:
    return Result(sc.id, sc.name, "-", "", None, None, None, sc.target, status, note)


def run_scenario_subprocess(sc: Scenario, cfg: Config) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="unistock-bench-") as td:
        out = Path(td) / "out.json"
        cmd = [sys.executable, "-m", "bench", "--run-one", sc.id, "--out", str(out)]
        if cfg.quick:
            cmd.append("--quick")
        timeout = sc.quick_timeout_s if cfg.quick else sc.timeout_s
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            proc = subprocess.run(cmd, timeout=timeout, cwd=root, env=env, check=False)
        except subprocess.TimeoutExpired:
            return [_error_result(sc, f"timed out after {timeout:.0f}s")]
        if not out.exists():
            return [_error_result(sc, f"subprocess exited {proc.returncode} without results")]
        data = json.loads(out.read_text())
        return [Result(**r) for r in data]


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    if v != v:  # nan
        return "nan"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f}M"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def format_table(results: Sequence[Result]) -> str:
    cols = ("scenario", "metric", "unistock", "baseline", "ratio", "target")
    widths = (8, 46, 13, 13, 8, 0)
    lines = ["  ".join(c.ljust(w) if w else c for c, w in zip(cols, widths, strict=True))]
    lines.append("-" * 120)
    for r in results:
        uni = _fmt(r.value) if r.status == "ok" else r.status
        base = _fmt(r.baseline)
        if r.unit and r.status == "ok":
            uni += f" {r.unit}" if len(uni) + len(r.unit) < 13 else ""
        if r.unit and r.baseline is not None:
            base += f" {r.unit}" if len(base) + len(r.unit) < 13 else ""
        ratio = f"{r.ratio:.3g}x" if r.ratio is not None else "-"
        cells = (r.scenario, r.metric[:46], uni[:13], base[:13], ratio, r.target)
        lines.append("  ".join(c.ljust(w) if w else c for c, w in zip(cells, widths, strict=True)))
        if r.status in ("error", "skipped") and r.note:
            lines.append(f"{'':8}  -> {r.status}: {r.note}")
    return "\n".join(lines)


def write_json(path: Path, results: Sequence[Result], cfg: Config, wall_s: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        rev = ""
    doc = {
        "meta": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": cfg.quick,
            "wall_s": round(wall_s, 1),
            "python": platform.python_version(),
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "mem_total_mb": psutil.virtual_memory().total // 2**20,
            "git": rev,
            "loadavg": os.getloadavg(),
        },
        "results": [dataclasses.asdict(r) for r in results],
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated scenario ids, e.g. B3,B4")
    ap.add_argument("--quick", action="store_true", help="small N / short durations")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"default {DEFAULT_JSON}")
    ap.add_argument("--inline", action="store_true", help="run scenarios in this process")
    ap.add_argument("--list", action="store_true", help="list scenarios and exit")
    ap.add_argument("--run-one", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    cfg = Config(quick=args.quick)
    scenarios = load_scenarios()

    if args.list:
        for sc in scenarios.values():
            print(f"{sc.id:4} {sc.name}\n     target: {sc.target}")
        return 0

    if args.run_one:  # child mode
        one = run_scenario_inline(scenarios[args.run_one.upper()], cfg)
        payload = json.dumps([dataclasses.asdict(r) for r in one], default=str)
        if args.out:
            args.out.write_text(payload)
        else:
            print(payload)
        return 0

    selected = list(scenarios.values())
    if args.only:
        wanted = [s.strip().upper() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in scenarios]
        if unknown:
            ap.error(f"unknown scenario(s) {unknown}; known: {list(scenarios)}")
        selected = [scenarios[w] for w in wanted]

    t0 = time.perf_counter()
    results: list[Result] = []
    for sc in selected:
        log(f"{sc.id} {sc.name} ({'quick' if cfg.quick else 'full'})")
        t1 = time.perf_counter()
        rs = run_scenario_inline(sc, cfg) if args.inline else run_scenario_subprocess(sc, cfg)
        log(f"{sc.id} done in {time.perf_counter() - t1:.1f}s")
        results.extend(rs)
    wall = time.perf_counter() - t0
    print(format_table(results))
    write_json(args.json, results, cfg, wall)
    print(f"\nwrote {args.json} ({wall:.0f}s)")
    return 0
