"""The ticketer's statements on the driver cursor (services/tickets/driver.py) leave
exactly the table contents Core leaves: the same command stream, applied once
through ``apply_command`` and once with every statement run by Core's
``Connection.execute``, gives identical rows in every table, all columns, ids
included (SQLite and PostgreSQL).

The stream: tests/harness/command_stream.py (new tickets with participants,
attachments and rules' assignee, priority and tags; replies; a key in a subject;
rejections; outsiders on no thread; automatic replies; replies held back for mail
to come; duplicates), then a flood over the rate limits, agents' changes and an
agent's mail with its bounce, customer mail on waiting, resolved and closed tickets
(follow-up and reopen), a release of suspended mail, the held replies whose wait is
over, and the whole stream again (all duplicates). Commands are dated after the
test's clock, so the times mail sets on tickets are the mails' own; only the
columns set from the clock itself (when a command was applied, a rejection
recorded or released) are compared as present or absent.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection

from services.common.suspended import release_command_id, released_reason
from services.tickets import Recipient, TicketChange, TicketStore
from services.tickets import engine as db
from services.tickets.apply import ClosedReply, apply_command, apply_on
from services.tickets.commands import Command
from services.tickets.driver import Executor
from services.tickets.pending import Hold
from services.tickets.ratelimit import Limit, Limits
from services.tickets.tables import metadata
from tests.harness.command_stream import stream
from tests.harness.records import T0, command

pytestmark = pytest.mark.integration

FUTURE = datetime(2100, 1, 1, tzinfo=timezone.utc)  # after the clock: mail times decide
LIMITS = Limits(per_sender=Limit(5, 10), per_ticket=Limit(8, 10))
CLOCK_COLUMNS = {("processed_commands", "applied_at"), ("rejections", "recorded_at"), ("rejections", "released_at")}
N = 240


class CoreExecutor(Executor):
    """Every statement through Core's ``Connection.execute``: the path the driver replaced."""

    def __init__(self, conn: Connection) -> None:  # noqa: D107 - no DBAPI cursor of its own
        self._core = conn
        self.dialect = conn.dialect
        self.dialect_name = conn.dialect.name

    def execute(self, statement: Any, params: Any = None) -> Any:
        return self._core.execute(statement, params)

    def close(self) -> None:
        pass


Apply = Callable[[Connection, Command, ClosedReply, Limits, Hold | None], Any]
PATHS: dict[str, Apply] = {
    "driver": apply_command,
    "core": lambda conn, c, closed, limits, hold: apply_on(CoreExecutor(conn), c, closed, limits, hold),
}


def dated(cmd: dict[str, Any]) -> dict[str, Any]:
    return {**cmd, "received_at": FUTURE + (cmd["received_at"] - T0)}


def commands() -> list[dict[str, Any]]:
    return [dated(cmd) for cmd in stream(N)]


class Run:
    """Applies commands as the ticketer does (with a hold, then what they released)."""

    def __init__(self, store: TicketStore, apply: Apply) -> None:
        self.store, self.apply, self.known = store, apply, {}  # type: dict[str, dict[str, Any]]
        self.outcomes: list[str] = []

    def deliver(self, cmd: dict[str, Any], closed: ClosedReply = "follow_up", wait: bool = True) -> None:
        queue: list[tuple[dict[str, Any], Hold | None]] = [
            (cmd, Hold(cmd["id"].encode(), FUTURE + timedelta(days=400)) if wait else None)]
        while queue:
            current, hold = queue.pop(0)
            self.known.setdefault(current["id"], current)
            with db.write(self.store.engine) as conn:
                applied = self.apply(conn, Command.parse(current), closed, LIMITS, hold)
            self.outcomes.append(applied.outcome)
            queue.extend((self.known[p.decode()], None) for p in applied.released)

    def wait_over(self) -> None:
        for payload in self.store.due_replies(FUTURE + timedelta(days=401), limit=1000):
            self.deliver(self.known[payload.decode()], wait=False)


