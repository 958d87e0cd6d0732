"""Suspended mail's pure rules: reason codes, release ids, item ids, dead letters
as list items, and header summaries of hostile mail."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from services import suspended
from services.common import suspended as rules
from services.common.codec import codec
from services.common.config import parse_text
from services.deadletters import DeadLetter
from services.tickets.commands import Command
from tests.harness.records import command

CONFIG = parse_text(textwrap.dedent("""\
    kafka: {topics: {deadletter: dl.topic}}
    queues:
      - key: SUPPORT
        mailboxes:
          - {address: support@example.com, ingress: true}
    """))
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("reason, code", [
    ("external_not_accepted: carol@customer.test is not an organization member", "external_not_accepted"),
    ("auto_reply: auto-reply that belongs to no thread opens no ticket", "auto_reply"),
    ("loop", "loop"),
    ("sender_not_authenticated: a: b: c", "sender_not_authenticated"),
    (None, "other"), ("", "other"), (": no code", "other"),
])
def test_the_reason_code_is_the_part_before_the_first_colon(reason, code):
    assert rules.reason_code(reason) == code


def test_a_release_names_the_rejection_it_overrides():
    original = "imap:support@example.com:7:42"
    released = rules.release_command_id(original)
    assert released == "release:imap:support@example.com:7:42"
    assert rules.released_of(released) == original
    assert rules.released_of(original) is None and rules.released_of("release:") is None
    assert rules.released_by(rules.released_reason("alice@example.com")) == "alice@example.com"
    assert rules.released_by(rules.released_reason(None)) is None
    assert rules.released_by("external_not_accepted: released by nobody") is None


def test_a_long_release_id_keeps_its_link_to_the_rejection_once_digested():
    original = "imap:" + "x" * 100 + "@example.com:7:42"  # fits the column; with the prefix it does not
    c = Command.parse(command(1, id=rules.release_command_id(original)))
    assert c.id.startswith("sha256:") and c.release_of == original
    assert Command.parse(command(2)).release_of is None


def test_an_item_id_is_a_number_or_a_dead_letters_place():
    assert suspended.parse_id(" 42 ", CONFIG) == 42
    letter = suspended.parse_id("dl:dl.topic:3:1234", CONFIG)
    assert letter == suspended.DeadLetterId("dl.topic", 3, 1234) and str(letter) == "dl:dl.topic:3:1234"
    for bad in ("dl:other.topic:3:1", "dl:dl.topic:x:1", "-1", "", "1e3", "dl:dl.topic:1:2:3", "9" * 30):
        with pytest.raises(suspended.UnknownItem):
            suspended.parse_id(bad, CONFIG)


def _letter(topic: str | None, value: bytes, *, offset: int = 5, error_class: str = "MalformedMail") -> DeadLetter:
    return DeadLetter(partition=1, offset=offset, stage="router", topic=topic, source_partition=0, source_offset=9,
                      key=b"support@example.com", value=value, error_class=error_class, message="empty message",
                      time=T0)


def _inbound(raw: bytes, mailbox: str = "support@example.com") -> bytes:
    return codec("InboundMail").encode({
        "id": "smtp:x", "mailbox": mailbox, "source": "smtp", "uidvalidity": 0, "uid": 0, "received_at": T0,
        "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(), "raw": raw, "blob_ref": None})


def test_a_dead_letter_of_inbound_mail_shows_its_queue_sender_and_subject():
    raw = b"From: =?utf-8?q?Carol_C=C3=BCstomer?= <carol@customer.test>\r\nSubject: =?utf-8?b?0KHRh9GR0YI=?=\r\n\r\nx"
    item = suspended.from_dead_letter(_letter("deskmail.mail.inbound", _inbound(raw)), CONFIG, None)
    assert item is not None
    assert item.summary() == {
        "id": "dl:dl.topic:1:5", "time": T0.isoformat(), "queue": "SUPPORT", "mailbox": "support@example.com",
        "sender": "carol@customer.test", "subject": "Счёт", "reason": "dead_letter: MalformedMail: empty message",
        "reason_code": "dead_letter", "released_ticket": None}
    assert item.has_original


def test_a_dead_letter_of_a_command_shows_its_author():
    value = codec("TicketCommand").encode({**command(1, action="create"), "reply_only": False})
    item = suspended.from_dead_letter(_letter("deskmail.ticket.commands", value, error_class="InvalidCommand"),
                                      CONFIG, None)
    assert item is not None
    assert (item.queue, item.sender, item.subject, item.has_original) == ("SUPPORT", "ann@customer.org",
                                                                          "Subject 1", False)


def test_an_unreadable_dead_letter_is_listed_with_what_is_known():
    item = suspended.from_dead_letter(_letter("deskmail.mail.inbound", b"not avro", error_class="CodecError"),
                                      CONFIG, None)
    assert item is not None and (item.queue, item.sender, item.subject) == (None, None, None)
    assert item.reason.startswith("dead_letter: CodecError")


@pytest.mark.parametrize("topic", ["deskmail.mail.outbound", "deskmail.mail.events", None])
def test_dead_letters_of_outgoing_mail_are_not_suspended_mail(topic):
    assert suspended.from_dead_letter(_letter(topic, b"x"), CONFIG, None) is None


def test_the_list_merges_both_kinds_newest_first_with_its_filters():
    def item(i: int, queue: str, code: str) -> suspended.Item:
        return suspended.Item(id=str(i), time=T0 + timedelta(minutes=i), queue=queue, mailbox=None, sender=None,
                              subject=None, reason=code, reason_code=code)

    rejections = [item(3, "SUPPORT", "loop"), item(1, "SUPPORT", "auto_reply"), item(0, "OPS", "loop")]
    letters = [item(2, "SUPPORT", "dead_letter"), item(4, "OPS", "dead_letter")]
    assert [i.id for i in suspended.merged(rejections, letters, None, None, 10)] == ["4", "3", "2", "1", "0"]
    assert [i.id for i in suspended.merged(rejections, letters, "SUPPORT", None, 2)] == ["3", "2"]
    assert [i.id for i in suspended.merged(rejections, letters, None, "loop", 10)] == ["3", "0"]


def test_the_header_summary_decodes_and_survives_hostile_headers():
    raw = (b"From: Carol <carol@customer.test>\r\nTo: support@example.com\r\n"
           b"Subject: \xd0\xa1\xd1\x87\xd1\x91\xd1\x82 raw utf-8\r\nX-Other: skipped\r\n"
           b"Subject: =?bogus?q?x?=\r\n\r\nbody: not a header\r\n")
    assert suspended.header_summary(raw) == [
        ("From", "Carol <carol@customer.test>"), ("To", "support@example.com"),
        ("Subject", "Счёт raw utf-8"), ("Subject", "=?bogus?q?x?=")]
    assert suspended.header_summary(b"") == []
    assert suspended.header_summary(b"\x00\xff" * 100_000)[:1] == []
