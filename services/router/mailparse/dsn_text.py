"""The line-level reading a bounce needs: header blocks, and the prose of bounces
that are not (or not only) RFC 3464 reports.

A bounce's text is an explanation followed, in Exim's, qmail's and many other
servers' bounces, by a copy of the reported mail. ``split`` finds where the copy
begins: a marker line (a line of dashes or equals signs around "copy of the
message", "original message", "исходного сообщения", ...) or, failing that, two
header lines in a row at the start of a line. What the explanation says is read
only from the part before it, so the reported mail's own From and To are never
taken for failed recipients.

Every function takes text already cut to a bounded length, looks at a bounded
number of lines of bounded length, and uses patterns without nested repetition,
so hostile text costs linear time.
"""

from __future__ import annotations

import re
import textwrap

from services.common.mailrules import cap_text
from services.router.mailparse.decoding import clean

__all__ = [
    "MAX_LINE_CHARS",
    "address",
    "explanation_recipients",
    "first_sentence",
    "groups",
    "header_fields",
    "one_line",
    "quoted_headers",
    "reply_text",
    "says_delayed",
    "split",
]

MAX_LINE_CHARS = 1_000  # longer lines are read up to here
MAX_LINES = 2_000  # lines of one block or of the explanation that are looked at
MAX_FIELDS = 200  # header fields of one block
MAX_GROUPS = 50  # field groups of a delivery-status part (one per recipient, and one for the message)
MAX_VALUE_CHARS = 2_000  # one field's unfolded value

_FIELD = re.compile(r"([!-9;-~]{1,76}):[ \t]*(.*)")  # a field name is printable ASCII without ":"
_QUOTE_PREFIX = re.compile(r"(?:>[ \t]?)+")
# An address as bounces write it: bounded parts, ASCII letters in the domain's last label.
_ADDRESS = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z][A-Za-z0-9-]{1,62}"
_ANY_ADDRESS = re.compile(rf"(?<![\w.@+-])({_ADDRESS})(?![\w@-])")
# Where a server names the address it failed for: "RCPT TO:<a@b>", a line starting
# "<a@b>" (Postfix, qmail, Yandex), or a line that is the address, maybe followed by
# "(a@b)" or " on <date>" (Exim, Exchange).
_RECIPIENT_LINES = (
    re.compile(rf"rcpt to:[ \t]*<({_ADDRESS})>", re.IGNORECASE),
    re.compile(rf"^[ \t]*<({_ADDRESS})>"),
    re.compile(rf"^[ \t]*({_ADDRESS})[ \t]*(?:$|\(|on[ \t])"),
)
_DAEMON_LOCAL_PARTS = frozenset({"mailer-daemon", "postmaster", "mail-daemon", "mailerdaemon", "noreply", "no-reply"})
# An SMTP reply code at the start of a server's answer: "550 5.1.1 ...", "554-...".
_REPLY_CODE = re.compile(r"(?<![\w.#:/\[-])[45]\d\d[ -](?=\S)")
_MARKER_DECORATION = re.compile(r"^[ \t]*(?:[-=_*]{2,}|[-=_*][ \t])")
_COPY_MARKERS = re.compile(
    r"copy of (?:the|your) message|original message|returned message|message headers|undelivered message"
    r"|message follows|исходного сообщения|исходное сообщение|копия сообщения|заголовки сообщения",
    re.IGNORECASE,
)
_HEADER_START = re.compile(
    r"(?:return-path|received|message-id|from|to|cc|subject|date|mime-version|dkim-signature|x-[a-z0-9-]{1,40})"
    r":[ \t]",
    re.IGNORECASE,
)
_FAILURE_WORDS = re.compile(
    r"deliver|could ?n[o']t|can ?n[o']t|cannot|does ?n[o']t exist|failed|failure|rejected|refused|unknown"
    r"|not found|unavailable|invalid|did not reach|доставл|не удалось|не существует|отклонен|ошибк|недоступ",
    re.IGNORECASE,
)
_DELAY_WORDS = re.compile(
    r"warning only|delayed|delay\b|will be retried|will retry|still being retried|still trying"
    r"|not yet been delivered|задерж|повторн",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=\S)")


def one_line(value: str, limit: int) -> str:
    """``value`` without control characters, its whitespace runs one space, cut to ``limit``."""
    return cap_text(" ".join(clean(value[: limit * 4]).split()), limit)


def _lines(text: str) -> list[str]:
    return [line.rstrip("\r")[:MAX_LINE_CHARS] for line in text.split("\n", MAX_LINES)[:MAX_LINES]]


def header_fields(text: str) -> dict[str, str]:
    """The fields of a header block, up to its first empty line: lower-case
    name -> the first such field's value, unfolded. Lines that are no field
    are skipped."""
    fields: dict[str, str] = {}
    current: str | None = None
    for line in _lines(text):
        if not line.strip():
            break
        if line[0] in " \t":
            if current is not None and len(fields[current]) < MAX_VALUE_CHARS:
                fields[current] = (fields[current] + " " + line.strip())[:MAX_VALUE_CHARS]
            continue
        match = _FIELD.match(line)
        current = None
        if match is None:
            continue
        name = match.group(1).lower()
        if name not in fields:
            if len(fields) >= MAX_FIELDS:
                break
            fields[name] = match.group(2).strip()[:MAX_VALUE_CHARS]
            current = name
    return fields


def groups(text: str) -> list[dict[str, str]]:
    """The field groups of a ``message/delivery-status`` body (RFC 3464): the
    per-message fields first, then one group per recipient."""
    found: list[dict[str, str]] = []
    block: list[str] = []
    for line in [*_lines(text), ""]:
        if line.strip():
            block.append(line)
            continue
        if block:
            fields = header_fields("\n".join(block))
            if fields:
                found.append(fields)
                if len(found) >= MAX_GROUPS:
                    break
            block = []
    return found


