"""Which schema a process starts on, with the real `deskmail` command in a subprocess.

- A database a newer deskmail migrated (Alembic's version table stamped with a
  revision this code does not know, as a rollback of the code would leave it): the
  ticketer, the api, the read commands and `db migrate` each stop with one line and
  exit code 4, on SQLite and on PostgreSQL; nothing is changed.
- A database not migrated yet: the ticketer and the api wait, alive and not ready,
  and /readyz says why; once `deskmail db migrate` has run the api serves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from alembic.migration import MigrationContext
from sqlalchemy import text

from services.common import build
from services.localbroker import LocalBroker, free_port
from services.tickets import TicketStore
from tests.harness.stack import REPO, wait_for

pytestmark = pytest.mark.integration

DATABASE_NEWER = 4
FUTURE = "9999_future"
HEAD = "0011"
NEWER = (f"the tickets database is at revision {FUTURE}, newer than this deskmail {build.version()} "
         f"(knows up to {HEAD}): roll forward to the release that migrated it, or restore the database "
         "from the backup taken before that migration")
NOT_MIGRATED = "the tickets database is not migrated yet: run `deskmail db migrate`"


def deskmail(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def write_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "deskmail.yaml"
    path.write_text(textwrap.dedent(f"""\
        database: {{url: "{database_url}"}}
        data_dir: {tmp_path / "data"}
        queues:
          - key: SUPPORT
            mailboxes:
              - {{address: support@example.com, ingress: true}}
        """))
    return path


def revision(url: str) -> str | None:
    with TicketStore(url) as store, store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@pytest.fixture
def newer(db_url: str, tmp_path: Path) -> tuple[str, Path]:
    """A database migrated by "a newer deskmail": migrated, then stamped with a revision this code lacks."""
    with TicketStore(db_url) as store:
        store.migrate()
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": FUTURE})
    return db_url, write_config(tmp_path, db_url)


def one_error_line(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """`deskmail run` logs JSON lines; the stop is the last one and the only error."""
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    errors = [e for e in entries if e["level"] == "error"]
    assert errors == entries[-1:], result.stderr
    return errors[0]


@pytest.mark.parametrize("service", ["ticketer", "api"])
def test_run_stops_on_a_newer_database_with_one_line_and_exit_4(newer: tuple[str, Path], service: str) -> None:
    url, config = newer
    result = deskmail("run", service, "--config", str(config), "--metrics-port", str(free_port()))
    assert result.returncode == DATABASE_NEWER, result.stderr
    line = one_error_line(result)
    assert line["stage"] == service and line["msg"] == "stopped: the database is newer than this deskmail"
    assert line["error"] == NEWER
    assert revision(url) == FUTURE


def test_commands_refuse_a_newer_database_with_one_line_and_exit_4(newer: tuple[str, Path]) -> None:
    url, config = newer
    for args in (["tickets", "list"], ["tickets", "show", "SUPPORT-1"], ["db", "migrate"]):
        result = deskmail(*args, "--config", str(config))
        assert result.returncode == DATABASE_NEWER, (args, result.stderr)
        assert result.stderr.splitlines() == [f"Error: {NEWER}"], (args, result.stderr)
        assert result.stdout == "", args
    assert revision(url) == FUTURE, "db migrate changed nothing"
    status = deskmail("db", "status", "--config", str(config), "--json")
    assert status.returncode == DATABASE_NEWER
    assert json.loads(status.stdout) == {"state": "ahead", "revision": FUTURE, "head": HEAD,
                                         "version": build.version()}


def readyz(port: int) -> tuple[int, str] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:  # not listening yet
        return None


def healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        return int(response.status)


def start(service: str, config: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "services.cli", "run", service, "--config", str(config),
                             "--metrics-port", str(port), *extra], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_the_ticketer_waits_for_the_migration_alive_and_not_ready(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path}/tickets.db")
    port = free_port()
    proc = start("ticketer", config, port)
    try:
        waiting = (503, f"not ready: {NOT_MIGRATED}\n")
        wait_for(lambda: readyz(port) == waiting, 30, "the ticketer's /readyz to say it waits for the migration")
        assert healthz(port) == 200, "waiting is not a hang: the liveness probe passes"
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    entries = [json.loads(line) for line in stderr.splitlines()]
    waits = [e for e in entries if e["msg"] == "waiting for the database schema"]
    assert [(e["level"], e["stage"], e["reason"]) for e in waits] == [("warning", "ticketer", NOT_MIGRATED)]
    assert revision(f"sqlite:///{tmp_path}/tickets.db") is None, "the ticketer never migrates"


def test_the_api_waits_on_its_port_and_serves_once_migrated(tmp_path: Path, broker: LocalBroker) -> None:
    url = f"sqlite:///{tmp_path}/tickets.db"
    config = write_config(tmp_path, url)
    port = free_port()
    proc = start("api", config, port, "--bootstrap", broker.bootstrap)
    try:
        waiting = (503, f"not ready: {NOT_MIGRATED}\n")
        wait_for(lambda: readyz(port) == waiting, 30, "the api's /readyz to say it waits for the migration")
        assert healthz(port) == 200
        migrated = deskmail("db", "migrate", "--config", str(config))
        assert migrated.returncode == 0, migrated.stderr
        # the web server takes over the port: ready, and the pages answer
        wait_for(lambda: readyz(port) == (200, "ready\n"), 30, "the api to be ready once migrated")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/tickets", timeout=5) as response:
            assert response.status == 200
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr
    messages = [json.loads(line)["msg"] for line in stderr.splitlines()]
    assert messages.index("waiting for the database schema") < messages.index("database schema is current")
