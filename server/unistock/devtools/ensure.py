"""Make sure the external services needed for tests and ``make run`` are installed.

Usage: ``python -m unistock.devtools.ensure [--no-postgres]`` (``make services``, for the tests,
checks everything; ``make run`` passes ``--no-postgres`` and gets only what the server needs,
redis-server and mosquitto: the server's master data is an SQLite file unless a PostgreSQL URL
is configured, Node.js with npm only runs the example of tests/examples, and Prometheus only
tests deploy/). On Debian as root, missing packages are installed with ``apt-get``; otherwise a
clear error explains which package to install.

Prometheus (Debian package ``prometheus``: ``prometheus`` and ``promtool``) is for the tests of
``deploy/prometheus`` and ``deploy/grafana`` only; they run their own ``prometheus`` process on
a free loopback port with its own data directory, so a system service the package may start
(on port 9090, where the machine's init allows it) is neither needed nor disturbed.
"""

from __future__ import annotations

import subprocess
import sys

from unistock.devtools.services import (
    POSTGRES_APT_PACKAGE,
    ServiceNotFoundError,
    ensure_binary,
    ensure_postgres_bindir,
)

#: (binary, Debian package, flag printing the version) required by tests and the dev runner.
REQUIRED: tuple[tuple[str, str, str], ...] = (
    ("redis-server", "redis-server", "--version"),
    ("mosquitto", "mosquitto", "-h"),
)
#: The same for the tests only (not with --no-postgres): Node.js and npm run the Node.js
#: channel service example (examples/node-channel-service, tests/examples).
TESTS_ONLY: tuple[tuple[str, str, str], ...] = (
    ("node", "nodejs", "--version"),
    ("npm", "npm", "--version"),
    # the alert rules and dashboard tests (deploy/)
    ("prometheus", "prometheus", "--version"),
    ("promtool", "prometheus", "--version"),
)


def _version(path: str, flag: str) -> str:
    try:
        out = subprocess.run([path, flag], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown version"
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown version"


def _ensure(binaries: tuple[tuple[str, str, str], ...]) -> bool:
    """Check / install each (binary, package, version flag), printing its path and version;
    True when every one is there."""
    ok = True
    for binary, package, version_flag in binaries:
        try:
            path = ensure_binary(binary, package)
        except ServiceNotFoundError as exc:
            print(f"error: {exc}", file=sys.stderr)
            ok = False
            continue
        print(f"{binary}: {path} ({_version(path, version_flag)})")
    return ok


def main(argv: list[str] | None = None) -> int:
    """Check / install every required binary; return a process exit code."""
    args = sys.argv[1:] if argv is None else argv
    failed = not _ensure(REQUIRED)
    if "--no-postgres" in args:
        return 1 if failed else 0
    failed = not _ensure(TESTS_ONLY) or failed
    # PostgreSQL (package postgresql): Debian keeps initdb/postgres off PATH.
    try:
        bindir = ensure_postgres_bindir()
    except ServiceNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        failed = True
    else:
        postgres = str(bindir / "postgres")
        print(f"postgres ({POSTGRES_APT_PACKAGE}): {postgres} ({_version(postgres, '--version')})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
