"""The Prometheus side of the deploy tests: the rules and dashboard as files, PromQL helpers, and
a real ``prometheus`` process (Debian package ``prometheus``, installed by
``unistock.devtools.ensure``) on a free loopback port with its own config and data directory.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from unistock.devtools.services import ServiceError, ensure_binary, free_port

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "unistock-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "unistock-rules.test.yml"
EXAMPLE_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "unistock.json"
RUNBOOK = ROOT / "docs" / "runbook.md"

#: What the dashboard's template variables become in the tests (Grafana substitutes them).
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$store": ".*"}

_METRIC = re.compile(r"\bunistock_[a-z0-9_]+\b")


def promtool() -> str:
    """The promtool binary (package prometheus)."""
    return ensure_binary("promtool", "prometheus")


def run_promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """promtool with args; its output is in the result (stdout + stderr)."""
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def alerting_rules(path: Path = RULES) -> list[dict[str, Any]]:
    """Every alerting rule of a rules file, as parsed YAML."""
    doc = yaml.safe_load(path.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


def dashboard_targets(path: Path = DASHBOARD) -> list[tuple[str, str]]:
    """(panel title, PromQL as written) of every query of the dashboard, nested rows included."""

    def panels(items: Sequence[Mapping[str, Any]]) -> Iterator[Mapping[str, Any]]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    doc = json.loads(path.read_text())
    return [(p["title"], t["expr"]) for p in panels(doc["panels"]) for t in p.get("targets", [])]


def substitute(expr: str, variables: Mapping[str, str] = DASHBOARD_VARIABLES) -> str:
    """A dashboard expression with its Grafana variables replaced; raises on one left over."""
    for name, value in variables.items():
        expr = expr.replace(name, value)
    if "$" in expr:
        raise AssertionError(f"unsubstituted Grafana variable in {expr!r}")
    return expr


def metric_names(expr: str) -> set[str]:
    """The unistock_* series names an expression reads (as stored: with _total, _bucket, ...)."""
    return set(_METRIC.findall(expr))


_COMPARISON = re.compile(r"\s*(>|<|==|!=|>=|<=)\s*[0-9.]+$")


def signals(expr: str) -> list[str]:
    """What an alert expression compares with its thresholds: each operand of a top-level `and`
    without its outer parentheses and its final `> N` (these return data whenever the metrics
    do, while the alert expression itself returns nothing below its threshold)."""
    parts, depth, last = [], 0, 0
    text = " ".join(expr.split())
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0 and text.startswith(" and ", i):
            parts.append(text[last:i])
            last = i + len(" and ")
    parts.append(text[last:])
    return [_unwrap(_COMPARISON.sub("", _unwrap(part))) for part in parts]


def _unwrap(part: str) -> str:
    """part without parentheses around all of it."""
    part = part.strip()
    while part.startswith("(") and part.endswith(")") and _balanced(part[1:-1]):
        part = part[1:-1].strip()
    return part


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def runbook_anchors(path: Path = RUNBOOK) -> dict[str, str]:
    """anchor -> heading text of every heading of the runbook."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            out[github_anchor(m.group(1))] = m.group(1)
    return out


class PrometheusProcess:
    """A real Prometheus scraping `jobs` every second, with `rule_files` loaded.

    jobs: job name -> [(host:port, target labels)]. Query it with `query`; `stop` ends it (also
    used as a context manager). Its log is `<data_dir>/prometheus.log`.
    """

    def __init__(
        self,
        data_dir: Path,
        jobs: Mapping[str, Sequence[tuple[str, Mapping[str, str]]]],
        rule_files: Sequence[Path] = (),
    ) -> None:
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "static_configs": [
                        {"targets": [addr], "labels": dict(labels)} for addr, labels in targets
                    ],
                }
                for job, targets in jobs.items()
            ],
        }
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = self.dir / "prometheus.log"
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start it and wait until /-/ready answers (retrying on another port if it lost the
        race for the free one)."""
        binary = ensure_binary("prometheus", "prometheus")
        for _ in range(3):
            self.port = free_port()
            with self.log.open("ab") as log:
                self._proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={self.config}",
                        f"--storage.tsdb.path={self.dir / 'data'}",
                        f"--web.listen-address=127.0.0.1:{self.port}",
                        "--log.level=warn",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self._proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                        if r.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.2)
            if self._proc.poll() is None:
                break  # alive but never ready: give up
            if "address already in use" not in self.log.read_text(errors="replace"):
                break
        self.stop()
        raise ServiceError(f"prometheus did not become ready:\n{self.log.read_text()[-4000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; returns `data`, raises AssertionError with Prometheus's error."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or a scalar as one sample) an expression evaluates to now."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        result: list[dict[str, Any]] = data["result"]
        return result

    def names(self) -> set[str]:
        """Every series name Prometheus has."""
        return set(self.api("label/__name__/values"))

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def __enter__(self) -> PrometheusProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
