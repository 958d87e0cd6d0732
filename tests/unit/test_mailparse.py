from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from services.common.mailrules import find_ticket_key, strip_reply_prefixes
from services.router.mailparse import Address, Attachment, MalformedMail, ParsedMail, parse, reader


def crlf(text: bytes) -> bytes:
    """Mail on the wire (IMAP, SMTP) has CRLF line ends; literals here are written with LF."""
    return text.replace(b"\n", b"\r\n")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- plain, HTML, alternative ---------------------------------------------------

PLAIN = crlf(
    b"""Return-Path: <alice@example.com>
Received: from mx.example.com (mx.example.com [203.0.113.7])
\tby mail.deskmail.test (Postfix) with ESMTPS id 4F1A2B3C
\tfor <support@deskmail.test>; Tue, 03 Mar 2026 09:15:02 +0100 (CET)
From: Alice Walker <Alice.Walker@Example.COM>
To: Support <support@deskmail.test>, "Walker, Bob" <bob@example.com>
Cc: carol@example.org
Reply-To: Alice (home) <alice@home.example>
Subject: Printer on floor 3
Date: Tue, 3 Mar 2026 09:15:00 +0100
Message-ID: <CAF1234.5678@mail.example.com>
MIME-Version: 1.0
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: 8bit

Hello,

the printer on floor 3 shows "paper jam" but there is no paper inside.

Alice
"""
)


def test_plain_mail() -> None:
    mail = parse(PLAIN)
    assert mail == ParsedMail(
        from_addr=Address("alice.walker@example.com", "Alice Walker"),
        reply_to=(Address("alice@home.example", "Alice (home)"),),
        to=(Address("support@deskmail.test", "Support"), Address("bob@example.com", "Walker, Bob")),
        cc=(Address("carol@example.org", None),),
        subject="Printer on floor 3",
        text='Hello,\n\nthe printer on floor 3 shows "paper jam" but there is no paper inside.\n\nAlice',
        html=None,
        message_id="CAF1234.5678@mail.example.com",
        in_reply_to=None,
        references=(),
        date=datetime(2026, 3, 3, 9, 15, tzinfo=timezone(timedelta(hours=1))),
        attachments=(),
        auto_submitted=False,
        bounce=False,
        suppress_auto_reply=False,
        defects=(),
        from_header=True,
        trace=(("received", "from mx.example.com (mx.example.com [203.0.113.7])\tby mail.deskmail.test (Postfix)"
                " with ESMTPS id 4F1A2B3C\tfor <support@deskmail.test>; Tue, 03 Mar 2026 09:15:02 +0100 (CET)"),),
    )


def test_address_display_form() -> None:
    mail = parse(PLAIN)
    assert mail.from_addr.display == "Alice Walker <alice.walker@example.com>"
    assert mail.cc[0].display == "carol@example.org"


def test_lf_only_line_ends_parse_the_same() -> None:
    assert parse(PLAIN.replace(b"\r\n", b"\n")) == parse(PLAIN)


HTML_ONLY = crlf(
    b"""From: "Shop" <news@shop.example>
To: support@deskmail.test
Subject: Your order
Message-ID: <order-1@shop.example>
Date: Wed, 04 Mar 2026 10:00:00 +0000
MIME-Version: 1.0
Content-Type: text/html; charset=iso-8859-1
Content-Transfer-Encoding: quoted-printable

<html><head><style>p{margin:0}</style></head><body>
<p>Order <b>#4821</b> ships today.</p>
<p>Track it <a href=3D"https://shop.example/t/4821">here</a>.<br>Caf=E9 &amp; more</p>
</body></html>
"""
)


def test_html_only_mail_gets_text_from_the_html() -> None:
    mail = parse(HTML_ONLY)
    assert mail.text == "Order #4821 ships today.\n\nTrack it here (https://shop.example/t/4821).\nCafé & more"
    assert mail.html == (
        "<html><head><style>p{margin:0}</style></head><body>\n"
        "<p>Order <b>#4821</b> ships today.</p>\n"
        '<p>Track it <a href="https://shop.example/t/4821">here</a>.<br>Café &amp; more</p>\n'
        "</body></html>\n"
    )


