"""The sender's pure core: OutboundMail -> MIME."""

from __future__ import annotations

import email
import random
from datetime import datetime, timezone
from email import policy
from typing import Any

import pytest

from services.common.compose import ComposeError, as_bytes, compose, envelope_address, needs_smtputf8, recipients
from services.common.config import Secret
from services.common.mailrules import new_message_id, subject_for
from services.router import mailparse

LONG_ID = "CAFooBarBazQuux1234567890abcdefghijklmnopqrstuvwxyz0123456789-0123456789@mail.gmail.com"


def outbound(**overrides: Any) -> dict[str, Any]:
    mail: dict[str, Any] = {
        "id": "out-1", "kind": "reply", "ticket": "SUPPORT-12", "comment_id": 3, "queue": "SUPPORT",
        "mailbox": "support@example.com", "from_address": "support@example.com", "alias": "Example support",
        "signature": "--\nExample Inc. customer support", "to": [{"email": "carol@customer.test", "name": "Carol"}],
        "cc": [], "subject": "Re: [SUPPORT-12] Invoice", "text": "Here it is.", "html": None,
        "message_id": "deskmail.out-1@example.com", "in_reply_to": "abc@customer.test",
        "references": ["root@customer.test", "abc@customer.test"], "attachments": [],
        "created_at": datetime(2025, 11, 29, 7, 6, 40, tzinfo=timezone.utc),
    }
    mail.update(overrides)
    return mail


def head(data: bytes) -> str:
    return data.split(b"\r\n\r\n", 1)[0].decode("ascii")


def parsed(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=policy.default)  # type: ignore[return-value]


def content(part: Any) -> str:
    """A text part's content with "\n" line ends (base64 keeps the canonical CRLF)."""
    return str(part.get_content()).replace("\r\n", "\n")


# ---------------------------------------------------------------- headers


def test_headers_are_pinned_exactly() -> None:
    data = as_bytes(compose(outbound(cc=[{"email": "dave@customer.test", "name": None}])))
    assert head(data) == "\r\n".join([
        'From: "Example support" <support@example.com>',
        'To: "Carol" <carol@customer.test>',
        "Cc: dave@customer.test",
        "Subject: Re: [SUPPORT-12] Invoice",
        "Date: Sat, 29 Nov 2025 07:06:40 +0000",
        "Message-ID: <deskmail.out-1@example.com>",
        "In-Reply-To: <abc@customer.test>",
        "References: <root@customer.test> <abc@customer.test>",
        "X-Deskmail-Ticket: SUPPORT-12",
        'Content-Type: text/plain; charset="utf-8"',
        "Content-Transfer-Encoding: 7bit",
        "MIME-Version: 1.0",
    ])
    assert data.endswith(b"\r\n\r\nHere it is.\r\n\r\n--\r\nExample Inc. customer support\r\n")
    assert "Auto-Submitted" not in parsed(data)  # a person wrote it: customers' auto-replies may answer


def test_russian_alias_and_subject_are_rfc2047_and_round_trip() -> None:
    mail = outbound(alias="Служба поддержки «Пример»", subject="Re: [SUPPORT-12] Счёт за октябрь не пришёл",
                    to=[{"email": "ivan@customer.test", "name": "Иванов, Иван"}])
    data = as_bytes(compose(mail))
    assert data.isascii()  # 7-bit headers and bodies: no 8BITMIME or SMTPUTF8 needed
    assert head(data).split("\r\nDate:")[0] == "\r\n".join([
        # one encoded-word per display name, however long (see compose._address)
        "From: =?utf-8?b?0KHQu9GD0LbQsdCwINC/0L7QtNC00LXRgNC20LrQuCDCq9Cf0YDQuNC80LXRgMK7?=",
        " <support@example.com>",
        "To: =?utf-8?b?0JjQstCw0L3QvtCyLCDQmNCy0LDQvQ==?= <ivan@customer.test>",
        # the key stays readable; the encoded-words carry their own spaces
        "Subject: Re: [SUPPORT-12] =?utf-8?b?0KHRh9GR0YIg0LfQsCDQvtC60YLRj9Cx0YDRjCA=?=",
        " =?utf-8?b?0L3QtSDQv9GA0LjRiNGR0Ls=?=",
    ])

    msg = parsed(data)
    sender = msg["From"].addresses[0]
    assert (sender.display_name, sender.addr_spec) == ("Служба поддержки «Пример»", "support@example.com")
    to = msg["To"].addresses[0]
    assert (to.display_name, to.addr_spec) == ("Иванов, Иван", "ivan@customer.test")
    assert str(msg["Subject"]) == "Re: [SUPPORT-12] Счёт за октябрь не пришёл"

    # and our own router reads it back the same (the customer's reply quotes these headers)
    mine = mailparse.parse(data)
    assert mine.from_addr == mailparse.Address("support@example.com", "Служба поддержки «Пример»")
    assert mine.subject == "Re: [SUPPORT-12] Счёт за октябрь не пришёл"
    assert mine.message_id == "deskmail.out-1@example.com"
    assert mine.in_reply_to == "abc@customer.test"
    assert mine.references == ("root@customer.test", "abc@customer.test")


