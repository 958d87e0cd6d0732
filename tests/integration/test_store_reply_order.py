"""Replies that come before the mail they answer: partitions deliver out of order (a
reply whose References name only its parent is keyed by the parent, the parent by
its own root), and the outcome must not depend on it. A reply to mail not known yet
is held back (services/tickets/pending.py) and applied when that mail comes, or when
its wait is over; then a late parent still joins its ticket. Every order of a
thread's mails gives one ticket holding all of them; a stranger cannot pull mail
that is to come into a ticket of their own."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from services.tickets import TicketStore
from services.tickets.pending import Hold
from tests.harness.records import command

pytestmark = pytest.mark.integration

ANN = {"email": "ann@customer.org", "name": "Ann", "member": False}
BOB = {"email": "bob@customer.org", "name": "Bob", "member": False}
CAROL = {"email": "carol@customer.org", "name": "Carol", "member": False}
MALLORY = {"email": "mallory@elsewhere.test", "name": "Mallory", "member": False}


def person(p: dict[str, Any]) -> dict[str, Any]:
    return {**p, "verified": False}


def root() -> dict[str, Any]:
    """Ann writes to support, Bob and Carol in Cc."""
    return command(1, participants=[person(BOB), person(CAROL)], subject="Printer on fire")


def answer(n: int, author: dict[str, Any], parent: int, references: list[int], cc: list[dict[str, Any]]) -> dict[str, Any]:
    return command(n, action="comment", classification="reply", author=author, subject="Re: Printer on fire",
                   in_reply_to=f"msg-{parent}@customer.org", references=[f"msg-{r}@customer.org" for r in references],
                   thread_key=f"msg-{references[0] if references else parent}@customer.org",
                   participants=[person(p) for p in cc])


THREAD = {
    "root": root(),
    # Bob answers Ann (his client keeps only the parent in References)
    "bob": answer(2, BOB, parent=1, references=[1], cc=[ANN, CAROL]),
    # Carol answers Ann too: a sibling of Bob's
    "carol": answer(3, CAROL, parent=1, references=[1], cc=[ANN, BOB]),
    # Ann answers Bob; her References were trimmed to the parent alone
    "ann": answer(4, ANN, parent=2, references=[2], cc=[BOB, CAROL]),
}


COMMANDS = {cmd["id"]: cmd for cmd in THREAD.values()}
LATER = datetime.now(timezone.utc) + timedelta(days=1)


def deliver(store: TicketStore, cmd: dict[str, Any], wait: bool = True) -> str:
    """As the ticketer does: apply with a hold (a reply may wait), then the replies
    the mail released, in order. The held record here is the command id."""
    COMMANDS.setdefault(cmd["id"], cmd)
    outcome = ""
    queue: list[tuple[dict[str, Any], Hold | None]] = [(cmd, Hold(cmd["id"].encode(), LATER) if wait else None)]
    while queue:
        current, hold = queue.pop(0)
        applied = store.apply(current, hold=hold)
        outcome = outcome or applied.outcome
        queue.extend((COMMANDS[payload.decode()], None) for payload in applied.released)
    return outcome


def wait_over(store: TicketStore) -> None:
    for payload in store.due_replies(LATER + timedelta(seconds=1)):
        deliver(store, COMMANDS[payload.decode()], wait=False)


@pytest.fixture
def make_store(db_url: str) -> Iterator[Any]:
    stores: list[TicketStore] = []

    def make() -> TicketStore:
        store = TicketStore(db_url)
        store.migrate()
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


def _message_ids(store: TicketStore, key: str) -> set[str]:
    ticket = store.get_ticket(key)
    assert ticket is not None
    return set(ticket.message_ids)


def _one_ticket_whatever_the_order(store: TicketStore, order: tuple[str, ...]) -> None:
    for name in order:
        deliver(store, THREAD[name])
    assert store.due_replies(LATER + timedelta(seconds=1)) == []  # nothing left waiting
    tickets = store.list_tickets("SUPPORT")
    assert len(tickets) == 1, [t.summary for t in tickets]
    assert tickets[0].summary == "Printer on fire"  # Ann's mail opened it, as in order
    assert _message_ids(store, tickets[0].key) == {f"msg-{n}@customer.org" for n in (1, 2, 3, 4)}
    # and a later answer to any of them threads there too
    deliver(store, answer(5, BOB, parent=4, references=[4], cc=[ANN]))
    assert store.count_tickets("SUPPORT") == 1
    # replayed, nothing changes
    for name in order:
        assert deliver(store, THREAD[name]) == "duplicate"


@pytest.mark.parametrize("order", list(itertools.permutations(THREAD)), ids="-".join)
def test_any_order_of_a_thread_is_one_ticket_with_every_mail(order: tuple[str, ...], tmp_path: Any) -> None:
    with TicketStore(f"sqlite:///{tmp_path}/tickets.db") as store:
        store.migrate()
        _one_ticket_whatever_the_order(store, order)


@pytest.mark.parametrize("order", [("ann", "bob", "carol", "root"), ("root", "carol", "ann", "bob"),
                                   ("carol", "ann", "root", "bob")], ids="-".join)
def test_out_of_order_threads_on_both_engines(order: tuple[str, ...], make_store: Any) -> None:
    _one_ticket_whatever_the_order(make_store(), order)


@pytest.mark.parametrize("order", [("bob", "root"), ("ann", "bob", "root"), ("bob", "ann", "carol", "root")],
                         ids="-".join)
def test_when_the_wait_is_over_the_reply_opens_its_ticket_and_the_late_mail_joins_it(
        order: tuple[str, ...], make_store: Any) -> None:
    """Ann's mail comes after every wait is over: the replies opened a ticket that
    awaits it, and it joins that ticket (so do later answers to it). Two branches that
    both outwaited the mail they answer open two tickets: that needs a merge."""
    store = make_store()
    for name in order[:-1]:
        deliver(store, THREAD[name])
        wait_over(store)
    deliver(store, THREAD[order[-1]])
    tickets = store.list_tickets("SUPPORT")
    assert len(tickets) == 1, [t.summary for t in tickets]
    want = {THREAD[name]["message_id"] for name in order}
    assert _message_ids(store, tickets[0].key) == want


def test_a_strangers_reply_to_mail_to_come_does_not_catch_it(make_store: Any) -> None:
    store = make_store()
    deliver(store, answer(9, MALLORY, parent=1, references=[1], cc=[]))  # names Ann's Message-ID before it exists
    wait_over(store)
    deliver(store, root())
    tickets = {t.summary: t.key for t in store.list_tickets("SUPPORT")}
    assert len(tickets) == 2
    ann = store.get_ticket(tickets["Printer on fire"])
    assert ann is not None and ann.author_email == ANN["email"] and ann.thread == ()
    mallory = store.get_ticket(tickets["Re: Printer on fire"])
    assert mallory is not None and "msg-1@customer.org" not in mallory.message_ids


def test_a_reply_to_mail_that_never_comes_keeps_its_ticket(make_store: Any) -> None:
    store = make_store()
    assert deliver(store, answer(2, BOB, parent=1, references=[1], cc=[ANN])) == "deferred"
    assert store.count_tickets("SUPPORT") == 0  # waiting for Ann's mail
    deliver(store, command(7, author=CAROL, subject="Something else"))
    wait_over(store)
    assert sorted(t.summary for t in store.list_tickets("SUPPORT")) == ["Re: Printer on fire", "Something else"]
