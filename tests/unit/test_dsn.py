"""Delivery status notifications: the bounce corpus (tests/corpus/bounces) read as the
parser reads it and routed as the router routes it, the fallbacks of bounces that are
not RFC 3464 reports, and hostile input."""

from __future__ import annotations

import hashlib
import json
import random
import textwrap
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from services.common.config import Secret, parse_text
from services.common.mailrules import is_msg_id, new_message_id
from services.router.mailparse import Attachment, MalformedMail, parse
from services.router.mailparse.dsn import MAX_DIAGNOSTIC_CHARS, MAX_RECIPIENTS, read
from services.router.route import route

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "bounces"
PAIRS = sorted(CORPUS.glob("*.eml"))
# The key the corpus's deskmail Message-IDs were signed with (see tests/corpus/README.md).
CORPUS_KEY = Secret("bounce-corpus-key-not-secret-0123456789", "corpus")
CONFIG = parse_text(textwrap.dedent("""\
    organization:
      members:
        - {email: alice@example.com, name: Alice, groups: [support]}
    queues:
      - key: SUPPORT
        access: [group:support]
        mailboxes:
          - {address: support@example.com, accept_external: true, ingress: true}
      - key: OPS
        access: [group:support]
        mailboxes:
          - {address: ops@example.com, ingress: true}
    """))


def expected(path: Path) -> dict[str, Any]:
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


