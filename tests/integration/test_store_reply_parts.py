"""A reply's new text and its quoted history on the ticket: the comment keeps
them apart, a new ticket keeps the whole text (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from services.tickets import InvalidCommand, TicketStore
from tests.harness.records import command

pytestmark = pytest.mark.integration

QUOTE = "On Tue, Dec 1, 2026 at 10:15 AM Maria <support@example.com> wrote:\n> Which printer?\n"
REPLY_TEXT = "The LaserJet in room 4.\n\n" + QUOTE


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as s:
        s.migrate()
        yield s


def reply(n: int, **overrides: Any) -> dict[str, Any]:
    return command(n, **{"action": "comment", "classification": "reply", "in_reply_to": "msg-1@customer.org",
                          **overrides})


def test_a_comment_keeps_the_new_text_and_the_quote_apart(store: TicketStore) -> None:
    store.apply(command(1))
    applied = store.apply(reply(2, text=REPLY_TEXT, quoted_from=REPLY_TEXT.index("On Tue"),
                                charset_detected="cp1251"))
    detail = store.get_ticket(applied.ticket_key)
    assert detail is not None
    [entry] = detail.thread
    assert entry.body == "The LaserJet in room 4."
    assert entry.quoted == QUOTE
    assert entry.charset_detected == "cp1251"
    # Search finds the new text, not the quote (the quote repeats what the ticket already holds).
    assert [h.ticket.key for h in store.search("LaserJet", ["SUPPORT"])] == [applied.ticket_key]
    assert [h.where for h in store.search("printer", ["SUPPORT"])] != ["comment"]


def test_a_reply_without_a_split_stays_whole(store: TicketStore) -> None:
    store.apply(command(1))
    applied = store.apply(reply(2, text=REPLY_TEXT))
    detail = store.get_ticket(applied.ticket_key)
    assert detail is not None
    assert (detail.thread[0].body, detail.thread[0].quoted) == (REPLY_TEXT, None)


def test_a_reply_that_opens_a_ticket_keeps_the_whole_text(store: TicketStore) -> None:
    # Its thread is unknown here: the reply becomes a new ticket, quote and all.
    applied = store.apply(reply(5, text=REPLY_TEXT, quoted_from=REPLY_TEXT.index("On Tue"), charset_detected="koi8_r",
                                in_reply_to="unknown@elsewhere.test"))
    assert applied.outcome == "created"
    detail = store.get_ticket(applied.ticket_key)
    assert detail is not None
    assert detail.description == REPLY_TEXT
    assert detail.charset_detected == "koi8_r"


@pytest.mark.parametrize("offset", [0, -1, len(REPLY_TEXT), 10**9, "12"])
def test_an_offset_outside_the_text_is_a_bad_command(store: TicketStore, offset: Any) -> None:
    store.apply(command(1))
    with pytest.raises(InvalidCommand, match="quoted_from"):
        store.apply(reply(2, text=REPLY_TEXT, quoted_from=offset))
