"""Automatic replies and bounces on a ticket's thread are recorded and change
nothing; off any known thread they open no ticket (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.tickets import TicketChange, TicketStore
from tests.harness.records import command

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as s:
        s.migrate()
        yield s


def machine(n: int, classification: str = "auto_reply", **overrides: Any) -> dict[str, Any]:
    return command(n, **{"action": "comment", "classification": classification, "in_reply_to": "msg-1@customer.org",
                         "subject": "Automatic reply: Invoice", "text": "I am out of the office until Monday.",
                         **overrides})


@pytest.mark.parametrize("classification", ["auto_reply", "bounce"])
def test_an_automatic_reply_on_a_waiting_ticket_changes_nothing(store: TicketStore, classification: str) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting"), actor=ALICE, expected_version=None)
    before = store.get_ticket("SUPPORT-1")
    assert before is not None
    applied = store.apply(machine(2, classification))
    assert (applied.outcome, applied.ticket_key) == ("commented", "SUPPORT-1")
    after = store.get_ticket("SUPPORT-1")
    assert after is not None
    [entry] = after.thread
    assert entry.automatic and entry.body == "I am out of the office until Monday."
    assert (after.status, after.awaiting_reply, after.updated_at, after.version) == (
        "waiting", before.awaiting_reply, before.updated_at, before.version)
    assert [e.kind for e in after.events] == ["status"]  # only the agent's change


def test_an_automatic_reply_on_a_closed_ticket_opens_no_follow_up(store: TicketStore) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(status="closed"), actor=ALICE, expected_version=None)
    applied = store.apply(machine(2))
    assert (applied.outcome, applied.ticket_key) == ("commented", "SUPPORT-1")
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and detail.status == "closed" and detail.follow_ups == ()
    assert store.count_tickets() == 1


@pytest.mark.parametrize("classification", ["auto_reply", "bounce"])
def test_an_automatic_reply_off_any_known_thread_is_set_aside(store: TicketStore, classification: str) -> None:
    applied = store.apply(machine(2, classification, in_reply_to="unknown@elsewhere.test"))
    assert applied.outcome == "rejected"
    assert store.count_tickets() == 0
    [rejection] = store.list_rejections()
    assert rejection.reason is not None and rejection.reason.startswith(f"{classification}: ")
    assert store.apply(machine(2, classification, in_reply_to="unknown@elsewhere.test")).outcome == "duplicate"


def test_a_person_on_the_thread_still_reopens(store: TicketStore) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting"), actor=ALICE, expected_version=None)
    store.apply(machine(2, "reply", subject="Re: Invoice", text="Here it is."))
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and detail.status == "open" and not detail.thread[0].automatic
