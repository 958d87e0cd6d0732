"""The compat32 message tree as the stdlib parser builds it, with broken header blocks repaired.

Both the fast path and the stdlib path build trees of :class:`Part` under
:data:`POLICY`, so the reader reads both alike.
"""

from __future__ import annotations

import email
import re
from email import errors
from email.message import Message
from email.policy import Compat32
from typing import Any


class Part(Message):
    """A compat32 message part whose header parameters never raise.

    The stdlib's RFC 2231 decoding raises TypeError when a header mixes
    ``name*=`` with ``name*0*=`` continuations (a boundary, a charset, a file
    name); such a parameter counts as missing and is noted as a defect.
    """

    def get_param(self, param: str, failobj: Any = None, header: str = "content-type", unquote: bool = True) -> Any:
        try:
            return super().get_param(param, failobj, header, unquote)
        except TypeError:
            self.defects.append(errors.InvalidHeaderDefect(f"unreadable {header} parameters"))
            return failobj


class _RawHeaders(Compat32):
    """compat32, handing header values back exactly as stored.

    Raw 8-bit bytes stay surrogate-escaped so that the reader decodes them with
    its own charset fallbacks, instead of compat32 wrapping them in Header objects.
    """

    message_factory = Part

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


class _VerbatimHeaders(_RawHeaders):
    """Writes headers back as they were parsed, for re-serialising attached mails."""

    def fold_binary(self, name: str, value: str) -> bytes:
        return f"{name}: {value}{self.linesep}".encode("utf-8", "surrogateescape")


POLICY = _RawHeaders()
GENERATOR_POLICY = _VerbatimHeaders(linesep="\r\n")

# Same test as email.feedparser's headerRE.
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_KNOWN_HEADER = re.compile(
    rb"(?:from|sender|reply-to|to|cc|subject|date|message-id|in-reply-to|references"
    rb"|mime-version|content-type|content-transfer-encoding)[ \t]*:",
    re.IGNORECASE,
)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


def tree(raw: bytes) -> tuple[Message, list[str]]:
    """The stdlib parser's message tree, with broken header blocks repaired, and notes on repairs."""
    message = email.message_from_bytes(raw, policy=POLICY)
    notes: list[str] = []
    if any(isinstance(d, errors.MissingHeaderBodySeparatorDefect) for d in message.defects):
        repaired = _repair_header_block(raw)
        if repaired is not None:
            message = email.message_from_bytes(repaired, policy=POLICY)
            notes.append("dropped malformed lines inside the header block")
    return message, notes


def _repair_header_block(raw: bytes) -> bytes | None:
    """The mail without the malformed lines of its header block, or None to keep it as parsed.

    The stdlib parser ends the headers at the first line that is not a header,
    so one broken line can hide From, Subject or Content-Type below it. When no
    well-known header follows the broken line, it is more likely the first line
    of a body that lacks the blank separator line, and the mail stays as parsed.
    """
    end = _HEADER_END.search(raw)
    head, rest = (raw[: end.start()], raw[end.start():]) if end else (raw, b"")
    kept: list[bytes] = []
    dropped = False
    rescued = False
    for line in head.splitlines(keepends=True):
        if _HEADER_LINE.match(line):
            kept.append(line)
            rescued = rescued or (dropped and _KNOWN_HEADER.match(line) is not None)
        else:
            dropped = True
    return b"".join(kept) + rest if rescued else None
