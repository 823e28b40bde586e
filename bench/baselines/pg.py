"""Find a PostgreSQL for B7: ``UNISTOCK_BENCH_PG_URL``, else the usual local one on
127.0.0.1:5432 (trust auth, db ``test``), else a private ``initdb``/``pg_ctl`` cluster in a temp
dir on a free port, else None (B7 is skipped). ``UNISTOCK_BENCH_PG=private`` forces the private
cluster. URLs are SQLAlchemy asyncpg URLs (``postgresql+asyncpg://...``)."""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from bench._procs import free_port, log_stderr

LOCAL_CANDIDATES = (
    "postgresql+asyncpg://postgres@127.0.0.1:5432/test",
    "postgresql+asyncpg://root@127.0.0.1:5432/test",
    "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres",
)


async def _works(url: str) -> bool:
    from sqlalchemy import text
    from sqlalchemy.ext.asyncio import create_async_engine

    eng = create_async_engine(url, connect_args={"timeout": 3})
    try:
        async with eng.connect() as conn:
            await conn.execute(text("select 1"))
        return True
    except Exception:
        return False
    finally:
        await eng.dispose()


def _pg_bin() -> Path | None:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    for d in reversed(dirs):
        if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
            return Path(d)
    return None


class PrivatePostgres:
    """initdb + pg_ctl into a temp dir (owned by ``postgres`` when running as root)."""

    def __init__(self) -> None:
        self.bin = _pg_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="unistock-bench-pg-"))
        self.prefix: list[str] = []
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        if os.geteuid() == 0:
            self.user = "postgres"
            self.prefix = ["runuser", "-u", "postgres", "--"]
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True, cwd="/")

    def start(self) -> PrivatePostgres:
        if self.bin is None:
            raise RuntimeError("no /usr/lib/postgresql/*/bin with initdb/pg_ctl")
        data = self.dir / "data"
        self._run(str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", self.user)
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.dir} -c max_connections=200"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(data), "-o", opts,
            "-l", str(self.dir / "log"), "-w", "-t", "60", "start",
        )  # fmt: skip
        return self

    def stop(self) -> None:
        if self.bin is not None and (self.dir / "data" / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run(
                    str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w",
                    "stop",
                )  # fmt: skip
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def postgres_url() -> AsyncIterator[tuple[str | None, str]]:
    """Yield (url or None, how it was found / why none)."""
    env_url = os.environ.get("UNISTOCK_BENCH_PG_URL")
    if env_url:
        yield env_url, "UNISTOCK_BENCH_PG_URL"
        return
    if os.environ.get("UNISTOCK_BENCH_PG") != "private":
        for url in LOCAL_CANDIDATES:
            if await _works(url):
                yield url, f"local {url.split('@')[1]}"
                return
    pg = PrivatePostgres()
    try:
        pg.start()
    except Exception as e:  # no binaries, no postgres user, initdb failure...
        log_stderr(f"private postgres failed: {e}")
        pg.stop()
        yield None, f"no PostgreSQL (env unset, no local 5432, private initdb failed: {e})"
        return
    try:
        yield pg.url, f"private initdb cluster on port {pg.port}"
    finally:
        pg.stop()
