"""Measure services.router.mailparse.parse() on a realistic corpus built in memory.

The corpus mimics the mix measured for the design: median ~10 KB, a third with
attachments, a third in Russian, with the header weight of real mail (Received
chains, DKIM and ARC signatures). It also times the bare stdlib parse with
compat32 and with policy.default on the same bytes, and parse() with its fast
path turned off (the stdlib building every message tree), for comparison.

    .venv/bin/python tests/bench/parse.py [--count 2000] [--seed 7] [--rounds 3]
"""

from __future__ import annotations

import argparse
import base64
import email
import email.policy
import quopri
import random
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

from services.router.mailparse import fastpath, parse, reader, stdlib

EN_WORDS = (
    "the printer on the third floor stopped working again after the update and now every "
    "job waits in the queue please could you check the driver settings we also need access "
    "to the shared drive for the new colleague who starts on monday thanks in advance the "
    "invoice attached shows a different amount than agreed in the contract kindly review "
    "it before the end of the month my laptop battery drains fast since yesterday"
).split()
RU_WORDS = (
    "принтер на третьем этаже снова перестал работать после обновления и теперь все задания "
    "висят в очереди проверьте пожалуйста настройки драйвера также нужен доступ к общему "
    "диску для нового сотрудника который выходит в понедельник заранее спасибо счёт во "
    "вложении отличается от суммы в договоре просим проверить до конца месяца ноутбук "
    "быстро разряжается со вчерашнего дня"
).split()
EN_SUBJECTS = ["Printer not working", "Access to shared drive", "Invoice question", "Laptop battery",
               "VPN keeps disconnecting", "New employee onboarding", "Password reset", "Order #48213"]
RU_SUBJECTS = ["Не работает принтер", "Доступ к общему диску", "Вопрос по счёту", "Батарея ноутбука",
               "Отваливается VPN", "Выход нового сотрудника", "Сброс пароля", "Заказ 48213"]
EN_NAMES = ["Alice Walker", "Bob Stone", "Carol Diaz", "Dan O'Neil", "Erin Park"]
RU_NAMES = ["Иван Петров", "Мария Смирнова", "Олег Кузнецов", "Анна Волкова", "Пётр Соколов"]
ATTACHMENTS = [
    ("application/pdf", "invoice-{n}.pdf", "Счёт-{n}.pdf"),
    ("image/png", "screenshot-{n}.png", "снимок-{n}.png"),
    ("image/jpeg", "photo-{n}.jpg", "фото-{n}.jpg"),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "report-{n}.docx",
     "отчёт-{n}.docx"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", "data-{n}.xlsx",
     "данные-{n}.xlsx"),
]


def _b64_lines(data: bytes) -> bytes:
    encoded = base64.b64encode(data)
    return b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76)) + b"\r\n"


def _encoded_word(text: str, charset: str = "utf-8") -> str:
    return f"=?{charset}?B?{base64.b64encode(text.encode(charset)).decode()}?="


