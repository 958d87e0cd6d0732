"""Raw RFC 5322 bytes to a ParsedMail: the router's parsing core, without I/O.

Everything the router reads from a mail goes through :func:`parse`, so a faster
parser can take over behind it. The message tree is the one the stdlib parser
builds with ``compat32`` (about 3.5 times faster here than ``policy.default``);
for common mail it is built by a fast path that finds boundaries with str.find
instead of reading bodies line by line, and anything unusual is left to the
stdlib itself. Headers are decoded by hand: raw 8-bit bytes, broken
encoded-words and unknown charsets are tolerated and noted in
``ParsedMail.defects``. Only a mail that cannot be used at all raises
:class:`MalformedMail`.
"""

from __future__ import annotations

import binascii
import codecs
import email
import hashlib
import io
import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import errors
from email.generator import BytesGenerator
from email.message import Message
from email.policy import Compat32
from email.utils import getaddresses, parsedate_to_datetime
from functools import lru_cache
from typing import Any, NamedTuple, cast

from services.router import classify
from services.router.htmltext import html_to_text

__all__ = ["Address", "Attachment", "MalformedMail", "ParsedMail", "parse"]


class MalformedMail(Exception):
    """The mail cannot be used at all; ``str(exc)`` is the reason for the dead-letter record."""


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox: ``email`` lower-cased for matching, ``name`` the decoded display name."""

    email: str
    name: str | None = None

    @property
    def display(self) -> str:
        """``Name <email>``, or the bare address, for people to read."""
        return f"{self.name} <{self.email}>" if self.name else self.email


@dataclass(frozen=True, slots=True)
class Attachment:
    """A part that is not the body: files, inline images, attached mails."""

    filename: str  # decoded, without directory parts; made up when the mail names none
    content_type: str  # lower case, e.g. "application/pdf"
    payload: bytes = field(repr=False)  # transfer encoding removed
    size: int  # len(payload)
    sha256: str  # hex digest of payload
    content_id: str | None  # without angle brackets; how HTML refers to an inline image
    inline: bool  # meant to be shown within the body (inline disposition, or a Content-ID)


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """What the router needs from one mail. Strings are decoded text, NUL-free."""

    from_addr: Address  # From, else Sender, Reply-To or Return-Path (noted in defects)
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    subject: str  # decoded, whitespace runs collapsed; "" when missing
    text: str  # plain-text body, "\n" line ends; HTML converted when there is no text part
    html: str | None  # the HTML body as sent, if any
    message_id: str | None  # without angle brackets
    in_reply_to: str | None  # first id of In-Reply-To
    references: tuple[str, ...]  # in order, without duplicates
    date: datetime | None  # timezone-aware; None when missing or unparseable
    attachments: tuple[Attachment, ...]
    auto_submitted: bool  # written by a machine (classify.is_auto_submitted)
    bounce: bool  # a delivery status notification (classify.is_bounce)
    suppress_auto_reply: bool  # must not be answered automatically
    defects: tuple[str, ...]  # what was wrong with the mail and was worked around


class _Part(Message):
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

    Raw 8-bit bytes stay surrogate-escaped so that this module decodes them with
    its own charset fallbacks, instead of compat32 wrapping them in Header objects.
    """

    message_factory = _Part

    def header_fetch_parse(self, name: str, value: str) -> str:
        return value


class _VerbatimHeaders(_RawHeaders):
    """Writes headers back as they were parsed, for re-serialising attached mails."""

    def fold_binary(self, name: str, value: str) -> bytes:
        return f"{name}: {value}{self.linesep}".encode("utf-8", "surrogateescape")


_POLICY = _RawHeaders()
_GENERATOR_POLICY = _VerbatimHeaders(linesep="\r\n")

