"""The msg-id rule of the router's parser (services.router.mailparse.msgids), as tables,
and what it means for a whole mail: a hostile Message-ID never reaches a reply."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import datetime, timezone

import pytest

from services.common.config import parse_text
from services.common.mailrules import MAX_MSG_ID_CHARS, synthetic_message_id
from services.router.mailparse import parse
from services.router.mailparse.msgids import candidates, thread_ids
from services.router.route import route

LONGEST = "a" * (MAX_MSG_ID_CHARS - len("@x.org")) + "@x.org"


@pytest.mark.parametrize(("header", "ids"), [
    ("<a@x.org>", ["a@x.org"]),
    ("<a@x.org> <b@x.org>", ["a@x.org", "b@x.org"]),
    ("<a@x.org>\r\n\t<b@x.org>", ["a@x.org", "b@x.org"]),
    ("<broken\r\n -fold@x.org>", ["broken-fold@x.org"]),  # a fold inside the brackets is repaired
    ("<a@x.org> (Bob's message of Tue, 3 Mar 2026)", ["a@x.org"]),
    ("1234.5678@legacy.example", ["1234.5678@legacy.example"]),  # no brackets: bare tokens with an @
    ("<>  <a@x.org>", ["a@x.org"]),
    ("", []),
    ("no ids here", []),
])
def test_candidates(header: str, ids: list[str]) -> None:
    assert candidates(header) == ids


# Each header value once as Message-ID (the first id, or none), once as In-Reply-To
# (the first msg-id) and once as References (every msg-id).
@pytest.mark.parametrize(("header", "message_id", "in_reply_to", "references"), [
    ("<a@x.org>", "a@x.org", "a@x.org", ("a@x.org",)),
    ("<пример@example.org>", None, None, ()),  # raw UTF-8: not a msg-id
    ("<пример@example.org> <b@x.org>", None, "b@x.org", ("b@x.org",)),
    ("<a b@x.org>", None, None, ()),  # a space typed inside the brackets
    ("<a\tb@x.org>", None, None, ()),
    ("<a\x00b@x.org>", None, None, ()),  # control characters
    ("<a\x1bb@x.org>", None, None, ()),
    ("<a\x7fb@x.org>", None, None, ()),
    ("<a\u2028b@x.org>", None, None, ()),
    ("<a\x85b@x.org>", None, None, ()),
    (f"<{LONGEST}>", LONGEST, LONGEST, (LONGEST,)),
    (f"<a{LONGEST}>", None, None, ()),  # one character too long
    ("<" + "x" * 2000 + "@x.org>", None, None, ()),
    ("<no-at-sign>", "no-at-sign", "no-at-sign", ("no-at-sign",)),  # real mail has these
    ("<a@[192.0.2.1]>", "a@[192.0.2.1]", "a@[192.0.2.1]", ("a@[192.0.2.1]",)),
    ("<a@x.org> <b@x.org> <a@x.org>", "a@x.org", "a@x.org", ("a@x.org", "b@x.org")),
])
def test_thread_ids_rule(header: str, message_id: str | None, in_reply_to: str | None,
                         references: tuple[str, ...]) -> None:
    assert thread_ids(header, "", "").message_id == message_id
    assert thread_ids("", header, "").in_reply_to == in_reply_to
    assert thread_ids("", "", header).references == references


def test_dropped_ids_are_noted() -> None:
    ids = thread_ids("<пример@example.org>", "<a b@x.org>", "<r@x.org> <ü@x.org> <q@x.org>")
    assert (ids.message_id, ids.in_reply_to, ids.references) == (None, None, ("r@x.org", "q@x.org"))
    assert ids.defects == (
        "the Message-ID 'пример@example.org' is not a msg-id; the mail counts as having none",
        "dropped 1 id(s) from In-Reply-To that are not msg-ids, e.g. 'a b@x.org'",
        "dropped 1 id(s) from References that are not msg-ids, e.g. 'ü@x.org'",
    )


def test_references_are_capped_at_fifty_keeping_the_first_and_the_last() -> None:
    header = " ".join(f"<r{n}@x.org>" for n in range(5000))
    ids = thread_ids("", "", header)
    assert len(ids.references) == 50
    assert ids.references == ("r0@x.org", *(f"r{n}@x.org" for n in range(4951, 5000)))
    assert ids.defects == ("References names 5000 ids; kept the first and the last 49",)


# ---------------------------------------------------------------- whole mails

CONFIG = parse_text(textwrap.dedent("""\
    queues:
      - key: SUPPORT
        mailboxes:
          - {address: support@example.com, accept_external: true, ingress: true}
    """))


def _inbound(raw: bytes) -> dict[str, object]:
    return {"id": "imap:x:1:7", "mailbox": "support@example.com", "source": "imap", "uidvalidity": 1, "uid": 7,
            "received_at": datetime(2026, 11, 1, tzinfo=timezone.utc), "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(), "raw": raw, "blob_ref": None}


HOSTILE = (
    "From: Mallory <m@attacker.test>\r\nTo: support@example.com\r\nSubject: hi\r\n"
    "Message-ID: <пример@example.org>\r\n"
    "In-Reply-To: <ответ@example.org>\r\n"
    "References: <root@customer.test> <ответ@example.org> <last@customer.test>\r\n"
    "\r\nbody\r\n"
).encode()


def test_a_non_ascii_message_id_gets_the_synthetic_id_of_the_mail() -> None:
    mail = parse(HOSTILE)
    assert (mail.message_id, mail.in_reply_to, mail.references) == \
        (None, None, ("root@customer.test", "last@customer.test"))
    command = route(_inbound(HOSTILE), HOSTILE, CONFIG).command
    synthetic = synthetic_message_id(hashlib.sha256(HOSTILE).hexdigest())
    assert command["message_id"] == synthetic
    # the same bytes again: the same id, so the ticketer's dedupe sees the copy
    assert route(_inbound(HOSTILE), HOSTILE, CONFIG).command["message_id"] == synthetic
    assert command["references"] == ["root@customer.test", "last@customer.test"]
    assert all(value.isascii() for value in (command["message_id"], *command["references"]))


def test_the_fast_path_and_the_stdlib_read_thread_ids_alike() -> None:
    # a bare CR makes the fast path decline, so the stdlib parses this copy
    stdlib_copy = HOSTILE.replace(b"body\r\n", b"body\rmore\r\n")
    assert parse(stdlib_copy).references == parse(HOSTILE).references
    assert parse(stdlib_copy).message_id is None
