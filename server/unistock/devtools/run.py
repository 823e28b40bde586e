"""Development runner: start local Redis + Mosquitto (unless given) and run the server.

Usage: ``python -m unistock.devtools.run [server args...]`` (this is what ``make run`` does).

* If ``UNISTOCK_REDIS_URL`` is unset, a private ``redis-server`` is started with its data
  (AOF) in ``./var/redis`` on port ``UNISTOCK_DEV_REDIS_PORT`` (default 6390, or a free
  port if 6390 is taken).
* If ``UNISTOCK_MQTT_URL`` is unset, a private ``mosquitto`` is started from
  ``./var/mosquitto`` on port ``UNISTOCK_DEV_MQTT_PORT`` (default 1890, or a free port).
* The server runs as ``python -m unistock.server.app.cli [args...]`` with
  ``UNISTOCK_REDIS_URL``, ``UNISTOCK_MQTT_URL`` and ``UNISTOCK_DATA_DIR`` (default
  ``./var``) in its environment.  SIGINT/SIGTERM/SIGHUP are forwarded to it (SIGHUP as
  SIGTERM); once it exits, the services started here are stopped and this process exits
  with the server's exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import FrameType

from unistock.devtools.services import (
    MosquittoBroker,
    RedisServer,
    ServiceError,
    free_port,
    port_is_free,
)

SERVER_MODULE = "unistock.server.app.cli"
DEFAULT_REDIS_PORT = 6390
DEFAULT_MQTT_PORT = 1890


def _log(msg: str) -> None:
    print(f"[unistock.devtools.run] {msg}", file=sys.stderr, flush=True)


def _pick_port(env_name: str, default: int) -> int:
    """Port from ``env_name`` if set (used as is), else ``default`` or a free port if taken."""
    raw = os.environ.get(env_name, "").strip()
    if raw:
        try:
            return int(raw)
        except ValueError:
            raise SystemExit(f"{env_name}={raw!r} is not a port number") from None
    if port_is_free(default):
        return default
    port = free_port()
    _log(f"port {default} is taken; using free port {port} (set {env_name} to choose)")
    return port


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def main() -> int:
    """Start the services that are not configured, run the server, clean up; return its code."""
    var_dir = Path("var").resolve()
    env = dict(os.environ)
    env.setdefault("UNISTOCK_DATA_DIR", str(var_dir))
    started: list[RedisServer | MosquittoBroker] = []
    try:
        if not env.get("UNISTOCK_REDIS_URL"):
            redis = RedisServer(
                var_dir / "redis", _pick_port("UNISTOCK_DEV_REDIS_PORT", DEFAULT_REDIS_PORT)
            )
            redis.start()
            started.append(redis)
            env["UNISTOCK_REDIS_URL"] = redis.url
            _log(f"started redis-server pid {redis.pid} (log: {redis.log_path})")
        if not env.get("UNISTOCK_MQTT_URL"):
            mqtt = MosquittoBroker(
                var_dir / "mosquitto", _pick_port("UNISTOCK_DEV_MQTT_PORT", DEFAULT_MQTT_PORT)
            )
            mqtt.start()
            started.append(mqtt)
            env["UNISTOCK_MQTT_URL"] = mqtt.url
            _log(f"started mosquitto pid {mqtt.pid} (log: {mqtt.log_path})")

        print(f"UNISTOCK_REDIS_URL={env['UNISTOCK_REDIS_URL']}", flush=True)
        print(f"UNISTOCK_MQTT_URL={env['UNISTOCK_MQTT_URL']}", flush=True)
        print(f"UNISTOCK_DATA_DIR={env['UNISTOCK_DATA_DIR']}", flush=True)

        cmd = [sys.executable, "-m", SERVER_MODULE, *sys.argv[1:]]
        _log("running: " + " ".join(cmd))
        # Own session: a terminal Ctrl-C reaches only this process, which forwards it once.
        child = subprocess.Popen(cmd, env=env, start_new_session=True)

        def forward(signum: int, _frame: FrameType | None) -> None:
            sig = signal.SIGTERM if signum == signal.SIGHUP else signal.Signals(signum)
            if child.poll() is None:
                child.send_signal(sig)

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, forward)
        returncode = child.wait()
        _log(f"server exited with code {returncode}")
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