# Charset labels Python does not know, and labels whose senders really use a
# superset (the same choices the WHATWG Encoding Standard makes for browsers).
_CHARSET_LABELS = {
    "unknown-8bit": "",
    "x-unknown": "",
    "x-user-defined": "",
    "iso-8859-8-i": "iso8859-8",
    "windows-874": "cp874",
    "x-mac-cyrillic": "mac-cyrillic",
}
_CODEC_SUPERSETS = {
    "iso8859-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "big5": "big5hkscs",
}
_FOLD = re.compile(r"\r?\n(?=[ \t])|\r?\n$")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?]*)\?=")
# One "Name <address>", '"Name" <address>' or bare address, in the cases where
# getaddresses() would return exactly the same (checked against it by fuzzing).
_ATOM = r'[^<>\s"(),;:\[\]\\@]+'
_SIMPLE_ADDRESS = re.compile(
    rf'\s*(?:(?:"(?P<quoted>[^"\\]*)"|(?P<name>[^"<>,;:()\[\]\\@]*?))\s*<(?P<angled>{_ATOM}(?:@{_ATOM})?)>'
    rf"|(?P<bare>{_ATOM}@{_ATOM}))\s*"
)
_MSG_ID = re.compile(r"<([^<>]*)>")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_FILENAME_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_MIME_TYPES = mimetypes.MimeTypes()  # the built-in table only, so names do not depend on the host
_EXTENSIONS = {
    "text/plain": ".txt",
    "text/rfc822-headers": ".txt",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "message/rfc822": ".eml",
    "message/global": ".eml",
}
# Same test as email.feedparser's headerRE.
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[\t ]")
_KNOWN_HEADER = re.compile(
    rb"(?:from|sender|reply-to|to|cc|subject|date|message-id|in-reply-to|references"
    rb"|mime-version|content-type|content-transfer-encoding)[ \t]*:",
    re.IGNORECASE,
)
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BODY_TYPES = frozenset({"text/plain", "text/html"})
_DAMAGED_BASE64 = (errors.InvalidBase64CharactersDefect, errors.InvalidBase64LengthDefect)


def parse(raw: bytes) -> ParsedMail:
    """Parse one raw mail.

    Raises MalformedMail, with a reason for people, when the mail is unusable:
    no bytes, no header block, no sender address anywhere, or a MIME structure
    too deep to parse. Damage short of that is repaired and listed in
    ``ParsedMail.defects``.
    """
    if not raw or raw.isspace():
        raise MalformedMail("empty message: there are no bytes to parse")
    try:
        message = _fast_tree(raw)
        notes: list[str] = []
        if message is None:
            message, notes = _stdlib_tree(raw)
        return _Reader(message, notes).read()
    except RecursionError:
        raise MalformedMail("MIME structure is nested too deeply to parse") from None


def _stdlib_tree(raw: bytes) -> tuple[Message, list[str]]:
    """The stdlib parser's message tree, with broken header blocks repaired, and notes on repairs."""
    message = email.message_from_bytes(raw, policy=_POLICY)
    notes: list[str] = []
    if any(isinstance(d, errors.MissingHeaderBodySeparatorDefect) for d in message.defects):
        repaired = _repair_header_block(raw)
        if repaired is not None:
            message = email.message_from_bytes(repaired, policy=_POLICY)
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