ALTERNATIVE = crlf(
    b"""From: Bob Stone <bob@example.com>
To: support@deskmail.test
Subject: =?UTF-8?B?0J3QtSDRgNCw0LHQvtGC0LDQtdGCINC/0YDQuNC90YLQtdGA?=
Message-ID: <alt-1@example.com>
MIME-Version: 1.0
Content-Type: multipart/alternative; boundary="000000000000a1b2c3"

--000000000000a1b2c3
Content-Type: text/plain; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

VPN drops every 10 minutes.=0A=
Since Monday.

--000000000000a1b2c3
Content-Type: text/html; charset="UTF-8"
Content-Transfer-Encoding: quoted-printable

<div dir=3D"ltr">VPN drops every 10 minutes.<div>Since Monday.</div></div>

--000000000000a1b2c3--
"""
)


def test_alternative_takes_the_text_part_and_keeps_the_html() -> None:
    mail = parse(ALTERNATIVE)
    assert mail.subject == "Не работает принтер"
    assert mail.text == "VPN drops every 10 minutes.\nSince Monday."
    assert mail.html == '<div dir="ltr">VPN drops every 10 minutes.<div>Since Monday.</div></div>\n'
    assert mail.attachments == ()


def test_alternative_with_an_empty_text_part_uses_the_html() -> None:
    raw = ALTERNATIVE.replace(
        b"VPN drops every 10 minutes.=0A=\r\nSince Monday.\r\n", b"\r\n"
    )
    assert parse(raw).text == "VPN drops every 10 minutes.\nSince Monday."


# -- attachments ----------------------------------------------------------------

PDF = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"
OLE = b"\xd0\xcf\x11\xe0"

MIXED = crlf(
    b"""From: =?koi8-r?B?6dfBziDwxdTSz9c=?= <ivan@example.ru>
To: support@deskmail.test
Subject: =?utf-8?Q?=D0=A1=D1=87=D1=91=D1=82_=E2=84=9642_=E2=80=94_=D0=BE=D0=BF=D0=BB=D0=B0=D1=87=D0=B5=D0=BD?=
Message-ID: <mixed-1@example.ru>
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="----=_Part_0_1"

This is a multi-part message in MIME format.
------=_Part_0_1
Content-Type: multipart/related; boundary="----=_Part_1_2"

------=_Part_1_2
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: 7bit

<p>See the scan: <img src="cid:scan01@example.ru"></p>
------=_Part_1_2
Content-Type: image/png
Content-Transfer-Encoding: base64
Content-ID: <scan01@example.ru>

iVBORw0KGgoAAAANSUhEUgAAAAE=
------=_Part_1_2--

------=_Part_0_1
Content-Type: application/pdf
Content-Disposition: attachment;
 filename*=UTF-8''%D0%9E%D1%82%D1%87%D1%91%D1%82%20%D0%B7%D0%B0%20%D0%BC%D0%B0%D1%80%D1%82.pdf
Content-Transfer-Encoding: base64

JVBERi0xLjQKJeLjz9MKMSAwIG9iago8PD4+CmVuZG9iago=
------=_Part_0_1
Content-Type: application/vnd.ms-excel
Content-Disposition: attachment; filename*0*=koi8-r''%F3%DE%A3;
 filename*1*=%D4.xlsx
Content-Transfer-Encoding: base64

UEsDBA==
------=_Part_0_1
Content-Type: application/msword; name="=?utf-8?B?0JTQvtCz0L7QstC+0YAuZG9jeA==?="
Content-Disposition: attachment
Content-Transfer-Encoding: base64

0M8R4A==
------=_Part_0_1
Content-Type: application/pdf
Content-Disposition: attachment; filename="C:\\Users\\ivan\\Desktop\\scan.pdf"

%PDF-1.4
------=_Part_0_1
Content-Type: application/pdf
Content-Transfer-Encoding: base64

JVBERi0xLjQK
------=_Part_0_1--
"""
)


def test_mixed_mail_with_attachments() -> None:
    mail = parse(MIXED)
    assert mail.from_addr == Address("ivan@example.ru", "Иван Петров")
    assert mail.subject == "Счёт №42 — оплачен"
    assert mail.text == "See the scan:"
    assert mail.html == '<p>See the scan: <img src="cid:scan01@example.ru"></p>'
    assert mail.attachments == (
        Attachment("attachment.png", "image/png", PNG, len(PNG), sha(PNG), "scan01@example.ru", True),
        Attachment("Отчёт за март.pdf", "application/pdf", PDF, len(PDF), sha(PDF), None, False),
        Attachment("Счёт.xlsx", "application/vnd.ms-excel", b"PK\x03\x04", 4, sha(b"PK\x03\x04"), None, False),
        Attachment("Договор.docx", "application/msword", OLE, 4, sha(OLE), None, False),
        # The line break before a boundary belongs to the boundary (RFC 2046 5.1.1).
        Attachment("scan.pdf", "application/pdf", b"%PDF-1.4", 8, sha(b"%PDF-1.4"), None, False),
        Attachment("attachment.pdf", "application/pdf", b"%PDF-1.4\n", 9, sha(b"%PDF-1.4\n"), None, False),
    )
    assert mail.defects == ()


