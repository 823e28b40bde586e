"""Mosquitto users, ACL and TLS material for tests and local development.

The production broker configuration lives in ``deploy/mosquitto/`` (``mosquitto.conf``,
``unistock.acl``, ``README.md``). These helpers let tests and ``devtools`` run a broker
with *the same* access rules, so that what the tests prove is what production enforces:

* :func:`write_password_file` creates a ``password_file`` with ``mosquitto_passwd``;
* :func:`write_acl` writes ``deploy/mosquitto/unistock.acl`` (or, when the repository
  checkout is not available, e.g. from an installed wheel, an embedded copy that a test
  keeps identical);
* :func:`deploy_broker_limits` returns the size / flow limits of the production config as
  ``extra_config`` lines for :class:`~unistock.devtools.services.MosquittoBroker`;
* :func:`write_self_signed_certs` and :func:`render_deploy_config` run the production
  ``mosquitto.conf`` itself (TLS included) under a private directory.

Access model (see ``unistock.acl``): a store agent's MQTT username *is* its store id and
may only write ``unistock/v1/stores/<id>/movements`` and ``.../status``, read ``.../acks`` and
its readers' ``.../readers/+/tags``, and read and write ``.../agent/reader-sync``; a store's
RFID readers, if they publish on this broker, use :func:`reader_username` and may only write
``.../readers/+/tags`` of their store (:func:`reader_acl`); the server authenticates as
:data:`SERVER_USERNAME` and reads every store's movements and status and writes every store's
acks.

Example::

    users = {SERVER_USERNAME: "srv-secret", "s1": "s1-secret"}
    passwd = write_password_file(tmp_path / "passwd", users)
    acl = write_acl(tmp_path / "unistock.acl")
    broker = MosquittoBroker(tmp_path / "mq", allow_anonymous=False, password_file=passwd,
                             acl_file=acl, extra_config=deploy_broker_limits())
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from unistock.devtools.services import ServiceError, ensure_binary

__all__ = [
    "EMBEDDED_ACL",
    "SERVER_USERNAME",
    "acl_rules",
    "acl_text",
    "deploy_broker_limits",
    "deploy_file",
    "reader_acl",
    "reader_username",
    "render_deploy_config",
    "store_username",
    "write_acl",
    "write_password_file",
    "write_self_signed_certs",
]

#: MQTT username of the Unistock server (the ``user`` block of the ACL).
SERVER_USERNAME = "unistock-server"

#: Settings of ``deploy/mosquitto/mosquitto.conf`` that :func:`deploy_broker_limits` copies
#: into a test broker (the ones :class:`MosquittoBroker` does not generate itself).
LIMIT_OPTIONS: tuple[str, ...] = (
    "message_size_limit",
    "max_packet_size",
    "max_inflight_messages",
    "max_queued_bytes",
    "persistent_client_expiration",
    "check_retain_source",
)

#: Fallback copy of the rules in ``deploy/mosquitto/unistock.acl`` (comments omitted),
#: used only when the repository's ``deploy/`` directory cannot be found.
#: ``tests/deploy/test_mosquitto_acl.py`` checks that both stay identical.
EMBEDDED_ACL = """\
# Unistock MQTT ACL (embedded copy of deploy/mosquitto/unistock.acl; see that file).
pattern write unistock/v1/stores/%u/movements
pattern write unistock/v1/stores/%u/status
pattern read unistock/v1/stores/%u/acks
pattern read unistock/v1/stores/%u/events
pattern read unistock/v1/stores/%u/readers/+/tags
pattern readwrite unistock/v1/stores/%u/agent/reader-sync