class _Reader:
    """Reads one parsed message into a ParsedMail, collecting defect notes on the way."""

    def __init__(self, message: Message, defects: list[str]) -> None:
        self._message = message
        self._defects = defects
        self._charset_hint: str | None = None  # a body charset, to guess raw 8-bit headers
        self._headers: dict[str, str] = {}
        for name, value in message.items():
            self._headers.setdefault(name.lower(), value)

    def read(self) -> ParsedMail:
        if not self._headers:
            raise MalformedMail(
                "no header block: the message does not start with header lines (Name: value)"
            )
        text, html, attachments = self._body()
        from_addr = self._sender()
        subject = " ".join(self._decoded("subject").split())
        references = _unique(_message_ids(self._header("references")))
        in_reply_to = _message_ids(self._header("in-reply-to"))
        message_id = _message_ids(self._header("message-id"))
        auto_submitted = classify.is_auto_submitted(self._headers, subject)
        content_type = self._message.get_content_type()
        bounce = classify.is_bounce(
            self._headers,
            content_type=content_type,
            report_type=_param(self._message, "report-type") if content_type == "multipart/report" else None,
            from_email=from_addr.email,
            subject=subject,
        )
        return ParsedMail(
            from_addr=from_addr,
            reply_to=self._recipients("reply-to"),
            to=self._recipients("to"),
            cc=self._recipients("cc"),
            subject=subject,
            text=text,
            html=html,
            message_id=message_id[0] if message_id else None,
            in_reply_to=in_reply_to[0] if in_reply_to else None,
            references=tuple(references),
            date=self._date(),
            attachments=tuple(attachments),
            auto_submitted=auto_submitted,
            bounce=bounce,
            suppress_auto_reply=(
                auto_submitted or bounce or classify.suppresses_auto_reply(self._headers)
            ),
            defects=tuple(_unique(self._defects)),
        )

    # -- headers --------------------------------------------------------

    def _header(self, name: str) -> str:
        """Unfolded header text with raw 8-bit bytes decoded; encoded-words left as they are."""
        value = self._headers.get(name)
        if value is None:
            return ""
        return _decode_8bit(_unfold(value), self._charset_hint)

    def _decoded(self, name: str) -> str:
        return _clean(_decode_words(self._header(name)))

    def _addresses(self, name: str) -> list[Address]:
        values = self._message.get_all(name)
        if not values:
            return []
        texts = [_decode_8bit(_unfold(value), self._charset_hint) for value in values]
        simple = _SIMPLE_ADDRESS.fullmatch(texts[0]) if len(texts) == 1 else None
        if simple:  # one plain "Name <address>": what getaddresses() returns, much faster
            pairs = [(simple["quoted"] or simple["name"] or "", simple["angled"] or simple["bare"])]
        else:
            pairs = getaddresses(texts)
        found = _to_addresses(pairs)
        if not any("@" in address.email for address in found) and "=?" in "".join(texts):
            # Some senders encode the whole "Name <address>" as one encoded-word.
            found = _to_addresses(getaddresses([_decode_words(text) for text in texts]))
        return found

    def _recipients(self, name: str) -> tuple[Address, ...]:
        return tuple(address for address in self._addresses(name) if "@" in address.email)

    def _sender(self) -> Address:
        fallback: Address | None = None
        for name in ("from", "sender", "reply-to", "return-path"):
            found = self._addresses(name)
            for address in found:
                if "@" in address.email:
                    if name != "from":
                        self._defects.append(f"no usable From address; took the {name} header")
                    return address
            if found and fallback is None:
                fallback = found[0]  # e.g. a bare "MAILER-DAEMON"
        if fallback is not None:
            self._defects.append("the sender address has no domain")
            return fallback
        raise MalformedMail(
            "no sender address: no From, Sender, Reply-To or Return-Path header holds an address"
        )

    def _date(self) -> datetime | None:
        value = self._header("date").strip()
        if not value:
            return None
        try:
            date = parsedate_to_datetime(value)
        except (ValueError, TypeError, OverflowError, IndexError):
            self._defects.append(f"unparseable Date header: {value[:80]!r}")
            return None
        if date.tzinfo is None:  # "-0000": UTC, with no claim about local time
            date = date.replace(tzinfo=timezone.utc)
        return date

    # -- body -----------------------------------------------------------

    def _body(self) -> tuple[str, str | None, list[Attachment]]:
        plain: list[str] = []
        html: list[str] = []
        attachments: list[Attachment] = []
        for part, content_type in _leaves(self._message, self._defects):
            if content_type.startswith("multipart/"):
                # A multipart without a usable boundary: its body is all we have.
                content_type = "text/plain"
            charset = part.get_content_charset() if content_type.startswith("text/") else None
            if self._charset_hint is None and charset:
                self._charset_hint = charset
            disposition = part.get_content_disposition()
            filename = _filename(part, self._charset_hint)
            for defect in part.defects:  # after reading the parameters, which may add one
                self._defects.append(type(defect).__name__)
            if content_type in _BODY_TYPES and disposition != "attachment" and filename is None:
                text = _body_text(self._payload(part), charset, self._defects)
                (plain if content_type == "text/plain" else html).append(text)
            else:
                attachments.append(self._attachment(part, content_type, disposition, filename))
        text = "\n\n".join(chunk.lstrip("\n").rstrip() for chunk in plain if chunk.strip())
        html_body = "\n".join(html) if html else None
        if not text and html_body:
            text = html_to_text(html_body)
        return text, html_body, attachments

    def _payload(self, part: Message) -> bytes:
        """The part's bytes with the transfer encoding removed, salvaging broken base64."""
        cte = part.get("content-transfer-encoding")
        if cte is not None:
            # get_payload() compares the raw value, so "Base64 " would be left encoded.
            normalized = cte.strip().strip('"').lower()
            if normalized != cte:
                part.replace_header("content-transfer-encoding", normalized)
        known = len(part.defects)
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            return b""
        new = part.defects[known:]
        if any(isinstance(defect, _DAMAGED_BASE64) for defect in new):
            # The stdlib either gave up (returning the encoded text) or skipped
            # junk such as a list footer and decoded it into garbage bytes.
            self._defects.append("damaged base64 body; decoded what was readable")
            # Marked as 8bit, the part hands back its encoded bytes with their line
            # structure (get_payload() without decode can raise on 8-bit bytes).
            part.replace_header("content-transfer-encoding", "8bit")
            encoded = part.get_payload(decode=True)
            return _salvage_base64(encoded if isinstance(encoded, bytes) else b"")
        if new:
            self._defects.append("base64 body lacks padding")
        return payload

    def _attachment(
        self, part: Message, content_type: str, disposition: str | None, filename: str | None
    ) -> Attachment:
        if content_type.startswith("message/") and part.is_multipart():
            try:
                payload = _flatten_message(part)
            except (UnicodeError, LookupError, errors.MessageError):
                # The stdlib generator trips over some 8-bit bytes in broken
                # multiparts; the original stays in the inbound record.
                self._defects.append("an attached mail could not be re-serialised; its bytes are left out")
                payload = b""
            if filename is None and content_type in ("message/rfc822", "message/global"):
                filename = _attached_mail_name(part, self._charset_hint)
        else:
            payload = self._payload(part)
        if filename is None:
            extension = _EXTENSIONS.get(content_type) or _MIME_TYPES.guess_extension(
                content_type, strict=False
            )
            filename = "attachment" + (extension or ".bin")
        content_id = _message_ids(_unfold(part.get("content-id") or ""))
        return Attachment(
            filename=filename,
            content_type=content_type,
            payload=payload,
            size=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
            content_id=content_id[0] if content_id else None,
            inline=disposition == "inline" or (disposition is None and bool(content_id)),
        )