def test_attachment_repr_leaves_out_the_payload() -> None:
    attachment = parse(MIXED).attachments[1]
    assert "payload" not in repr(attachment)
    assert "Отчёт за март.pdf" in repr(attachment)


def test_text_part_with_a_filename_is_an_attachment() -> None:
    raw = crlf(
        b"""From: a@example.com
Subject: log
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

See log.
--b
Content-Type: text/plain; name=app.log
Content-Disposition: inline; filename=app.log

ERROR boom
--b--
"""
    )
    mail = parse(raw)
    assert mail.text == "See log."
    assert [(a.filename, a.payload, a.inline) for a in mail.attachments] == [("app.log", b"ERROR boom", True)]


def test_inline_text_parts_are_joined() -> None:
    raw = crlf(
        b"""From: a@example.com
Subject: parts
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

First part.
--b
Content-Type: image/gif
Content-Disposition: inline

GIF89a
--b
Content-Type: text/plain

-- 
Mailing list footer
--b--
"""
    )
    mail = parse(raw)
    assert mail.text == "First part.\n\n-- \nMailing list footer"
    assert [a.filename for a in mail.attachments] == ["attachment.gif"]


def test_forwarded_mail_is_an_eml_attachment_named_after_its_subject() -> None:
    inner = crlf(
        b"""From: =?utf-8?B?0JzQsNGA0LjRjyDQodC80LjRgNC90L7QstCw?= <maria@example.ru>
Subject: =?utf-8?B?0KHRgtCw0YDRi9C5INC30LDQv9GA0L7RgQ==?=
Message-ID: <old@example.ru>

Original text.
"""
    )
    raw = crlf(
        b"""From: boss@example.com
Subject: Fwd: old request
Content-Type: multipart/mixed; boundary=fwd

--fwd
Content-Type: text/plain

Please handle.
--fwd
Content-Type: message/rfc822

"""
    ) + inner + b"--fwd\r\nContent-Type: message/rfc822\r\n\r\nX-Note: no subject\r\n\r\nBody\r\n--fwd--\r\n"
    mail = parse(raw)
    assert mail.text == "Please handle."
    first, second = mail.attachments
    # The line break before the next boundary is not part of the attached mail.
    assert (first.filename, first.content_type) == ("Старый запрос.eml", "message/rfc822")
    assert first.payload == inner[:-2]
    assert (second.filename, second.payload) == ("message.eml", b"X-Note: no subject\r\n\r\nBody")


# -- charsets ------------------------------------------------------------------


def test_koi8_r_subject_name_and_body() -> None:
    raw = crlf(
        b"""From: =?koi8-r?B?6dfBziDwxdTSz9c=?= <ivan@example.ru>
To: support@deskmail.test
Subject: =?KOI8-R?B?7sUg0sHCz9TBxdQg0NLJztTF0g==?=
MIME-Version: 1.0
Content-Type: text/plain; charset=koi8-r
Content-Transfer-Encoding: 8bit

"""
    ) + "Здравствуйте, принтер снова сломан.\r\n".encode("koi8-r")
    mail = parse(raw)
    assert mail.from_addr == Address("ivan@example.ru", "Иван Петров")
    assert mail.subject == "Не работает принтер"
    assert mail.text == "Здравствуйте, принтер снова сломан."
    assert mail.defects == ()


def test_windows_1251_base64_body() -> None:
    raw = crlf(
        b"""From: buh@example.ru
Subject: invoice
Content-Type: text/plain; charset="windows-1251"
Content-Transfer-Encoding: base64

xO7h8PvpIOTl7fwhDQrR97jyIOLuIOLr7ubl7ejoLg0K
"""
    )
    assert parse(raw).text == "Добрый день!\nСчёт во вложении."


def test_utf8_q_encoded_subject_with_words_split_mid_character() -> None:
    # "Привет" split inside the second letter's two bytes across two encoded-words.
    raw = crlf(
        b"From: a@example.com\n"
        b"Subject: =?utf-8?Q?=D0=9F=D1?=\n =?utf-8?Q?=80=D0=B8=D0=B2=D0=B5=D1=82?= world\n\nx\n"
    )
    assert parse(raw).subject == "Привет world"


