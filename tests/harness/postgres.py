"""A throwaway PostgreSQL cluster for tests.

Runs the Debian server binaries directly (initdb + pg_ctl) on a temporary
folder, with no TCP listener: clients connect over a unix socket in that
folder, so it never clashes with a system cluster on port 5432. Durability is
switched off (fsync, synchronous_commit, full_page_writes) because the data is
thrown away. Missing binaries raise RuntimeError: a test that needs PostgreSQL
fails loudly instead of skipping.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import psycopg

_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_SUPERUSER = "postgres"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_SETTING = re.compile(r"^[a-z_][a-z0-9_.]*$")


def find_bin_dir() -> Path:
    """Newest ``/usr/lib/postgresql/<version>/bin`` that holds initdb.

    Raises RuntimeError naming what to install when none is found.
    """
    candidates = [Path(p) for p in glob.glob(_BIN_GLOB) if (Path(p) / "initdb").is_file()]
    if not candidates:
        raise RuntimeError(
            f"PostgreSQL server binaries not found (no initdb under {_BIN_GLOB}); "
            "install the server, e.g. `apt-get install postgresql-15`"
        )

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    return max(candidates, key=version)


class PostgresCluster:
    """One throwaway cluster: ``start()``, ``create_database()``, ``stop()``.

    As root, initdb and pg_ctl run as the ``postgres`` user (they refuse root);
    as any other user they run as that user.
    """

    def __init__(self, bin_dir: Path | str | None = None, settings: Mapping[str, str] | None = None) -> None:
        """``settings``: more server settings (``-c name=value``), e.g.
        ``{"shared_preload_libraries": "pg_stat_statements"}``."""
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        for name, value in (settings or {}).items():
            if not _SETTING.match(name) or "'" in value or "\\" in value:
                raise ValueError(f"server setting {name}={value!r}: a name of [a-z_.] and a value without quotes")
        self._settings = dict(settings or {})
        self._dir: Path | None = None
        self._pg_ctl: Path | None = None
        self._running = False

    @property
    def socket_dir(self) -> Path:
        if self._dir is None:
            raise RuntimeError("PostgresCluster is not started")
        return self._dir

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``postgres`` database."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{_SUPERUSER}@/{database}?host={self.socket_dir}"

    def start(self) -> str:
        """Create and start the cluster; return the URL of the ``postgres`` database."""
        if self._running:
            return self.url
        bin_dir = self._bin_dir or find_bin_dir()
        initdb = bin_dir / "initdb"
        if not initdb.is_file():
            raise RuntimeError(f"initdb not found in {bin_dir}")
        self._dir = Path(tempfile.mkdtemp(prefix="deskmail-pg-"))
        try:
            if os.geteuid() == 0:
                shutil.chown(self._dir, user=_SUPERUSER, group=_SUPERUSER)
            data = self._dir / "data"
            self._run(
                [
                    str(initdb), "-D", str(data), "-U", _SUPERUSER, "-A", "trust",
                    "-E", "UTF8", "--no-sync", "--locale=C.UTF-8",
                ],
            )
            options = (
                f"-k {self._dir} -c listen_addresses='' -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off"
            ) + "".join(f" -c {name}='{value}'" for name, value in self._settings.items())
            self._run(
                [
                    str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(self._dir / "log"),
                    "-w", "-o", options, "start",
                ],
            )
            self._running = True
            self._pg_ctl = bin_dir / "pg_ctl"
        except BaseException:
            self._cleanup()
            raise
        return self.url

    def create_database(self, name: str) -> str:
        """Create an empty database ``name``; return its SQLAlchemy URL."""
        if not _DB_NAME.match(name):
            raise ValueError(f"database name {name!r} must match {_DB_NAME.pattern}")
        with psycopg.connect(
            host=str(self.socket_dir), dbname="postgres", user=_SUPERUSER, autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name validated above
        return self.url_for(name)

    def stop(self) -> None:
        """Stop the server at once (no checkpoint) and delete its folder. Idempotent."""
        if self._running and self._dir is not None and self._pg_ctl is not None:
            self._running = False
            self._run(
                [str(self._pg_ctl), "-D", str(self._dir / "data"), "-m", "immediate", "-w", "stop"]
            )
        self._cleanup()

    def __enter__(self) -> PostgresCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _cleanup(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _run(self, argv: list[str]) -> None:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", _SUPERUSER, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            log = ""
            if self._dir is not None and (self._dir / "log").is_file():
                log = (self._dir / "log").read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"{' '.join(argv)} failed with exit code {done.returncode}:\n"
                f"{done.stdout}{done.stderr}{log}"
            )