class Corpus:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.start = datetime(2026, 3, 2, 8, 0, tzinfo=timezone(timedelta(hours=3)))

    def words(self, russian: bool, count: int) -> str:
        pool = RU_WORDS if russian else EN_WORDS
        lines, line = [], []
        for _ in range(count):
            line.append(self.rng.choice(pool))
            if len(line) > self.rng.randint(9, 13):
                lines.append(" ".join(line).capitalize() + ".")
                line = []
        if line:
            lines.append(" ".join(line).capitalize() + ".")
        return "\n".join(lines)

    def headers(self, n: int, russian: bool, charset: str, subject: str, name: str,
                reply: bool) -> list[str]:
        rng = self.rng
        date = self.start + timedelta(minutes=n * 3)
        sender = f"user{n}@{'example.ru' if russian else 'example.com'}"
        display = _encoded_word(name, charset) if russian else f'"{name}"'
        subj = _encoded_word(subject, charset) if russian else subject
        if reply:
            subj = "Re: " + subj
        lines = []
        for hop in range(rng.randint(3, 7)):
            lines.append(
                f"Received: from mx{hop}.relay{rng.randint(1, 99)}.example.net "
                f"(mx{hop}.relay.example.net [203.0.113.{rng.randint(1, 254)}])\r\n"
                f"\tby mail.deskmail.test (Postfix) with ESMTPS id {rng.getrandbits(40):X}\r\n"
                f"\tfor <support@deskmail.test>; {format_datetime(date)}"
            )
        if rng.random() < 0.7:
            lines.append(
                "DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com; s=s1;\r\n"
                f"\tt={int(date.timestamp())}; h=from:to:subject:date:message-id:mime-version;\r\n"
                f"\tbh={base64.b64encode(rng.randbytes(32)).decode()};\r\n"
                "\tb=" + "\r\n\t  ".join(
                    base64.b64encode(rng.randbytes(256)).decode()[i:i + 70] for i in range(0, 344, 70))
            )
        if rng.random() < 0.4:
            for arc in ("ARC-Seal", "ARC-Message-Signature"):
                lines.append(f"{arc}: i=1; a=rsa-sha256; d=google.com; s=arc-20240605;\r\n\tb="
                             + base64.b64encode(rng.randbytes(200)).decode())
            lines.append("ARC-Authentication-Results: i=1; mx.google.com;\r\n"
                         "\tdkim=pass header.i=@example.com header.s=s1;\r\n\tspf=pass smtp.mailfrom=example.com")
        lines += [
            "Authentication-Results: mail.deskmail.test; dkim=pass; spf=pass; dmarc=pass",
            f"X-Spam-Score: {rng.uniform(-3, 4):.1f}",
            f"Message-ID: <{rng.getrandbits(64):x}.{n}@{sender.split('@')[1]}>",
            f"Date: {format_datetime(date)}",
            f"From: {display} <{sender}>",
            "To: Support <support@deskmail.test>",
            f"Subject: {subj}",
            "MIME-Version: 1.0",
        ]
        if rng.random() < 0.3:
            lines.append(f"Cc: {rng.choice(EN_NAMES)} <cc{n}@example.org>, team@example.org")
        if reply:
            refs = " ".join(f"<{rng.getrandbits(48):x}@deskmail.test>" for _ in range(rng.randint(1, 4)))
            lines += [f"In-Reply-To: {refs.split()[-1]}", f"References: {refs}"]
        if rng.random() < 0.3:
            lines += ["Thread-Topic: " + subject[:40], "Thread-Index: " + base64.b64encode(rng.randbytes(22)).decode(),
                      "X-MS-Has-Attach: yes", "X-MS-TNEF-Correlator:", "x-ms-exchange-organization-scl: -1"]
        return lines

    def text_part(self, text: str, charset: str) -> bytes:
        if charset == "utf-8" and self.rng.random() < 0.5:
            body = quopri.encodestring(text.replace("\n", "\r\n").encode(charset))
            return (f"Content-Type: text/plain; charset={charset}\r\n"
                    "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode() + body + b"\r\n"
        if charset == "utf-8" and self.rng.random() < 0.5:
            return (f"Content-Type: text/plain; charset={charset}\r\n"
                    "Content-Transfer-Encoding: base64\r\n\r\n").encode() + _b64_lines(text.encode(charset))
        head = f"Content-Type: text/plain; charset={charset}; format=flowed\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        return head.encode() + text.replace("\n", "\r\n").encode(charset) + b"\r\n"

    def html_part(self, text: str, charset: str) -> bytes:
        paragraphs = "".join(
            f'<p class="MsoNormal" style="margin:0cm;font-size:11pt;font-family:Calibri,sans-serif">'
            f'<span style="color:#1F497D">{line}</span><o:p></o:p></p>\r\n' for line in text.split("\n")
        )
        html = ("<html><head><meta http-equiv=\"Content-Type\" content=\"text/html; charset=utf-8\">"
                "<style>p.MsoNormal{margin:0cm;font-size:11pt;font-family:Calibri,sans-serif}"
                "a:link{color:#0563C1}</style></head><body lang=\"EN-US\"><div class=\"WordSection1\">\r\n"
                + paragraphs + '<p>Best regards,<br><a href="https://example.com/">Example Ltd</a></p>'
                "</div></body></html>")
        body = quopri.encodestring(html.encode(charset))
        return (f"Content-Type: text/html; charset={charset}\r\n"
                "Content-Transfer-Encoding: quoted-printable\r\n\r\n").encode() + body + b"\r\n"

    def attachment_part(self, n: int, russian: bool) -> bytes:
        rng = self.rng
        content_type, en_name, ru_name = rng.choice(ATTACHMENTS)
        size = min(int(rng.lognormvariate(9.2, 1.0)), 400_000)  # median ~10 KB
        if russian:
            quoted = "".join(f"%{b:02X}" for b in ru_name.format(n=n).encode())
            disposition = f"attachment; filename*=UTF-8''{quoted}"
        else:
            disposition = f'attachment; filename="{en_name.format(n=n)}"'
        return (f"Content-Type: {content_type}\r\nContent-Disposition: {disposition}\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n").encode() + _b64_lines(rng.randbytes(size))

    def message(self, n: int) -> tuple[str, bytes]:
        rng = self.rng
        russian = n % 3 == 0
        with_attachments = n % 3 == 1 if rng.random() < 0.9 else rng.random() < 0.33
        charset = ("koi8-r" if rng.random() < 0.25 else "windows-1251" if rng.random() < 0.2 else "utf-8") \
            if russian else "utf-8"
        names, subjects = (RU_NAMES, RU_SUBJECTS) if russian else (EN_NAMES, EN_SUBJECTS)
        reply = rng.random() < 0.4
        text = self.words(russian, max(20, int(rng.lognormvariate(5.0, 0.7))))
        if reply:
            text += "\n\n> " + self.words(russian, 60).replace("\n", "\n> ")
        shape = rng.choices(["plain", "alternative", "html"], weights=[25, 60, 15])[0]
        if shape == "plain":
            body = self.text_part(text, charset)
        elif shape == "html":
            body = self.html_part(text, charset)
        else:
            boundary = f"alt-{rng.getrandbits(48):x}"
            body = (f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
                    f"--{boundary}\r\n").encode() + self.text_part(text, charset) + \
                f"--{boundary}\r\n".encode() + self.html_part(text, charset) + f"--{boundary}--\r\n".encode()
        if with_attachments:
            boundary = f"mix-{rng.getrandbits(48):x}"
            parts = [body] + [self.attachment_part(n * 10 + i, russian) for i in range(rng.choice([1, 1, 1, 2, 3]))]
            body = f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode() + b"".join(
                f"--{boundary}\r\n".encode() + part for part in parts) + f"--{boundary}--\r\n".encode()
        headers = self.headers(n, russian, "utf-8" if charset == "utf-8" else charset,
                               rng.choice(subjects), rng.choice(names), reply)
        kind = f"{shape}{'+att' if with_attachments else ''}{'/ru' if russian else ''}"
        return kind, "\r\n".join(headers).encode() + b"\r\n" + body


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _rate(fn: Callable[[bytes], object], corpus: list[bytes], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for raw in corpus:
            fn(raw)
        best = min(best, time.perf_counter() - started)
    return len(corpus) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3, help="best of N passes")
    args = parser.parse_args()

    generator = Corpus(args.seed)
    kinds, corpus = zip(*(generator.message(n) for n in range(args.count)))
    sizes = [len(raw) for raw in corpus]
    print(f"corpus: {len(corpus)} messages, {sum(sizes) / 1e6:.1f} MB; size p10/p50/p90/max = "
          f"{_percentile(sizes, .1) / 1024:.1f}/{_percentile(sizes, .5) / 1024:.1f}/"
          f"{_percentile(sizes, .9) / 1024:.1f}/{max(sizes) / 1024:.0f} KB")
    with_attachments = sum("+att" in kind for kind in kinds)
    russian = sum(kind.endswith("/ru") for kind in kinds)
    print(f"        {with_attachments} with attachments, {russian} in Russian")

    parse(corpus[0])  # warm caches (codec lookups, mimetypes table)
    rate = _rate(parse, list(corpus), args.rounds)
    total_mb = sum(sizes) / 1e6
    print(f"parse():                      {rate:8.0f} messages/s  ({rate * total_mb / len(corpus):.1f} MB/s)")
    fast = sum(fastpath.tree(raw) is not None for raw in corpus)
    print(f"  the fast path built the tree of {fast} of {len(corpus)} messages")
    slow = _rate(lambda raw: reader.Reader(*stdlib.tree(raw)).read(), list(corpus), args.rounds)
    print(f"parse() without the fast path: {slow:8.0f} messages/s")
    compat = _rate(lambda raw: email.message_from_bytes(raw, policy=email.policy.compat32), list(corpus), args.rounds)
    print(f"stdlib compat32 parse only:   {compat:8.0f} messages/s")
    default = _rate(lambda raw: email.message_from_bytes(raw, policy=email.policy.default),
                    list(corpus)[: max(1, len(corpus) // 4)], 1)
    print(f"stdlib policy.default only:   {default:8.0f} messages/s")

    timings: dict[str, list[float]] = defaultdict(list)
    everything: list[float] = []
    for kind, raw in zip(kinds, corpus):
        started = time.perf_counter()
        parse(raw)
        elapsed = time.perf_counter() - started
        timings[kind.split("/")[0]].append(elapsed)
        everything.append(elapsed)
    print("per message (ms): p50 {:.2f}  p90 {:.2f}  p99 {:.2f}  max {:.2f}".format(
        *(1000 * _percentile(everything, q) for q in (.5, .9, .99)), 1000 * max(everything)))
    for kind in sorted(timings):
        values = timings[kind]
        print(f"  {kind:17s} n={len(values):4d}  p50 {1000 * statistics.median(values):.2f} ms"
              f"  -> {len(values) / sum(values):6.0f} messages/s")


if __name__ == "__main__":
    main()
