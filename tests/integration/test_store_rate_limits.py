"""Rate limits on mail from outside: per sender and per ticket, by the mails'
own arrival times (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from services.tickets import TicketStore
from services.tickets.ratelimit import Limit, Limits
from tests.harness.records import command

pytestmark = pytest.mark.integration

T0 = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)
LIMITS = Limits(per_sender=Limit(3, 10), per_ticket=Limit(4, 10))
ANN = {"email": "Ann@Customer.test", "name": "Ann", "member": False}
ALICE = {"email": "alice@example.com", "name": "Alice", "member": True}


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as s:
        s.migrate()
        yield s


def mail(n: int, minutes: float, **overrides: Any) -> dict[str, Any]:
    return command(n, **{"author": ANN, "received_at": T0 + timedelta(minutes=minutes), **overrides})


def test_a_sender_past_the_limit_is_set_aside(store: TicketStore) -> None:
    outcomes = [store.apply(mail(n, n), limits=LIMITS).outcome for n in range(1, 6)]
    assert outcomes == ["created", "created", "created", "rejected", "rejected"]
    [*_, limited] = store.list_rejections()
    assert limited.reason == "rate_limited: more than 3 mails from Ann@Customer.test in 10 minutes"
    # the window slides: 10 minutes after the first three, the sender may write again
    assert store.apply(mail(6, 14), limits=LIMITS).outcome == "created"
    # a replay decides the same: the rejected command stays rejected, the others duplicates
    assert [store.apply(mail(n, n), limits=LIMITS).outcome for n in range(1, 6)] == ["duplicate"] * 5


def test_the_order_mail_is_applied_in_does_not_widen_the_limit(store: TicketStore) -> None:
    # Partitions deliver mail out of arrival order: newest first here.
    outcomes = [store.apply(mail(n, 10 - n), limits=LIMITS).outcome for n in range(1, 7)]
    assert outcomes.count("created") == 3


def test_members_and_released_mail_are_never_limited(store: TicketStore) -> None:
    outcomes = [store.apply(mail(n, 0, author=ALICE), limits=LIMITS).outcome for n in range(1, 6)]
    assert outcomes == ["created"] * 5
    for n in range(6, 9):
        store.apply(mail(n, 1), limits=LIMITS)
    assert store.apply(mail(9, 2), limits=LIMITS).outcome == "rejected"
    released = mail(10, 2, id="release:imap:support@example.com:1:9")
    assert store.apply(released, limits=LIMITS).outcome == "created"


def test_a_ticket_past_its_limit_takes_no_more_mail_from_outside(store: TicketStore) -> None:
    store.apply(mail(1, 0), limits=LIMITS)
    people = [{"email": f"p{i}@customer.test", "name": None, "member": False} for i in range(6)]
    outcomes = [store.apply(mail(n, 1, author=people[n - 2], action="comment", classification="reply",
                                 in_reply_to="msg-1@customer.org"), limits=LIMITS).outcome for n in range(2, 7)]
    assert outcomes == ["commented", "commented", "commented", "rejected", "rejected"]
    assert store.list_rejections()[0].reason == "rate_limited: more than 4 mails on SUPPORT-1 in 10 minutes"
    # an agent's mail on the ticket is never held back
    assert store.apply(mail(7, 2, author=ALICE, action="comment", classification="reply",
                            in_reply_to="msg-1@customer.org"), limits=LIMITS).outcome == "commented"


def test_old_arrivals_are_pruned(store: TicketStore) -> None:
    for n in range(1, 4):
        store.apply(mail(n, n), limits=LIMITS)
    assert store.prune_arrivals(T0 + timedelta(minutes=2.5)) == 2
    assert store.apply(mail(4, 5), limits=LIMITS).outcome == "created"  # only one arrival left in the window
