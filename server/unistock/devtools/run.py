"""Development runner: start local Redis + Mosquitto (unless given) and run the server.

Usage: ``python -m unistock.devtools.run [server args...]`` (this is what ``make run`` does).

* If ``UNISTOCK_REDIS_URL`` is unset, a private ``redis-server`` is started with its data
  (AOF) in ``./var/redis`` on port ``UNISTOCK_DEV_REDIS_PORT`` (default 6390, or a free
  port if 6390 is taken).
* If ``UNISTOCK_MQTT_URL`` is unset, a private ``mosquitto`` is started from
  ``./var/mosquitto`` on port ``UNISTOCK_DEV_MQTT_PORT`` (default 1883, MQTT's standard port
  and the agents' default; if it is taken, the port this checkout's last run used, kept in
  ``var/dev-ports.json``, else a free port).
* The server's gRPC port is ``UNISTOCK_GRPC_PORT`` (or a ``--grpc-port`` argument), else
  50051, the port this checkout's last run used or a free port, whichever is free first.
* The user config file (``unistock.client.config``: ``$UNISTOCK_CONFIG``, else
  ``~/.config/unistock/config.toml``) is written with the server's address, the dev token's
  file and the broker's URL, so that ``unistock``, ``unistock-edge-agent`` and
  ``unistock-sim`` find them from any directory. It is written only while ``make run`` manages
  it (it does not exist, or its first line is the marker), and never with
  ``UNISTOCK_DEV_CONFIG=0``.
* The server runs as ``python -m unistock.server.app.cli [args...]`` with
  ``UNISTOCK_REDIS_URL``, ``UNISTOCK_MQTT_URL`` and ``UNISTOCK_DATA_DIR`` (default
  ``./var``) in its environment.  SIGINT/SIGTERM/SIGHUP are forwarded to it (SIGHUP as
  SIGTERM); once it exits, the services started here are stopped and this process exits
  with the server's exit code. Its metrics are on ``UNISTOCK_METRICS_PORT`` (default 9464, or
  a free port if 9464 is taken, e.g. by another ``make run``; 0 disables them).
* Beside it, the ledger writer runs as ``python -m unistock.server.app.ledger`` (same
  environment; its metrics on ``UNISTOCK_LEDGER_METRICS_PORT``, default 9466 or a free
  port), unless ``UNISTOCK_LEDGER_IN_PROCESS=1`` (the server writes the ledger itself) or
  ``UNISTOCK_DEV_LEDGER=0``. It gets the same signals and is stopped when the server exits;
  if it dies on its own it is started again at once (at most 5 times a minute), with a line
  saying so.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType

from unistock.client import config
from unistock.devtools.services import (
    MosquittoBroker,
    RedisServer,
    ServiceError,
    free_port,
    port_is_free,
)

SERVER_MODULE = "unistock.server.app.cli"
LEDGER_MODULE = "unistock.server.app.ledger"
DEFAULT_METRICS_PORT = 9464
DEFAULT_LEDGER_METRICS_PORT = 9466
DEFAULT_REDIS_PORT = 6390
DEFAULT_MQTT_PORT = urllib.parse.urlsplit(config.DEFAULT_MQTT_URL).port or 1883
DEFAULT_GRPC_PORT = int(config.DEFAULT_TARGET.rpartition(":")[2])


def _log(msg: str) -> None:
    print(f"[unistock.devtools.run] {msg}", file=sys.stderr, flush=True)


def _pick_port(env_name: str, default: int, previous: int | None = None) -> int:
    """Port from ``env_name`` if set (used as is), else the first free of ``default`` and
    ``previous`` (the port this checkout's last run used (`var/dev-ports.json`)), else a free port."""
    raw = os.environ.get(env_name, "").strip()
    if raw:
        try:
            return int(raw)
        except ValueError:
            raise SystemExit(f"{env_name}={raw!r} is not a port number") from None
    for port in dict.fromkeys(p for p in (default, previous) if p):
        if port_is_free(port):
            if port != default:
                _log(f"port {default} is taken; using port {port}, as the last run did")
            return port
    port = free_port()
    _log(f"port {default} is taken; using free port {port} (set {env_name} to choose)")
    return port


PORTS_FILE = "dev-ports.json"
"""In the data dir: the gRPC and MQTT ports this checkout's last run used."""


def _previous_ports(var_dir: Path) -> dict[str, int]:
    """The ports this checkout's last run used ({} if none or unreadable), so that a restart
    keeps its addresses when its defaults are taken: running agents and the user config file
    (even one the user took over) still name them."""
    try:
        stored = json.loads((var_dir / PORTS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(stored, dict):
        return {}
    return {k: v for k, v in stored.items() if k in ("target", "mqtt_url") and isinstance(v, int)}


def _save_ports(var_dir: Path, ports: dict[str, int]) -> None:
    """Remember the ports this run uses (see _previous_ports); a failure only loses that."""
    try:
        var_dir.mkdir(parents=True, exist_ok=True)
        (var_dir / PORTS_FILE).write_text(json.dumps(ports) + "\n")
    except OSError as e:
        _log(f"could not remember the ports in {var_dir / PORTS_FILE}: {e}")


def _write_config(env: dict[str, str], grpc_port: int, tokens_configured: bool) -> None:
    """Tell the user config file where this run is (see the module docstring)."""
    if env.get("UNISTOCK_DEV_CONFIG") == "0":
        return
    path = config.config_path(env)
    host = env.get("UNISTOCK_GRPC_HOST", "").strip() or "127.0.0.1"
    settings = {"mqtt_url": env["UNISTOCK_MQTT_URL"]}
    if grpc_port:  # 0: any free port, which only the server's log says
        settings["target"] = (
            f"{'localhost' if host in ('127.0.0.1', '0.0.0.0') else host}:{grpc_port}"
        )
    if not tokens_configured:
        settings["token_file"] = str(Path(env["UNISTOCK_DATA_DIR"]).resolve() / "dev-token")
    if env.get("UNISTOCK_METRICS_PORT", "0") != "0":
        settings["metrics_url"] = _metrics_at(env, "UNISTOCK_METRICS_PORT", "UNISTOCK_GRPC_HOST")
    try:
        written = config.write_managed(path, settings, origin=f"`make run` in {Path.cwd()}")
    except OSError as e:
        _log(f"could not write the client config {path}: {e}")
        return
    if written:
        print(f"client config: {path} (unistock, agents and unistock-sim use it)", flush=True)
    else:
        _log(
            f"client config {path} is your own (no `make run` marker line): left alone; "
            f"point it at this server ({', '.join(f'{k} = {v}' for k, v in settings.items())}) "
            "to use this server"
        )


def _metrics_at(env: dict[str, str], port_name: str, host_name: str) -> str:
    """Where the /metrics endpoint with its port in env[port_name] is (host in env[host_name],
    default 127.0.0.1), for the output."""
    port = env[port_name]
    if port == "0":
        return f"disabled ({port_name}=0)"
    host = env.get(host_name, "").strip() or "127.0.0.1"
    return f"http://{host}:{port}/metrics"


def _flag_value(args: Sequence[str], name: str) -> str | None:
    """The value the server's command line gives flag `name` (`name VALUE` or `name=VALUE`;
    the last one wins), or None when it does not give it."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.partition("=")[2]
    return value


def _wait(proc: subprocess.Popen[bytes], seconds: float) -> int | None:
    """proc's exit code, or None if it still runs after `seconds`."""
    try:
        return proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def server_command(args: Sequence[str] = ()) -> list[str]:
    """The command running the server (``python -m unistock.server.app.cli [args...]``) with
    this interpreter."""
    return [sys.executable, "-m", SERVER_MODULE, *args]


def start_services(
    var_dir: Path,
    env: dict[str, str],
    started: list[RedisServer | MosquittoBroker],
    pick_port: Callable[[str, int], int],
    log: Callable[[str], None],
) -> None:
    """Start a private redis-server (data in var_dir/redis) unless env has UNISTOCK_REDIS_URL,
    and a private mosquitto (var_dir/mosquitto) unless env has UNISTOCK_MQTT_URL; set their
    URLs in env. Each one started is appended to `started` (stop them, newest first, even
    when this raises: one that failed to start stopped itself). pick_port(variable, default) gives each one's port; log(line) is
    told what was started. Raises ServiceError when one cannot start."""
    kinds: tuple[tuple[str, type[RedisServer | MosquittoBroker], str, int], ...] = (
        ("UNISTOCK_REDIS_URL", RedisServer, "UNISTOCK_DEV_REDIS_PORT", DEFAULT_REDIS_PORT),
        ("UNISTOCK_MQTT_URL", MosquittoBroker, "UNISTOCK_DEV_MQTT_PORT", DEFAULT_MQTT_PORT),
    )
    for url_var, kind, port_var, default in kinds:
        if env.get(url_var):
            continue
        svc = kind(var_dir / kind.service_name, pick_port(port_var, default))
        svc.start()
        started.append(svc)
        env[url_var] = svc.url
        log(f"started {svc.binary_name} pid {svc.pid} (log: {svc.log_path})")


def main() -> int:
    """Start the services that are not configured, run the server, clean up; return its code."""
    var_dir = Path("var").resolve()
    env = dict(os.environ)
    env.setdefault("UNISTOCK_DATA_DIR", str(var_dir))
    started: list[RedisServer | MosquittoBroker] = []
    previous = _previous_ports(var_dir)

    def pick_port(var: str, default: int) -> int:
        # mosquitto takes the port this checkout's last run used (var/dev-ports.json) when its
        # default is taken (the agents and the config file have that URL)
        last = previous.get("mqtt_url") if var == "UNISTOCK_DEV_MQTT_PORT" else None
        return _pick_port(var, default, last)

    try:
        start_services(var_dir, env, started, pick_port, _log)

        print(f"UNISTOCK_REDIS_URL={env['UNISTOCK_REDIS_URL']}", flush=True)
        print(f"UNISTOCK_MQTT_URL={env['UNISTOCK_MQTT_URL']}", flush=True)
        print(f"UNISTOCK_DATA_DIR={env['UNISTOCK_DATA_DIR']}", flush=True)
        # The server's metrics port too, so that a second `make run` does not fail on 9464
        # (set explicitly, it is used as is; a --metrics-port argument wins over both).
        args = sys.argv[1:]
        if _flag_value(args, "--metrics-port") is None:
            env["UNISTOCK_METRICS_PORT"] = str(
                _pick_port("UNISTOCK_METRICS_PORT", DEFAULT_METRICS_PORT)
            )
            at = _metrics_at(env, "UNISTOCK_METRICS_PORT", "UNISTOCK_GRPC_HOST")
            print(f"server metrics: {at}", flush=True)
        if (given := _flag_value(args, "--grpc-port")) is not None:
            grpc_port = int(given)
        else:
            grpc_port = _pick_port("UNISTOCK_GRPC_PORT", DEFAULT_GRPC_PORT, previous.get("target"))
            env["UNISTOCK_GRPC_PORT"] = str(grpc_port)
        print(f"UNISTOCK_TARGET=localhost:{grpc_port}", flush=True)
        tokens = _flag_value(args, "--tokens-file") is not None or bool(
            env.get("UNISTOCK_TOKENS_FILE") or env.get("UNISTOCK_TOKENS")
        )
        _write_config(env, grpc_port, tokens)
        mqtt_port = urllib.parse.urlsplit(env["UNISTOCK_MQTT_URL"]).port
        _save_ports(
            var_dir,
            {"target": grpc_port, **({"mqtt_url": mqtt_port} if mqtt_port else {})},
        )

        cmd = server_command(args)
        _log("running: " + " ".join(cmd))
        # Own session: a terminal Ctrl-C reaches only this process, which forwards it once.
        child = subprocess.Popen(cmd, env=env, start_new_session=True)
        children = [child]
        ledger_cmd: list[str] = []
        if (
            env.get("UNISTOCK_LEDGER_IN_PROCESS", "0") != "1"
            and env.get("UNISTOCK_DEV_LEDGER") != "0"
        ):
            env["UNISTOCK_LEDGER_METRICS_PORT"] = str(
                _pick_port("UNISTOCK_LEDGER_METRICS_PORT", DEFAULT_LEDGER_METRICS_PORT)
            )
            at = _metrics_at(env, "UNISTOCK_LEDGER_METRICS_PORT", "UNISTOCK_LEDGER_METRICS_HOST")
            print(f"ledger writer metrics: {at}", flush=True)
            ledger_cmd = [sys.executable, "-m", LEDGER_MODULE]
            _log("running: " + " ".join(ledger_cmd))
            children.append(subprocess.Popen(ledger_cmd, env=env, start_new_session=True))

        signalled: list[int] = []

        def forward(signum: int, _frame: FrameType | None) -> None:
            sig = signal.SIGTERM if signum == signal.SIGHUP else signal.Signals(signum)
            signalled.append(sig)
            for c in children:
                if c.poll() is None:
                    c.send_signal(sig)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward)
        restarts: list[float] = []
        while (returncode := _wait(child, 0.5)) is None:
            ledger = children[1] if ledger_cmd else None
            if ledger is None or signalled or ledger.poll() is None:
                continue
            # The ledger writer died on its own: say so now, and start it again (at most 5
            # times a minute; it resumes after its cursors, nothing is lost meanwhile).
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > 5:
                _log(f"ledger writer exited with code {ledger.returncode} again: not restarted")
                ledger_cmd = []
                continue
            _log(f"ledger writer exited with code {ledger.returncode}: restarting it")
            children[1] = subprocess.Popen(ledger_cmd, env=env, start_new_session=True)
        _log(f"server exited with code {returncode}")
        for c in children[1:]:
            try:  # it got the signal the server got: let it finish on its own
                c.wait(timeout=10 if signalled else 0)
            except subprocess.TimeoutExpired:
                c.send_signal(signal.SIGTERM)
            _log(f"ledger writer exited with code {c.wait()}")
        return _exit_code(returncode)
    except ServiceError as exc:
        _log(f"error: {exc}")
        return 1
    finally:
        for svc in reversed(started):
            svc.stop()
            _log(f"stopped {svc.service_name}")


if __name__ == "__main__":
    sys.exit(main())