def scenario(run: Run) -> None:
    store, at = run.store, FUTURE + timedelta(days=10)
    for cmd in commands():
        run.deliver(cmd)
    for i in range(9):  # one sender past the per-sender limit, and one ticket past its limit
        run.deliver(dated(command(N + 1 + i, action="comment", classification="reply",
                                  author={"email": "flood@example.org", "name": None, "member": False},
                                  in_reply_to="msg-2@customer.org", received_at=T0 + timedelta(minutes=N + i))))
    store.add_reply("SUPPORT-1", author_email="alice@example.com", author_name="Alice", text="Answer",
                    send_email=True, to=[Recipient("customer1@example.org", None)], outbound_id="out-1",
                    message_id="out-1@example.com", build_outbound=lambda _: b"mail", now=at)
    run.deliver(dated(command(N + 20, domain="mx.example.com", action="comment", classification="bounce",
                              subject="Undelivered", thread_key="out-1@example.com",
                              author={"email": "mailer-daemon@mx.example.com", "name": None, "member": False},
                              bounce={"original_message_id": "out-1@example.com", "recipient": "customer1@example.org",
                                      "status": "5.1.1", "diagnostic": "550 no such user", "permanent": True})))
    for key, status in (("SUPPORT-3", "waiting"), ("SUPPORT-4", "resolved"), ("SUPPORT-5", "closed"),
                        ("SUPPORT-6", "closed")):
        store.change_ticket(key, TicketChange(status=status, assignee="bob@example.com"), actor="alice@example.com",
                            expected_version=None, now=at)
    for n, key, closed in ((N + 21, 3, "follow_up"), (N + 22, 4, "follow_up"), (N + 23, 5, "follow_up"),
                           (N + 24, 6, "reopen")):
        detail = store.get_ticket(f"SUPPORT-{key}")
        assert detail is not None
        author = {"email": "customer1@example.org", "name": None, "member": False}
        run.deliver(dated(command(n, action="comment", classification="reply", author=author,
                                  in_reply_to=detail.message_ids[0])), closed=closed)
    rejected = next(c for c in commands() if c["action"] == "reject")
    run.deliver({**rejected, "id": release_command_id(rejected["id"]), "action": "create",
                 "reason": released_reason("root@example.com")})
    run.wait_over()
    for cmd in commands():
        run.deliver(cmd)


def contents(store: TicketStore) -> dict[str, list[tuple[Any, ...]]]:
    tables: dict[str, list[tuple[Any, ...]]] = {}
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            order = list(table.primary_key.columns) or list(table.columns)
            rows = conn.execute(select(table).order_by(*order)).all()
            names = [c.name for c in table.columns]
            tables[table.name] = [
                tuple((v is not None and v.tzinfo is not None) if (table.name, name) in CLOCK_COLUMNS else v
                      for name, v in zip(names, row))
                for row in rows
            ]
    return tables


@pytest.fixture(params=[pytest.param("sqlite", id="sqlite"),
                        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres)])
def make_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], str]]:
    if request.param == "sqlite":
        yield lambda name: f"sqlite:///{tmp_path}/{name}.db"
    else:
        cluster = request.getfixturevalue("postgres_cluster")
        yield lambda name: str(cluster.create_database(f"t_{name}_{uuid.uuid4().hex[:12]}"))


def test_the_driver_leaves_the_tables_core_leaves(make_url: Callable[[str], str]) -> None:
    results = {}
    for path, apply in PATHS.items():
        with TicketStore(make_url(path)) as store:
            store.migrate()
            run = Run(store, apply)
            scenario(run)
            results[path] = (run.outcomes, contents(store))
    outcomes, tables = results["driver"]
    assert outcomes == results["core"][0]
    for outcome in ("created", "commented", "duplicate", "rejected", "deferred"):
        assert outcome in outcomes
    for name, rows in results["core"][1].items():
        assert tables[name] == rows, name
    filled = {name for name, rows in tables.items() if rows}
    assert filled >= {"tickets", "comments", "participants", "attachments", "messages", "ticket_tags",
                      "ticket_components", "ticket_counts", "ticket_events", "rejections", "mail_arrivals",
                      "receipts", "processed_commands", "awaited_messages", "queue_counters", "outbox"}, filled
