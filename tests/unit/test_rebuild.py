"""A set-aside command's mail rebuilt: parsed again, it reads as the command did."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

from services.common.blobs import ref_for_sha256
from services.router.mailparse import parse
from services.ticketer.rebuild import REBUILT_HEADER, rebuilt_mail

PDF = b"%PDF-1.4 invoice"
PNG = b"\x89PNG\r\n\x1a\n pixels"


def _ref(data: bytes) -> str:
    return ref_for_sha256(hashlib.sha256(data).hexdigest())


COMMAND = {
    "id": "imap:support@example.com:1:7", "mailbox": "support@example.com",
    "author": {"email": "ivan@customer.test", "name": "Иван Петров", "member": False, "verified": False},
    "participants": [{"email": "olga@customer.test", "name": "Ольга", "member": False, "verified": False}],
    "subject": "Счёт №12 не пришёл", "text": "Здравствуйте!\nГде счёт?\n\n> quoted line",
    "html": "<p>Здравствуйте!</p>", "message_id": "m-7@customer.test", "in_reply_to": "deskmail.out-1@example.com",
    "references": ["root@customer.test", "deskmail.out-1@example.com"],
    "received_at": datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc),
    "attachments": [
        {"filename": "счёт 12.pdf", "content_type": "application/pdf", "size": len(PDF),
         "sha256": hashlib.sha256(PDF).hexdigest(), "blob_ref": _ref(PDF), "content_id": None},
        {"filename": "logo.png", "content_type": "image/png", "size": len(PNG),
         "sha256": hashlib.sha256(PNG).hexdigest(), "blob_ref": _ref(PNG), "content_id": "logo@x"},
        {"filename": "gone.zip", "content_type": "application/zip", "size": 10, "sha256": "0" * 64,
         "blob_ref": "sha256:" + "0" * 64, "content_id": None},
    ],
}


def test_the_rebuilt_mail_reads_as_the_command_did() -> None:
    raw = rebuilt_mail(COMMAND, {_ref(PDF): PDF, _ref(PNG): PNG, "sha256:" + "0" * 64: None}, "rate_limited")
    mail = parse(raw)
    assert (mail.from_addr.email, mail.from_addr.name) == ("ivan@customer.test", "Иван Петров")
    assert [a.email for a in mail.to] == ["support@example.com"]
    assert [(a.email, a.name) for a in mail.cc] == [("olga@customer.test", "Ольга")]
    assert mail.subject == "Счёт №12 не пришёл"
    assert mail.text.rstrip() == COMMAND["text"]
    assert mail.html is not None and "Здравствуйте!" in mail.html
    assert (mail.message_id, mail.in_reply_to, mail.references) == (
        "m-7@customer.test", "deskmail.out-1@example.com", ("root@customer.test", "deskmail.out-1@example.com"))
    assert mail.date == COMMAND["received_at"]
    assert [(a.filename, a.content_type, a.payload, a.content_id) for a in mail.attachments] == [
        ("счёт 12.pdf", "application/pdf", PDF, None), ("logo.png", "image/png", PNG, "logo@x")]


def test_the_rebuilt_mail_says_it_was_rebuilt_and_what_is_missing() -> None:
    raw = rebuilt_mail(COMMAND, {_ref(PDF): PDF, _ref(PNG): PNG}, "rate_limited")
    header = next(line for line in raw.decode().splitlines() if line.startswith(REBUILT_HEADER))
    assert header == (f"{REBUILT_HEADER}: rate_limited; rebuilt from what deskmail read, the original was not "
                      "kept; without gone.zip")


def test_hostile_names_stay_on_their_header_lines() -> None:
    hostile = {**COMMAND, "subject": "a\r\nBcc: all@example.com", "attachments": [],
               "author": {"email": "x@customer.test", "name": "Eve\r\nBcc: all@example.com"}}
    mail = parse(rebuilt_mail(hostile, {}, "rate_limited"))
    assert mail.cc and not any(a.email == "all@example.com" for a in (*mail.to, *mail.cc))
    assert b"\r\nBcc:" not in rebuilt_mail(hostile, {}, "rate_limited")