def _leaves(message: Message, defects: list[str]) -> Iterator[tuple[Message, str]]:
    """(part, content type) of the parts that are not containers, in document order.

    message/* parts count as leaves. Defects the stdlib found on containers go to ``defects``.
    """
    stack = [message]
    while stack:
        part = stack.pop()
        content_type = part.get_content_type()
        if content_type.startswith("multipart/") and part.is_multipart():
            defects.extend(type(defect).__name__ for defect in part.defects)
            stack.extend(reversed(cast("list[Message]", part.get_payload())))
        else:
            yield part, content_type


# -- the fast path: the stdlib's message tree, without reading bodies line by line --
#
# email.feedparser reads every line of a mail through a Python generator, which
# is most of the router's time on mail with attachments. The common mail (a
# header block, multiparts with well-formed boundaries, no message/* parts) is
# split here with str.find instead, into exactly the Message tree the stdlib
# would build, so _Reader reads both alike. Whatever the stdlib would treat in
# a special way (a defect, an mbox "From " line, bare CR line ends, attached
# mails, digests) makes the fast path decline, and the stdlib parses the mail.

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


def _fast_tree(raw: bytes) -> Message | None:
    """The tree ``email.message_from_bytes(raw, policy=_POLICY)`` builds, or None to leave it to the stdlib."""
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
    message = _Part(policy=_POLICY)
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


# -- decoding helpers ----------------------------------------------------------