def test_raw_8bit_utf8_headers() -> None:
    raw = crlf(
        "From: Мария Смирнова <maria@example.ru>\n"
        "To: support@deskmail.test\n"
        "Subject: Доступ к общему диску\n"
        "Content-Type: text/plain; charset=utf-8\n\nТекст\n".encode()
    )
    mail = parse(raw)
    assert mail.from_addr == Address("maria@example.ru", "Мария Смирнова")
    assert mail.subject == "Доступ к общему диску"
    assert mail.text == "Текст"


def test_raw_8bit_headers_in_the_body_charset() -> None:
    raw = crlf(
        "From: Олег <oleg@example.ru>\nSubject: Сброс пароля\n"
        "Content-Type: text/plain; charset=koi8-r\n\nПароль\n".encode("koi8-r")
    )
    mail = parse(raw)
    assert (mail.from_addr.name, mail.subject, mail.text) == ("Олег", "Сброс пароля", "Пароль")


def test_wrong_declared_charset_falls_back_without_raising() -> None:
    raw = crlf(
        b"From: a@example.com\nSubject: x\nContent-Type: text/plain; charset=utf-8\n\n"
        b"Caf\xe9 au lait \x93quoted\x94\n"
    )
    mail = parse(raw)
    assert mail.text == "Café au lait \u201cquoted\u201d"
    assert mail.defects == ("text is not valid utf-8; decoded as cp1252",)


def test_ascii_declared_but_utf8_sent() -> None:
    raw = crlf(
        b"From: a@example.com\nSubject: x\nContent-Type: text/plain; charset=us-ascii\n\n"
        + "Привет\n".encode()
    )
    assert parse(raw).text == "Привет"


def test_unknown_charsets_fall_back() -> None:
    raw = crlf(
        b"From: =?x-unknown?Q?Caf=E9?= <cafe@example.com>\n"
        b"Subject: =?x-made-up?B?0J/RgNC40LLQtdGC?=\n"
        b"Content-Type: text/plain; charset=x-made-up\n\n\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82\n"
    )
    mail = parse(raw)
    assert mail.from_addr == Address("cafe@example.com", "Café")
    assert mail.subject == "Привет"
    assert mail.text == "Привет"
    assert mail.defects == ("unknown charset 'x-made-up'; decoded as utf-8",)


def test_broken_encoded_words_stay_readable() -> None:
    raw = crlf(
        b"From: a@example.com\n"
        b"Subject: =?utf-8?B?0J/RgNC40LLQtd?= and =?utf-8?Q?unterminated\n\nx\n"
    )
    # The first word lost its last base64 character: the complete characters survive.
    assert parse(raw).subject == "Приве and =?utf-8?Q?unterminated"


def test_character_cut_off_at_the_end_of_an_encoded_word_is_dropped() -> None:
    # "Привет" with the last byte missing.
    raw = crlf(b"From: a@example.com\nSubject: =?utf-8?B?0J/RgNC40LLQtdE=?=\n\nx\n")
    assert parse(raw).subject == "Приве"


def test_undeclared_charset_is_utf8_else_cp1252() -> None:
    utf8 = crlf(b"From: a@example.com\n\nna\xc3\xafve\n")
    assert (parse(utf8).text, parse(utf8).defects) == ("na\u00efve", ())
    latin = crlf(b"From: a@example.com\n\nna\xefve\n")
    assert parse(latin).text == "na\u00efve"
    assert parse(latin).defects == ("8-bit text without a charset; decoded as cp1252",)


def test_raw_8bit_file_names() -> None:
    raw = crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: application/pdf\nContent-Disposition: attachment; "
        + 'filename="Отчёт.pdf"\n\n%PDF\n'.encode()
        + b"--b\nContent-Type: application/pdf\nContent-Disposition: attachment; "
        + "filename*=utf-8''О%D1%82.pdf\n\n%PDF\n".encode()
        + b"--b--\n"
    )
    assert [a.filename for a in parse(raw).attachments] == ["Отчёт.pdf", "От.pdf"]


def test_encoded_word_inside_quotes_is_decoded() -> None:
    raw = crlf(b'From: "=?utf-8?B?0JzQsNGA0LjRjyDQodC80LjRgNC90L7QstCw?=" <maria@example.ru>\nSubject: x\n\nx\n')
    assert parse(raw).from_addr == Address("maria@example.ru", "Мария Смирнова")


