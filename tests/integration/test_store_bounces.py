"""A bounce of mail deskmail sent marks that outgoing comment ``bounced`` and is kept on
the ticket as an automatic comment that changes nothing else; ``bounced`` is final, a
replay changes nothing, and a bounce that names no mail deskmail sent is handled as
before (SQLite and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from services.tickets import Recipient, ThreadEntry, TicketChange, TicketStore
from services.tickets.tables import metadata, outbox
from tests.harness.records import T0, command

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
SENT_AT = T0 + timedelta(hours=1)
OUT_ID = "deskmail.out-1.00.11@example.com"  # a Message-ID deskmail gave its outgoing mail
REPORT = {"original_message_id": OUT_ID, "recipient": "ann@customer.org", "status": "5.1.1",
          "diagnostic": "550 5.1.1 <ann@customer.org>: Recipient address rejected: User unknown", "permanent": True}
DETAIL = "5.1.1 ann@customer.org: 550 5.1.1 <ann@customer.org>: Recipient address rejected: User unknown"


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    """SUPPORT-1 from Ann's mail, answered by Alice with mail ``out-1`` (sent)."""
    with TicketStore(db_url) as s:
        s.migrate()
        s.apply(command(1))
        s.add_reply("SUPPORT-1", author_email=ALICE, author_name="Alice", text="Here is the invoice.",
                    send_email=True, to=[Recipient("ann@customer.org", "Ann")], cc=[], signature_alias=None,
                    outbound_id="out-1", message_id=OUT_ID, build_outbound=lambda _: b"mail", now=SENT_AT)
        assert s.record_delivery(event("sent", SENT_AT + timedelta(seconds=2)))
        yield s


def event(status: str, at: datetime, reply: str = "2.0.0 Ok: queued") -> dict[str, Any]:
    return {"id": f"out-1:1:{status}:{at.isoformat()}", "outbound_id": "out-1", "ticket": "SUPPORT-1",
            "comment_id": 2, "status": status, "attempt": 1, "smtp_code": 250 if status == "sent" else 451,
            "smtp_reply": reply, "message_id": OUT_ID, "time": at}


