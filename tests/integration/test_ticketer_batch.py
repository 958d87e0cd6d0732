"""The ticketer applies a polled batch in one transaction, a savepoint per record
(services/ticketer/runner.py ``process_batch``, services/tickets/batch.py): a bad
record is answered alone and the rest commit; a failure of the database commits
nothing, and the same records then go one by one. Real stores, SQLite and
PostgreSQL."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from services.common.bus import Record
from services.common.codec import codec
from services.common.errors import BadRecord, Transient
from services.ticketer.runner import BEHIND_WAIT_FACTOR, TicketerStep
from services.tickets import TicketStore
from tests.harness.records import command

pytestmark = pytest.mark.integration

COMMANDS, EVENTS = "commands", "events"
ENCODE = codec("TicketCommand").encode


def record(offset: int, cmd: dict[str, Any] | bytes, topic: str = COMMANDS) -> Record:
    value = cmd if isinstance(cmd, bytes) else ENCODE(cmd)
    return Record(topic, 0, offset, b"k", value)


def reply(n: int, to: int) -> dict[str, Any]:
    return command(n, action="comment", classification="reply", subject=f"Re: Subject {to}",
                   in_reply_to=f"msg-{to}@customer.org", references=[f"msg-{to}@customer.org"],
                   thread_key=f"msg-{to}@customer.org")


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as store:
        store.migrate()
        yield store


def test_a_batch_commits_its_good_records_and_answers_each_bad_one_alone(store: TicketStore) -> None:
    step = TicketerStep(store, COMMANDS, EVENTS)
    records = [
        record(0, command(1)),
        record(1, b"\x00not avro"),  # undecodable
        record(2, reply(2, to=1)),  # threads onto the ticket made two records before, same transaction
        record(3, command(3, queue="")),  # decodes, but no queue: InvalidCommand
        record(4, command(4)),
        record(5, command(1)),  # the first again: a duplicate within the batch
        record(6, command(5), topic="elsewhere"),
    ]
    results = step.process_batch(records)
    assert [type(r).__name__ if isinstance(r, BadRecord) else list(r) for r in results] == [
        [], "BadRecord", [], "BadRecord", [], [], "BadRecord"]
    assert "cmd-3" in str(results[3])
    tickets = store.list_tickets("SUPPORT")
    # gap-free numbers: the bad records took none
    assert sorted(t.key for t in tickets) == ["SUPPORT-1", "SUPPORT-2"]
    first = store.get_ticket("SUPPORT-1")
    assert first is not None and len(first.thread) == 1
    assert step.process_batch([record(0, command(1)), record(2, reply(2, to=1))]) == [(), ()]
    assert store.count_tickets("SUPPORT") == 2  # a replay of the batch changes nothing


def test_a_database_failure_in_a_batch_commits_none_of_it(tmp_path: Path) -> None:
    """SQLite: another connection holds the write lock past the store's busy timeout."""
    path = tmp_path / "tickets.db"
    with TicketStore(f"sqlite:///{path}", sqlite_busy_timeout_s=0.2) as store:
        store.migrate()
        step = TicketerStep(store, COMMANDS, EVENTS)
        assert step.process_batch([record(0, command(1))]) == [()]
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(Transient, match="database"):
                step.process_batch([record(1, command(2)), record(2, command(3))])
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.count_tickets("SUPPORT") == 1
        # What the consume loop does next: the same records one by one.
        for r in (record(1, command(2)), record(2, command(3))):
            assert step.process(r) == []
        assert sorted(t.key for t in store.list_tickets("SUPPORT")) == ["SUPPORT-1", "SUPPORT-2", "SUPPORT-3"]


def _recent(cmd: dict[str, Any]) -> dict[str, Any]:
    return {**cmd, "received_at": datetime.now(timezone.utc)}


def test_a_held_reply_is_applied_when_its_wait_is_over(store: TicketStore) -> None:
    step = TicketerStep(store, COMMANDS, EVENTS, reply_wait_seconds=10)
    step.process(record(0, _recent(reply(2, to=1))))  # its mail is not known (yet)
    assert store.count_tickets("SUPPORT") == 0 and not step.behind()
    assert step.apply_due(datetime.now(timezone.utc) + timedelta(seconds=11)) == 1
    assert store.count_tickets("SUPPORT") == 1


def test_while_the_ticketer_works_through_old_mail_a_held_reply_waits_longer(store: TicketStore) -> None:
    """The mail it awaits may be in the backlog: the thread's outcome must not depend on
    how far behind the ticketer was."""
    step = TicketerStep(store, COMMANDS, EVENTS, reply_wait_seconds=10)
    step.process(record(0, command(5)))  # received in 2025: a backlog
    step.process(record(1, _recent(reply(2, to=1))))
    assert step.behind()
    now = datetime.now(timezone.utc)
    assert step.apply_due(now + timedelta(seconds=11)) == 0
    step.process(record(2, command(1)))  # its mail comes, later in the backlog
    assert store.count_tickets("SUPPORT") == 2  # SUPPORT-1 (mail 5) and mail 1 with the reply on it
    assert step.apply_due(now + timedelta(seconds=10 * BEHIND_WAIT_FACTOR + 1)) == 0  # nothing left held
    ticket = store.get_ticket("SUPPORT-2")
    assert ticket is not None and len(ticket.thread) == 1


def test_even_behind_a_held_reply_waits_at_most_the_longer_wait(store: TicketStore) -> None:
    step = TicketerStep(store, COMMANDS, EVENTS, reply_wait_seconds=10)
    step.process(record(0, command(5)))
    step.process(record(1, _recent(reply(2, to=1))))
    now = datetime.now(timezone.utc)
    assert step.apply_due(now + timedelta(seconds=10 * BEHIND_WAIT_FACTOR + 1)) == 1