def test_long_thread_ids_are_folded_between_ids_never_encoded() -> None:
    refs = [f"{i}-{LONG_ID}" for i in range(3)]
    data = as_bytes(compose(outbound(in_reply_to=f"<{LONG_ID}>", references=refs)))
    text = head(data)
    assert f"In-Reply-To: <{LONG_ID}>\r\n" in text
    assert f"References: <{refs[0]}>\r\n <{refs[1]}>\r\n <{refs[2]}>\r\n" in text
    assert "=?" not in text
    msg = parsed(data)
    assert str(msg["In-Reply-To"]) == f"<{LONG_ID}>"
    assert str(msg["References"]).split() == [f"<{r}>" for r in refs]


def test_new_thread_has_no_threading_headers_and_test_mail_no_ticket_header() -> None:
    msg = parsed(as_bytes(compose(outbound(in_reply_to=None, references=[], ticket=None, kind="test"))))
    assert msg["In-Reply-To"] is None and msg["References"] is None
    assert msg["X-Deskmail-Ticket"] is None


def test_created_at_as_epoch_millis_is_the_date() -> None:
    msg = parsed(as_bytes(compose(outbound(created_at=1764400000000))))
    assert msg["Date"].datetime == datetime(2025, 11, 29, 7, 6, 40, tzinfo=timezone.utc)


def test_idn_domains_become_punycode_and_only_a_utf8_local_part_needs_smtputf8() -> None:
    message = compose(outbound(to=[{"email": "anna@пример.рф", "name": None}]))
    assert not needs_smtputf8(message)
    assert parsed(as_bytes(message))["To"].addresses[0].addr_spec == "anna@xn--e1afmkfd.xn--p1ai"

    message = compose(outbound(to=[{"email": "анна@example.org", "name": "Анна"}]))
    assert needs_smtputf8(message)
    data = as_bytes(message)
    assert "To: =?utf-8?b?0JDQvdC90LA=?= <анна@example.org>".encode() in data  # raw UTF-8 under SMTPUTF8
    msg = email.message_from_string(data.decode("utf-8"), policy=policy.default)
    assert msg["To"].addresses[0].addr_spec == "анна@example.org"
    assert msg["To"].addresses[0].display_name == "Анна"


def test_bad_address_is_a_compose_error() -> None:
    with pytest.raises(ComposeError, match="not an email address"):
        compose(outbound(to=[{"email": "carol-at-customer.test", "name": None}]))


def header_lines(data: bytes, name: str) -> list[str]:
    """The physical lines of one header: its first line and its continuation lines."""
    lines = head(data).split("\r\n")
    start = next(i for i, line in enumerate(lines) if line.lower().startswith(name.lower() + ":"))
    end = start + 1
    while end < len(lines) and lines[end][:1] in (" ", "\t"):
        end += 1
    return lines[start:end]


