"""The ticket workflow on the command line: `deskmail tickets list` (filters, the
cursor, `--assignee me`, `--search`), `tickets set` (each field, the version check, refusals
with one line and their exit code) and `tickets show` (status, assignee, version,
follow-ups, events among the comments). Each runs the real command in a
subprocess against a real store, tickets put in as the ticketer does."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from services.tickets import TicketChange, TicketStore
from tests.harness.records import T0, command
from tests.harness.stack import REPO

pytestmark = pytest.mark.integration

OK, FAILED, USAGE = 0, 1, 2
ALICE, BOB, CAROL, ROOT = "alice@example.com", "bob@example.com", "carol@example.com", "root@example.com"
MEMBER = {"email": BOB, "name": "Bob Agent", "member": True}

CONFIG = """\
database: {{url: "{url}"}}
data_dir: {data}
organization:
  members:
    - {{email: alice@example.com, name: Alice Agent}}
    - {{email: bob@example.com}}
    - {{email: carol@example.com}}
    - {{email: root@example.com}}
  admins: [root@example.com]
queues:
  - key: SUPPORT
    access: [alice@example.com, bob@example.com]
    mailboxes:
      - {{address: support@example.com, ingress: true}}
  - key: SALES
    access: [carol@example.com]
    mailboxes:
      - {{address: sales@example.com, ingress: true}}
