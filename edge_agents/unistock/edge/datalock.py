"""One agent per store and data directory: an exclusive lock held for the agent's whole life.

A store's outbox and count store have one writer. A second ``unistock-edge-agent`` for the same
store and data directory (a rolling update on a shared volume, a watchdog restarting an agent
that only looked hung) would hand out seqs next to the first one, share its intake port and
knock it off the broker under the same MQTT client id. So the agent takes ``flock(LOCK_EX)`` on
``agent-<store>.lock`` beside the outbox before it opens anything, and a second process is
refused with :class:`AgentAlreadyRunning`, naming the holder (pid, host, start time written in
the file by the holder).

``flock`` is released by the kernel when the holder dies (``kill -9``, power cut): a stale file
never blocks a restart, and its old contents are simply overwritten. The file is never deleted:
unlinking a lock file lets a third process lock a new inode while a second still holds the old
one. On NFS, Linux emulates ``flock`` with POSIX byte-range locks, which the server arbitrates.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["AgentAlreadyRunning", "StoreLock", "lock_path"]


def lock_path(data_dir: Path, store_id: str) -> Path:
    """The lock file of a store's agent in ``data_dir``."""
    return data_dir / f"agent-{store_id}.lock"


class AgentAlreadyRunning(RuntimeError):
    """Another live process holds the store's lock (its outbox and count store)."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(
            f"another unistock-edge-agent already runs on {path.parent} for this store "
            f"({holder}; lock {path}): an outbox has one writer, stop that agent first"
        )
        self.path = path
        self.holder = holder


def _describe(raw: str) -> str:
    try:
        info = json.loads(raw)
        return f"pid {info['pid']} on host {info['host']}, started {info['started_at']}"
    except (ValueError, KeyError, TypeError):
        return "holder unknown: the lock file names no process"


class StoreLock:
    """``flock(LOCK_EX | LOCK_NB)`` on a store's lock file, held until :meth:`release`.

    Raises:
        AgentAlreadyRunning: from :meth:`acquire` when another open file (another process, or
            another ``StoreLock`` in this one) holds it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write the holder's pid, host and start time in the file."""
        if self._fd is not None:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise AgentAlreadyRunning(self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the next agent in (safe to call twice)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.ftruncate(fd, 0)  # nobody holds it now
            os.close(fd)  # closing the last descriptor drops the flock

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