@lru_cache(maxsize=512)
def _codec(charset: str | None) -> str | None:
    """Python codec name for a MIME charset label; None when there is none or it is unknown."""
    if not charset:
        return None
    label = charset.strip().strip("\"'").lower()
    label = _CHARSET_LABELS.get(label, label)
    if not label:
        return None
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError):
        return None
    return _CODEC_SUPERSETS.get(name, name)


def _decode(data: bytes, *charsets: str | None) -> tuple[str, str]:
    """Decode with the first charset that fits, else cp1252 with replacement characters.

    A multi-byte character cut off at the very end (a truncated mail, an
    encoded-word split badly) is dropped rather than failing the charset, when
    the rest shows that the text really is multi-byte (a lone high byte after
    ASCII is more likely a single-byte charset). Returns the text and the codec
    used. Never raises.
    """
    for charset in charsets:
        codec = _codec(charset)
        if codec is None:
            continue
        try:
            return data.decode(codec), codec
        except UnicodeError:
            pass
        except LookupError:  # a bytes-to-bytes codec such as "hex"
            continue
        try:
            text = codecs.getincrementaldecoder(codec)().decode(data, final=False)
        except UnicodeError:
            continue
        if not text.isascii():
            return text, codec
    return data.decode("cp1252", "replace"), "cp1252"


def _body_text(data: bytes, charset: str | None, defects: list[str]) -> str:
    text, codec = _decode(data, charset, "utf-8")
    if charset and codec != _codec(charset):
        if _codec(charset) is None:
            defects.append(f"unknown charset {charset!r}; decoded as {codec}")
        else:
            defects.append(f"text is not valid {charset}; decoded as {codec}")
    elif not charset and codec != "utf-8":
        defects.append(f"8-bit text without a charset; decoded as {codec}")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\x00" in text:
        text = text.replace("\x00", "")
    return text


def _unfold(value: str) -> str:
    return _FOLD.sub("", value) if "\n" in value else value


def _decode_8bit(value: str, hint: str | None) -> str:
    """Decode raw 8-bit header bytes (surrogate-escaped by the parser): UTF-8, else ``hint``."""
    if value.isascii():
        return value
    try:
        raw = value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return value  # already text, e.g. a decoded RFC 2231 parameter
    return _decode(raw, "utf-8", hint)[0]


