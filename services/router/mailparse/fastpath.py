"""The fast path: the stdlib's message tree, without reading bodies line by line.

email.feedparser reads every line of a mail through a Python generator, which
is most of the router's time on mail with attachments. The common mail (a
header block, multiparts with well-formed boundaries, no message/* parts) is
split here with str.find instead, into exactly the Message tree the stdlib
would build, so the reader reads both alike. Whatever the stdlib would treat in
a special way (a defect, an mbox "From " line, bare CR line ends, attached
mails, digests) makes the fast path decline, and the stdlib parses the mail.
"""

from __future__ import annotations

import re
from email.message import Message
from typing import NamedTuple

from services.router.mailparse.stdlib import POLICY, Part


_MAX_FAST_DEPTH = 8  # deeper multiparts are rare enough to leave to the stdlib
# A header line as email.feedparser's headerRE accepts it ("From " lines aside):
# a field name of printable characters, then the colon.
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+:")
_BARE_CR = re.compile(r"\r(?!\n)")
# What may follow "--" + boundary on a boundary line, as in email.feedparser.
_BOUNDARY_REST = re.compile(r"(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$")


class _Declined(Exception):
    """The fast path cannot promise the stdlib's exact tree for this mail."""


class _BoundaryLine(NamedTuple):
    start: int  # where the line starts in the text
    stop: int  # where the line after it starts
    closing: bool  # "--boundary--"


def tree(raw: bytes) -> Message | None:
    """The tree ``email.message_from_bytes(raw, policy=POLICY)`` builds, or None to leave it to the stdlib."""
    text = raw.decode("ascii", "surrogateescape")  # as email.parser.BytesParser does
    if _BARE_CR.search(text):
        return None  # the stdlib ends lines at a bare CR too
    try:
        return _fast_part(text, 0, len(text), 0)
    except _Declined:
        return None


def _fast_part(text: str, start: int, end: int, depth: int) -> Message:
    """The part in ``text[start:end]``, where ``end`` is the next boundary line of an enclosing multipart.

    The stdlib also ends a part at the boundary lines of multiparts further
    out; those never fall inside ``text[start:end]``, as each multipart's body
    already stops at the first of them. A part inside a multipart (depth > 0)
    loses the line break before that boundary line (RFC 2046 5.1.1).
    """
    if text.startswith("\n", start, end) or text.startswith("\r\n", start, end):
        head_end = start  # a part without headers
    else:
        found = [at for at in (text.find("\n\n", start, end), text.find("\n\r\n", start, end)) if at >= 0]
        if not found:
            raise _Declined  # no blank line after the headers
        head_end = min(found) + 1
    body = head_end + (1 if text[head_end] == "\n" else 2)
    message = Part(policy=POLICY)
    _fast_headers(message, text[start:head_end])
    maintype = message.get_content_maintype()
    if maintype == "message":
        raise _Declined  # attached mails and reports: the stdlib parses their bodies too
    if maintype != "multipart":
        payload = text[body:end]
        message.set_payload(_strip_eol(payload) if depth else payload)
        return message

    boundary = message.get_boundary()
    if boundary is None or depth >= _MAX_FAST_DEPTH or message.get_content_type() == "multipart/digest":
        raise _Declined
    if str(message.get("content-transfer-encoding", "8bit")).lower() not in ("7bit", "8bit", "binary"):
        raise _Declined  # the stdlib notes a defect
    separator = "--" + boundary
    line = _next_boundary(text, body, end, separator)
    if line is None or line.closing:
        raise _Declined  # no start boundary
    if line.start > body:
        message.preamble = _strip_eol(text[body:line.start])
    while True:
        part_start = line.stop
        line = _next_boundary(text, part_start, end, separator)
        part_end = end if line is None else line.start
        if part_end == part_start:
            raise _Declined  # two boundary lines in a row: the stdlib skips the second
        message.attach(_fast_part(text, part_start, part_end, depth + 1))
        if line is None:
            raise _Declined  # no closing boundary
        if line.closing:
            break
    epilogue = text[line.stop:end]
    if depth:
        message.epilogue = None if epilogue == "" else _strip_eol(epilogue)
    else:
        message.epilogue = epilogue
    return message


def _fast_headers(message: Message, block: str) -> None:
    """Store the header lines of ``block`` (each ending in a line break) as compat32 does."""
    name: str | None = None
    value: list[str] = []
    for line in block.split("\n")[:-1]:
        line += "\n"
        if line[0] in " \t":
            if name is None:
                raise _Declined  # a continuation line first
            value.append(line)
            continue
        if name is not None:
            message.set_raw(name, "".join(value).rstrip("\r\n"))
        field = _FIELD_NAME.match(line)  # never matches an mbox "From " line
        if field is None:
            raise _Declined  # not a header line
        name = line[: field.end() - 1]
        value = [line[field.end():].lstrip(" \t")]
    if name is not None:
        message.set_raw(name, "".join(value).rstrip("\r\n"))


def _next_boundary(text: str, pos: int, end: int, separator: str) -> _BoundaryLine | None:
    """The first boundary line in ``text[pos:end]``; ``pos`` starts a line."""
    if text.startswith(separator, pos, end):
        start = pos
    else:
        start = text.find("\n" + separator, pos, end) + 1
        if not start:
            return None
    while True:
        newline = text.find("\n", start, end)
        stop = end if newline < 0 else newline + 1
        rest = _BOUNDARY_REST.match(text[start:stop], len(separator))
        if rest is not None:
            return _BoundaryLine(start, stop, bool(rest["end"]))
        if newline < 0:
            return None
        start = text.find("\n" + separator, newline, end) + 1
        if not start:
            return None


def _strip_eol(text: str) -> str:
    """``text`` without one line break at its end."""
    if text.endswith("\r\n"):
        return text[:-2]
    return text[:-1] if text.endswith(("\n", "\r")) else text
