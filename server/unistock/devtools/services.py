"""Run real ``redis-server``, ``mosquitto`` and PostgreSQL processes on private loopback ports.

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
import glob
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

import psycopg
from psycopg import sql

__all__ = [
    "MosquittoBroker",
    "PostgresServer",
    "RedisServer",
    "ServiceError",
    "ServiceNotFoundError",
    "ensure_binary",
    "ensure_postgres_bindir",
    "find_postgres_bindir",
    "free_port",
    "searchable_tempdir",
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
    _install_package(name, apt_package, hint, allow_install=allow_install)
    path = find_binary(name)
    if path is None:
        raise ServiceNotFoundError(f"installed '{apt_package}' but '{name}' is still missing.")
    print(f"[unistock.devtools] installed {apt_package}: {path}", file=sys.stderr, flush=True)
    return path


def _install_package(what: str, apt_package: str, hint: str, *, allow_install: bool) -> None:
    """Install ``apt_package`` (providing the missing ``what``) or raise with ``hint``."""
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
        f"[unistock.devtools] '{what}' is missing; installing Debian package "
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


@dataclass(frozen=True)
class _Account:
    """An OS account a service process runs as (instead of the current user)."""

    name: str
    uid: int
    gid: int


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
    #: Signal asking the service for a prompt, clean shutdown.
    stop_signal: signal.Signals = signal.SIGTERM

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
        for path in dict.fromkeys((self.output_path, self.log_path)):
            tail = _tail(path, lines)
            if tail:
                parts.append(f"--- {path} ---\n{tail}")
        return "\n".join(parts) or "(no log output)"

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<{type(self).__name__} port={self._port} {state} data_dir={self.data_dir}>"

    # ---- hooks ------------------------------------------------------------------

    def _locate_binary(self) -> str:
        """Return the service binary, installing it if needed (called once, on first start)."""
        return ensure_binary(self.binary_name, self.apt_package)

    def _account(self) -> _Account | None:
        """The account to run the process as; ``None`` runs it as the current user."""
        return None

    def _send_signal(self, sig: signal.Signals) -> None:
        """Deliver ``sig`` to the running service (subclasses may signal its children too)."""
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.send_signal(sig)

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
                f"(pid {other}, see {self.pid_path}): is `make run` already running? Stop that "
                f"one (Ctrl-C in its terminal); if nothing else uses it, `kill {other}`"
            )

    def start(self) -> Self:
        """Start the process and block until it is ready (or raise :class:`ServiceError`).

        Calling ``start()`` on a running instance is a no-op.  If the port was chosen
        automatically and is grabbed by someone else before the first start, a new free
        port is picked and the start retried.
        """
        if self.is_running:
            return self
        binary = self._binary or self._locate_binary()
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
        account = self._account()
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            start_new_session=True,
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            extra_groups=None if account is None else [account.gid],
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
            self._send_signal(sig)
            if self._paused and sig != signal.SIGKILL:
                self._send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._send_signal(signal.SIGKILL)
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
        """Gracefully stop (:attr:`stop_signal`, then SIGKILL after ``timeout``); idempotent.

        Returns the exit code, or ``None`` if the process was never started.
        """
        return self._terminate(self.stop_signal, timeout)

    def kill(self) -> int | None:
        """Kill the process with SIGKILL (simulates a crash) and reap it."""
        return self._terminate(signal.SIGKILL, timeout=10.0)

    def pause(self) -> None:
        """Freeze the process with SIGSTOP: connections stay open but nothing is answered."""
        if not self.is_running or self._proc is None:
            raise ServiceError(f"cannot pause {self.binary_name}: not running")
        self._send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Undo :meth:`pause` with SIGCONT."""
        if self._proc is not None and self.is_running:
            self._send_signal(signal.SIGCONT)
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


# --------------------------------------------------------------------------- postgresql

#: Debian package providing the PostgreSQL server (``initdb``, ``postgres``).
POSTGRES_APT_PACKAGE = "postgresql"

