"""Charsets a mail does not declare, or declares wrong, are detected (and named)."""

from __future__ import annotations

import random

import pytest

from services.router.mailparse import parse
from services.router.mailparse.charsets import CYRILLIC, detect, mislabelled

RUSSIAN = ("Здравствуйте! Мы оплатили счёт номер 42 ещё в понедельник, но доступ к общему диску так и не появился. "
           "Проверьте, пожалуйста, настройки: бухгалтерия ждёт.")
WORDS = RUSSIAN.replace(",", "").replace(".", "").replace("!", "").replace(":", "").split()


def mail(body: bytes, content_type: str | None = "text/plain", subject: bytes = b"x") -> bytes:
    head = b"From: ann@customer.test\r\nTo: support@example.com\r\nSubject: " + subject + b"\r\n"
    if content_type is not None:
        head += b"Content-Type: " + content_type.encode() + b"\r\n"
    return head + b"Content-Transfer-Encoding: 8bit\r\n\r\n" + body + b"\r\n"


@pytest.mark.parametrize("codec", CYRILLIC)
def test_undeclared_cyrillic_is_detected(codec: str) -> None:
    parsed = parse(mail(RUSSIAN.encode(codec)))
    assert parsed.text == RUSSIAN
    assert parsed.charset_detected == codec
    assert f"8-bit text without a charset; decoded as {codec}" in parsed.defects


@pytest.mark.parametrize(("actual", "label"), [
    (actual, label) for actual in CYRILLIC for label in (*CYRILLIC, "iso-8859-1", "us-ascii", "utf-8")
    if label != actual  # a right label: test_a_right_label_is_believed
])
def test_a_wrong_label_is_corrected(actual: str, label: str) -> None:
    parsed = parse(mail(RUSSIAN.encode(actual), f"text/plain; charset={label}"))
    assert parsed.text == RUSSIAN, (actual, label)
    assert parsed.charset_detected == actual
    assert any(actual in d for d in parsed.defects)


@pytest.mark.parametrize("label", [*CYRILLIC, "utf-8"])
def test_a_right_label_is_believed(label: str) -> None:
    parsed = parse(mail(RUSSIAN.encode(label), f"text/plain; charset={label}"))
    assert (parsed.text, parsed.charset_detected, parsed.defects) == (RUSSIAN, None, ())


def test_western_text_keeps_its_label() -> None:
    text = "Résumé of the naïve café owner’s façade, Grüße aus Köln"
    parsed = parse(mail(text.encode("cp1252"), "text/plain; charset=iso-8859-1"))
    assert (parsed.text, parsed.charset_detected) == (text, None)
    undeclared = parse(mail(text.encode("cp1252"), None))
    assert (undeclared.text, undeclared.charset_detected) == (text, "cp1252")


def test_a_short_text_keeps_its_label() -> None:
    # Two letters cannot show which code page they are in: the label is believed.
    parsed = parse(mail("да".encode("koi8-r"), "text/plain; charset=windows-1251"))
    assert parsed.charset_detected is None and parsed.text == "да".encode("koi8-r").decode("cp1251")


def test_undeclared_utf8_is_utf8_and_no_defect() -> None:
    parsed = parse(mail(RUSSIAN.encode(), None))
    assert (parsed.text, parsed.charset_detected, parsed.defects) == (RUSSIAN, "utf-8", ())


def test_headers_follow_the_body_and_are_detected_alone() -> None:
    subject = "Оплата счёта за октябрь и доступ к диску"
    raw = mail(RUSSIAN.encode("koi8-r"), None, subject=subject.encode("koi8-r"))
    assert parse(raw).subject == subject
    # no text at all to follow: the subject alone
    alone = mail(b"hello", "text/plain; charset=us-ascii", subject=subject.encode("cp1251"))
    assert parse(alone).subject == subject
    # an encoded-word with the wrong Cyrillic label
    import base64
    word = b"=?koi8-r?B?" + base64.b64encode(subject.encode("cp1251")) + b"?="
    assert parse(mail(b"hello", "text/plain; charset=us-ascii", subject=word)).subject == subject


def test_no_replacement_character_where_a_decoding_exists() -> None:
    rng = random.Random(5)
    for _ in range(300):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
        codec = rng.choice(CYRILLIC)
        found = detect(text.encode(codec))
        assert found is not None and "\ufffd" not in found.text


def test_a_lone_4_byte_utf8_lookalike_is_not_utf8() -> None:
    # "Ёлка" in cp866 happens to be one valid 4-byte UTF-8 sequence.
    found = detect("Ёлка".encode("cp866"))
    assert found is not None and found.codec != "utf-8"


def test_mislabelled_needs_evidence() -> None:
    text = RUSSIAN.encode("cp1251")
    assert mislabelled(RUSSIAN, text, "cp1251") is None
    wrong = text.decode("koi8-r")
    fixed = mislabelled(wrong, text, "koi8-r")
    assert fixed is not None and (fixed.codec, fixed.text) == ("cp1251", RUSSIAN)


@pytest.mark.parametrize("label", ["windows-1251", "koi8-r", "iso-8859-1", "windows-1252"])
def test_utf8_under_a_single_byte_label_is_utf8(label: str) -> None:
    for text in (RUSSIAN, "Grüße aus Köln, café", "да"):
        parsed = parse(mail(text.encode(), f"text/plain; charset={label}"))
        assert (parsed.text, parsed.charset_detected) == (text, "utf-8"), (label, text)


@pytest.mark.parametrize("codec", ["cp1251", "koi8-r", "cp866", "mac-cyrillic", "cp1252"])
def test_single_byte_text_is_never_taken_for_utf8(codec: str) -> None:
    text = RUSSIAN if codec != "cp1252" else "Résumé of the naïve café owner’s façade, Grüße aus Köln"
    parsed = parse(mail(text.encode(codec), f"text/plain; charset={codec}"))
    assert (parsed.text, parsed.charset_detected) == (text, None)