def test_address_hidden_inside_one_encoded_word() -> None:
    raw = crlf(b"From: =?utf-8?B?ItCe0LvQtdCzIiA8b2xlZ0BleGFtcGxlLnJ1Pg==?=\nSubject: x\n\nx\n")
    assert parse(raw).from_addr == Address("oleg@example.ru", "Олег")


def test_base64_encoded_attached_mail_is_decoded() -> None:
    raw = crlf(
        b"""From: a@example.com
Subject: fwd
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: message/rfc822
Content-Transfer-Encoding: base64

RnJvbTogb2xkQGV4YW1wbGUuY29tDQpTdWJqZWN0OiBJbm5lcg0KDQpPbGQgYm9keQ0K
--b--
"""
    )
    (attachment,) = parse(raw).attachments
    assert attachment.payload == b"From: old@example.com\r\nSubject: Inner\r\n\r\nOld body\r\n"
    # The subject is inside the encoded text, so it cannot name the file.
    assert attachment.filename == "message.eml"


def test_attached_mail_the_stdlib_cannot_write_back_is_kept_empty() -> None:
    raw = crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\n"
        b"From: inner@example.com\nContent-Type: multipart/mixed; boundary=missing\n\nno boundary, caf\xc3\xa9\n--b--\n"
    )
    mail = parse(raw)
    assert [(a.filename, a.payload) for a in mail.attachments] == [("message.eml", b"")]
    assert mail.defects == ("an attached mail could not be re-serialised; its bytes are left out",)


# -- threading headers ---------------------------------------------------------


def test_folded_references_and_in_reply_to_with_comment() -> None:
    raw = crlf(
        b"""From: a@example.com
Subject: Re: x
Message-ID:
 <reply-2@example.com>
In-Reply-To: <reply-1@example.com> (Bob's message of Tue, 3 Mar 2026)
References: <root@deskmail.test>
\t<reply-1@example.com>
 <root@deskmail.test> <broken
 -fold@example.com>

text
"""
    )
    mail = parse(raw)
    assert mail.message_id == "reply-2@example.com"
    assert mail.in_reply_to == "reply-1@example.com"
    assert mail.references == ("root@deskmail.test", "reply-1@example.com", "broken-fold@example.com")


def test_missing_message_id() -> None:
    raw = crlf(b"From: a@example.com\nSubject: no id\n\nx\n")
    mail = parse(raw)
    assert (mail.message_id, mail.in_reply_to, mail.references) == (None, None, ())


def test_message_id_without_brackets() -> None:
    raw = crlf(b"From: a@example.com\nMessage-ID: 1234.5678@legacy.example\nSubject: x\n\nx\n")
    assert parse(raw).message_id == "1234.5678@legacy.example"


def test_a_subject_is_one_line_whatever_its_encoded_words_decode_to() -> None:
    # =0D=0A and base64 "DQo=" are CR LF; \u2028 is a line break to str.splitlines
    raw = crlf(
        b"From: a@example.com\n"
        b"Subject: =?utf-8?q?Invoice=0D=0ABcc:_all@customer.test?= =?utf-8?b?DQpYLUV2aWw6IDE=?=\n"
        b" tail =?utf-8?q?=E2=80=A8line?=\n\nx\n"
    )
    subject = parse(raw).subject
    assert subject == "Invoice Bcc: all@customer.test X-Evil: 1 tail line"
    assert subject.splitlines() == [subject]


def test_a_long_subject_is_cut_for_the_ticket_summary() -> None:
    raw = crlf(b"From: a@example.com\nSubject: " + b"word " * 1000 + b"\n\nx\n")
    mail = parse(raw)
    assert len(mail.subject) == 255 and mail.subject.endswith("word\u2026")
    assert mail.defects == ("the subject has 4999 characters; cut to 255",)


def test_date_without_zone_is_utc_and_garbage_is_none() -> None:
    no_zone = crlf(b"From: a@example.com\nDate: Tue, 03 Mar 2026 08:00:00 -0000\n\nx\n")
    assert parse(no_zone).date == datetime(2026, 3, 3, 8, 0, tzinfo=timezone.utc)
    garbage = crlf(b"From: a@example.com\nDate: sometime last week\n\nx\n")
    mail = parse(garbage)
    assert mail.date is None
    assert mail.defects == ("unparseable Date header: 'sometime last week'",)


# -- recipients ----------------------------------------------------------------