def test_a_customers_subject_with_line_breaks_goes_out_as_one_header() -> None:
    """CR/LF written raw, encoded as =0D=0A and base64, and text that only looks like
    an encoded-word of CR/LF: the reply's Subject is one logical header, and what a
    mail program decodes holds no line break."""
    incoming = (
        b"From: carol@customer.test\r\n"
        b"Subject: =?utf-8?q?Invoice=0D=0ABcc:_all@customer.test?= =?utf-8?b?DQpYLUV2aWw6IDE=?=\r\n"
        b" =?utf-8?q?=3D=3Futf-8=3Fq=3Fa=3D0D=3D0Ab=3F=3D?= end\r\n\r\nbody\r\n"
    )
    summary = mailparse.parse(incoming).subject
    assert summary == "Invoice Bcc: all@customer.test X-Evil: 1=?utf-8?q?a=0D=0Ab?= end"
    data = as_bytes(compose(outbound(subject=subject_for("SUPPORT-12", summary))))
    lines = header_lines(data, "Subject")
    assert all(line[:1] == " " for line in lines[1:])
    assert not any(line.lower().startswith(("bcc:", "x-evil:")) for line in head(data).split("\r\n"))
    msg = parsed(data)
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert str(msg["Subject"]) == f"Re: [SUPPORT-12] {summary}"  # the look-alike was encoded, not decoded
    assert mailparse.parse(data).subject == f"Re: [SUPPORT-12] {summary}"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"alias": "Support\r\nBcc: x@y.test"}, "the alias 'Support\\r\\nBcc: x@y.test' contains a line break"),
    ({"subject": "x\u2029y"}, "the subject 'x\\u2029y' contains a line break"),
    ({"to": [{"email": "carol@customer.test", "name": "Carol\vX"}]}, "the To name 'Carol\\x0bX' contains"),
    ({"from_address": "support@example.com\n"}, "the From address 'support@example.com\\n' contains"),
    ({"ticket": "SUPPORT-12\nBcc: x@y.test"}, "the ticket key 'SUPPORT-12\\nBcc: x@y.test' contains"),
    ({"message_id": "пример@example.org"}, "Message-ID id 'пример@example.org' is not a msg-id"),
    ({"references": ["a b@x.test"]}, "References id 'a b@x.test' is not a msg-id"),
    ({"references": ["x" * 981]}, "References id '" + "x" * 80 + "'… is not a msg-id"),
    ({"attachments": [{"filename": "a\nb.pdf", "content_type": "application/pdf", "blob_ref": "r"}]},
     "the attachment name 'a\\nb.pdf' contains a line break"),
])
def test_header_values_that_are_not_one_line_or_not_msg_ids_are_refused(overrides: dict[str, Any],
                                                                      message: str) -> None:
    with pytest.raises(ComposeError) as info:
        compose(outbound(**overrides), attachments={"r": b"x"})
    assert message in str(info.value)


def test_references_are_cut_to_fifty_keeping_the_first_and_the_last() -> None:
    refs = [f"r{n}@customer.test" for n in range(300)]
    msg = parsed(as_bytes(compose(outbound(references=refs))))
    assert str(msg["References"]).split() == [f"<{r}>" for r in [refs[0], *refs[-49:]]]


def test_a_long_subject_is_cut_and_every_line_stays_under_998() -> None:
    for subject in ("x" * 5000, "word " * 1000, "слово " * 1000):
        data = as_bytes(compose(outbound(subject=subject)))
        assert max(len(line) for line in data.split(b"\r\n")) <= 998
        decoded = str(parsed(data)["Subject"])
        assert len(decoded) == 900 and decoded.endswith("\u2026")


# ---------------------------------------------------------------- bodies


def test_html_part_gets_the_signature_escaped_with_line_breaks() -> None:
    mail = outbound(html="<html><body><p>Here it is.</p></body></html>", signature="--\nTom & Jerry <support>")
    msg = parsed(as_bytes(compose(mail)))
    assert msg.get_content_type() == "multipart/alternative"
    plain = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert plain is not None and html is not None
    assert content(plain) == "Here it is.\n\n--\nTom & Jerry <support>\n"
    assert content(html) == (
        "<html><body><p>Here it is.</p><p>--<br>\nTom &amp; Jerry &lt;support&gt;</p>\n</body></html>\n"
    )