user unistock-server
topic read unistock/v1/stores/+/movements
topic write unistock/v1/stores/+/acks
topic write unistock/v1/stores/+/events
topic read unistock/v1/stores/+/status
"""

# A store id becomes one MQTT topic level and a mosquitto username: no level separator,
# no wildcard (mosquitto refuses ACL matches for usernames containing '+' or '#'), no ':'
# (the password file separator), no whitespace or control characters.
_STORE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

# Directories the production config refers to, mapped by render_deploy_config().
_DEPLOY_DIRS: tuple[tuple[str, str], ...] = (
    ("/etc/mosquitto/", "etc"),
    ("/var/lib/mosquitto/", "data"),
    ("/var/log/mosquitto/", "log"),
)


def deploy_file(name: str) -> Path | None:
    """Return ``deploy/mosquitto/<name>`` of the repository checkout, or ``None``.

    The repository root is searched upwards from this file (``server/unistock/devtools``),
    then from the current directory; ``UNISTOCK_REPO_ROOT`` overrides both.
    """
    roots: list[Path] = []
    env_root = os.environ.get("UNISTOCK_REPO_ROOT")
    if env_root:
        roots.append(Path(env_root))
    roots.extend(Path(__file__).resolve().parents)
    roots.extend([Path.cwd(), *Path.cwd().parents])
    for root in roots:
        candidate = root / "deploy" / "mosquitto" / name
        if candidate.is_file():
            return candidate
    return None


def acl_text() -> str:
    """Return the ACL file contents: the deploy copy if found, else :data:`EMBEDDED_ACL`."""
    path = deploy_file("unistock.acl")
    return path.read_text() if path is not None else EMBEDDED_ACL


def acl_rules(text: str) -> list[str]:
    """Return the effective lines of an ACL text: no comments, blanks or extra spaces."""
    rules = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            rules.append(" ".join(line.split()))
    return rules


def write_acl(path: Path | str, reader_stores: Sequence[str] = ()) -> Path:
    """Write the Unistock ACL (same rules as production) to ``path`` and return it.

    Args:
        path: the file to write.
        reader_stores: stores whose readers get a user of their own (:func:`reader_acl`).
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(acl_text() + reader_acl(reader_stores))
    return out


def reader_username(store_id: str) -> str:
    """Return the MQTT username of the RFID readers of ``store_id``: ``readers@<store id>``.

    ``@`` cannot occur in a store id, so the ACL's ``%u`` patterns grant this user nothing.
    """
    return f"readers@{store_username(store_id)}"


def reader_acl(store_ids: Sequence[str]) -> str:
    """ACL blocks letting each store's reader user publish tag reads on its own store only."""
    return "".join(
        f"\nuser {reader_username(store)}\ntopic write unistock/v1/stores/{store}/readers/+/tags\n"
        for store in store_ids
    )


def store_username(store_id: str) -> str:
    """Return the MQTT username of the agent of ``store_id`` (the store id itself).

    Raises:
        ValueError: ``store_id`` cannot be a single topic level / mosquitto username, or
            is the server's username.
    """
    if not _STORE_ID_RE.fullmatch(store_id) or store_id == SERVER_USERNAME:
        raise ValueError(
            f"invalid store id for MQTT: {store_id!r} (use 1-64 characters from "
            f"[A-Za-z0-9._-], starting with a letter or digit, not {SERVER_USERNAME!r})"
        )
    return store_id


#: umask of the tools writing secrets (mosquitto_passwd, openssl): what they create is 0600
#: from the start, never readable by others until a chmod.
PRIVATE_UMASK = 0o077


