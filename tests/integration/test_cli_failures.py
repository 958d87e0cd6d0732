"""Expected failures of the `deskmail` command: one clear line and a distinct exit
code (0 ok, 1 failed, 2 usage/config, 3 dependency unreachable or not ready),
never a traceback. Each runs the real command in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from services.localbroker import free_port
from tests.harness.stack import REPO

OK, FAILED, USAGE, UNAVAILABLE = 0, 1, 2, 3


def deskmail(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


def write_config(tmp_path: Path, database_url: str, extra: str = "") -> Path:
    path = tmp_path / "deskmail.yaml"
    path.write_text(textwrap.dedent(f"""\
        database: {{url: "{database_url}"}}
        data_dir: {tmp_path / "data"}
        queues:
          - key: SUPPORT
            mailboxes:
              - {{address: support@example.com, ingress: true}}
        """) + extra)
    return path


def no_traceback(result: subprocess.CompletedProcess[str]) -> None:
    for line in (result.stdout + result.stderr).splitlines():
        assert not line.startswith("Traceback"), result.stderr


def test_a_database_on_a_closed_port_is_one_line_and_exit_3(tmp_path: Path) -> None:
    port = free_port("127.0.0.1")
    config = write_config(tmp_path, f"postgresql+psycopg://deskmail:s3cret-pw@127.0.0.1:{port}/deskmail")
    result = deskmail("tickets", "list", "--config", str(config))
    no_traceback(result)
    assert result.returncode == UNAVAILABLE
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0], result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_read_commands_never_migrate_they_ask_for_db_migrate(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path}/tickets.db")
    for args in (["tickets", "list"], ["tickets", "show", "SUPPORT-1"]):
        result = deskmail(*args, "--config", str(config))
        no_traceback(result)
        assert result.returncode == UNAVAILABLE, result.stderr
        assert "deskmail db migrate" in result.stderr
    migrated = deskmail("db", "migrate", "--config", str(config))
    assert migrated.returncode == OK and "up to date" in migrated.stdout
    listed = deskmail("tickets", "list", "--config", str(config), "--json")
    assert listed.returncode == OK and listed.stdout == ""
    missing = deskmail("tickets", "show", "SUPPORT-1", "--config", str(config))
    assert missing.returncode == FAILED and "no ticket SUPPORT-1" in missing.stderr


def test_a_database_url_that_cannot_work_is_a_config_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, "nosuchdb://somewhere/x")
    result = deskmail("tickets", "list", "--config", str(config))
    no_traceback(result)
    assert result.returncode == USAGE, result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path}/tickets.db")
    result = deskmail("tickets", "list", "--limit", "-1", "--config", str(config))
    no_traceback(result)
    assert result.returncode == USAGE and "--limit" in result.stderr
    env = {k: v for k, v in __import__("os").environ.items() if k != "DESKMAIL_CONFIG"}
    result = deskmail("config", "check", env=env)
    assert result.returncode == USAGE and "PATH" in result.stderr, result.stderr
    result = deskmail("tickets", "list", env=env)
    assert result.returncode == USAGE and "--config" in result.stderr


def test_a_bad_config_names_the_line_and_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path}/tickets.db", "api: {listen: 'localhost:http'}\n")
    result = deskmail("config", "check", str(config))
    no_traceback(result)
    assert result.returncode == USAGE
    assert "line 7: api.listen" in result.stderr, result.stderr  # the last line of the file


def test_an_unreachable_broker_is_one_line_and_exit_3(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path}/tickets.db")
    port = free_port("127.0.0.1")
    result = deskmail("deadletters", "list", "--config", str(config), "--bootstrap", f"127.0.0.1:{port}",
                      timeout=120)
    no_traceback(result)
    assert result.returncode == UNAVAILABLE, result.stderr
    assert "unreachable" in result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("service", ["ticketer"])
def test_run_reports_a_failure_as_one_json_log_line(tmp_path: Path, service: str) -> None:
    port = free_port("127.0.0.1")
    config = write_config(tmp_path, f"postgresql+psycopg://deskmail@127.0.0.1:{port}/deskmail",
                          f"kafka: {{bootstrap_servers: ['127.0.0.1:{free_port('127.0.0.1')}']}}\n")
    result = deskmail("run", service, "--config", str(config), "--metrics-port", "0")
    no_traceback(result)
    assert result.returncode == UNAVAILABLE
    entries = [json.loads(line) for line in result.stderr.splitlines()]  # every line is JSON
    assert entries[-1]["level"] == "error" and entries[-1]["stage"] == service
    assert f"127.0.0.1:{port}" in entries[-1]["error"]


def test_a_reply_with_a_line_break_in_a_header_field_is_refused_in_one_line(tmp_path: Path) -> None:
    from services.tickets import TicketStore
    from tests.harness.records import command

    url = f"sqlite:///{tmp_path}/tickets.db"
    config = write_config(tmp_path, url, textwrap.dedent("""\
        organization:
          members: [{email: alice@example.com}]
        """))
    # a queue that may mail customers, from a mailbox with SMTP settings
    config.write_text(config.read_text().replace(
        "{address: support@example.com, ingress: true}",
        "{address: support@example.com, ingress: true, accept_external: true, smtp: {host: smtp.example.com}}"
    ).replace("- key: SUPPORT\n", "- key: SUPPORT\n    allow_outbound_mail: true\n"))
    store = TicketStore(url)
    try:
        store.migrate()
        store.apply(command(1))
    finally:
        store.close()
    for args in (["--to", "ann@customer.org\r\nBcc: all@customer.org"],
                 ["--to", "ann@customer.org\u2028mallory@attacker.test"],
                 ["--cc", "Dan\x85Bcc <dan@customer.org>"],
                 ["--signature", "Support\nBcc: all@customer.org"]):
        result = deskmail("tickets", "reply", "SUPPORT-1", "--text", "x", "--as", "alice@example.com", *args,
                          "--config", str(config))
        no_traceback(result)
        assert result.returncode == FAILED, (args, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].endswith("header text must be one line"), result.stderr
        assert "contains a line break" in lines[0]
    store = TicketStore(url)
    try:
        detail = store.get_ticket("SUPPORT-1")
        assert detail is not None and detail.thread == () and store.pending_outbox() == []
    finally:
        store.close()