#: Unprivileged account the server runs as when the caller is root (PostgreSQL refuses
#: to run as root); the Debian package creates it.
POSTGRES_OS_USER = "postgres"

_PG_TOOLS = ("initdb", "postgres")
_DB_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: ``sun_path`` holds 108 bytes including the terminating NUL.
_MAX_SOCKET_PATH = 107


def _version_key(bindir: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin, version "15" or "9.6"
    version = Path(bindir).parent.name
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


def find_postgres_bindir() -> Path | None:
    """Return the directory holding the PostgreSQL server binaries, or ``None``.

    Looked up in order: ``$UNISTOCK_PG_BINDIR``, the directory of an ``initdb`` on PATH
    (or in :data:`EXTRA_BIN_DIRS`), then Debian's ``/usr/lib/postgresql/<version>/bin``
    (highest version first), which is not on PATH.  A directory counts only if it holds
    both ``initdb`` and ``postgres``.
    """
    candidates: list[Path] = []
    override = os.environ.get("UNISTOCK_PG_BINDIR")
    if override:
        candidates.append(Path(override))
    initdb = find_binary("initdb")
    if initdb is not None:
        candidates.append(Path(initdb).parent)
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    candidates += [Path(d) for d in debian]
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in _PG_TOOLS):
            return bindir
    return None


def ensure_postgres_bindir(*, allow_install: bool = True) -> Path:
    """Return :func:`find_postgres_bindir`, installing Debian's ``postgresql`` if needed.

    Installation follows :func:`ensure_binary`: only as root with ``apt-get``, unless
    ``allow_install=False`` or ``UNISTOCK_NO_APT_INSTALL=1``.

    Raises:
        ServiceNotFoundError: the binaries are missing and could not be installed.
    """
    bindir = find_postgres_bindir()
    if bindir is not None:
        return bindir
    hint = (
        "the PostgreSQL server binaries (initdb, postgres) were not found in "
        "$UNISTOCK_PG_BINDIR, on PATH or in /usr/lib/postgresql/*/bin. Install the Debian "
        f"package '{POSTGRES_APT_PACKAGE}', e.g. `sudo apt-get install -y "
        f"{POSTGRES_APT_PACKAGE}`, or point UNISTOCK_PG_BINDIR at the directory holding them."
    )
    _install_package("initdb", POSTGRES_APT_PACKAGE, hint, allow_install=allow_install)
    bindir = find_postgres_bindir()
    if bindir is None:
        raise ServiceNotFoundError(f"installed '{POSTGRES_APT_PACKAGE}' but {hint}")
    print(f"[unistock.devtools] installed {POSTGRES_APT_PACKAGE}: {bindir}", file=sys.stderr)
    return bindir


def _postgres_account() -> _Account | None:
    """``None`` for a normal user; as root, the unprivileged :data:`POSTGRES_OS_USER`."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        raise ServiceError(
            "PostgreSQL refuses to run as root, and there is no unprivileged "
            f"'{POSTGRES_OS_USER}' account to run it as (the Debian package "
            f"'{POSTGRES_APT_PACKAGE}' creates one). Create it, e.g. `useradd --system "
            f"--user-group --no-create-home --shell /usr/sbin/nologin {POSTGRES_OS_USER}`, "
            "or run as a normal user."
        ) from None
    return _Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _first_unsearchable_dir(path: Path, account: _Account | None) -> Path | None:
    """Return the first directory on the way to ``path`` that ``account`` cannot enter.

    ``None`` means every directory from ``/`` down to ``path`` grants ``account`` search
    (x) permission, or ``account`` is ``None`` (the current user).
    """
    if account is None:
        return None
    groups = {account.gid} | {g.gr_gid for g in _groups_of(account.name)}
    for directory in [*reversed(path.parents), path]:
        try:
            st = directory.stat()
        except FileNotFoundError:
            return None  # not created yet: start() creates it searchable
        if st.st_uid == account.uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            return directory
    return None


def searchable_tempdir(prefix: str = "unistock-pg-") -> Path:
    """Make a fresh temporary directory that other accounts may enter but not list (0711).

    For :class:`PostgresServer` data dirs when running as root (pytest's ``tmp_path`` is
    inside a mode 0700 directory).  The caller removes it.
    """
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def _groups_of(user: str) -> list[grp.struct_group]:
    return [g for g in grp.getgrall() if user in g.gr_mem]


def _proc_stat(pid: int) -> tuple[bytes, int] | None:
    """``(state, ppid)`` of ``pid`` from ``/proc``, or ``None`` if it does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # "pid (comm) state ppid ..."; comm may contain spaces and parentheses
    fields = raw[raw.rfind(b")") + 2 :].split()
    return (fields[0], int(fields[1])) if len(fields) >= 2 else None


