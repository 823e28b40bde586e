"""Run real ``redis-server`` and ``mosquitto`` processes on private loopback ports.

These helpers are used by the pytest fixtures (``tests/fixtures/services.py``), by
fault-injection tests (``kill()`` / ``pause()`` / ``restart()``) and by
``python -m unistock.devtools.run``.  They never touch a system-wide instance: every
process binds ``127.0.0.1`` on its own port and keeps all state in its own data dir.

Each managed process is started in its own session (``start_new_session=True``) so
that a Ctrl-C in the terminal does not kill it before the code that owns it has had a
chance to shut things down in order.  Processes that are still running when the
interpreter exits are terminated by an ``atexit`` hook.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

__all__ = [
    "MosquittoBroker",
    "RedisServer",
    "ServiceError",
    "ServiceNotFoundError",
    "ensure_binary",
    "free_port",
]

#: Extra directories searched for service binaries (Debian puts mosquitto in /usr/sbin,
#: which is often not on a non-root user's PATH).
EXTRA_BIN_DIRS: tuple[str, ...] = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin")

#: Default time allowed for a service to become ready.
DEFAULT_START_TIMEOUT = 10.0

#: Default time allowed for a graceful stop before escalating to SIGKILL.
DEFAULT_STOP_TIMEOUT = 10.0

AppendFsync = Literal["always", "everysec", "no"]


class ServiceError(RuntimeError):
    """A managed service failed to start, stop or answer."""


class ServiceNotFoundError(ServiceError):
    """A required service binary is not installed and could not be installed."""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now.

    The port is found by binding to port 0 and reading what the kernel chose.  There is
    an unavoidable race between closing the probe socket and the caller binding it, so
    callers that start a server on it should be ready to retry.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Return whether ``port`` can currently be bound on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def find_binary(name: str) -> str | None:
    """Return the absolute path of ``name`` on PATH or in :data:`EXTRA_BIN_DIRS`."""
    dirs = [d for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    dirs += [d for d in EXTRA_BIN_DIRS if d not in dirs]
    return shutil.which(name, path=os.pathsep.join(dirs))


def _apt_get(*args: str) -> int:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", *args]
    print(f"[unistock.devtools] running: {' '.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.call(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr)


def ensure_binary(name: str, apt_package: str, *, allow_install: bool = True) -> str:
    """Return the path of binary ``name``, installing Debian package ``apt_package`` if needed.

    The binary is searched on ``PATH`` plus :data:`EXTRA_BIN_DIRS`.  If it is missing and
    the process runs as root on a machine with ``apt-get`` (and neither
    ``allow_install=False`` nor ``UNISTOCK_NO_APT_INSTALL=1`` is set), the package is
    installed with ``apt-get install -y`` (running ``apt-get update`` and retrying if the
    first attempt fails).  Progress is reported on stderr.

    Raises:
        ServiceNotFoundError: the binary is missing and could not be installed.
    """
    path = find_binary(name)
    if path is not None:
        return path

    hint = (
        f"'{name}' was not found on PATH or in {', '.join(EXTRA_BIN_DIRS)}. "
        f"Install the Debian package '{apt_package}', e.g. "
        f"`sudo apt-get install -y {apt_package}`."
    )
    can_install = (
        allow_install
        and os.environ.get("UNISTOCK_NO_APT_INSTALL", "") not in ("1", "true", "yes")
        and hasattr(os, "geteuid")
        and os.geteuid() == 0
        and shutil.which("apt-get") is not None
    )
    if not can_install:
        raise ServiceNotFoundError(hint)

    print(
        f"[unistock.devtools] '{name}' is missing; installing Debian package "
        f"'{apt_package}' with apt-get (set UNISTOCK_NO_APT_INSTALL=1 to disable)...",
        file=sys.stderr,
        flush=True,
    )
    if _apt_get("install", "-y", "--no-install-recommends", apt_package) != 0:
        print(
            "[unistock.devtools] apt-get install failed; refreshing package lists and retrying",
            file=sys.stderr,
            flush=True,
        )
        _apt_get("update")
        if _apt_get("install", "-y", "--no-install-recommends", apt_package) != 0:
            raise ServiceNotFoundError(f"apt-get install {apt_package} failed. {hint}")

    path = find_binary(name)
    if path is None:
        raise ServiceNotFoundError(f"installed '{apt_package}' but '{name}' is still missing.")
    print(f"[unistock.devtools] installed {apt_package}: {path}", file=sys.stderr, flush=True)
    return path


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _pid_is_live(pid: int, binary_name: str) -> bool:
    """Return whether ``pid`` is alive and (on Linux) looks like ``binary_name``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    cmdline = Path(f"/proc/{pid}/cmdline")
    try:
        raw = cmdline.read_bytes()
    except FileNotFoundError:
        # Either it just exited, or no procfs: trust the kill(0) check unless /proc exists.
        return not Path("/proc/self").exists()
    except OSError:
        return True
    if not raw:  # zombie
        return False
    argv0 = raw.split(b"\0", 1)[0].decode(errors="replace")
    return binary_name in os.path.basename(argv0) or binary_name in raw.decode(errors="replace")


