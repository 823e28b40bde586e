"""Tiny process helpers for the benchmarks: free ports, a private redis-server, child pythons.

Deliberately small; ``unistock.devtools.services.RedisServer`` will supersede ``RedisProc``.
Never touches the system redis (6379) or mosquitto (1883): every server here is private,
on a free loopback port, with its data in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil  # type: ignore[import-untyped,unused-ignore]

REDIS_SERVER = os.environ.get("UNISTOCK_BENCH_REDIS_SERVER", "/usr/bin/redis-server")
_RESERVED_PORTS = {1883, 5432, 6379}


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (never one of the system services' ports)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _RESERVED_PORTS:
            return port


def wait_port(
    port: int, timeout: float = 10.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"port {port} not open after {timeout}s")


def cpu_seconds(pid: int) -> float:
    """User+system CPU seconds of one process (0.0 if it is gone)."""
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


class RedisProc:
    """A private ``redis-server`` (AOF, ``appendfsync always``) on a free loopback port."""

    def __init__(self, *, extra_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="unistock-bench-redis-"))
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> RedisProc:
        args = [
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--dir", str(self.dir),
            "--protected-mode", "no",
            *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        wait_port(self.port, timeout, self.proc)
        self.wait_loaded(timeout)
        return self

    def wait_loaded(self, timeout: float = 30.0) -> float:
        """Block until the server answers PING and is not loading; return seconds waited."""
        import redis

        t0 = time.perf_counter()
        deadline = t0 + timeout
        client = redis.Redis(port=self.port, socket_timeout=2)
        try:
            while True:
                try:
                    client.ping()
                    if int(client.info("persistence").get("loading", 0)) == 0:
                        return time.perf_counter() - t0
                except (redis.BusyLoadingError, redis.ConnectionError):
                    pass
                if time.perf_counter() > deadline:
                    raise TimeoutError("redis did not become ready")
                time.sleep(0.005)
        finally:
            client.close()

    def restart(self, timeout: float = 120.0) -> float:
        """Stop (SIGTERM, AOF kept) and start again on the same port and dir.

        Returns seconds from exec to ready (AOF loaded)."""
        self.stop(keep_dir=True)
        t0 = time.perf_counter()
        self.start(timeout)
        return time.perf_counter() - t0

    def stop(self, *, keep_dir: bool = False) -> None:
        if self.proc is not None:
            stop_process(self.proc, 30.0)
            self.proc = None
        if not keep_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisProc:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def python_child(
    module: str, *args: str, ready_prefix: str = "PORT "
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """Run ``python -m module args...`` and wait for its first stdout line starting with
    ``ready_prefix``; yields (process, rest of that line). The child is terminated on exit."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline().decode()
            if not line:
                raise RuntimeError(f"{module} exited ({proc.wait()}) before reporting readiness")
            if line.startswith(ready_prefix):
                break
        yield proc, line[len(ready_prefix) :].strip()
    finally:
        stop_process(proc)


def log_stderr(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)
