"""The terminal text of tickets: an unproven member author marked, control characters
replaced, events as one line each and in their place among the comments."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

from services.cli.ticket_text import as_text, change_text, clean, clean_text, event_line, snippet_text
from services.tickets import ThreadEntry, TicketEvent
from tests.unit.test_replies import ticket


def test_a_member_author_without_proof_is_marked_not_verified() -> None:
    member_ticket = dataclasses.replace(ticket(author="alice@example.com"), author_verified=False)
    assert "from Carol Customer <alice@example.com> (not verified" in as_text(member_ticket)
    proven = dataclasses.replace(member_ticket, author_verified=True)
    assert "not verified" not in as_text(proven)
    assert "not verified" not in as_text(ticket())  # an outsider is shown as external, never "verified"


def test_control_characters_are_replaced_and_line_breaks_kept_only_in_bodies() -> None:
    assert clean("a\x1b[2Jb\x07c\rd\ne\u2028f\x9bg\th") == "a\ufffd[2Jb\ufffdc\ufffdd\ufffde\ufffdf\ufffdg\ufffdh"
    assert clean_text("one\r\ntwo\rthree\x1b]0;x\x07\n\tfour") == "one\ntwo\ufffdthree\ufffd]0;x\ufffd\n\tfour"
    assert clean(None) == clean("") == ""
    # a search snippet's marks are put in after cleaning, so they may be escape sequences
    assert snippet_text("pay \ue000invoice\ue001 \x1b[31mnow") == "pay \u00abinvoice\u00bb \ufffd[31mnow"
    assert snippet_text("\ue000x\ue001", "\x1b[1m", "\x1b[22m") == "\x1b[1mx\x1b[22m"


def test_events_read_as_changes_with_who_and_why() -> None:
    at = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)
    assert event_line(TicketEvent(1, "status", "alice@example.com", "open", "waiting", None, at)) == (
        "2026-12-03 10:00 alice@example.com: status open -> waiting")
    assert event_line(TicketEvent(2, "status", None, "waiting", "open", "reopened by customer reply", at)) == (
        "2026-12-03 10:00 deskmail: status waiting -> open (reopened by customer reply)")
    assert change_text(TicketEvent(3, "assignee", "a@x.org", "", "bob@x.org", None, at)) == "assignee - -> bob@x.org"
    assert change_text(TicketEvent(4, "follow_up", None, None, "SUPPORT-7", None, at)) == "follow-up SUPPORT-7 opened"


def test_an_event_at_a_comments_time_follows_the_comment() -> None:
    base = ticket()
    at = base.created_at + timedelta(hours=1)
    answer = ThreadEntry(7, "mail_in", base.author_email, None, "Still broken.", None, None, at)
    earlier = TicketEvent(1, "status", "alice@example.com", "open", "waiting", None, at - timedelta(minutes=1))
    reopened = TicketEvent(2, "status", None, "waiting", "open", "reopened by customer reply", at)
    text = as_text(dataclasses.replace(base, thread=(answer,), events=(earlier, reopened)))
    assert text.index("Please fix it.") < text.index("alice@example.com: status open -> waiting") < text.index(
        "Still broken.") < text.index("deskmail: status waiting -> open")


def test_a_replys_quote_is_counted_and_printed_on_request() -> None:
    at = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)
    entry = ThreadEntry(id=5, kind="mail_in", author_email="carol@customer.test", author_name=None, body="Fixed.",
                        html=None, message_id=None, created_at=at, quoted="On Tue, M wrote:\n> Paid?\n> \x1b[2J\n")
    t = dataclasses.replace(ticket(), thread=(entry,))
    assert "Fixed.\n[quoted text: 3 lines not shown; --quoted shows them]" in as_text(t)
    assert "Fixed.\n[quoted text]\nOn Tue, M wrote:\n> Paid?\n> \ufffd[2J\n" in as_text(t, with_quoted=True)
    assert "[quoted" not in as_text(dataclasses.replace(t, thread=(dataclasses.replace(entry, quoted=None),)))


def test_a_bounced_mail_says_so_with_what_came_back() -> None:
    at = datetime(2026, 12, 3, 10, 0, tzinfo=timezone.utc)
    mail = ThreadEntry(id=6, kind="mail_out", author_email="alice@example.com", author_name=None, body="Paid.",
                       html=None, message_id="deskmail.out-1@example.com", created_at=at, outbound_id="out-1",
                       delivery_status="bounced", delivery_detail="5.1.1 ghost@customer.test: 550 User unknown\x1b[2J",
                       delivery_updated_at=at + timedelta(minutes=5))
    text = as_text(dataclasses.replace(ticket(), thread=(mail,)))
    assert "delivery: BOUNCED 2026-12-03 10:05 UTC: 5.1.1 ghost@customer.test: 550 User unknown\ufffd[2J" in text
    sent = dataclasses.replace(mail, delivery_status="sent", delivery_detail="250 2.0.0 Ok")
    assert "delivery: sent (250 2.0.0 Ok)" in as_text(dataclasses.replace(ticket(), thread=(sent,)))