def test_recipients_are_deduplicated_and_groups_without_members_dropped() -> None:
    raw = crlf(
        b"""From: a@example.com
To: undisclosed-recipients:;
Cc: Bob <BOB@example.com>, bob@example.com, "bob@example.com" <bob@example.com>,
 Team: x@example.com, y@example.com;
Subject: x

x
"""
    )
    mail = parse(raw)
    assert mail.to == ()
    assert mail.cc == (
        Address("bob@example.com", "Bob"),
        Address("x@example.com", None),
        Address("y@example.com", None),
    )


def test_sender_header_stands_in_for_a_missing_from() -> None:
    raw = crlf(b"Sender: Robot <robot@example.com>\nSubject: x\n\nx\n")
    mail = parse(raw)
    assert mail.from_addr == Address("robot@example.com", "Robot")
    assert mail.defects == ("no usable From address; took the sender header",)


# -- classification through parse() -----------------------------------------------

DSN = crlf(
    b"""Return-Path: <>
From: MAILER-DAEMON@mx.example.com (Mail Delivery System)
To: support@deskmail.test
Subject: Undelivered Mail Returned to Sender
Auto-Submitted: auto-replied
Message-ID: <20260303101500.1A2B3C@mx.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="1A2B3C.1772532900/mx.example.com"

This is a MIME-encapsulated message.

--1A2B3C.1772532900/mx.example.com
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<ghost@example.org>: host mx.example.org said: 550 5.1.1 User unknown

--1A2B3C.1772532900/mx.example.com
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.com

Final-Recipient: rfc822; ghost@example.org
Action: failed
Status: 5.1.1

--1A2B3C.1772532900/mx.example.com
Content-Description: Undelivered Message
Content-Type: message/rfc822

From: support@deskmail.test
To: ghost@example.org
Subject: [SUPPORT-3] Printer
Message-ID: <out-1@deskmail.test>

We are on it.

--1A2B3C.1772532900/mx.example.com--
"""
)


def test_delivery_status_notification() -> None:
    mail = parse(DSN)
    assert mail.bounce is True
    assert mail.auto_submitted is True
    assert mail.suppress_auto_reply is True
    assert mail.from_addr == Address("mailer-daemon@mx.example.com", "Mail Delivery System")
    assert mail.text == (
        "I'm sorry to have to inform you that your message could not\n"
        "be delivered to one or more recipients.\n\n"
        "<ghost@example.org>: host mx.example.org said: 550 5.1.1 User unknown"
    )
    status, original = mail.attachments
    assert (status.filename, status.content_type) == ("attachment.txt", "message/delivery-status")
    assert status.payload == (
        b"Reporting-MTA: dns; mx.example.com\r\n\r\n"
        b"Final-Recipient: rfc822; ghost@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
    )
    assert (original.filename, original.content_type) == ("[SUPPORT-3] Printer.eml", "message/rfc822")
    assert original.payload.startswith(b"From: support@deskmail.test\r\nTo: ghost@example.org\r\n")


OUT_OF_OFFICE = crlf(
    b"""Return-Path: <>
From: Erin Park <erin@example.com>
To: support@deskmail.test
Subject: Automatic reply: [SUPPORT-3] Printer
Auto-Submitted: auto-replied
X-Auto-Response-Suppress: All
Thread-Topic: [SUPPORT-3] Printer
In-Reply-To: <out-1@deskmail.test>
References: <SUPPORT-3@deskmail.test> <out-1@deskmail.test>
Content-Type: text/plain; charset="us-ascii"

I am out of the office until 10 March.
"""
)


def test_out_of_office_reply() -> None:
    mail = parse(OUT_OF_OFFICE)
    assert (mail.auto_submitted, mail.bounce, mail.suppress_auto_reply) == (True, False, True)
    assert mail.references == ("SUPPORT-3@deskmail.test", "out-1@deskmail.test")
    assert mail.text == "I am out of the office until 10 March."


OUTLOOK_REPLY = crlf(
    b"""From: "Stone, Bob" <Bob.Stone@corp.example>
To: "support@deskmail.test" <support@deskmail.test>
Subject: RE: [SUPPORT-3] Printer on floor 3
Thread-Topic: [SUPPORT-3] Printer on floor 3
Thread-Index: AQHZ1234abcdEFGH==
Date: Thu, 5 Mar 2026 14:02:11 +0000
Message-ID: <AM0PR01MB1234ABCD@AM0PR01MB1234.eurprd01.prod.outlook.com>
References: <SUPPORT-3@deskmail.test>
 <out-1@deskmail.test>
In-Reply-To: <out-1@deskmail.test>
Accept-Language: en-US
Content-Language: en-US
X-MS-Has-Attach:
X-MS-TNEF-Correlator:
x-ms-exchange-organization-scl: -1
Content-Type: multipart/alternative;
\tboundary="_000_AM0PR01MB1234ABCD_"
MIME-Version: 1.0

--_000_AM0PR01MB1234ABCD_
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable

Works again, thanks!

From: support@deskmail.test <support@deskmail.test>
Sent: Wednesday, March 4, 2026 4:00 PM
Subject: [SUPPORT-3] Printer on floor 3

We are on it.

--_000_AM0PR01MB1234ABCD_
Content-Type: text/html; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable

<html><head><meta http-equiv=3D"Content-Type" content=3D"text/html; charset=3Dus-ascii"></head>
<body lang=3D"EN-US"><div class=3D"WordSection1"><p class=3D"MsoNormal">Works again, thanks!<o:p></o:p></p></div></body></html>

--_000_AM0PR01MB1234ABCD_--
"""
)