def inbound(raw: bytes, mailbox: str = "support@example.com") -> dict[str, Any]:
    return {"id": "imap:support@example.com:1:9", "mailbox": mailbox, "source": "imap", "uidvalidity": 1,
            "uid": 9, "received_at": datetime(2026, 12, 3, tzinfo=timezone.utc), "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(), "raw": raw, "blob_ref": None}


def part(content_type: str, payload: bytes) -> Attachment:
    return Attachment(filename="attachment.txt", content_type=content_type, payload=payload, size=len(payload),
                      sha256=hashlib.sha256(payload).hexdigest(), content_id=None, inline=False)


# -- the corpus ------------------------------------------------------------------


def test_the_corpus_is_there() -> None:
    assert len(PAIRS) >= 8
    for path in PAIRS:
        first = path.read_text(encoding="latin-1").split("\n", 1)[0]
        assert first == f"X-Corpus-Exercises: {expected(path)['exercises']}", path.name


@pytest.mark.parametrize("path", PAIRS, ids=[p.stem for p in PAIRS])
def test_a_bounce_says_which_mail_failed_for_whom_and_why(path: Path) -> None:
    want = expected(path)
    mail = parse(path.read_bytes())
    assert mail.bounce is want["bounce"]
    if not want["bounce"]:
        assert mail.dsn is None
        return
    dsn = mail.dsn
    assert dsn is not None
    assert dsn.original_message_id == want["original_message_id"]
    assert list(dsn.recipients) == want["recipients"]
    assert (dsn.status, dsn.permanent) == (want["status"], want["permanent"])
    assert dsn.diagnostic is not None and "\n" not in dsn.diagnostic
    for phrase in want["diagnostic_contains"]:
        assert phrase in dsn.diagnostic


@pytest.mark.parametrize("path", PAIRS, ids=[p.stem for p in PAIRS])
def test_the_router_keys_a_bounce_of_deskmails_mail_by_that_mail(path: Path) -> None:
    """With deskmail's key, a bounce whose original Message-ID it signed is a comment on
    that mail's thread, however few threading headers it has; any other bounce is
    refused off any thread, as before."""
    want = expected(path)
    raw = path.read_bytes()
    routed = route(inbound(raw), raw, CONFIG, own_key=CORPUS_KEY)
    c = routed.command
    if not want["bounce"]:
        assert c["classification"] != "bounce" and c["bounce"] is None
        return
    assert c["classification"] == "bounce"
    assert c["bounce"] == {"original_message_id": want["original_message_id"],
                           "recipient": ", ".join(want["recipients"]), "status": want["status"],
                           "diagnostic": c["bounce"]["diagnostic"], "permanent": want["permanent"]}
    if want["deskmail"]:
        assert (c["action"], c["thread_key"], routed.key) == (
            "comment", want["original_message_id"], want["original_message_id"].encode())
        assert routed.keeps_original  # the ticketer may still find no such mail
    else:
        assert (c["action"], c["reason"].split(":")[0]) == ("reject", "bounce")


def test_without_deskmails_key_a_bounce_threads_by_its_own_headers_only() -> None:
    raw = (CORPUS / "postfix-rfc3464.eml").read_bytes()  # no In-Reply-To, no References
    c = route(inbound(raw), raw, CONFIG).command
    assert (c["action"], c["reason"].split(":")[0]) == ("reject", "bounce")
    assert c["bounce"]["original_message_id"].startswith("deskmail.out-")  # still carried for the ticketer
    other_key = Secret("another-installation-key-0123456789abcd", "test")
    assert route(inbound(raw), raw, CONFIG, own_key=other_key).command["action"] == "reject"


def test_a_forged_deskmail_message_id_is_not_taken_for_deskmails() -> None:
    raw = (CORPUS / "postfix-rfc3464.eml").read_bytes()
    genuine = new_message_id("out-00000000000000000000000000b0a0c1", "support@example.com", key=CORPUS_KEY,
                             ticket="SUPPORT-12", nonce=b"\x01" * 16)
    assert genuine.encode() in raw
    forged = raw.replace(genuine.encode(), genuine.replace("275a7879", "275a7870").encode())
    assert route(inbound(forged), forged, CONFIG, own_key=CORPUS_KEY).command["action"] == "reject"
    # naming another ticket than the one it was signed for does not help either
    moved = raw.replace(b"SUPPORT-12", b"SUPPORT-13")
    assert route(inbound(moved), moved, CONFIG, own_key=CORPUS_KEY).command["action"] == "reject"


def test_an_outsider_bounce_of_deskmails_mail_on_a_members_only_address_is_reply_only() -> None:
    """Like an outsider's answer to an agent's mail: the ticketer takes it only onto mail deskmail sent."""
    raw = (CORPUS / "qmail.eml").read_bytes().replace(b"To: support@example.com", b"To: ops@example.com")
    c = route(inbound(raw, "ops@example.com"), raw, CONFIG, own_key=CORPUS_KEY).command
    assert (c["action"], c["reply_only"], c["queue"]) == ("comment", True, "OPS")


def test_other_mail_carries_no_bounce() -> None:
    raw = b"From: Ann <ann@customer.test>\r\nTo: support@example.com\r\nSubject: Hi\r\nMessage-ID: <a@b>\r\n\r\nhi\r\n"
    assert parse(raw).dsn is None
    assert route(inbound(raw), raw, CONFIG, own_key=CORPUS_KEY).command["bounce"] is None


# -- fallbacks ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["postfix-rfc3464", "yandex-ru", "backscatter-not-ours", "postfix-delay-warning"])
def test_a_report_that_lost_its_parts_is_read_from_its_text(name: str) -> None:
    """Forwarded or flattened bounces keep only the explanation: the recipient and the
    failure are read from it, and a delay warning still reads as one."""
    want = expected(CORPUS / f"{name}.eml")
    mail = parse((CORPUS / f"{name}.eml").read_bytes())
    dsn = read(mail.text, [], subject=mail.subject)
    assert dsn is not None
    assert list(dsn.recipients) == want["recipients"]
    assert dsn.permanent is want["permanent"]
    assert dsn.diagnostic is not None
    assert dsn.original_message_id is None  # the headers were in the lost part


def test_gmail_without_its_report_explains_with_the_sentence_naming_the_recipient() -> None:
    mail = parse((CORPUS / "gmail.eml").read_bytes())
    dsn = read(mail.text, [])
    assert dsn is not None and dsn.diagnostic == (
        "Your message wasn't delivered to petr.ivanov.1987@gmail.com because the address couldn't be found, "
        "or is unable to receive mail.")


def test_the_bounces_in_reply_to_is_the_last_resort_for_the_original() -> None:
    dsn = read("The following address(es) failed:\n\n  ghost@customer.test\n", [], replied_to="orig@example.com")
    assert dsn is not None and dsn.original_message_id == "orig@example.com"
    assert read("The following address(es) failed:\n\n  ghost@customer.test\n", [],
                replied_to="not an id").original_message_id is None  # type: ignore[union-attr]


@pytest.mark.parametrize(("fields", "permanent"), [
    ("Action: failed\nStatus: 4.4.7", True),  # gave up after the queue lifetime: a failure
    ("Action: delayed\nStatus: 4.4.1", False),
    ("Action: delivered\nStatus: 2.0.0", False),  # a success report somebody asked for
    ("Status: 5.2.2", True),
    ("Status: 4.2.2", False),
    ("Diagnostic-Code: smtp; 452 mailbox full", False),
    ("Diagnostic-Code: smtp; 552 mailbox full", True),
])
def test_permanent_follows_action_then_status_then_reply_code(fields: str, permanent: bool) -> None:
    report = part("message/delivery-status", f"Reporting-MTA: dns; mx.test\n\nFinal-Recipient: rfc822; a@b.test\n"
                                             f"{fields}\n".encode())
    dsn = read("", [report])
    assert dsn is not None and dsn.permanent is permanent and dsn.recipients == ("a@b.test",)


def test_only_the_failed_recipients_of_a_mixed_report_are_named() -> None:
    report = part("message/delivery-status", b"Reporting-MTA: dns; mx.test\n\n"
                  b"Final-Recipient: rfc822; late@b.test\nAction: delayed\nStatus: 4.4.1\n\n"
                  b"Final-Recipient: rfc822; gone@b.test\nOriginal-Recipient: rfc822; Gone@Alias.test\n"
                  b"Action: failed\nStatus: 5.1.1\nDiagnostic-Code: smtp; 550 no such user\n")
    dsn = read("", [report])
    assert dsn is not None
    assert (dsn.recipients, dsn.status, dsn.diagnostic, dsn.permanent) == (
        ("gone@alias.test",), "5.1.1", "550 no such user", True)


def test_the_quoted_originals_addresses_are_not_failed_recipients() -> None:
    text = ("Delivery to the following recipient failed permanently.\n\n"
            "------ This is a copy of the message, including all the headers. ------\n\n"
            "From: support@example.com\nTo: carol@customer.test\nMessage-ID: <m@example.com>\n\nHello\n")
    dsn = read(text, [])
    assert dsn is not None and dsn.recipients == () and dsn.original_message_id == "m@example.com"


# -- hostile input --------------------------------------------------------------


def test_everything_it_says_is_bounded_and_one_line() -> None:
    many = "".join(f"Final-Recipient: rfc822; user{i}@b.test\nAction: failed\n\n" for i in range(1000))
    long = "x" * 5000
    report = part("message/delivery-status",
                  f"Reporting-MTA: dns; mx.test\n\n{many}Final-Recipient: rfc822; z@b.test\n"
                  f"Diagnostic-Code: smtp; 550 {long}\n\tand\x00 more\n".encode())
    dsn = read("", [report])
    assert dsn is not None and len(dsn.recipients) == MAX_RECIPIENTS
    text = "\n".join(f"<user{i}@b.test>: 550 user unknown {'y' * 3000}" for i in range(100))
    dsn = read(text, [])
    assert dsn is not None and len(dsn.recipients) == MAX_RECIPIENTS
    assert dsn.diagnostic is not None and len(dsn.diagnostic) <= MAX_DIAGNOSTIC_CHARS
    assert "\n" not in dsn.diagnostic and "\x00" not in dsn.diagnostic


@pytest.mark.parametrize("builder", [
    lambda: "a" * 1_000_000,
    lambda: ("Message-ID: <" + "x" * 2000 + ">\n") * 500,
    lambda: "<" + "a." * 100_000 + "@" + "b." * 100_000,
    lambda: ("5.5.5." * 50_000) + " 550 " * 50_000,
    lambda: "\n".join(["x@" + "a-" * 200 + ".test"] * 5000),
    lambda: "------ copy of the message\n" + "Received: x\n " * 100_000,
])
def test_crafted_text_costs_linear_time(builder: Any) -> None:
    text = builder()
    started = time.perf_counter()
    read(text, [part("message/delivery-status", text.encode()[:200_000]),
                part("text/rfc822-headers", text.encode()[:200_000])], failed_recipients=text[:100_000])
    assert time.perf_counter() - started < 2.0


def test_garbage_never_raises() -> None:
    rng = random.Random(7)
    alphabet = "<>@:;.\n \t-=>5.1.1 550 Final-Recipient Action failed Message-ID rfc822 ыщ\x00\r"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 600)))
        data = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        found = read(text, [part("message/delivery-status", data), part("message/rfc822", text.encode())],
                     failed_recipients=text[:80], replied_to=text[:40] or None)
        if found is not None:
            assert len(found.recipients) <= MAX_RECIPIENTS
            assert found.diagnostic is None or len(found.diagnostic) <= MAX_DIAGNOSTIC_CHARS


def test_a_mangled_corpus_bounce_still_parses() -> None:
    """Bytes of the sample flipped anywhere: the parser reads what is left (or refuses
    the mail as malformed), and the report stays bounded."""
    raw = (CORPUS / "postfix-rfc3464.eml").read_bytes()
    rng = random.Random(11)
    for _ in range(200):
        mangled = bytearray(raw)
        for _ in range(20):
            mangled[rng.randrange(len(mangled))] = rng.getrandbits(8)
        try:
            mail = parse(bytes(mangled))
        except MalformedMail:
            continue
        if mail.dsn is not None:
            assert len(mail.dsn.recipients) <= MAX_RECIPIENTS
            assert mail.dsn.original_message_id is None or is_msg_id(mail.dsn.original_message_id)
