"""A queue's size limits: what a mail over them keeps, what it says was left out, or its suspension."""

from __future__ import annotations

import hashlib
import textwrap
from datetime import datetime, timezone
from email.message import EmailMessage

import pytest

from services.common.config import ConfigError, parse_text
from services.common.config.limits import MailLimits
from services.common.units import human_size
from services.router.route import route

CONFIG = textwrap.dedent("""\
    limits:
      max_attachments: 2
      max_attachment_bytes: 10000
    queues:
      - key: SUPPORT
        mailboxes:
          - {address: support@example.com, accept_external: true, ingress: true}
      - key: STRICT
        limits: {over_limit: suspend, max_message_bytes: 50000}
        mailboxes:
          - {address: strict@example.com, accept_external: true, ingress: true}
    """)


def _mail(sizes: list[int], to: str = "support@example.com", html: bool = False, reply: bool = False) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Carol <carol@customer.test>"
    msg["To"] = to
    msg["Subject"] = "Logs attached"
    msg["Message-ID"] = "<m1@customer.test>"
    if reply:
        msg["In-Reply-To"] = "<deskmail.out-1@example.com>"
    msg.set_content("Here are the logs.\n\nOn Mon, Support wrote:\n> What do you see?\n")
    if html:
        msg.add_alternative("<p>Here are the logs.</p>", subtype="html")
    for i, size in enumerate(sizes):
        msg.add_attachment(bytes([65 + i]) * size, maintype="application", subtype="octet-stream",
                           filename=f"log{i}.bin")
    return msg.as_bytes()


def _route(raw: bytes, mailbox: str = "support@example.com", config: str = CONFIG, **inbound: object) -> dict:
    record = {"id": "imap:x:1:7", "mailbox": mailbox, "source": "imap", "uidvalidity": 1, "uid": 7,
              "received_at": datetime(2026, 12, 1, tzinfo=timezone.utc), "size": len(raw),
              "sha256": hashlib.sha256(raw).hexdigest(), "raw": raw, "blob_ref": None, **inbound}
    routed = route(record, raw, parse_text(config))
    command = routed.command
    command["_payloads"] = routed.attachments
    return command


def test_queue_limits_override_the_top_level_key_by_key() -> None:
    config = parse_text(CONFIG)
    assert config.queue("SUPPORT").limits == MailLimits(max_attachments=2, max_attachment_bytes=10000)
    assert config.queue("STRICT").limits == MailLimits(max_message_bytes=50000, max_attachments=2,
                                                       max_attachment_bytes=10000, over_limit="suspend")


def test_a_mail_within_the_limits_keeps_everything() -> None:
    c = _route(_mail([100, 200]))
    assert [a["blob_ref"] is not None for a in c["attachments"]] == [True, True]
    assert len(c["_payloads"]) == 2 and not c["text"].startswith("[deskmail")


def test_an_attachment_over_the_size_limit_is_listed_without_content_and_named_in_the_text() -> None:
    c = _route(_mail([100, 20000]))
    assert [(a["filename"], a["blob_ref"] is None) for a in c["attachments"]] == [("log0.bin", False),
                                                                                  ("log1.bin", True)]
    assert c["_payloads"] == [b"A" * 100]
    assert c["action"] == "create"
    assert c["text"].startswith("[deskmail: this mail was over the queue's size limits. 1 attachment left out: "
                                "log1.bin (20 KB, over the limit of 10 KB per attachment).]\n\nHere are the logs.")


def test_attachments_beyond_the_count_limit_are_left_out_in_order() -> None:
    c = _route(_mail([10, 10, 10, 10]))
    assert [a["blob_ref"] is None for a in c["attachments"]] == [False, False, True, True]
    assert "2 attachments left out: log2.bin (10 B, over the limit of 2 attachments per mail); log3.bin" in c["text"]


def test_a_mail_over_the_message_limit_keeps_its_text_and_no_attachment() -> None:
    config = CONFIG.replace("max_attachments: 2", "max_attachments: 2\n  max_message_bytes: 2048")
    c = _route(_mail([1500, 1500]), config=config)
    assert c["action"] == "create" and c["_payloads"] == []
    assert all(a["blob_ref"] is None for a in c["attachments"])
    assert "limits. The mail is 5 KB, over the limit of 2 KB per mail; 2 attachments left out" in c["text"]
    assert "Here are the logs." in c["text"]


def test_the_note_goes_into_the_html_too_escaped() -> None:
    raw = _mail([20000], html=True).replace(b"log0.bin", b"<script>.bin")
    c = _route(raw)
    assert c["html"].startswith("<p><strong>[deskmail: this mail was over the queue&#x27;s size limits. "
                                "1 attachment left out: &lt;script&gt;.bin")
    assert c["html"].endswith("<p>Here are the logs.</p>\n")


def test_a_reply_keeps_its_quote_split_after_the_note() -> None:
    c = _route(_mail([20000], reply=True))
    new, quoted = c["text"][:c["quoted_from"]], c["text"][c["quoted_from"]:]
    assert new.startswith("[deskmail:") and "Here are the logs." in new
    assert "What do you see?" in quoted and "What do you see?" not in new


def test_over_limit_suspend_sets_the_whole_mail_aside_with_the_reason() -> None:
    c = _route(_mail([20000]), mailbox="strict@example.com")
    assert c["action"] == "reject" and c["_payloads"] == []
    assert c["reason"] == ("too_large: 1 attachment left out: log0.bin (20 KB, over the limit of 10 KB per "
                           "attachment)")


def test_a_released_mail_is_taken_whole() -> None:
    c = _route(_mail([20000, 20000, 20000]), mailbox="strict@example.com", release_of="imap:x:1:7",
               released_by="admin@example.com")
    assert c["action"] == "create" and len(c["_payloads"]) == 3
    assert all(a["blob_ref"] for a in c["attachments"])


def test_a_limit_of_the_wrong_kind_names_its_line() -> None:
    with pytest.raises(ConfigError) as err:
        parse_text("queues:\n  - key: Q\n    limits:\n      over_limit: drop\n    mailboxes: []\n")
    assert "line 4: queues[0].limits.over_limit" in str(err.value)


@pytest.mark.parametrize("n, shown", [(0, "0 B"), (1023, "1023 B"), (1024, "1 KB"), (20000, "20 KB"),
                                      (25 * 1024 * 1024, "25 MB"), (31_400_000, "29.9 MB"),
                                      (3 * 1024 ** 3, "3 GB")])
def test_sizes_read_as_people_write_them(n: int, shown: str) -> None:
    assert human_size(n) == shown