def test_outlook_reply() -> None:
    mail = parse(OUTLOOK_REPLY)
    assert mail.from_addr == Address("bob.stone@corp.example", "Stone, Bob")
    assert mail.to == (Address("support@deskmail.test", None),)
    assert mail.subject == "RE: [SUPPORT-3] Printer on floor 3"
    assert find_ticket_key(mail.subject, ["SUPPORT"]) == "SUPPORT-3"
    assert strip_reply_prefixes(mail.subject) == "[SUPPORT-3] Printer on floor 3"
    assert mail.in_reply_to == "out-1@deskmail.test"
    assert mail.references == ("SUPPORT-3@deskmail.test", "out-1@deskmail.test")
    assert mail.text.startswith("Works again, thanks!\n\nFrom: support@deskmail.test")
    assert (mail.auto_submitted, mail.bounce, mail.suppress_auto_reply) == (False, False, False)
    assert mail.defects == ()


def test_mailing_list_mail_is_not_auto_answered() -> None:
    raw = crlf(b"From: a@example.com\nList-Id: <it.lists.example.com>\nSubject: x\n\nx\n")
    mail = parse(raw)
    assert (mail.auto_submitted, mail.suppress_auto_reply) == (False, True)


# -- damage ------------------------------------------------------------------------


def test_base64_body_with_a_list_footer_is_decoded_as_far_as_possible() -> None:
    raw = crlf(
        b"""From: a@example.com
Subject: x
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: base64

SGVsbG8sIHdvcmxkIQ
_______________________________________________
IT mailing list
"""
    )
    mail = parse(raw)
    assert mail.text == "Hello, world!"
    assert mail.defects == ("damaged base64 body; decoded what was readable",)


def test_base64_with_junk_characters() -> None:
    raw = crlf(b"From: a@example.com\nContent-Transfer-Encoding: base64\n\nSGVs bG8*sIHdv\ncmxk IQ==\n")
    mail = parse(raw)
    assert mail.text == "Hello, world!"
    assert mail.defects == ("damaged base64 body; decoded what was readable",)


def test_base64_without_padding() -> None:
    raw = crlf(b"From: a@example.com\nContent-Transfer-Encoding: base64\n\nSGVsbG8sIHdvcmxkIQ\n")
    mail = parse(raw)
    assert mail.text == "Hello, world!"
    assert mail.defects == ("base64 body lacks padding",)


def test_truncated_base64_attachment_keeps_the_complete_bytes() -> None:
    raw = crlf(
        b"""From: a@example.com
Content-Type: multipart/mixed; boundary=b

--b
Content-Type: application/octet-stream; name=data.bin
Content-Transfer-Encoding: base64

AAECAwQFBgcICQ
--b--
"""
    )
    (attachment,) = parse(raw).attachments
    assert attachment.payload == bytes(range(10))


def test_sloppy_transfer_encoding_value() -> None:
    raw = crlf(b"From: a@example.com\nContent-Transfer-Encoding: Base64 \n\nSGVsbG8=\n")
    assert parse(raw).text == "Hello"


def test_multipart_without_boundary_reads_the_body_as_text() -> None:
    raw = crlf(b"From: a@example.com\nContent-Type: multipart/mixed\n\nJust text.\n")
    mail = parse(raw)
    assert mail.text == "Just text."
    assert "NoBoundaryInMultipartDefect" in mail.defects


def test_broken_line_inside_the_header_block_does_not_hide_the_headers_below() -> None:
    raw = crlf(
        b"""Received: from relay.example.net by mx.deskmail.test; Tue, 3 Mar 2026 10:00:00 +0000
X-Mailer: Broken Mailer 1.0
this line is not a header
From: Dan <dan@example.com>
Subject: Still readable
Content-Type: text/plain; charset=utf-8

Body.
"""
    )
    mail = parse(raw)
    assert (mail.from_addr, mail.subject, mail.text) == (Address("dan@example.com", "Dan"), "Still readable", "Body.")
    assert mail.defects == ("dropped malformed lines inside the header block",)