"""


class Cli:
    """`deskmail ...` with this test's configuration, in a subprocess."""

    def __init__(self, config: Path) -> None:
        self.config = config

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if k not in ("DESKMAIL_CONFIG", "DESKMAIL_AGENT")}
        result = subprocess.run(
            [sys.executable, "-m", "services.cli", *args, "--config", str(self.config)],
            cwd=REPO, capture_output=True, text=True, timeout=60, env=environ | (env or {}),
        )
        for line in (result.stdout + result.stderr).splitlines():
            assert not line.startswith("Traceback"), result.stderr
        return result

    def ok(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = self(*args, env=env)
        assert result.returncode == OK, result.stderr
        return result.stdout

    def refused(self, code: int, *args: str) -> str:
        """The command's one line on stderr, after checking its exit code and that it printed nothing else."""
        result = self(*args)
        assert result.returncode == code, (args, result.returncode, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and result.stdout == "", (args, result.stdout, result.stderr)
        return lines[0]


@pytest.fixture(params=["sqlite"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite here: each CLI call is a process that pays its imports, so only the
    tests marked ``BOTH`` (the paging, the version check, search) run on PostgreSQL too;
    the store's own tests cover every engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tickets.db"
    return str(request.getfixturevalue("postgres_cluster").create_database(f"t_{uuid.uuid4().hex}"))


BOTH = pytest.mark.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as s:
        s.migrate()
        yield s


@pytest.fixture
def cli(tmp_path: Path, db_url: str, store: TicketStore) -> Cli:
    path = tmp_path / "deskmail.yaml"
    path.write_text(CONFIG.format(url=db_url, data=tmp_path / "data"))
    return Cli(path)


def sales(n: int, **overrides: Any) -> dict[str, Any]:
    return command(n, queue="SALES", mailbox="sales@example.com", **overrides)


def json_lines(out: str) -> tuple[list[dict[str, Any]], str | None]:
    """Ticket objects, and the next cursor of a last {"next_cursor"} line."""
    rows = [json.loads(line) for line in out.splitlines()]
    if rows and "next_cursor" in rows[-1]:
        assert set(rows[-1]) == {"next_cursor"}
        return rows[:-1], rows[-1]["next_cursor"]
    return rows, None


def all_pages(cli: Cli, *args: str, json_mode: bool) -> list[list[str]]:
    """The keys of every page, following the printed cursor until none is printed."""
    pages: list[list[str]] = []
    cursor: list[str] = []
    while True:
        assert len(pages) < 20, "the cursor never ends"
        if json_mode:
            rows, nxt = json_lines(cli.ok("tickets", "list", "--json", *args, *cursor))
            pages.append([r["key"] for r in rows])
        else:
            result = cli("tickets", "list", *args, *cursor)
            assert result.returncode == OK, result.stderr
            pages.append([line.split()[0] for line in result.stdout.splitlines()])
            hint = re.fullmatch(r"next: --cursor (\S+)", result.stderr.strip())
            assert hint or result.stderr == "", result.stderr
            nxt = hint.group(1) if hint else None
        if nxt is None:
            return pages
        cursor = ["--cursor", nxt]


@BOTH
def test_list_filters_and_a_cursor_that_shows_every_ticket_once(cli: Cli, store: TicketStore) -> None:
    for n in range(1, 8):
        store.apply(command(n, ticket_type="bug" if n % 2 else "question", components=["web"] if n < 4 else []))
    for n in (8, 9):
        store.apply(sales(n, components=[]))
    store.apply(command(10, author=MEMBER, components=[]))  # SUPPORT-8, opened by a member: nobody waits for an answer
    store.change_ticket("SUPPORT-2", TicketChange(status="waiting", assignee=ALICE), actor=BOB, expected_version=None)
    store.change_ticket("SUPPORT-5", TicketChange(status="resolved", assignee=BOB), actor=BOB, expected_version=None)
    store.change_ticket("SUPPORT-6", TicketChange(assignee=ALICE), actor=BOB, expected_version=None)
    everything = {f"SUPPORT-{n}" for n in range(1, 9)} | {"SALES-1", "SALES-2"}

    # the default: every configured queue, most recently changed first; pages of 3 cover it once
    for json_mode in (True, False):
        pages = all_pages(cli, "--limit", "3", json_mode=json_mode)
        seen = [k for p in pages for k in p]
        assert [len(p) for p in pages] == [3, 3, 3, 1] and sorted(seen) == sorted(everything)
        assert seen[:3] == ["SUPPORT-6", "SUPPORT-5", "SUPPORT-2"]  # just changed
    oldest_first = [k for p in all_pages(cli, "--sort", "created", "--order", "asc", "--limit", "4",
                                          json_mode=True) for k in p]
    assert oldest_first == [f"SUPPORT-{n}" for n in range(1, 8)] + ["SALES-1", "SALES-2", "SUPPORT-8"]
    # a filtered view pages the same way
    pages = all_pages(cli, "--status", "open", "--limit", "2", json_mode=False)
    assert sorted(k for p in pages for k in p) == sorted(everything - {"SUPPORT-2", "SUPPORT-5"})

    def keys(*args: str, env: dict[str, str] | None = None) -> set[str]:
        return {json.loads(line)["key"] for line in cli.ok("tickets", "list", "--json", *args, env=env).splitlines()}

    assert keys("--queue", "SALES") == {"SALES-1", "SALES-2"}
    assert keys("--queue", "SALES", "--queue", "SUPPORT") == everything
    assert keys("--status", "waiting", "--status", "resolved") == keys("--status", "waiting,resolved") == {
        "SUPPORT-2", "SUPPORT-5"}
    assert keys("--assignee", ALICE) == {"SUPPORT-2", "SUPPORT-6"}
    assert keys("--assignee", "me", "--as", BOB) == {"SUPPORT-5"}
    assert keys("--assignee", "me", env={"DESKMAIL_AGENT": ALICE}) == {"SUPPORT-2", "SUPPORT-6"}
    assert keys("--assignee", "none") == everything - {"SUPPORT-2", "SUPPORT-5", "SUPPORT-6"}
    assert keys("--type", "bug") == {"SUPPORT-1", "SUPPORT-3", "SUPPORT-5", "SUPPORT-7"}
    assert keys("--component", "web") == {"SUPPORT-1", "SUPPORT-2", "SUPPORT-3"}
    assert keys("--awaiting", "--queue", "SUPPORT") == {f"SUPPORT-{n}" for n in range(1, 8)}
    assert keys("--type", "bug", "--component", "web", "--status", "open") == {"SUPPORT-1", "SUPPORT-3"}

    # JSON: the API's summary fields and the `created` scripts read; text: status and assignee columns
    row = json.loads(cli.ok("tickets", "list", "--json", "--queue", "SALES", "--limit", "1").splitlines()[0])
    assert {"key", "queue", "type", "components", "summary", "status", "author", "author_name", "created",
            "created_at", "updated_at", "comments"} <= set(row)
    assert row["created"] == row["created_at"]
    text = cli.ok("tickets", "list", "--assignee", ALICE, "--status", "waiting")
    assert re.fullmatch(r"SUPPORT-2 +2025-03-01T09:02:00  ann@customer\.org +0  waiting +alice@example\.com +"
                        r"Subject 2\n", text), text
    empty = cli("tickets", "list", "--status", "closed")
    assert empty.returncode == OK and empty.stdout == "" and empty.stderr == "no tickets\n"


def test_list_refuses_bad_values_in_one_line(cli: Cli, store: TicketStore) -> None:
    store.apply(command(1))
    assert "--status pending" in cli.refused(USAGE, "tickets", "list", "--status", "open,pending")
    assert "--as" in cli.refused(USAGE, "tickets", "list", "--assignee", "me")
    assert "not an organization member" in cli.refused(USAGE, "tickets", "list", "--assignee", "me", "--as",
                                                        "eve@customer.org")
    assert "--cursor" in cli.refused(USAGE, "tickets", "list", "--cursor", "not-a-cursor")
    store.apply(command(2))
    _, cursor = json_lines(cli.ok("tickets", "list", "--json", "--limit", "1"))
    assert cursor is not None
    # a cursor of one sort order is refused by another, not misread
    assert "sort" in cli.refused(USAGE, "tickets", "list", "--sort", "created", "--cursor", cursor)
    assert "--status" in cli.refused(USAGE, "tickets", "list", "--search", "invoice", "--status", "open")


def test_set_changes_each_field_and_prints_what_changed(cli: Cli, store: TicketStore) -> None:
    store.apply(command(1))
    set_ = ("tickets", "set", "SUPPORT-1", "--as", ALICE)
    assert cli.ok(*set_, "--status", "waiting", "--assignee", "me") == (
        "SUPPORT-1: status open -> waiting, assignee - -> alice@example.com; version 2\n")
    assert cli.ok(*set_, "--assignee", BOB.upper()) == "SUPPORT-1: assignee alice@example.com -> bob@example.com; version 3\n"
    assert cli.ok(*set_, "--assignee", ROOT) == "SUPPORT-1: assignee bob@example.com -> root@example.com; version 4\n"
    assert cli.ok(*set_, "--assignee", "none") == "SUPPORT-1: assignee root@example.com -> -; version 5\n"
    assert cli.ok(*set_, "--type", "bug") == "SUPPORT-1: type question -> bug; version 6\n"
    assert cli.ok(*set_, "--components", "web, mobile") == (
        "SUPPORT-1: components billing, web -> web, mobile; version 7\n")
    assert cli.ok(*set_, "--components", "") == "SUPPORT-1: components web, mobile -> -; version 8\n"
    assert cli.ok(*set_, "--status", "waiting", "--version", "8") == "SUPPORT-1: no change; version 8\n"
    assert cli.ok("tickets", "set", "SUPPORT-1", "--status", "resolved", env={"DESKMAIL_AGENT": BOB}) == (
        "SUPPORT-1: status waiting -> resolved; version 9\n")
    t = store.get_ticket("SUPPORT-1")
    assert t is not None and (t.status, t.assignee, t.type, t.components, t.version) == (
        "resolved", None, "bug", (), 9)
    assert [(e.kind, e.actor) for e in t.events][-2:] == [("components", ALICE), ("status", BOB)]
    # an admin may change and be assigned tickets of any queue
    store.apply(sales(2))
    assert cli.ok("tickets", "set", "SALES-1", "--assignee", "me", "--as", ROOT) == (
        "SALES-1: assignee - -> root@example.com; version 2\n")


@BOTH
def test_a_stale_version_changes_nothing_and_names_the_newest_change(cli: Cli, store: TicketStore) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting"), actor=BOB, expected_version=1,
                        now=T0 + timedelta(days=1))
    line = cli.refused(FAILED, "tickets", "set", "SUPPORT-1", "--status", "resolved", "--assignee", "me",
                       "--version", "1", "--as", ALICE)
    assert "SUPPORT-1 was changed by someone else (version 2, you had 1)" in line
    assert "newest change 2025-03-02 09:00 bob@example.com: status open -> waiting" in line
    t = store.get_ticket("SUPPORT-1")
    assert t is not None and (t.status, t.assignee, t.version, len(t.events)) == ("waiting", None, 2, 1)
    # without --version, the change is checked against the version just read: it goes through
    assert cli.ok("tickets", "set", "SUPPORT-1", "--status", "resolved", "--as", ALICE) == (
        "SUPPORT-1: status waiting -> resolved; version 3\n")


def test_set_refuses_in_one_line_with_its_exit_code_and_changes_nothing(cli: Cli, store: TicketStore) -> None:
    store.apply(command(1))
    as_alice = ("--as", ALICE)
    assert cli.refused(FAILED, "tickets", "set", "SUPPORT-9", "--status", "open", *as_alice) == (
        "Error: no ticket SUPPORT-9")
    assert "a status is one of open, in_progress" in cli.refused(
        USAGE, "tickets", "set", "SUPPORT-1", "--status", "pending", *as_alice)
    assert "one of" in cli.refused(USAGE, "tickets", "set", "SUPPORT-1", "--status", "open,waiting", *as_alice)
    assert "'eve@customer.org' is not an organization member" in cli.refused(
        USAGE, "tickets", "set", "SUPPORT-1", "--assignee", "eve@customer.org", *as_alice)
    assert "carol@example.com has no access to queue SUPPORT" in cli.refused(
        USAGE, "tickets", "set", "SUPPORT-1", "--assignee", CAROL, *as_alice)
    assert "'eve@customer.org' is not an organization member" in cli.refused(
        FAILED, "tickets", "set", "SUPPORT-1", "--status", "waiting", "--as", "eve@customer.org")
    assert "carol@example.com has no access to queue SUPPORT" in cli.refused(
        FAILED, "tickets", "set", "SUPPORT-1", "--status", "waiting", "--as", CAROL)
    assert "nothing to change" in cli.refused(USAGE, "tickets", "set", "SUPPORT-1", *as_alice)
    assert "type" in cli.refused(USAGE, "tickets", "set", "SUPPORT-1", "--type", " ", *as_alice)
    t = store.get_ticket("SUPPORT-1")
    assert t is not None and (t.status, t.assignee, t.type, t.version, t.events) == ("open", None, "question", 1, ())


def test_show_interleaves_events_with_comments_and_links_follow_ups(cli: Cli, store: TicketStore) -> None:
    store.apply(command(1))  # Ann's mail at 09:01
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting", assignee=ALICE), actor=ALICE,
                        expected_version=1, now=T0 + timedelta(minutes=5))
    # Ann answers at 09:10: her mail reopens the ticket (recorded when deskmail applies it)
    store.apply(command(10, action="comment", classification="reply", in_reply_to="msg-1@customer.org",
                        text="Still broken."))
    store.change_ticket("SUPPORT-1", TicketChange(status="closed"), actor=ALICE, expected_version=None)
    store.apply(command(20, action="comment", classification="reply", in_reply_to="msg-1@customer.org"))

    shown = cli.ok("tickets", "show", "SUPPORT-1")
    assert "· status closed · assignee alice@example.com · version 4\n" in shown
    assert "\nfollow-ups: SUPPORT-2\n" in shown
    opening = shown.index("--- mail from Ann Customer <ann@customer.org> · 2025-03-01 09:01 UTC")
    set_waiting = shown.index("\n\n2025-03-01 09:05 alice@example.com: status open -> waiting\n"
                              "2025-03-01 09:05 alice@example.com: assignee - -> alice@example.com\n\n")
    answer = shown.index("--- mail from Ann Customer <ann@customer.org> · 2025-03-01 09:10 UTC\nStill broken.\n")
    reopened = re.search(r"\n\d{4}-\d\d-\d\d \d\d:\d\d deskmail: status waiting -> open "
                         r"\(reopened by customer reply\)\n", shown)
    closed = re.search(r"\n\d{4}-\d\d-\d\d \d\d:\d\d alice@example\.com: status open -> closed\n", shown)
    follow_up = re.search(r"\n\d{4}-\d\d-\d\d \d\d:\d\d deskmail: follow-up SUPPORT-2 opened "
                          r"\(customer mail on a closed ticket\)\n$", shown)
    assert reopened and closed and follow_up, shown
    assert opening < set_waiting < answer < reopened.start() < closed.start() < follow_up.start()

    second = cli.ok("tickets", "show", "SUPPORT-2")
    assert "· status open · assignee - · version 1\n" in second and "\nfollow-up of SUPPORT-1\n" in second
    assert "\nawaiting an answer: the customer wrote last\n" in second


def test_text_output_keeps_a_mails_control_characters_off_the_terminal(cli: Cli, store: TicketStore) -> None:
    store.apply(command(1, subject="Invoice \x1b]0;owned\x07 \x1b[2J", text="line one\r\nline two\rover\x1b[1A\n",
                        author={"email": "ann@customer.org", "name": "Ann\x1b[31m", "member": False}))
    listed = cli.ok("tickets", "list")
    shown = cli.ok("tickets", "show", "SUPPORT-1")
    for out in (listed, shown):
        assert not any(ch in out for ch in "\x1b\x07\r"), repr(out)
    assert "Invoice \ufffd]0;owned\ufffd \ufffd[2J" in listed
    assert "\nline one\nline two\ufffdover\ufffd[1A\n" in shown


@BOTH
def test_search_ranks_hits_with_a_snippet_and_pages_them_by_cursor(cli: Cli, store: TicketStore) -> None:
    for n in range(1, 6):
        store.apply(command(n, subject=f"Printer {n} jams", text="It jams on every page."))
    store.apply(command(6, subject="Question", text="Where is invoice 7? It is \x1b[2Jmissing."))
    store.apply(command(7, action="comment", classification="reply", in_reply_to="msg-2@customer.org",
                        text="Also the invoice for March."))
    store.apply(sales(8, subject="Invoice for the new contract"))

    rows, cursor = json_lines(cli.ok("tickets", "list", "--json", "--search", "invoice"))
    assert cursor is None and {r["key"] for r in rows} == {"SUPPORT-6", "SUPPORT-2", "SALES-1"}
    found = {r["key"]: r for r in rows}
    assert found["SUPPORT-2"]["where"] == "comment" and found["SUPPORT-2"]["comment_id"] is not None
    assert "\ue000invoice\ue001" in found["SUPPORT-2"]["snippet"].lower()
    assert found["SALES-1"]["where"] == "summary" and found["SUPPORT-6"]["where"] == "description"
    assert all(isinstance(r["rank"], float) and r["status"] == "open" for r in rows)

    text = cli.ok("tickets", "list", "--search", "invoice", "--queue", "SUPPORT")
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[::2]] == [r["key"] for r in rows if r["queue"] == "SUPPORT"]
    snippet = next(line for line in lines if line.startswith("    description: "))
    assert "\u00abinvoice\u00bb" in snippet.lower() and "\x1b" not in text and "\ufffd[2Jmissing" in snippet

    pages = all_pages(cli, "--search", "printer jams", "--limit", "2", json_mode=True)
    assert [len(p) for p in pages] == [2, 2, 1]
    assert sorted(k for p in pages for k in p) == [f"SUPPORT-{n}" for n in range(1, 6)]
    lines = cli.ok("tickets", "list", "--search", "printer", "--limit", "5").splitlines()
    assert sorted(line.split()[0] for line in lines[::2]) == [f"SUPPORT-{n}" for n in range(1, 6)]
    assert all(line.startswith("    summary: ") for line in lines[1::2]), lines
    _, cursor = json_lines(cli.ok("tickets", "list", "--json", "--search", "printer", "--limit", "2"))
    assert cursor is not None
    assert "another" in cli.refused(USAGE, "tickets", "list", "--search", "invoice", "--cursor", cursor)
    assert "not one this list handed out" in cli.refused(USAGE, "tickets", "list", "--cursor", cursor)
    nothing = cli("tickets", "list", "--search", "zebra")
    assert nothing.returncode == OK and nothing.stdout == "" and nothing.stderr == "no tickets\n"