def bounce(n: int, report: dict[str, Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """The router's command for a bounce (no threading headers of its own) from the mail daemon."""
    fields: dict[str, Any] = {
        "action": "comment", "classification": "bounce", "subject": "Undelivered Mail Returned to Sender",
        "author": {"email": "mailer-daemon@mx.example.com", "name": "Mail Delivery System", "member": False},
        "text": "I'm sorry to have to inform you that your message could not be delivered.",
        "thread_key": OUT_ID, "bounce": REPORT if report is None else report,
        "received_at": SENT_AT + timedelta(minutes=n),
    }
    return command(n, domain="mx.example.com", **{**fields, **overrides})


def outgoing(store: TicketStore) -> ThreadEntry:
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None
    [mail] = [e for e in detail.thread if e.kind == "mail_out"]
    return mail


def counts(store: TicketStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in metadata.sorted_tables}


def test_a_bounce_marks_the_mail_it_reports_on_and_changes_nothing_else(store: TicketStore) -> None:
    before = store.get_ticket("SUPPORT-1")
    assert before is not None
    applied = store.apply(bounce(10))
    assert (applied.outcome, applied.ticket_key, applied.bounce) == ("commented", "SUPPORT-1", "bounced")
    mail = outgoing(store)
    assert (mail.delivery_status, mail.delivery_detail, mail.delivery_updated_at) == (
        "bounced", DETAIL, SENT_AT + timedelta(minutes=10))
    after = store.get_ticket("SUPPORT-1")
    assert after is not None
    report = after.thread[-1]
    assert (report.kind, report.automatic, report.author_email) == ("mail_in", True, "mailer-daemon@mx.example.com")
    # no reopening, no "customer replied", no newer updated_at, no version bump, nothing sent
    assert (after.status, after.awaiting_reply, after.updated_at, after.version, after.events) == (
        before.status, before.awaiting_reply, before.updated_at, before.version, before.events)
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(outbox)).scalar_one() == 1  # Alice's mail only
    assert store.count_tickets() == 1


def test_a_replayed_bounce_changes_nothing(store: TicketStore) -> None:
    store.apply(bounce(10))
    before = counts(store)
    again = store.apply(bounce(10))
    assert (again.outcome, again.bounce) == ("duplicate", None)
    assert counts(store) == before
    assert (outgoing(store).delivery_status, outgoing(store).delivery_detail) == ("bounced", DETAIL)


def test_bounced_is_final(store: TicketStore) -> None:
    store.apply(bounce(10))
    # a late or replayed delivery event of any kind
    for status in ("sent", "retrying", "failed"):
        assert store.record_delivery(event(status, SENT_AT + timedelta(minutes=20))) is False
    # a second bounce of the same mail (another recipient, a copy from another server)
    other = {**REPORT, "recipient": "carol@customer.org", "diagnostic": "mailbox full"}
    assert store.apply(bounce(11, other)).bounce == "bounced"
    mail = outgoing(store)
    assert (mail.delivery_status, mail.delivery_detail) == ("bounced", DETAIL)
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and [e.automatic for e in detail.thread].count(True) == 2  # both reports are kept


def test_a_bounce_that_overtakes_the_sent_event_stays(db_url: str) -> None:
    """The sender's event and the bounce travel on different topics: the bounce may be applied first."""
    with TicketStore(db_url) as s:
        s.migrate()
        s.apply(command(1))
        s.add_reply("SUPPORT-1", author_email=ALICE, author_name=None, text="Hi", send_email=True,
                    to=[Recipient("ann@customer.org")], cc=[], signature_alias=None, outbound_id="out-1",
                    message_id=OUT_ID, build_outbound=lambda _: b"mail", now=SENT_AT)
        assert outgoing(s).delivery_status == "queued"
        assert s.apply(bounce(10)).bounce == "bounced"
        assert s.record_delivery(event("sent", SENT_AT + timedelta(seconds=2))) is False
        assert outgoing(s).delivery_status == "bounced"


def test_a_delay_warning_marks_nothing(store: TicketStore) -> None:
    delay = {**REPORT, "status": "4.4.1", "diagnostic": "Connection timed out", "permanent": False}
    applied = store.apply(bounce(10, delay, subject="Delayed Mail (still being retried)"))
    assert (applied.outcome, applied.ticket_key, applied.bounce) == ("commented", "SUPPORT-1", "delayed")
    assert (outgoing(store).delivery_status, outgoing(store).delivery_detail) == ("sent", "250 2.0.0 Ok: queued")
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and detail.thread[-1].automatic


def test_a_bounce_on_a_closed_ticket_opens_no_follow_up(store: TicketStore) -> None:
    store.change_ticket("SUPPORT-1", TicketChange(status="closed"), actor=ALICE, expected_version=None)
    applied = store.apply(bounce(10))
    assert (applied.outcome, applied.ticket_key, applied.bounce) == ("commented", "SUPPORT-1", "bounced")
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and detail.status == "closed" and detail.follow_ups == ()


def test_an_outsiders_reply_only_bounce_reaches_the_mail_deskmail_sent(store: TicketStore) -> None:
    assert store.apply(bounce(10, reply_only=True)).bounce == "bounced"
    assert outgoing(store).delivery_status == "bounced"


# -- a bounce that names no mail deskmail sent: as before ---------------------------------


def test_an_unknown_original_on_a_known_thread_is_an_automatic_comment(store: TicketStore) -> None:
    unknown = {**REPORT, "original_message_id": "someone-else@customer.org"}
    applied = store.apply(bounce(10, unknown, in_reply_to="msg-1@customer.org"))
    assert (applied.outcome, applied.ticket_key, applied.bounce) == ("commented", "SUPPORT-1", "unmatched")
    assert outgoing(store).delivery_status == "sent"
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and detail.thread[-1].automatic


def test_an_unknown_original_off_any_thread_is_suspended(store: TicketStore) -> None:
    before = counts(store)
    unknown = {**REPORT, "original_message_id": "8f2b61c04a7e$9d03c1b2$3a5f@example.com"}
    applied = store.apply(bounce(10, unknown))
    assert (applied.outcome, applied.bounce) == ("rejected", "unmatched")
    [rejection] = store.list_rejections()
    assert rejection.reason is not None and rejection.reason.startswith("bounce: ")
    assert counts(store) == {**before, "rejections": before["rejections"] + 1}
    assert store.apply(bounce(10, unknown)).outcome == "duplicate"


def test_only_mail_deskmail_sent_is_matched(store: TicketStore) -> None:
    """Ann's own mail (msg-1, which deskmail received) is no outgoing mail: no mark, no thread."""
    received = {**REPORT, "original_message_id": "msg-1@customer.org"}
    assert store.apply(bounce(10, received)).outcome == "rejected"
    assert outgoing(store).delivery_status == "sent"


def test_a_bounce_never_matches_another_queues_mail(store: TicketStore) -> None:
    applied = store.apply(bounce(10, queue="SALES", mailbox="sales@example.com"))
    assert (applied.outcome, applied.bounce) == ("rejected", "unmatched")
    assert outgoing(store).delivery_status == "sent"


def test_a_bounce_without_a_report_is_an_automatic_comment_as_before(store: TicketStore) -> None:
    """A record from before ``bounce`` existed (or a bounce that said nothing readable)."""
    applied = store.apply(bounce(10, in_reply_to=OUT_ID, **{"bounce": None}))
    assert (applied.outcome, applied.ticket_key, applied.bounce) == ("commented", "SUPPORT-1", "unmatched")
    assert outgoing(store).delivery_status == "sent"

