"""Realistic raw emails for tests and benchmarks, written as bytes the way MUAs send them."""

from __future__ import annotations

import base64
import random
from email.header import Header
from email.utils import format_datetime
from datetime import datetime, timezone

KINDS = ("plain", "html", "alternative", "utf8_subject", "koi8_subject")

RU_WORDS = "здравствуйте счёт оплата заказ доставка вопрос ошибка сервер письмо спасибо срочно".split()
EN_WORDS = "hello invoice payment order delivery question error server mail thanks urgent please".split()


def _date(i: int) -> str:
    return format_datetime(datetime(2026, 11, 1, 9, 0, i % 60, tzinfo=timezone.utc))


def mixed(i: int, sender: str, to: str, domain: str = "customer.test") -> tuple[bytes, str, str]:
    """Email number i of a mixed set; returns (raw, message_id, expected decoded subject)."""
    kind = KINDS[i % len(KINDS)]
    mid = f"mixed-{i}-{random.randrange(1 << 30)}@{domain}"
    head = f"From: Customer {i} <{sender}>\r\nTo: <{to}>\r\nDate: {_date(i)}\r\nMessage-ID: <{mid}>\r\nMIME-Version: 1.0\r\n"
    if kind == "plain":
        subject = f"Plain question {i}"
        body = (f"Subject: {subject}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
                f"Hello, this is plain message {i}.\r\n")
    elif kind == "html":
        subject = f"HTML only {i}"
        body = (f"Subject: {subject}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
                f"<html><body><p>Hello from <b>HTML</b> message {i}.</p></body></html>\r\n")
    elif kind == "alternative":
        subject = f"Multipart {i}"
        body = (f"Subject: {subject}\r\nContent-Type: multipart/alternative; boundary=\"b{i}\"\r\n\r\n"
                f"--b{i}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nText part {i}.\r\n"
                f"--b{i}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>HTML part {i}.</p>\r\n--b{i}--\r\n")
    elif kind == "utf8_subject":
        subject = f"Счёт №{i} — оплата"
        encoded = Header(subject, "utf-8").encode()
        text = base64.b64encode(f"Здравствуйте! Письмо {i}.".encode()).decode()
        body = (f"Subject: {encoded}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: base64\r\n\r\n{text}\r\n")
    else:
        subject = f"Заказ {i} не пришёл"
        encoded = Header(subject, "koi8-r").encode()
        text = f"Где мой заказ {i}?".encode("koi8-r")
        body = (f"Subject: {encoded}\r\nContent-Type: text/plain; charset=koi8-r\r\n"
                f"Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + text + b"\r\n"
        return head.encode() + body, mid, subject
    return (head + body).encode(), mid, subject


def reply(to_mid: str, sender: str, to: str, subject: str, text: str, domain: str = "customer.test") -> tuple[bytes, str]:
    mid = f"reply-{random.randrange(1 << 40)}@{domain}"
    raw = (f"From: <{sender}>\r\nTo: <{to}>\r\nDate: {_date(1)}\r\nMessage-ID: <{mid}>\r\n"
           f"In-Reply-To: <{to_mid}>\r\nReferences: <{to_mid}>\r\nSubject: {Header('Re: ' + subject, 'utf-8').encode()}\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n").encode()
    return raw, mid


def realistic(i: int, rng: random.Random, sender: str, to: str, reply_to: str | None = None) -> tuple[bytes, str]:
    """Benchmark mail: 2-200 KB (median ~10 KB), a third with attachments, a third Russian."""
    russian = i % 3 == 0
    words = RU_WORDS if russian else EN_WORDS
    size = min(200_000, max(2_000, int(rng.lognormvariate(9.2, 0.8))))
    attach = i % 3 == 1
    text_size = size // 3 if attach else size
    text = " ".join(rng.choice(words) for _ in range(max(20, text_size // 8)))
    subject = ("Вопрос по заказу " if russian else "Question about order ") + str(i)
    mid = f"bench-{i}-{rng.randrange(1 << 40)}@customer.test"
    lines = [f"From: Customer {i} <{sender}>", f"To: <{to}>", f"Date: {_date(i)}", f"Message-ID: <{mid}>",
             f"Subject: {Header(subject, 'utf-8').encode()}", "MIME-Version: 1.0"]
    if reply_to:
        lines += [f"In-Reply-To: <{reply_to}>", f"References: <{reply_to}>"]
    body_b64 = base64.encodebytes(text.encode()).decode().replace("\n", "\r\n")
    if not attach:
        lines += ["Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64", "", body_b64]
        return "\r\n".join(lines).encode(), mid
    payload = base64.encodebytes(rng.randbytes(size - text_size)).decode().replace("\n", "\r\n")
    lines += [f'Content-Type: multipart/mixed; boundary="m{i}"', "", f"--m{i}",
              "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: base64", "", body_b64,
              f"--m{i}", f'Content-Type: application/pdf; name="invoice-{i}.pdf"',
              f'Content-Disposition: attachment; filename="invoice-{i}.pdf"', "Content-Transfer-Encoding: base64", "",
              payload, f"--m{i}--", ""]
    return "\r\n".join(lines).encode(), mid