def _proc_stats() -> list[tuple[int, bytes, int]]:
    """``(pid, state, ppid)`` of every process (empty without procfs)."""
    stats = []
    with contextlib.suppress(OSError):
        for entry in Path("/proc").iterdir():
            stat = _proc_stat(int(entry.name)) if entry.name.isdigit() else None
            if stat is not None:
                stats.append((int(entry.name), *stat))
    return stats


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until ``pid`` is stopped (state T), has exited, or ``timeout`` has passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = _proc_stat(pid)
        if stat is None or stat[0] in (b"T", b"t", b"Z", b"X"):
            return
        time.sleep(0.001)


def _children_of(pid: int) -> list[int]:
    return [child for child, _, ppid in _proc_stats() if ppid == pid]


def _alive(pids: set[int]) -> set[int]:
    """The members of ``pids`` that still run (zombies count as gone)."""
    return {pid for pid in pids if (stat := _proc_stat(pid)) and stat[0] not in (b"Z", b"X")}


class PostgresServer(_ManagedProcess):
    """A private PostgreSQL cluster in ``data_dir``, served on 127.0.0.1:``port``.

    The first start runs ``initdb`` (superuser ``superuser``, UTF-8, C locale) into
    ``data_dir / "pgdata"`` and writes a ``pg_hba.conf`` that trusts loopback connections
    only; every start runs ``postgres`` directly (so :meth:`kill` hits the postmaster) with
    ``listen_addresses=127.0.0.1``, the given port, and its unix socket inside ``pgdata``
    (none if that path would exceed the 107-byte limit: clients use TCP anyway).  The
    server logs to its stderr, i.e. :attr:`output_path`.

    PostgreSQL refuses to run as root: when the caller is root, ``initdb`` and ``postgres``
    run as the unprivileged :data:`POSTGRES_OS_USER` account, which owns ``pgdata``; every
    directory above ``data_dir`` must then be searchable by that account (pytest's
    ``tmp_path`` is not: it lives in a mode 0700 directory), else :meth:`start` raises.

    :meth:`stop` is a *fast* shutdown (SIGINT: open sessions are ended, a checkpoint is
    written).  :meth:`kill`, :meth:`pause` and :meth:`resume` signal the whole process
    group (postmaster and backends): a paused server answers nothing, even on open
    connections, and after :meth:`kill` every backend is gone, so :meth:`restart` runs crash
    recovery from the WAL: committed transactions survive, open ones are lost.

    Durable by default (``fsync=on``); ``fsync=False`` turns ``fsync``,
    ``synchronous_commit`` and ``full_page_writes`` off, for throwaway test databases only.

    Example::

        with PostgresServer(data_dir) as pg:
            engine = sqlalchemy.create_engine(pg.create_database("inventory"))
            ...
            pg.kill()      # crash
            pg.restart()   # WAL replay: committed rows are still there
    """

    service_name = "postgres"
    binary_name = "postgres"
    apt_package = POSTGRES_APT_PACKAGE
    ready_marker = b"database system is ready to accept connections"
    stop_signal = signal.SIGINT

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        superuser: str = "postgres",
        fsync: bool = True,
        settings: Mapping[str, str | int] | None = None,
        bindir: Path | str | None = None,
        start_timeout: float = 30.0,
    ) -> None:
        """Configure (but do not start) the server.

        Args:
            data_dir: directory for ``pgdata`` (the cluster), the output log and pid file.
            port: TCP port on 127.0.0.1; a free one is chosen when ``None``.
            superuser: name of the superuser role created by ``initdb`` (no password).
            fsync: ``False`` trades crash safety for speed (fsync, synchronous_commit and
                full_page_writes off); never use it where a crash must not lose data.
            settings: extra server settings, passed as ``-c name=value``.
            bindir: directory of ``initdb``/``postgres`` (default: found/installed on start).
            start_timeout: seconds to wait for the server to accept queries (crash recovery
                included).
        """
        super().__init__(
            data_dir,
            port,
            binary=None if bindir is None else str(Path(bindir) / "postgres"),
            start_timeout=start_timeout,
        )
        if not _DB_NAME.fullmatch(superuser):
            raise ValueError(f"superuser must match {_DB_NAME.pattern}: {superuser!r}")
        self.superuser = superuser
        self.fsync = fsync
        self.settings: dict[str, str | int] = dict(settings or {})
        self._killed_children: set[int] = set()

    # ---- properties -------------------------------------------------------------

    @property
    def pgdata(self) -> Path:
        """The cluster directory (``PGDATA``)."""
        return self.data_dir / "pgdata"

    @property
    def log_path(self) -> Path:
        """The server logs to stderr, which goes to :attr:`output_path`."""
        return self.output_path

    @property
    def socket_dir(self) -> Path | None:
        """Directory of the unix socket, or ``None`` when the path would be too long."""
        socket_path = self.pgdata / f".s.PGSQL.{self._port}.lock"
        return self.pgdata if len(os.fsencode(socket_path)) <= _MAX_SOCKET_PATH else None

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` maintenance database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        """``postgresql+psycopg://<superuser>@127.0.0.1:<port>/<database>``."""
        _check_db_name(database)
        return f"postgresql+psycopg://{self.superuser}@127.0.0.1:{self._port}/{database}"

    # ---- databases --------------------------------------------------------------

    def connect(self, database: str = "postgres", timeout: float = 5.0) -> psycopg.Connection:
        """Open an autocommit psycopg connection to ``database`` as the superuser."""
        _check_db_name(database)
        return psycopg.connect(
            host="127.0.0.1",
            port=self._port,
            user=self.superuser,
            dbname=database,
            connect_timeout=max(2, round(timeout)),  # libpq's minimum is 2 s
            autocommit=True,
        )

    def create_database(self, name: str) -> str:
        """Create the empty database ``name`` (from ``template0``) and return its URL."""
        _check_db_name(name)
        with self.connect() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(
                    sql.Identifier(name)
                )
            )
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, ending its open sessions first."""
        _check_db_name(name)
        with self.connect() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    # ---- hooks ------------------------------------------------------------------

    def _locate_binary(self) -> str:
        return str(ensure_postgres_bindir() / "postgres")

    def _account(self) -> _Account | None:
        return _postgres_account()

    def _send_signal(self, sig: signal.Signals) -> None:
        if self._proc is None:
            return
        if sig not in (signal.SIGKILL, signal.SIGSTOP, signal.SIGCONT):
            super()._send_signal(sig)  # shutdown requests are for the postmaster only
            return
        # Backends serve their connections on their own, so freezing or killing the
        # server means signalling them too.  Each child of the postmaster leads its own
        # process group (PostgreSQL calls setsid()), so they are found by parent pid, with
        # the postmaster stopped first: it forks no new child meanwhile, and its children
        # are not handed over to init as they would be once it is dead.
        postmaster = self._proc.pid
        if sig != signal.SIGCONT:
            super()._send_signal(signal.SIGSTOP)
            _wait_stopped(postmaster)
        children = _children_of(postmaster)
        for child in children:
            try:
                os.killpg(child, sig)  # with whatever the child may have started
            except ProcessLookupError:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, sig)
        if sig == signal.SIGKILL:
            self._killed_children.update(children)
        super()._send_signal(sig)

    def _cleanup_after_exit(self) -> None:
        # After a SIGKILL the backends are orphans: restart() must not begin before they
        # are gone (PostgreSQL refuses to start while they hold the old shared memory).
        deadline = time.monotonic() + 10.0
        while _alive(self._killed_children):
            if time.monotonic() > deadline:
                raise ServiceError(
                    f"backends {sorted(_alive(self._killed_children))} of {self!r} survived SIGKILL"
                )
            time.sleep(0.01)
        self._killed_children.clear()
        super()._cleanup_after_exit()

    def _prepare(self) -> None:
        account = self._account()
        if account is not None:
            # Only search permission, so that the account can reach its pgdata below.
            self.data_dir.chmod(self.data_dir.stat().st_mode | 0o111)
            blocked = _first_unsearchable_dir(self.data_dir, account)
            if blocked is not None:
                raise ServiceError(
                    f"PostgreSQL runs as '{account.name}' (it refuses to run as root), "
                    f"which cannot enter {blocked} (mode {blocked.stat().st_mode & 0o7777:o}) "
                    f"on the way to {self.data_dir}; use a data dir under a directory it can "
                    "search, e.g. one made by unistock.devtools.services.searchable_tempdir()"
                )
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(account)

    def _initdb(self, account: _Account | None) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if account is not None:
            os.chown(self.pgdata, account.uid, account.gid)
        assert self._binary is not None
        initdb = str(Path(self._binary).parent / "initdb")
        cmd = [
            initdb,
            "--pgdata",
            str(self.pgdata),
            "--username",
            self.superuser,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
        ]
        result = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self.data_dir,
            check=False,
            user=None if account is None else account.uid,
            group=None if account is None else account.gid,
            extra_groups=None if account is None else [account.gid],
        )
        with self.output_path.open("ab") as out:
            out.write(f"\n=== {time.strftime('%F %T')} {shlex.join(cmd)}\n".encode())
            out.write(result.stdout + result.stderr)
        if result.returncode != 0:
            raise ServiceError(
                f"initdb failed with code {result.returncode} in {self.pgdata}.\n"
                f"{result.stderr.decode(errors='replace')}"
            )
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(
            "# generated by unistock.devtools.services.PostgresServer: loopback only, trust\n"
            "# TYPE  DATABASE  USER  ADDRESS       METHOD\n"
            "local   all       all                 trust\n"
            "host    all       all   127.0.0.1/32  trust\n"
        )
        if account is not None:
            os.chown(hba, account.uid, account.gid)

    def _command(self, binary: str) -> list[str]:
        socket_dir = self.socket_dir
        settings: dict[str, str | int] = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "" if socket_dir is None else str(socket_dir),
            "lc_messages": "C",  # the ready marker is matched in English
            "logging_collector": "off",
            "fsync": "on" if self.fsync else "off",
            "synchronous_commit": "on" if self.fsync else "off",
            "full_page_writes": "on" if self.fsync else "off",
        }
        settings.update(self.settings)
        cmd = [binary, "-D", str(self.pgdata), "-p", str(self._port)]
        for name, value in settings.items():
            cmd += ["-c", f"{name}={value}"]
        return cmd

    def _probe(self) -> bool:
        try:
            with self.connect(timeout=2) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True


def _check_db_name(name: str) -> None:
    if not _DB_NAME.fullmatch(name):
        raise ValueError(
            f"database name must match {_DB_NAME.pattern} (lower case, no quoting): {name!r}"
        )