def test_body_without_a_separator_line_stays_the_body() -> None:
    raw = crlf(b"From: a@example.com\nSubject: no blank line\nHello,\nNote: the body starts above.\n")
    mail = parse(raw)
    assert (mail.subject, mail.text) == ("no blank line", "Hello,\nNote: the body starts above.")
    assert mail.defects == ("MissingHeaderBodySeparatorDefect",)


def test_nul_and_control_characters_are_removed() -> None:
    raw = crlf(b"From: Ev\x01e <eve@example.com>\nSubject: a\x00b\n\nline\x00one\n")
    mail = parse(raw)
    assert (mail.from_addr.name, mail.subject, mail.text) == ("Eve", "ab", "lineone")


def test_bare_mailer_daemon_is_accepted_as_sender() -> None:
    raw = crlf(b"From: MAILER-DAEMON (Mail Delivery System)\nSubject: failure notice\n\nx\n")
    mail = parse(raw)
    assert mail.from_addr == Address("mailer-daemon", "Mail Delivery System")
    assert mail.bounce is True
    assert mail.defects == ("the sender address has no domain",)


# -- unusable mail -------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"   \r\n\r\n"])
def test_empty_input_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedMail, match="^empty message: there are no bytes to parse$"):
        parse(raw)


@pytest.mark.parametrize(
    "raw",
    [
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"\x00\x01\x02\xff\xfe garbage \xc3\x28",
        b"Hello there, this is not a mail.\r\nAt all.\r\n",
    ],
)
def test_input_without_a_header_block_is_malformed(raw: bytes) -> None:
    with pytest.raises(MalformedMail, match="^no header block"):
        parse(raw)


def test_mail_without_any_sender_address_is_malformed() -> None:
    raw = crlf(b"To: support@deskmail.test\nFrom: \nSubject: who am I\n\ntext\n")
    with pytest.raises(MalformedMail) as caught:
        parse(raw)
    assert str(caught.value) == (
        "no sender address: no From, Sender, Reply-To or Return-Path header holds an address"
    )


def test_absurdly_nested_mime_is_malformed() -> None:
    levels = b"".join(b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i) for i in range(3000))
    with pytest.raises(MalformedMail, match="^MIME structure is nested too deeply to parse$"):
        parse(b"From: a@example.com\r\n" + levels + b"Content-Type: text/plain\r\n\r\nx\r\n")


@pytest.mark.parametrize("body", [
    "QUJD\r\nREVG\r\n",  # whole lines: decoded directly
    "QUJDREVGRw==\r\n",  # padded: directly
    "QUJDREVGRw=\r\n",  # short padding: the stdlib's repair
    "QUJD REVG\r\n",  # a space inside: the stdlib's way
    "QUJDREVGR\r\n",  # not whole quanta
    "QUJD\r\n-- \r\nlist footer\r\n",  # junk after the data: salvaged
    "",  # empty
])
def test_base64_decodes_alike_on_the_direct_and_the_stdlib_way(body: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = ("From: a@customer.test\r\nSubject: s\r\nMIME-Version: 1.0\r\n"
           "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
           "--b\r\nContent-Type: application/octet-stream; name=f.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           f"{body}--b--\r\n").encode()
    direct = parse(raw)
    monkeypatch.setattr(reader, "_clean_base64", lambda part: None)
    stdlib = parse(raw)
    assert (direct.attachments, direct.defects) == (stdlib.attachments, stdlib.defects)


@pytest.mark.parametrize("slice_chars", [3, 1024 * 1024])
def test_well_formed_base64_is_the_alphabet_in_lines_then_padding(slice_chars: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The check once was this expression; the faster one must answer the same, in slices too.
    import random
    import re

    from services.router.mailparse.reader import _well_formed_base64
    monkeypatch.setattr(reader, "_BASE64_SLICE", slice_chars)
    expression = re.compile(r"[A-Za-z0-9+/\r\n]*(?:={1,2}[\r\n]*)?")
    rng = random.Random(5)
    pieces = ["QUJD", "ZA", "+/", "\r\n", "\n", "=", "==", " ", "-", "!", "\t", "A"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        assert _well_formed_base64(text) == (expression.fullmatch(text) is not None), repr(text)
