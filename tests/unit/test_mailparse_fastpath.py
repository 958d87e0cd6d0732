"""The parser's fast path builds exactly the stdlib's message tree, or declines.

``mailparse.fastpath.tree`` splits common mail with str.find instead of the stdlib
feedparser. Each mail here is parsed both ways: where the fast path answers,
its tree and the ParsedMail read from it must equal the stdlib's; where it
declines, parse() still gives the stdlib's result.
"""

from __future__ import annotations

import email
import random
from typing import Any

import pytest

from services.router import mailparse
from services.router.mailparse import MalformedMail, fastpath, reader, stdlib
from tests.bench.parse import Corpus
from tests.harness import mails
from tests.unit import test_mailparse as examples


def crlf(text: bytes) -> bytes:
    return text.replace(b"\n", b"\r\n")


def tree(message: Any) -> Any:
    """Everything of a parsed Message that the parser or a reader could look at."""
    payload = message._payload  # get_payload() would decode 8-bit text
    return (
        message.items(),
        message.get_unixfrom(),
        message.get_default_type(),
        message.preamble,
        message.epilogue,
        [type(defect).__name__ for defect in message.defects],
        [tree(part) for part in payload] if isinstance(payload, list) else payload,
    )


def read(message: Any, notes: list[str]) -> Any:
    try:
        return reader.Reader(message, notes).read()
    except MalformedMail as exc:
        return f"MalformedMail: {exc}"


def assert_same(raw: bytes) -> bool:
    """Both paths agree on ``raw``; returns whether the fast path answered."""
    fast = fastpath.tree(raw)
    if fast is None:
        return False
    reference = email.message_from_bytes(raw, policy=stdlib.POLICY)
    assert tree(fast) == tree(reference)
    assert read(fast, []) == read(*stdlib.tree(raw))
    return True


NESTED = crlf(
    b"""From: Ann <ann@example.com>
To: support@deskmail.test
Subject: nested
MIME-Version: 1.0
Content-Type: multipart/mixed;
 boundary="outer"

preamble line one
preamble line two

--outer
Content-Type: multipart/alternative; boundary=inner

inner preamble
--inner
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: quoted-printable

Caf=C3=A9
-- 
signature
--inner \t
Content-Type: text/html; charset=utf-8

<p>Caf\xc3\xa9</p>

--inner--
inner epilogue

--outer
Content-Type: application/octet-stream; name="a.bin"
Content-Disposition: attachment; filename="a.bin"
Content-Transfer-Encoding: base64

AAECAwQFBgcICQ==
--outer
Content-Type: text/plain

--outerX is not a boundary line
--outer--
epilogue
"""
)

FIXED = {
    "nested": NESTED,
    "nested, LF line ends": NESTED.replace(b"\r\n", b"\n"),
    "closing boundary without a line break": crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--"
    ),
    "part without headers": crlf(b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n--b--\n"),
    "empty epilogue in a nested multipart": crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=o\n\n--o\n"
        b"Content-Type: multipart/alternative; boundary=i\n\n--i\n\nx\n--i--\n--o--\n"
    ),
    "inner multipart without its closing boundary": crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=o\n\n--o\n"
        b"Content-Type: multipart/alternative; boundary=i\n\n--i\n\nx\n--o--\n"
    ),
    "no closing boundary": crlf(b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nx\n"),
    "no start boundary": crlf(b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\nx\n--b--\n"),
    "closing boundary first": crlf(b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b--\n"),
    "repeated boundary lines": crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\n--b\n\nx\n--b--\n"
    ),
    "boundary that is a prefix of the inner one": crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\n"
        b"Content-Type: multipart/mixed; boundary=b--\n\n--b--\n\nx\n--b----\n--b--\n"
    ),
    "no boundary parameter": crlf(b"From: a@example.com\nContent-Type: multipart/mixed\n\nx\n"),
    "encoded multipart": crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\nContent-Transfer-Encoding: base64\n\n"
        b"--b\n\nx\n--b--\n"
    ),
    "digest": crlf(b"From: a@example.com\nContent-Type: multipart/digest; boundary=b\n\n--b\n\nSubject: x\n\ny\n--b--\n"),
    "part headers run into the boundary": crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n--b--\n"
    ),
    "bare CR line ends": b"From: a@example.com\rSubject: x\r\rbody\r",
    "mixed line ends": b"From: a@example.com\nSubject: x\r\n\r\nbody\rmore\n",
    "mbox envelope line": crlf(b"From a@example.com Tue Mar  3 09:00:00 2026\nFrom: a@example.com\n\nx\n"),
    "continuation line first": crlf(b" folded\nFrom: a@example.com\n\nx\n"),
    "header without a name": crlf(b"From: a@example.com\n: nameless\n\nx\n"),
    "headers only": crlf(b"From: a@example.com\nSubject: x\n"),
    "blank first line": crlf(b"\nFrom: a@example.com\n\nx\n"),
    "whitespace-only continuation": crlf(b"From: a@example.com\nSubject: x\n \n\t\nTo: b@example.com\n\nx\n"),
    "8-bit headers and body": crlf("From: Олег <o@example.ru>\nSubject: Привет\n\nтекст\n".encode("koi8-r")),
    "NUL bytes": crlf(b"From: a@example.com\nSubject: a\x00b\n\nline\x00one\n"),
    "attached mail": examples.DSN,
    "mixed RFC 2231 boundary continuations": crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary*0=b; boundary*=c\n\n--b\n\nx\n--b--\n"
    ),
    "mixed RFC 2231 file name continuations": crlf(
        b"From: a@example.com\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: application/pdf\n"
        b"Content-Disposition: attachment; filename*0*=utf-8''a; filename*=utf-8''b.pdf\n\nx\n--b--\n"
    ),
}


