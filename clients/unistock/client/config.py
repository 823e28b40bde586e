"""Where Unistock is: one set of defaults, and the user config file `make run` writes.

Every client program (the `unistock` CLI, `unistock-edge-agent`, `unistock-sim`) resolves each
setting the same way, first match wins:

1. its command-line flag (`--target`, `--token`, `--mqtt-url`);
2. its environment variable (`UNISTOCK_TARGET`, `UNISTOCK_TOKEN`, `UNISTOCK_MQTT_URL`);
3. the user config file;
4. the built-in default (`DEFAULT_TARGET`, `DEFAULT_MQTT_URL`); a token has none, but the CLI
   still finds the dev token `make run` wrote when run inside the checkout (`dev_token_paths`).

The user config file is TOML, at `$UNISTOCK_CONFIG` if set, else
`$XDG_CONFIG_HOME/unistock/config.toml` (`~/.config/unistock/config.toml`)::

    target = "localhost:50051"                 # the server's gRPC address, host:port
    token_file = "/home/me/unistock/var/dev-token"   # a file holding the token (or: token = "...")
    mqtt_url = "mqtt://127.0.0.1:1883"         # the store broker (edge agents, unistock-sim)
    metrics_url = "http://127.0.0.1:9464/metrics"    # the server's /metrics (shown, not used)

Every key is optional; an unknown key or a value that is not a string is an error naming the
file and the key (`ConfigError`), so a typo is not silently ignored.

`make run` writes the file with the addresses it started (`write_managed`), so that the CLI and
an agent started in any directory reach it. It writes the file only while it manages it: when
the file does not exist, or when its first line is `MANAGED_MARKER`. Delete that line to keep
your own settings; `make run` then leaves the file alone and says so.
"""

from __future__ import annotations

import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import tomli_w

DEFAULT_TARGET = "localhost:50051"
"""The server's gRPC address when nothing else is configured (the server's default port)."""
DEFAULT_MQTT_URL = "mqtt://127.0.0.1:1883"
"""The store broker when nothing else is configured (MQTT's standard port)."""
CONFIG_ENV = "UNISTOCK_CONFIG"
"""The variable naming the user config file (overrides the XDG location)."""
MANAGED_MARKER = "# Managed by `make run`: remove this line to keep your own settings."
"""The first line of a config file `make run` may rewrite."""
KEYS = ("target", "token", "token_file", "mqtt_url", "metrics_url")
"""The keys a config file may hold."""


class ConfigError(Exception):
    """The config file cannot be used (unreadable, not TOML, an unknown key, a non-string
    value), or no token was found; the message names the file and key, or what was tried."""