def write_password_file(
    path: Path | str,
    users: Mapping[str, str],
    *,
    binary: str | None = None,
) -> Path:
    """Create a mosquitto ``password_file`` at ``path`` holding exactly ``users``.

    Runs ``mosquitto_passwd -c -b`` for the first user (which replaces any existing file)
    and ``mosquitto_passwd -b`` for the others, so the hashes are whatever the installed
    mosquitto expects. ``-b`` puts the password on a command line, visible to other local
    users in ``ps``: fine for tests and development, not for production (see
    ``deploy/mosquitto/README.md``). The file is made readable by its owner only.

    Args:
        path: file to create (its directory is created if needed).
        users: username → password. Store agents use their store id as username (see
            :func:`store_username`), the server :data:`SERVER_USERNAME`.
        binary: explicit path of ``mosquitto_passwd`` (default: found on PATH, in the
            sbin directories, or installed with the ``mosquitto`` Debian package).

    Raises:
        ValueError: no users, or a username / password mosquitto cannot store.
        ServiceError: ``mosquitto_passwd`` failed.
    """
    if not users:
        raise ValueError("write_password_file needs at least one user")
    for username, password in users.items():
        if not username or any(c in username for c in ":\n\r\0"):
            raise ValueError(f"invalid MQTT username: {username!r}")
        if any(c in password for c in "\n\r\0"):
            raise ValueError(f"invalid password for MQTT user {username!r}")
    exe = binary or ensure_binary("mosquitto_passwd", "mosquitto")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # an old file keeps its mode when rewritten: start a new one
    for index, (username, password) in enumerate(users.items()):
        create = ["-c"] if index == 0 else []
        proc = subprocess.run(
            [exe, *create, "-b", str(out), username, password],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            umask=PRIVATE_UMASK,  # the file is the owner's only from its creation
        )
        if proc.returncode != 0:
            raise ServiceError(
                f"mosquitto_passwd failed for user {username!r} (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
    out.chmod(0o600)
    return out


def _deploy_config_text() -> str:
    path = deploy_file("mosquitto.conf")
    if path is None:
        raise FileNotFoundError("deploy/mosquitto/mosquitto.conf not found (no repo checkout?)")
    return path.read_text()


def deploy_broker_limits(options: tuple[str, ...] = LIMIT_OPTIONS) -> list[str]:
    """Return the production config lines for ``options``, as ``extra_config`` lines.

    Use with ``MosquittoBroker(..., extra_config=deploy_broker_limits())`` so a test broker
    enforces the production message size and flow limits (``max_queued_messages`` is a
    constructor argument of :class:`MosquittoBroker` and is not included by default).

    Raises:
        FileNotFoundError: ``deploy/mosquitto/mosquitto.conf`` is not available.
    """
    lines = []
    for raw in _deploy_config_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and line.split()[0] in options:
            lines.append(line)
    return lines


def render_deploy_config(root: Path | str, port: int, *, run_as: str | None = None) -> str:
    """Return the production ``mosquitto.conf`` relocated under ``root`` on ``port``.

    ``/etc/mosquitto/``, ``/var/lib/mosquitto/`` and ``/var/log/mosquitto/`` become
    ``root/etc/``, ``root/data/`` and ``root/log/`` (created here), and the TLS listener
    port becomes ``port``. Put the password file, ACL and ``certs/`` (see
    :func:`write_self_signed_certs`) under ``root/etc/``. ``run_as`` appends a ``user``
    line (needed when starting mosquitto as root, which otherwise switches to the
    ``mosquitto`` user and cannot write under ``root``).

    Raises:
        FileNotFoundError: ``deploy/mosquitto/mosquitto.conf`` is not available.
    """
    base = Path(root).resolve()
    text = _deploy_config_text()
    for prefix, sub in _DEPLOY_DIRS:
        (base / sub).mkdir(parents=True, exist_ok=True)
        text = text.replace(prefix, f"{base / sub}/")
    text, count = re.subn(r"(?m)^listener 8883$", f"listener {port}", text)
    if count != 1:
        raise ValueError("expected exactly one 'listener 8883' line in the deploy config")
    if run_as is not None:
        text += f"user {run_as}\n"
    return text


def write_self_signed_certs(
    directory: Path | str,
    hostname: str = "localhost",
    *,
    days: int = 30,
) -> tuple[Path, Path, Path]:
    """Create a private CA and a server certificate for ``hostname`` with ``openssl``.

    Writes ``ca.crt``, ``ca.key``, ``server.crt`` and ``server.key`` in ``directory`` (the
    names the production config expects under ``/etc/mosquitto/certs``). For tests and
    development only; production certificates come from the organisation's CA.

    Returns:
        ``(ca.crt, server.crt, server.key)``.

    Raises:
        ServiceError: ``openssl`` is missing or failed.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    exe = ensure_binary("openssl", "openssl")
    ca_key, ca_crt = out / "ca.key", out / "ca.crt"
    key, csr, crt = out / "server.key", out / "server.csr", out / "server.crt"
    ext = out / "server.ext"
    ext.write_text(
        f"subjectAltName=DNS:{hostname},IP:127.0.0.1\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    days_s = str(days)
    for old in (ca_key, key):  # an old key file keeps its mode when rewritten
        old.unlink(missing_ok=True)
    commands = [
        [exe, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", days_s,
         "-subj", "/CN=Unistock dev MQTT CA", "-keyout", str(ca_key), "-out", str(ca_crt)],
        [exe, "req", "-newkey", "rsa:2048", "-nodes", "-sha256", "-subj", f"/CN={hostname}",
         "-keyout", str(key), "-out", str(csr)],
        [exe, "x509", "-req", "-sha256", "-days", days_s, "-in", str(csr), "-CA", str(ca_crt),
         "-CAkey", str(ca_key), "-CAcreateserial", "-extfile", str(ext), "-out", str(crt)],
    ]  # fmt: skip
    for cmd in commands:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            umask=PRIVATE_UMASK,  # private keys are the owner's only from their creation
        )
        if proc.returncode != 0:
            raise ServiceError(f"{' '.join(cmd[:2])} failed: {proc.stderr.strip()}")
    for tmp in (csr, ext):
        tmp.unlink(missing_ok=True)
    key.chmod(0o600)
    ca_key.chmod(0o600)
    return ca_crt, crt, key