def _decode_words(value: str) -> str:
    """Decode RFC 2047 encoded-words, also where senders misplace them (inside quotes, mid-word).

    Adjacent words in one charset are joined before decoding, since senders split
    multi-byte characters across words. Unknown charsets fall back like bodies do.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    pending = bytearray()
    pending_charset = ""
    position = 0
    for match in _ENCODED_WORD.finditer(value):
        gap = value[position:match.start()]
        # Whitespace between two encoded-words is not part of the text (RFC 2047 6.2).
        if gap and not (position and gap.isspace()):
            _flush(out, pending, pending_charset)
            out.append(gap)
        charset = match.group(1).split("*", 1)[0]
        if charset.lower() != pending_charset.lower():
            _flush(out, pending, pending_charset)
            pending_charset = charset
        if match.group(2) in "bB":
            pending += _lenient_base64(match.group(3).encode("ascii", "ignore"))
        else:
            pending += binascii.a2b_qp(match.group(3).encode("utf-8", "surrogateescape"), header=True)
        position = match.end()
    _flush(out, pending, pending_charset)
    out.append(value[position:])
    return "".join(out)


def _flush(out: list[str], pending: bytearray, charset: str) -> None:
    if pending:
        out.append(_decode(bytes(pending), charset, "utf-8")[0])
        pending.clear()


def _clean(text: str) -> str:
    """Drop control characters (NUL breaks PostgreSQL text columns)."""
    return _CONTROL.sub("", text)


def _lenient_base64(data: bytes) -> bytes:
    """Decode base64 whatever the junk or padding; an incomplete last quantum is fixed."""
    data = _BASE64_JUNK.sub(b"", data)
    remainder = len(data) % 4
    if remainder == 1:
        data = data[:-1]
    elif remainder:
        data += b"=" * (4 - remainder)
    return binascii.a2b_base64(data)


def _salvage_base64(data: bytes) -> bytes:
    """Decode the leading run of base64 lines; a footer or garbage may follow them.

    A line with a space or more than two stray characters ends the run. When
    even the first line is like that, all base64 characters in the data are used.
    """
    lines: list[bytes] = []
    for line in data.splitlines():
        line = line.strip()
        if not line:
            if lines:
                break
            continue
        if b" " in line or b"\t" in line or len(_BASE64_JUNK.findall(line.rstrip(b"="))) > 2:
            break
        lines.append(line)
    return _lenient_base64(b"".join(lines) if lines else data)


def _message_ids(value: str) -> list[str]:
    """Message-IDs in a header, without angle brackets (bare ``id@host`` tokens too)."""
    ids = ["".join(_clean(found).split()) for found in _MSG_ID.findall(value)]
    ids = [found for found in ids if found]
    if ids:
        return ids
    return [_clean(token).strip("<>,;") for token in value.split() if "@" in token]


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _to_addresses(pairs: list[tuple[str, str]]) -> list[Address]:
    found: list[Address] = []
    seen: set[str] = set()
    for name, address in pairs:
        address = _clean(address).strip().lower()
        if not address or address in seen:
            continue
        seen.add(address)
        display = " ".join(_clean(_decode_words(name)).split()).strip("\"' ") or None
        if display is not None and display.lower() == address:
            display = None
        found.append(Address(address, display))
    return found


def _param(part: Message, name: str, header: str = "content-type", hint: str | None = None) -> str | None:
    """A decoded header parameter (RFC 2231, RFC 2047 or raw 8-bit), or None.

    Does its own RFC 2231 charset decoding: the stdlib's raises on raw 8-bit bytes.
    """
    value = part.get_param(name, header=header)
    if isinstance(value, tuple):
        charset, _language, text = value
        try:
            raw = text.encode("latin-1", "surrogateescape")  # %XX escapes were decoded as latin-1
        except UnicodeEncodeError:
            return text
        return _decode(raw, charset, "utf-8")[0]
    if isinstance(value, str):
        return _decode_words(_decode_8bit(_unfold(value), hint))
    return None


def _filename(part: Message, hint: str | None) -> str | None:
    """The decoded file name, without directories, from Content-Disposition or Content-Type."""
    headers = (part.get("content-disposition") or "") + (part.get("content-type") or "")
    if "name" not in headers.lower():
        return None  # the common case, without parsing parameters
    name = _param(part, "filename", "content-disposition", hint)
    if name is None:
        name = _param(part, "name", "content-type", hint)
    if name is None:
        return None
    name = _FILENAME_UNSAFE.sub("", name).replace("\\", "/").rsplit("/", 1)[-1].strip()
    return None if name in ("", ".", "..") else name


def _attached_mail_name(part: Message, hint: str | None) -> str:
    """``<subject>.eml`` for an attached mail, or ``message.eml``."""
    inner = part.get_payload(0)
    subject = inner.get("subject") if isinstance(inner, Message) else None
    if subject:
        title = " ".join(_clean(_decode_words(_decode_8bit(_unfold(subject), hint))).split())
        title = title.replace("/", "-").replace("\\", "-")[:100].strip()
        if title.strip("."):
            return title + ".eml"
    return "message.eml"


def _flatten_message(part: Message) -> bytes:
    """An attached mail (or a report's blocks) as bytes, re-serialised by the stdlib generator."""
    buffer = io.BytesIO()
    generator = BytesGenerator(buffer, mangle_from_=False, policy=_GENERATOR_POLICY)
    for inner in cast("list[Message]", part.get_payload()):  # a message/* part holds messages
        generator.flatten(inner)
    data = buffer.getvalue()
    # Some senders encode message/rfc822 parts, which RFC 2046 forbids; the
    # parser then read the encoded text as the mail's body.
    cte = (part.get("content-transfer-encoding") or "").strip().lower()
    if cte == "base64":
        return _salvage_base64(data)
    if cte == "quoted-printable":
        return binascii.a2b_qp(data)
    return data