@dataclass(frozen=True, slots=True)
class Setting:
    """A resolved setting: its `value`, and its `source` (the flag, the variable, the config
    file's path or "default"), for messages such as `unistock config`."""

    value: str
    source: str


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The user config file's path (it need not exist): `$UNISTOCK_CONFIG`, else
    `$XDG_CONFIG_HOME/unistock/config.toml`, else `~/.config/unistock/config.toml`."""
    env = os.environ if env is None else env
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "unistock" / "config.toml"


def read_config(path: Path) -> dict[str, str]:
    """The settings in the config file at `path` ({} when it does not exist).

    Raises ConfigError for an unreadable file, invalid TOML (with its line and column), an
    unknown key or a value that is not a non-empty string."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path}: cannot read it: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path}: not valid TOML: {e}") from None
    out: dict[str, str] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"config file {path}: unknown key {key!r} (known: {', '.join(KEYS)})")
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"config file {path}: {key} must be a non-empty string")
        out[key] = value.strip()
    return out


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The settings every client program resolves (see the module docstring for the order).

    Build it with `ClientConfig.load()`; it reads the environment and the config file once."""

    path: Path
    env: Mapping[str, str]
    file: Mapping[str, str]

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> ClientConfig:
        """Read the environment and the user config file. Raises ConfigError (see
        `read_config`)."""
        env = dict(os.environ if env is None else env)
        path = config_path(env)
        return cls(path=path, env=env, file=read_config(path))

    def _pick(self, flag: str | None, flag_name: str, var: str, key: str) -> Setting | None:
        if flag:
            return Setting(flag, flag_name)
        if self.env.get(var):
            return Setting(self.env[var], var)
        if key in self.file:
            return Setting(self.file[key], str(self.path))
        return None

    def target(self, flag: str | None = None) -> Setting:
        """The server's gRPC address, host:port."""
        return self._pick(flag, "--target", "UNISTOCK_TARGET", "target") or Setting(
            DEFAULT_TARGET, "default"
        )

    def mqtt_url(self, flag: str | None = None) -> Setting:
        """The store broker's URL, mqtt[s]://[user:pass@]host[:port]."""
        return self._pick(flag, "--mqtt-url", "UNISTOCK_MQTT_URL", "mqtt_url") or Setting(
            DEFAULT_MQTT_URL, "default"
        )

    def metrics_url(self) -> Setting | None:
        """The server's /metrics URL, when the config file says it (`make run` does)."""
        return self._pick(None, "", "UNISTOCK_METRICS_URL", "metrics_url")

    def token(self, flag: str | None = None) -> Setting:
        """The bearer token: `--token`, `UNISTOCK_TOKEN`, the config file's `token` or
        `token_file`, else the dev token `make run` wrote, found by `dev_token_paths`.

        Raises ConfigError listing everything tried when there is none, or when the config
        file's token_file cannot be read."""
        found = self._pick(flag, "--token", "UNISTOCK_TOKEN", "token")
        if found is not None:
            return found
        if "token_file" in self.file:
            token_file = Path(self.file["token_file"]).expanduser()
            try:
                token = token_file.read_text(encoding="utf-8").strip()
            except OSError as e:
                raise ConfigError(
                    f"config file {self.path}: token_file {token_file}: {e.strerror or e} "
                    "(is `make run` running? it writes the dev token when the server starts)"
                ) from None
            if not token:
                raise ConfigError(f"config file {self.path}: token_file {token_file} is empty")
            return Setting(token, str(token_file))
        paths = dev_token_paths(self.env)
        for path in paths:
            if path.is_file():
                return Setting(path.read_text(encoding="utf-8").strip(), str(path))
        raise ConfigError(
            "no token: pass --token, set UNISTOCK_TOKEN, or put token or token_file in "
            f"{self.path} (`make run` writes it); the dev token was not found at "
            f"{', '.join(map(str, paths))} either (set UNISTOCK_DATA_DIR to the server's data "
            "directory to look there)"
        )


def redact_url(url: str) -> str:
    """A URL as logs and error messages may show it: its password as ***."""
    u = urllib.parse.urlsplit(url)
    return url.replace(f":{u.password}@", ":***@") if u.password else url


def dev_token_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """Where the dev token of a `make run` may be, in the order tried: only
    `$UNISTOCK_DATA_DIR/dev-token` when that is set, else `var/dev-token` in the current
    directory and each parent, then in the checkout this package is installed from."""
    env = os.environ if env is None else env
    if env.get("UNISTOCK_DATA_DIR"):
        return [Path(env["UNISTOCK_DATA_DIR"]) / "dev-token"]
    cwd = Path.cwd()
    paths = [d / "var" / "dev-token" for d in (cwd, *cwd.parents)]
    checkout = Path(__file__).resolve().parents[3]  # clients/unistock/client/config.py
    if (checkout / "pyproject.toml").exists():
        paths.append(checkout / "var" / "dev-token")
    return list(dict.fromkeys(paths))


def is_managed(path: Path) -> bool:
    """Whether `make run` may (re)write the config file at `path`: it does not exist, or its
    first line is MANAGED_MARKER."""
    try:
        with path.open(encoding="utf-8") as f:
            return f.readline().rstrip("\n") == MANAGED_MARKER
    except FileNotFoundError:
        return True
    except (OSError, UnicodeDecodeError):
        return False


def write_managed(path: Path, settings: Mapping[str, str], *, origin: str) -> bool:
    """Write `settings` (keys from KEYS) to the config file at `path` if `make run` manages it
    (`is_managed`); return whether it was written. The file is created owner-only (it may name
    a token file), atomically (a reader never sees half of it). `origin` says who wrote it, in
    a comment (e.g. the checkout's path)."""
    unknown = set(settings) - set(KEYS)
    if unknown:
        raise ValueError(f"unknown config keys: {sorted(unknown)}")
    if not is_managed(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    body = (
        f"{MANAGED_MARKER}\n# Written by {origin}; read by unistock, unistock-edge-agent and "
        "unistock-sim.\n" + tomli_w.dumps(dict(settings))
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True
