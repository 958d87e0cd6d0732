"""Property tests of the router's core over mutated and generated mail: it
never crashes, and every input ends as a TicketCommand the codec accepts or as
a refusal with a reason for the dead-letter topic (MalformedMail,
UnknownMailbox).

Examples per test: 200 by default; ``HYPOTHESIS_PROFILE=nightly`` runs
10,000 (``.venv/bin/python -m pytest tests/unit/test_router_properties.py``).
"""

from __future__ import annotations

import hashlib
import os
import textwrap
from datetime import datetime, timezone
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.codec import codec
from services.common.config import parse_text
from services.router.mailparse import MalformedMail
from services.router.route import UnknownMailbox, route

settings.register_profile("ci", max_examples=200, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("nightly", max_examples=10_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CONFIG = parse_text(textwrap.dedent("""\
    organization:
      members:
        - {email: alice@example.com, name: Alice, groups: [support]}
    queues:
      - key: SUPPORT
        access: [group:support]
        mailboxes:
          - {address: support@example.com, accept_external: true, ingress: true, ticket: {type: question}}
    """))
CORPUS = [p.read_bytes() for p in sorted((Path(__file__).resolve().parents[1] / "corpus").rglob("*.eml"))]
COMMANDS = codec("TicketCommand")

# Pieces mail is made of, for generated mail: header names and values that
# stress decoding, MIME structure and threading.
HEADER_NAMES = st.sampled_from([
    "From", "To", "Cc", "Subject", "Message-ID", "In-Reply-To", "References", "Date", "Content-Type",
    "Content-Transfer-Encoding", "Content-Disposition", "MIME-Version", "Auto-Submitted", "Precedence",
    "Return-Path", "Reply-To", "Sender", "X-Deskmail-Ticket", "Authentication-Results", "Received", "List-Id",
])
HEADER_VALUES = st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        "=?utf-8?B?0J/RgNC40LLQtdGC?=", "=?koi8-r?Q?=F0=D2=C9?=", "=?x-unknown?Q?caf=E9?=", "<>",
        "multipart/mixed; boundary=b", "multipart/alternative; boundary=\"b\"", "text/plain; charset=cp1251",
        "text/html; charset=utf-8", "message/rfc822", "application/ms-tnef", "base64", "quoted-printable",
        "Ann <ann@customer.test>", "\"Ann, \\\"x\\\"\" <ann@customer.test>", "<a@b> <c@d>", "auto-replied",
        "attachment; filename*=utf-8''%D0%9E.pdf", "Re: [SUPPORT-1] Invoice", "Thu, 3 Dec 2026 10:00:00 +0300",
    ]),
)
BODIES = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=400).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.sampled_from([
        b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--\r\n",
        b"--b\r\nContent-Type: text/html\r\n\r\n<p>hi<blockquote>q</blockquote>\r\n--b\r\n",
        b"--b\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n",
        b"Thanks!\r\n\r\nOn Tue, 1 Dec 2026, M <m@example.com> wrote:\r\n> Hi\r\n",
        "\u041f\u0440\u0438\u0432\u0435\u0442".encode("cp1251"),
    ]),
)


def inbound(raw: bytes) -> dict:
    return {"id": "imap:support@example.com:1:7", "mailbox": "support@example.com", "source": "imap",
            "uidvalidity": 1, "uid": 7, "received_at": datetime(2026, 12, 3, tzinfo=timezone.utc), "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(), "raw": raw, "blob_ref": None}


def check(raw: bytes) -> None:
    try:
        routed = route(inbound(raw), raw, CONFIG)
    except (MalformedMail, UnknownMailbox) as refusal:
        assert str(refusal), "a refusal names its reason"
        return
    command = routed.command
    assert command["action"] in ("create", "comment", "reject")
    assert command["action"] != "reject" or command["reason"], "a rejection names its reason"
    assert "\x00" not in command["text"] and "\x00" not in command["subject"]
    qf = command["quoted_from"]
    assert qf is None or 0 < qf < len(command["text"])
    COMMANDS.decode(COMMANDS.encode(command))  # the record the router would produce


@given(st.lists(st.tuples(HEADER_NAMES, HEADER_VALUES), max_size=12), BODIES)
def test_generated_mail_never_crashes_the_router(headers: list[tuple[str, str]], body: bytes) -> None:
    head = "".join(f"{name}: {value}\r\n" for name, value in headers).encode("utf-8", "surrogatepass")
    check(head + b"\r\n" + body)


@given(st.sampled_from(CORPUS), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=8),
       st.integers(0, 10**6), st.booleans())
def test_mutated_real_mail_never_crashes_the_router(raw: bytes, flips: list[tuple[int, int]], cut: int,
                                                    truncate: bool) -> None:
    data = bytearray(raw)
    for at, value in flips:
        data[at % len(data)] = value
    if truncate:
        data = data[: cut % (len(data) + 1)]
    check(bytes(data))
