"""The reply splitter's rules on small texts (the corpus under tests/corpus
measures it on whole mails)."""

from __future__ import annotations

import pytest

from services.router.replysplit import split


def parts(text: str) -> tuple[str, str | None]:
    at = split(text)
    return (text, None) if at is None else (text[:at].rstrip(), text[at:])


GMAIL = """Thanks, the printer works again.

On Tue, Dec 1, 2026 at 10:15 AM Maria Support <support@example.com> wrote:

> Please restart the spooler.
>
> --
> Maria, Example Support
"""


def test_gmail_attribution_and_quote_are_split_off() -> None:
    text, quoted = parts(GMAIL)
    assert text == "Thanks, the printer works again."
    assert quoted is not None and quoted.startswith("On Tue, Dec 1, 2026")
    assert "Maria, Example Support" in quoted


@pytest.mark.parametrize("attribution", [
    "On Tue, Dec 1, 2026 at 10:15 AM Maria Support <\nsupport@example.com> wrote:",
    "вт, 1 дек. 2026 г. в 10:15, Maria Support <support@example.com>:",
    '01.12.2026, 10:15, "Иван Петров" <ivan@yandex.ru>:',
    "Вторник, 1 декабря 2026, 10:15 +03:00 от Иван Петров <ivan@mail.ru>:",
    "01.12.2026 10:15, Maria Support пишет:",
    "1 декабря 2026 г., в 10:15, Maria Support написал(а):",
    "On 1 Dec 2026, at 10:15, Maria Support <support@example.com> wrote:",
    "* Maria Support <support@example.com> [2026-12-01 10:15]:",
    "Am 01.12.2026 um 10:15 schrieb Maria Support:",
])
def test_attribution_formats(attribution: str) -> None:
    text, quoted = parts(f"Спасибо, всё работает.\n\n{attribution}\n> Перезапустите службу печати.\n")
    assert text == "Спасибо, всё работает."
    assert quoted is not None and quoted.startswith(attribution.split("\n")[0])


OUTLOOK = """Hello,

the invoice is attached.

Ann

________________________________
From: Maria Support <support@example.com>
Sent: Tuesday, December 1, 2026 10:15 AM
To: Ann <ann@customer.test>
Subject: RE: Invoice

Please send the invoice.
"""

OUTLOOK_RU = """Добрый день!
Счёт во вложении.

-----Исходное сообщение-----
От: Maria Support <support@example.com>
Отправлено: 1 декабря 2026 г. 10:15
Кому: Анна <ann@customer.test>
Тема: RE: Счёт

Пришлите, пожалуйста, счёт.
"""


def test_outlook_header_block_without_quote_marks() -> None:
    text, quoted = parts(OUTLOOK)
    assert text == "Hello,\n\nthe invoice is attached.\n\nAnn"
    assert quoted is not None and quoted.startswith("____") and "Please send the invoice." in quoted


def test_outlook_russian_original_message() -> None:
    text, quoted = parts(OUTLOOK_RU)
    assert text == "Добрый день!\nСчёт во вложении."
    assert quoted is not None and quoted.startswith("-----Исходное сообщение-----")


def test_signature_and_mobile_line_go_with_the_quote() -> None:
    mail = "Works now.\n\n-- \nAnn Smith\n+1 555 0100\n\nSent from my iPhone\n\nOn 1 Dec 2026, at 10:15, M <m@example.com> wrote:\n> Hi\n"
    text, quoted = parts(mail)
    assert text == "Works now."
    assert quoted is not None and quoted.startswith("-- \nAnn Smith")


def test_a_signature_alone_is_split_off() -> None:
    text, quoted = parts("Works now.\n\n-- \nAnn Smith\n")
    assert (text, quoted) == ("Works now.", "-- \nAnn Smith\n")


@pytest.mark.parametrize("mail", [
    # answers between the quotes
    "On 1 Dec 2026, M <m@example.com> wrote:\n> Which model?\nLaserJet 4\n> Which driver?\nThe newest\n",
    "Hi\n\nOn 1 Dec 2026, M <m@example.com> wrote:\n> Which model?\nLaserJet 4\n",
    # bottom-posting
    "> Which model?\n\nLaserJet 4, thanks.\n",
    # a forward is content
    "See below.\n\n---------- Forwarded message ---------\nFrom: Bob <bob@customer.test>\nDate: Tue, 1 Dec 2026\n"
    "Subject: Broken\nTo: Ann <ann@customer.test>\n\nIt is broken.\n",
    "FYI\n\nBegin forwarded message:\n\n> From: Bob <bob@customer.test>\n> Subject: Broken\n",
    "Смотрите ниже.\n\n-------- Пересылаемое сообщение --------\n01.12.2026, 10:15, \"Bob\" <bob@x.ru>:\n> Сломалось\n",
    # prose that looks like an attribution
    "On Monday I wrote to you about invoice 12:\nit is still unpaid.\n",
    "> 5 items were missing from the order\nand the box was wet.\n",
    # only a quote, no new text
    "On 1 Dec 2026, M <m@example.com> wrote:\n> Which model?\n",
    "\n\n> Which model?\n",
    # no quote at all
    "Hello, my printer is on fire.\n",
    "",
    # a "--" block longer than a signature
    "Report:\n--\n" + "".join(f"line {i}\n" for i in range(20)),
])
def test_kept_whole(mail: str) -> None:
    assert split(mail) is None


def test_nested_quotes_stay_together() -> None:
    mail = "Ok.\n\nOn 2 Dec 2026, Ann <ann@customer.test> wrote:\n> Thanks\n>\n> On 1 Dec 2026, M <m@example.com> wrote:\n> > Hi\n"
    text, quoted = parts(mail)
    assert text == "Ok." and quoted is not None and "> > Hi" in quoted


def test_offset_is_into_the_original_text() -> None:
    at = split(GMAIL)
    assert at is not None and GMAIL[at:].startswith("On Tue")