@pytest.mark.parametrize("raw", FIXED.values(), ids=FIXED.keys())
def test_edge_cases_agree_with_the_stdlib(raw: bytes) -> None:
    assert_same(raw)


def test_the_fast_path_takes_common_mail_and_declines_the_unusual() -> None:
    assert fastpath.tree(FIXED["nested"]) is not None
    assert fastpath.tree(FIXED["closing boundary without a line break"]) is not None
    for name in ("no closing boundary", "no start boundary", "repeated boundary lines", "digest",
                 "bare CR line ends", "mbox envelope line", "attached mail", "headers only"):
        assert fastpath.tree(FIXED[name]) is None, name


def test_mails_of_the_unit_tests_agree() -> None:
    samples = [value for name, value in vars(examples).items() if name.isupper() and isinstance(value, bytes)]
    assert len(samples) >= 6
    for raw in samples:
        assert_same(raw)
        assert_same(raw.replace(b"\r\n", b"\n"))


def test_harness_mails_agree_and_take_the_fast_path() -> None:
    rng = random.Random(3)
    samples = [mails.mixed(i, "c@customer.test", "support@deskmail.test")[0] for i in range(10)]
    samples += [mails.realistic(i, rng, "c@customer.test", "support@deskmail.test", reply_to="r@x")[0]
                for i in range(30)]
    samples.append(mails.reply("m@x", "c@customer.test", "support@deskmail.test", "Счёт", "ok")[0])
    for raw in samples:
        assert assert_same(raw)


def test_benchmark_corpus_agrees_and_takes_the_fast_path() -> None:
    corpus = Corpus(seed=11)
    for n in range(120):
        assert assert_same(corpus.message(n)[1])


# Bytes that change how the stdlib splits a mail, for the mutations below.
TOKENS = [b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"--", b"-- ", b":", b" ", b"\t", b"From ", b"=?utf-8?B?",
          b"\xff", b"\x00", b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n"]


def mutate(raw: bytes, rng: random.Random) -> bytes:
    """``raw`` with a few random edits, biased to line starts, boundaries and header syntax."""
    lines = raw.split(b"\n")
    boundaries = [line.rstrip(b"\r") for line in lines if line.startswith(b"--")]
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        edit = rng.randrange(8)
        if edit == 0 and len(lines) > 1:
            del lines[i]
        elif edit == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif edit == 2 and boundaries:
            lines.insert(i, rng.choice(boundaries) + rng.choice([b"", b"--", b" ", b"--\t", b"x"]) + b"\r")
        elif edit == 3:
            lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        elif edit == 4:
            cut = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:cut] + rng.choice(TOKENS) + lines[i][cut:]
        elif edit == 5:
            lines[i] = lines[i].rstrip(b"\r")
        elif edit == 6:
            lines[i] = rng.choice([b"", b" ", b"\t", b"-", b"From "]) + lines[i]
        else:
            lines = lines[: rng.randrange(1, len(lines) + 1)]
    return b"\n".join(lines)


def test_random_mutations_agree() -> None:
    rng = random.Random(5)
    corpus = Corpus(seed=17)
    seeds = [NESTED, examples.MIXED, examples.ALTERNATIVE, examples.OUTLOOK_REPLY, examples.PLAIN]
    seeds += [corpus.message(n)[1] for n in range(12)]
    seeds += [mails.realistic(i, rng, "c@customer.test", "s@deskmail.test")[0] for i in range(1, 7)]
    answered = 0
    for _ in range(600):
        answered += assert_same(mutate(rng.choice(seeds), rng))
    assert 100 < answered < 600  # both paths were exercised


def test_parse_falls_back_to_the_stdlib_when_the_fast_path_declines() -> None:
    raw = FIXED["no closing boundary"]
    assert fastpath.tree(raw) is None
    assert mailparse.parse(raw) == read(*stdlib.tree(raw))
    assert "CloseBoundaryNotFoundDefect" in mailparse.parse(raw).defects


def test_parameters_the_stdlib_cannot_decode_count_as_missing() -> None:
    # email.utils.decode_params raises TypeError on mixed "name*=" and "name*0*=".
    mail = mailparse.parse(FIXED["mixed RFC 2231 file name continuations"])
    assert [(a.filename, a.payload) for a in mail.attachments] == [("attachment.pdf", b"x")]
    assert mail.defects == ("InvalidHeaderDefect",)
    charset = crlf(b"From: a@example.com\nContent-Type: text/plain; charset*0=utf-8; charset*=x\n\ncaf\xc3\xa9\n")
    assert mailparse.parse(charset).text == "caf\u00e9"
    assert "NoBoundaryInMultipartDefect" in mailparse.parse(FIXED["mixed RFC 2231 boundary continuations"]).defects