def address(value: str) -> str | None:
    """The address in a recipient field or list item (``rfc822; a@b``, ``<a@b>``), lower case; None if none."""
    value = re.sub(r"^[\w-]{1,20};", "", value.strip(), count=1).strip().strip("<>").strip()
    value = clean(value)
    if not value or len(value) > 320 or "@" not in value or any(ch.isspace() for ch in value):
        return None
    return value.lower()


def split(text: str) -> tuple[str, str]:
    """(the explanation, the quoted copy of the reported mail); the copy is "" when there is none."""
    lines = text.split("\n", MAX_LINES)[:MAX_LINES]
    offset = 0
    previous_header: int | None = None
    for line in lines:
        head = line[:MAX_LINE_CHARS]
        if _MARKER_DECORATION.match(head) and _COPY_MARKERS.search(head):
            return text[:offset], text[offset + len(line) + 1:]
        if _HEADER_START.match(head):
            if previous_header is not None:
                return text[:previous_header], text[previous_header:]
            previous_header = offset
        elif not (head[:1] in (" ", "\t") and previous_header is not None):
            previous_header = None
        offset += len(line) + 1
    return text, ""


def quoted_headers(quoted: str) -> dict[str, str]:
    """The header block holding the first ``Message-ID:`` line of a quoted mail
    (its lines may be indented or quoted with ``>``), as ``header_fields`` reads it."""
    lines = [_QUOTE_PREFIX.sub("", line, count=1) if line.lstrip().startswith(">") else line
             for line in _lines(quoted)]
    at = next((i for i, line in enumerate(lines) if line.lstrip()[:11].lower() == "message-id:"), None)
    if at is None:
        return {}
    start = at
    while start > 0 and lines[start - 1].strip() and at - start < MAX_FIELDS:
        start -= 1
    end = at + 1
    while end < len(lines) and lines[end].strip() and end - at < MAX_FIELDS:
        end += 1
    return header_fields(textwrap.dedent("\n".join(lines[start:end])))


def explanation_recipients(explanation: str, limit: int) -> list[str]:
    """The failed recipients the explanation names: where servers put them, else
    every address it mentions (never a mail daemon's own), in order, at most ``limit``."""
    lines = _lines(explanation)
    named = [m.group(1) for line in lines for pattern in _RECIPIENT_LINES for m in [pattern.search(line)] if m]
    if not named:
        named = [m.group(1) for line in lines for m in _ANY_ADDRESS.finditer(line)]
    found: list[str] = []
    for candidate in named:
        email = candidate.lower().rstrip(".")
        if email.split("@", 1)[0] not in _DAEMON_LOCAL_PARTS and email not in found:
            found.append(email)
            if len(found) >= limit:
                break
    return found


def reply_text(explanation: str) -> str | None:
    """The remote server's reply the explanation quotes: from the first SMTP reply
    code ("550 5.1.1 ...") to the end of its line and of the indented lines that
    continue it (at most three)."""
    lines = _lines(explanation)
    for index, line in enumerate(lines):
        match = _REPLY_CODE.search(line)
        if match is None:
            continue
        return " ".join([line[match.start():], *_continued(lines[index + 1:index + 4])])
    return None


def first_sentence(explanation: str, recipients: list[str]) -> str | None:
    """What the explanation says went wrong for the first recipient: the reason on
    its line ("<a@b>: reason", Postfix and Yandex) or in the paragraph below a line
    that is only the address (Exchange writes "a@b on <date>", then the reason),
    else the first sentence that names the recipient and a failure, else the first
    one with a word of failure in it."""
    lines = _lines(explanation)
    recipient = recipients[0] if recipients else None
    if recipient is not None:
        for index, line in enumerate(lines):
            if recipient not in line.lower():
                continue
            opening = _RECIPIENT_LINES[1].search(line)
            if opening is not None:
                reason = " ".join([line[opening.end():].lstrip(": \t"),
                                   *_continued(lines[index + 1:index + 4])]).strip()
            elif _RECIPIENT_LINES[2].search(line):
                reason = _SENTENCE_END.split(_paragraph(lines[index + 1:]), 1)[0]
            else:
                continue
            if _FAILURE_WORDS.search(reason) or _DELAY_WORDS.search(reason) or "timed out" in reason.lower():
                return reason
            break
    paragraphs = _paragraphs(lines)
    sentences = [sentence for paragraph in paragraphs for sentence in _SENTENCE_END.split(paragraph)[:20]]
    if recipient is not None:
        for sentence in sentences:
            if recipient in sentence.lower() and _FAILURE_WORDS.search(sentence):
                return sentence
    return next((sentence for sentence in sentences if _FAILURE_WORDS.search(sentence)), None)


def _continued(lines: list[str]) -> list[str]:
    """The indented lines that continue the line before them."""
    out: list[str] = []
    for line in lines:
        if not line.strip() or line[0] not in " \t":
            break
        out.append(line.strip())
    return out


def says_delayed(*texts: str) -> bool:
    """The wording of a delay warning ("THIS IS A WARNING ONLY", "will be retried", ...)."""
    return any(_DELAY_WORDS.search(text[:20_000]) for text in texts)


def _paragraph(lines: list[str]) -> str:
    out: list[str] = []
    for line in lines:
        if not line.strip():
            if out:
                break
            continue
        out.append(line.strip())
    return " ".join(out)


def _paragraphs(lines: list[str]) -> list[str]:
    found: list[str] = []
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            found.append(" ".join(current))
            current = []
    return found