def test_html_without_body_tag_gets_the_signature_appended() -> None:
    msg = parsed(as_bytes(compose(outbound(html="<p>Hi</p>", signature="Example"))))
    html = msg.get_body(("html",))
    assert html is not None and content(html) == "<p>Hi</p>\n<p>Example</p>\n"


def test_no_signature_means_just_the_text() -> None:
    for signature in (None, "", "  \n"):
        msg = parsed(as_bytes(compose(outbound(signature=signature, text="Hi\r\nthere\n\n"))))
        assert content(msg) == "Hi\nthere\n"


def test_russian_body_is_utf8_in_a_7bit_transfer_encoding() -> None:
    text = "Здравствуйте!\nСчёт во вложении.\n" * 20
    message = compose(outbound(text=text, signature="--\nСлужба поддержки"))
    data = as_bytes(message)
    assert data.isascii()
    part = parsed(data)
    assert part["Content-Transfer-Encoding"] in ("base64", "quoted-printable")
    assert part.get_content_charset() == "utf-8"
    assert content(part) == text.rstrip("\n") + "\n\n--\nСлужба поддержки\n"


def test_attachments_come_from_the_supplied_blobs() -> None:
    mail = outbound(attachments=[
        {"filename": "счёт.pdf", "content_type": "application/pdf", "blob_ref": "sha256:aa"},
        {"filename": "notes.txt", "content_type": "bogus", "blob_ref": "sha256:bb"},
    ])
    msg = parsed(as_bytes(compose(mail, attachments={"sha256:aa": b"%PDF-1.4\x00\xff", "sha256:bb": b"hello"})))
    files = [(p.get_filename(), p.get_content_type(), p.get_content()) for p in msg.iter_attachments()]
    assert files == [("счёт.pdf", "application/pdf", b"%PDF-1.4\x00\xff"),
                     ("notes.txt", "application/octet-stream", b"hello")]
    body = msg.get_body(("plain",))
    assert body is not None and content(body).startswith("Here it is.")

    with pytest.raises(ComposeError, match="was not supplied"):
        compose(mail, attachments={"sha256:aa": b"x"})


def test_the_same_record_composes_to_the_same_bytes() -> None:
    mail = outbound(html="<p>Hi</p>",
                    attachments=[{"filename": "a.bin", "content_type": "application/octet-stream", "blob_ref": "r"}])
    assert as_bytes(compose(mail, attachments={"r": b"1"})) == as_bytes(compose(mail, attachments={"r": b"1"}))


# ---------------------------------------------------------------- helpers


def test_message_id_is_written_in_brackets() -> None:
    message_id = new_message_id("0f/1", "support@example.com", key=Secret("k" * 32, "test"), ticket="SUPPORT-12")
    msg = parsed(as_bytes(compose(outbound(message_id=message_id))))
    assert msg["Message-ID"] == f"<{message_id}>"


def test_recipients_and_envelope_addresses() -> None:
    mail = outbound(to=[{"email": "a@x.test", "name": "A"}, {"email": "B@Пример.рф", "name": None}],
                    cc=[{"email": "A@x.test", "name": None}, {"email": "c@x.test", "name": None}])
    assert recipients(mail) == ["a@x.test", "B@xn--e1afmkfd.xn--p1ai", "c@x.test"]
    assert envelope_address("support@example.com") == "support@example.com"
    with pytest.raises(ComposeError):
        envelope_address("nobody")
    with pytest.raises(ComposeError, match="is not a valid domain name"):
        envelope_address("anna@пример..рф")


def test_random_russian_subjects_and_aliases_round_trip_through_the_stdlib_parser() -> None:
    """Seeded fuzz: folds land between encoded-words, after specials, inside words."""
    rng = random.Random(20251129)
    alphabet = "абвгдеёжзийклмнопрстуфхцчшщъыьэюяABCdef  «»—,.!?\"'()\\<>@;:="
    for _ in range(400):
        subject = " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 160))).split())
        alias = " ".join("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 50))).split()) or "x"
        data = as_bytes(compose(outbound(subject=subject, alias=alias)))
        assert data.isascii()
        msg = parsed(data)
        assert str(msg["Subject"]) == subject
        assert (msg["From"].addresses[0].display_name, msg["From"].addresses[0].addr_spec) == \
            (alias, "support@example.com")
