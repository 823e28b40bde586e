"""Issue 8 (2.8): a secret file is never readable by others, not even for the moment between
writing it and a chmod. An audit hook looks at the directory before every file operation
Python makes (open, chmod, rename, starting a subprocess) and records every file's mode."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from unistock.devtools.mqtt_auth import write_password_file, write_self_signed_certs
from unistock.server.app.cli import write_dev_token

_EVENTS = frozenset({"open", "os.chmod", "os.rename", "subprocess.Popen"})


class _Observer:
    def __init__(self) -> None:
        self.directory: Path | None = None
        self.seen: set[tuple[str, int]] = set()
        self.busy = False

    def __call__(self, event: str, args: tuple[Any, ...]) -> None:
        if self.directory is None or self.busy or event not in _EVENTS:
            return
        self.busy = True
        try:
            self.look()
        finally:
            self.busy = False

    def look(self) -> None:
        assert self.directory is not None
        for entry in os.scandir(self.directory):
            st = entry.stat(follow_symlinks=False)
            if entry.is_file(follow_symlinks=False) and st.st_size:
                self.seen.add((entry.name, st.st_mode & 0o777))


_observer = _Observer()
sys.addaudithook(_observer)


@pytest.fixture
def observed(tmp_path: Path) -> Iterator[Callable[[], set[tuple[str, int]]]]:
    """Modes of every non-empty file in tmp_path at every file operation (umask 022)."""
    old = os.umask(0o022)
    _observer.seen = set()
    _observer.directory = tmp_path

    def seen() -> set[tuple[str, int]]:
        _observer.look()
        return set(_observer.seen)

    try:
        yield seen
    finally:
        _observer.directory = None
        os.umask(old)


def readable_by_others(seen: set[tuple[str, int]]) -> list[str]:
    return sorted(f"{name} {mode:o}" for name, mode in seen if mode & 0o077)


def test_dev_token_is_private_from_its_first_byte(
    tmp_path: Path, observed: Callable[[], set[tuple[str, int]]]
) -> None:
    for token in ("secret-dev-token-0123456789", "second-dev-token-0123456789"):
        path = write_dev_token(tmp_path, token)
        assert path.read_text() == token + "\n"
        assert path.stat().st_mode & 0o777 == 0o600
    assert readable_by_others(observed()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["dev-token"]


def test_mosquitto_password_file_is_private_from_its_creation(
    tmp_path: Path, observed: Callable[[], set[tuple[str, int]]]
) -> None:
    path = write_password_file(tmp_path / "passwd", {"store-1": "pw-1", "unistock-server": "pw-2"})
    assert path.stat().st_mode & 0o777 == 0o600
    assert readable_by_others(observed()) == []


def test_private_keys_are_private_from_their_creation(
    tmp_path: Path, observed: Callable[[], set[tuple[str, int]]]
) -> None:
    write_self_signed_certs(tmp_path, days=1)
    seen = observed()
    assert readable_by_others({s for s in seen if s[0].endswith(".key")}) == []
    assert {name for name, _ in seen} >= {"ca.key", "server.key", "server.crt"}