_LIVE: weakref.WeakSet[_ManagedProcess] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(timeout=3.0)


# --------------------------------------------------------------------------- base class


class _ManagedProcess:
    """Shared lifecycle for a single long-running service process."""

    #: Short name used for file names and messages (``redis``, ``mosquitto``).
    service_name: str = "service"
    #: Binary and the Debian package providing it.
    binary_name: str = ""
    apt_package: str = ""
    #: Log line fragment written once the service is listening (guards against a port
    #: race where a probe would reach some other process on the same port).
    ready_marker: bytes = b""

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        binary: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.data_dir: Path = Path(data_dir).resolve()
        self._port_was_given = port is not None
        self._port: int = port if port is not None else free_port()
        self._binary = binary
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._paused = False
        self._started_once = False
        self._log_offset = 0

    # ---- properties -------------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port the service listens on (stable across restarts)."""
        return self._port

    @property
    def pid(self) -> int | None:
        """PID of the running process, or ``None`` when not running."""
        return self._proc.pid if self.is_running and self._proc is not None else None

    @property
    def is_running(self) -> bool:
        """Whether the process has been started and has not exited (paused counts)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        """Whether the process is currently stopped with SIGSTOP."""
        return self._paused and self.is_running

    @property
    def log_path(self) -> Path:
        """The service's own log file."""
        return self.data_dir / f"{self.service_name}.log"

    @property
    def output_path(self) -> Path:
        """File receiving the process's stdout/stderr (early start-up errors land here)."""
        return self.data_dir / f"{self.service_name}.out"

    @property
    def pid_path(self) -> Path:
        """PID file guarding the data dir against two concurrent instances."""
        return self.data_dir / f"{self.service_name}.pid"

    def log_tail(self, lines: int = 40) -> str:
        """Return the last ``lines`` of the process output and the service log."""
        parts = []
        for path in (self.output_path, self.log_path):
            tail = _tail(path, lines)
            if tail:
                parts.append(f"--- {path} ---\n{tail}")
        return "\n".join(parts) or "(no log output)"

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} port={self._port} {state} data_dir={self.data_dir}>"

    # ---- hooks ------------------------------------------------------------------

    def _command(self, binary: str) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write config files etc. before launching (called on every start)."""

    def _probe(self) -> bool:
        """Return True once the service is ready to serve clients."""
        raise NotImplementedError

    def _logged_ready(self) -> bool:
        if not self.ready_marker:
            return True
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return self.ready_marker in fh.read()
        except OSError:
            return False

    # ---- lifecycle --------------------------------------------------------------

    def _check_data_dir_free(self) -> None:
        try:
            other = int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return
        if other != os.getpid() and _pid_is_live(other, self.binary_name):
            raise ServiceError(
                f"{self.data_dir} is already used by a running {self.binary_name} "
                f"(pid {other}, see {self.pid_path}); stop it first, e.g. `kill {other}`"
            )

    def start(self) -> Self:
        """Start the process and block until it is ready (or raise :class:`ServiceError`).

        Calling ``start()`` on a running instance is a no-op.  If the port was chosen
        automatically and is grabbed by someone else before the first start, a new free
        port is picked and the start retried.
        """
        if self.is_running:
            return self
        binary = self._binary or ensure_binary(self.binary_name, self.apt_package)
        self._binary = binary
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_data_dir_free()
        attempts = 1 if (self._port_was_given or self._started_once) else 3
        for attempt in range(attempts):
            try:
                self._launch(binary)
            except ServiceError:
                if attempt + 1 < attempts and not port_is_free(self._port):
                    self._port = free_port()
                    continue
                raise
            break
        self._started_once = True
        return self

    def _launch(self, binary: str) -> None:
        self._prepare()
        cmd = self._command(binary)
        self._close_output()
        self._output = self.output_path.open("ab")
        self._output.write(f"\n=== {time.strftime('%F %T')} {shlex.join(cmd)}\n".encode())
        self._output.flush()
        self._paused = False
        try:
            self._log_offset = self.log_path.stat().st_size
        except OSError:
            self._log_offset = 0
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,
        )
        _LIVE.add(self)
        self.pid_path.write_text(f"{self._proc.pid}\n")
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._cleanup_after_exit()
                raise ServiceError(
                    f"{self.binary_name} exited with code {code} during start-up on port "
                    f"{self._port}.\n{self.log_tail()}"
                )
            if self._logged_ready() and self._probe():
                return
            if time.monotonic() > deadline:
                self._terminate(signal.SIGKILL, timeout=5.0)
                raise ServiceError(
                    f"{self.binary_name} did not become ready on port {self._port} within "
                    f"{self.start_timeout:.0f}s.\n{self.log_tail()}"
                )
            time.sleep(0.02)

    def _terminate(self, sig: signal.Signals, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
                if self._paused and sig != signal.SIGKILL:
                    proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        code = proc.returncode
        self._cleanup_after_exit()
        return code

    def _cleanup_after_exit(self) -> None:
        self._paused = False
        _LIVE.discard(self)
        with contextlib.suppress(OSError, ValueError):
            if self._proc is not None and int(self.pid_path.read_text()) == self._proc.pid:
                self.pid_path.unlink()
        self._close_output()

    def _close_output(self) -> None:
        if self._output is not None:
            with contextlib.suppress(OSError):
                self._output.close()
            self._output = None

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> int | None:
        """Gracefully stop (SIGTERM, then SIGKILL after ``timeout``); safe to call repeatedly.

        Returns the exit code, or ``None`` if the process was never started.
        """
        return self._terminate(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """Kill the process with SIGKILL (simulates a crash) and reap it."""
        return self._terminate(signal.SIGKILL, timeout=10.0)

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: connections stay open but nothing is answered."""
        if not self.is_running or self._proc is None:
            raise ServiceError(f"cannot pause {self.binary_name}: not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause` with SIGCONT."""
        if self._proc is not None and self.is_running:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> Self:
        """Stop (gracefully, if still running) and start again on the same port and data dir."""
        self.stop()
        return self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tcp_connects(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- redis


class RedisServer(_ManagedProcess):
    """A private ``redis-server`` with AOF persistence in ``data_dir``.

    Example::

        with RedisServer(tmp_path / "redis") as srv:
            r = redis.Redis.from_url(srv.url)
            r.set("k", "v")
            srv.kill()      # crash
            srv.restart()   # AOF is replayed; "k" is still there
    """

    service_name = "redis"
    binary_name = "redis-server"
    apt_package = "redis-server"
    ready_marker = b"Ready to accept connections"

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        appendonly: bool = True,
        appendfsync: AppendFsync = "always",
        dbfilename: str = "dump.rdb",
        extra_args: Sequence[str] = (),
        binary: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        """Configure (but do not start) the server.

        Args:
            data_dir: directory for the AOF/RDB files, log, pid file and process output.
            port: TCP port on 127.0.0.1; a free one is chosen when ``None``.
            appendonly: enable the append-only file.
            appendfsync: ``always`` (durable, default), ``everysec`` or ``no``.
            dbfilename: RDB file name (RDB snapshots are disabled with ``--save ""``).
            extra_args: additional ``redis-server`` command-line arguments.
            binary: explicit path to ``redis-server`` (default: found/installed on start).
            start_timeout: seconds to wait for PING to succeed.
        """
        super().__init__(data_dir, port, binary=binary, start_timeout=start_timeout)
        self.appendonly = appendonly
        self.appendfsync: AppendFsync = appendfsync
        self.dbfilename = dbfilename
        self.extra_args = list(extra_args)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``."""
        return f"redis://127.0.0.1:{self._port}/0"

    def _command(self, binary: str) -> list[str]:
        return [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self._port),
            "--daemonize",
            "no",
            "--dir",
            str(self.data_dir),
            "--dbfilename",
            self.dbfilename,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--logfile",
            str(self.log_path),
            *self.extra_args,
        ]

    def _probe(self) -> bool:
        return self.ping(timeout=0.5)

    def ping(self, timeout: float = 1.0) -> bool:
        """Return whether the server answers ``PING`` with ``+PONG`` (``-LOADING`` is not ready)."""
        try:
            with socket.create_connection(("127.0.0.1", self._port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                buf = b""
                while b"\r\n" not in buf:
                    chunk = sock.recv(256)
                    if not chunk:
                        return False
                    buf += chunk
                return buf.startswith(b"+PONG")
        except OSError:
            return False


# --------------------------------------------------------------------------- mosquitto


class MosquittoBroker(_ManagedProcess):
    """A private ``mosquitto`` MQTT broker on 127.0.0.1 configured from ``data_dir``.

    The generated ``mosquitto.conf`` enables ``set_tcp_nodelay`` (Nagle otherwise
    stalls small QoS 1 exchanges), anonymous access (by default), no persistence
    (by default) and a large ``max_queued_messages``.
    """

    service_name = "mosquitto"
    binary_name = "mosquitto"
    apt_package = "mosquitto"
    ready_marker = b" running"

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        allow_anonymous: bool = True,
        persistence: bool = False,
        max_queued_messages: int = 100_000,
        password_file: Path | str | None = None,
        acl_file: Path | str | None = None,
        extra_config: Sequence[str] = (),
        binary: str | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        """Configure (but do not start) the broker.

        Args:
            data_dir: directory for the generated config, log, persistence db and pid file.
            port: TCP port on 127.0.0.1; a free one is chosen when ``None``.
            allow_anonymous: accept clients without credentials.
            persistence: keep retained messages / sessions in ``data_dir`` across restarts.
            max_queued_messages: per-client queue limit (0 = unlimited).
            password_file: optional ``password_file`` (created with ``mosquitto_passwd``).
            acl_file: optional ``acl_file``.
            extra_config: extra lines appended verbatim to the generated config.
            binary: explicit path to ``mosquitto`` (default: found/installed on start).
            start_timeout: seconds to wait for the port to accept connections.
        """
        super().__init__(data_dir, port, binary=binary, start_timeout=start_timeout)
        self.allow_anonymous = allow_anonymous
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.password_file = Path(password_file).resolve() if password_file else None
        self.acl_file = Path(acl_file).resolve() if acl_file else None
        self.extra_config = list(extra_config)

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:<port>``."""
        return f"mqtt://127.0.0.1:{self._port}"

    @property
    def config_path(self) -> Path:
        """The generated ``mosquitto.conf``."""
        return self.data_dir / "mosquitto.conf"

    def config_text(self) -> str:
        """Return the configuration file contents for the current settings."""
        lines = [
            "# generated by unistock.devtools.services.MosquittoBroker",
            "per_listener_settings false",
            f"listener {self._port} 127.0.0.1",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "set_tcp_nodelay true",
            f"max_queued_messages {self.max_queued_messages}",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.data_dir}/",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if os.geteuid() == 0:
            # Mosquitto drops privileges to user "mosquitto" when started as root, which
            # would leave it unable to write its log / persistence file in data_dir.
            lines.append(f"user {pwd.getpwuid(os.geteuid()).pw_name}")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        lines.extend(self.extra_config)
        return "\n".join(lines) + "\n"

    def _prepare(self) -> None:
        self.config_path.write_text(self.config_text())

    def _command(self, binary: str) -> list[str]:
        return [binary, "-c", str(self.config_path)]

    def _probe(self) -> bool:
        return _tcp_connects(self._port)
