"""Reads a compat32 message tree (from the fast path or the stdlib) into a ParsedMail."""

from __future__ import annotations

import binascii
import hashlib
import io
import mimetypes
import re
from collections.abc import Iterator
from datetime import datetime, timezone
from email import errors
from email.generator import BytesGenerator
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from typing import cast

import tnefparse

from services.router import classify
from services.router.htmltext import html_to_text
from services.router.mailparse.decoding import (
    body_text,
    clean,
    decode_8bit,
    decode_detected,
    decode_words,
    header_param,
    part_filename,
    salvage_base64,
    to_addresses,
    unfold,
    unique,
)
from services.common.mailrules import MAX_SUMMARY_CHARS, cap_text
from services.router.mailparse import dsn, msgids
from services.router.mailparse.model import Address, Attachment, MalformedMail, ParsedMail
from services.router.mailparse.stdlib import GENERATOR_POLICY

# One "Name <address>", '"Name" <address>' or bare address, in the cases where
# getaddresses() would return exactly the same (checked against it by fuzzing).
_ATOM = r'[^<>\s"(),;:\[\]\\@]+'
_SIMPLE_ADDRESS = re.compile(
    rf'\s*(?:(?:"(?P<quoted>[^"\\]*)"|(?P<name>[^"<>,;:()\[\]\\@]*?))\s*<(?P<angled>{_ATOM}(?:@{_ATOM})?)>'
    rf"|(?P<bare>{_ATOM}@{_ATOM}))\s*"
)
_MIME_TYPES = mimetypes.MimeTypes()  # the built-in table only, so names do not depend on the host
# What the built-in table lacks and mail carries every day (files unpacked from winmail.dat).
for _type, _extension in (
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", ".docx"),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", ".xlsx"),
    ("application/vnd.openxmlformats-officedocument.presentationml.presentation", ".pptx"),
    ("application/vnd.ms-outlook", ".msg"),
    ("application/vnd.oasis.opendocument.text", ".odt"),
    ("application/vnd.oasis.opendocument.spreadsheet", ".ods"),
    ("image/webp", ".webp"),
    ("image/heic", ".heic"),
    ("application/x-7z-compressed", ".7z"),
    ("application/vnd.rar", ".rar"),
):
    _MIME_TYPES.add_type(_type, _extension, strict=False)
_EXTENSIONS = {
    "text/plain": ".txt",
    "text/rfc822-headers": ".txt",
    "message/delivery-status": ".txt",
    "message/disposition-notification": ".txt",
    "message/rfc822": ".eml",
    "message/global": ".eml",
    "text/calendar": ".ics",  # an invitation: kept as a file agents can open in their calendar
    "application/ics": ".ics",
}
_TRACE_FIELDS = frozenset({"authentication-results", "received"})
_BODY_TYPES = frozenset({"text/plain", "text/html"})
_MIME_TYPE = re.compile(r"[a-z0-9!#$&^_.+-]{1,127}/[a-z0-9!#$&^_.+-]{1,127}")
_TNEF_TYPES = frozenset({"application/ms-tnef", "application/vnd.ms-tnef"})
_FILENAME_UNSAFE = re.compile(r"[\x00-\x1f\x7f]")
_DAMAGED_BASE64 = (errors.InvalidBase64CharactersDefect, errors.InvalidBase64LengthDefect)
# Well-formed base64 as clients write it: the alphabet in lines, padding only at the end.
_BASE64_LINES = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/\r\n"
# The text is checked in slices, so the check holds at most this much more at once.
_BASE64_SLICE = 1024 * 1024


class Reader:
    """Reads one parsed message into a ParsedMail, collecting defect notes on the way."""

    def __init__(self, message: Message, defects: list[str]) -> None:
        self._message = message
        self._defects = defects
        self._charset_hint: str | None = None  # a body charset, to guess raw 8-bit headers
        self._charset_detected: str | None = None  # the first text part's, where its label was missing or wrong
        self._headers: dict[str, str] = {}
        self._from_header = False
        for name, value in message.items():
            self._headers.setdefault(name.lower(), value)

    def read(self) -> ParsedMail:
        if not self._headers:
            raise MalformedMail(
                "no header block: the message does not start with header lines (Name: value)"
            )
        text, html, attachments = self._body()
        from_addr = self._sender()
        subject = self._subject()
        ids = msgids.thread_ids(self._folded("message-id"), self._folded("in-reply-to"), self._folded("references"))
        self._defects.extend(ids.defects)
        auto_submitted = classify.is_auto_submitted(self._headers, subject)
        content_type = self._message.get_content_type()
        bounce = classify.is_bounce(
            self._headers,
            content_type=content_type,
            report_type=header_param(self._message, "report-type") if content_type == "multipart/report" else None,
            from_email=from_addr.email,
            subject=subject,
        )
        report = dsn.read(
            text, attachments, subject=subject, failed_recipients=self._header("x-failed-recipients"),
            replied_to=ids.in_reply_to or (ids.references[-1] if ids.references else None),
        ) if bounce else None
        return ParsedMail(
            from_addr=from_addr,
            reply_to=self._recipients("reply-to"),
            to=self._recipients("to"),
            cc=self._recipients("cc"),
            subject=subject,
            text=text,
            html=html,
            message_id=ids.message_id,
            in_reply_to=ids.in_reply_to,
            references=ids.references,
            date=self._date(),
            attachments=tuple(attachments),
            auto_submitted=auto_submitted,
            bounce=bounce,
            suppress_auto_reply=(
                auto_submitted or bounce or classify.suppresses_auto_reply(self._headers)
            ),
            defects=tuple(unique(self._defects)),
            from_header=self._from_header,
            trace=self._trace(),
            charset_detected=self._charset_detected,
            deskmail_ticket=" ".join(self._header("x-deskmail-ticket").split())[:100] or None,
            list_mail=classify.is_list_mail(self._headers),
            dsn=report,
            header_fields=tuple((name.lower(), str(value)) for name, value in self._message.items()),
            header_charset=self._charset_hint,
        )

    # -- headers --------------------------------------------------------

    def _header(self, name: str) -> str:
        """Unfolded header text with raw 8-bit bytes decoded; encoded-words left as they are."""
        value = self._headers.get(name)
        if value is None:
            return ""
        return decode_8bit(unfold(value), self._charset_hint)

    def _folded(self, name: str) -> str:
        """Header text with raw 8-bit bytes decoded, folds left in (msgids reads them)."""
        return decode_8bit(self._headers.get(name) or "", self._charset_hint)

    def _decoded(self, name: str) -> str:
        return clean(decode_words(self._header(name)))

    def _subject(self) -> str:
        """Decoded, one line (every line break a decoded encoded-word held is a space
        now), at most MAX_SUMMARY_CHARS: it becomes the ticket's summary."""
        subject = " ".join(self._decoded("subject").split())
        if len(subject) > MAX_SUMMARY_CHARS:
            self._defects.append(f"the subject has {len(subject)} characters; cut to {MAX_SUMMARY_CHARS}")
            subject = cap_text(subject, MAX_SUMMARY_CHARS)
        return subject

    def _addresses(self, name: str) -> list[Address]:
        values = self._message.get_all(name)
        if not values:
            return []
        texts = [decode_8bit(unfold(value), self._charset_hint) for value in values]
        simple = _SIMPLE_ADDRESS.fullmatch(texts[0]) if len(texts) == 1 else None
        if simple:  # one plain "Name <address>": what getaddresses() returns, much faster
            pairs = [(simple["quoted"] or simple["name"] or "", simple["angled"] or simple["bare"])]
        else:
            pairs = getaddresses(texts)
        found = to_addresses(pairs)
        if not any("@" in address.email for address in found) and "=?" in "".join(texts):
            # Some senders encode the whole "Name <address>" as one encoded-word.
            found = to_addresses(getaddresses([decode_words(text) for text in texts]))
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
                    self._from_header = name == "from"
                    return address
            if found and fallback is None:
                fallback = found[0]  # e.g. a bare "MAILER-DAEMON"
        if fallback is not None:
            self._defects.append("the sender address has no domain")
            return fallback
        raise MalformedMail(
            "no sender address: no From, Sender, Reply-To or Return-Path header holds an address"
        )

    def _trace(self) -> tuple[tuple[str, str], ...]:
        return tuple(
            (name.lower(), decode_8bit(unfold(str(value)), self._charset_hint))
            for name, value in self._message.items()
            if name.lower() in _TRACE_FIELDS
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
            filename = part_filename(part, self._charset_hint)
            for defect in part.defects:  # after reading the parameters, which may add one
                self._defects.append(type(defect).__name__)
            if _is_tnef(content_type, filename):
                attachments.extend(self._tnef(self._attachment(part, content_type, disposition, filename), plain))
            elif content_type in _BODY_TYPES and disposition != "attachment" and filename is None:
                text, detected = body_text(self._payload(part), charset, self._defects)
                if detected is not None and self._charset_detected is None:
                    self._charset_detected = detected
                    self._charset_hint = detected  # raw 8-bit headers are most likely in it too
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
        clean = _clean_base64(part) if cte is not None and cte.strip().strip('"').lower() == "base64" else None
        if clean is not None:
            return clean
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
            return salvage_base64(encoded if isinstance(encoded, bytes) else b"")
        if new:
            self._defects.append("base64 body lacks padding")
        return payload

    def _tnef(self, winmail: Attachment, plain: list[str]) -> list[Attachment]:
        """Outlook's winmail.dat (TNEF) unpacked into the files it carries; its
        text becomes the body when the mail has no text of its own. A TNEF
        part that cannot be read stays as it is, noted."""
        try:
            tnef = tnefparse.TNEF(winmail.payload, do_checksum=False)
            files = [(a.long_filename() or a.name or "attachment.bin", bytes(a.data)) for a in tnef.attachments if a.data]
            body = tnef.body or tnef.htmlbody
        except Exception as exc:  # noqa: BLE001 - a third-party parser on hostile bytes: any failure keeps the part
            self._defects.append(f"{winmail.filename} (TNEF) could not be unpacked ({type(exc).__name__}); kept as is")
            return [winmail]
        if isinstance(body, bytes):
            body = decode_detected(body, None)[0]
        if body and not any(chunk.strip() for chunk in plain):
            plain.append(html_to_text(body) if tnef.htmlbody and body == tnef.htmlbody else body)
        unpacked = []
        for name, data in files:
            name = _FILENAME_UNSAFE.sub("", name).replace("\\", "/").rsplit("/", 1)[-1].strip() or "attachment.bin"
            guessed = _MIME_TYPES.guess_type(name, strict=False)[0] or "application/octet-stream"
            unpacked.append(Attachment(filename=name, content_type=guessed, payload=data, size=len(data),
                                       sha256=hashlib.sha256(data).hexdigest(), content_id=None, inline=False))
        if not unpacked and not body:
            return [winmail]  # nothing inside that deskmail can show: keep the original
        return unpacked

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
            filename = ("invite" if extension == ".ics" else "attachment") + (extension or ".bin")
        content_id = msgids.content_id(part.get("content-id") or "")
        return Attachment(
            filename=filename,
            content_type=content_type,
            payload=payload,
            size=len(payload),
            sha256=hashlib.sha256(payload).hexdigest(),
            content_id=content_id,
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
        if not _MIME_TYPE.fullmatch(content_type):
            # Raw 8-bit bytes or junk in Content-Type (they would reach the
            # record as surrogates): the part is a file of unknown type.
            defects.append("a part's Content-Type is not a MIME type; kept as application/octet-stream")
            content_type = "application/octet-stream"
        if content_type.startswith("multipart/") and part.is_multipart():
            defects.extend(type(defect).__name__ for defect in part.defects)
            stack.extend(reversed(cast("list[Message]", part.get_payload())))
        else:
            yield part, content_type



def _is_tnef(content_type: str, filename: str | None) -> bool:
    return content_type in _TNEF_TYPES or (filename or "").lower() == "winmail.dat"


def _attached_mail_name(part: Message, hint: str | None) -> str:
    """``<subject>.eml`` for an attached mail, or ``message.eml``."""
    inner = part.get_payload(0)
    subject = inner.get("subject") if isinstance(inner, Message) else None
    if subject:
        title = " ".join(clean(decode_words(decode_8bit(unfold(subject), hint))).split())
        title = title.replace("/", "-").replace("\\", "-")[:100].strip()
        if title.strip("."):
            return title + ".eml"
    return "message.eml"


def _flatten_message(part: Message) -> bytes:
    """An attached mail (or a report's blocks) as bytes, re-serialised by the stdlib generator."""
    buffer = io.BytesIO()
    generator = BytesGenerator(buffer, mangle_from_=False, policy=GENERATOR_POLICY)
    for inner in cast("list[Message]", part.get_payload()):  # a message/* part holds messages
        generator.flatten(inner)
    data = buffer.getvalue()
    # Some senders encode message/rfc822 parts, which RFC 2046 forbids; the
    # parser then read the encoded text as the mail's body.
    cte = (part.get("content-transfer-encoding") or "").strip().lower()
    if cte == "base64":
        return salvage_base64(data)
    if cte == "quoted-printable":
        return binascii.a2b_qp(data)
    return data


def _clean_base64(part: Message) -> bytes | None:
    """A base64 part's bytes decoded straight from its text, or None to leave it to the stdlib.

    The stdlib's decoding copies the payload three times over (bytes, a list of
    lines, their join) before decoding: for a 12 MB attachment that is 40 MB more
    at once. Well-formed base64 (``_well_formed_base64``, whole quanta) decodes to
    the same bytes without them; anything else takes the stdlib's way and its defects.
    """
    payload = part.get_payload()
    if not isinstance(payload, str) or not payload.isascii() or not _well_formed_base64(payload):
        return None
    if (len(payload) - payload.count("\n") - payload.count("\r")) % 4:
        return None
    return binascii.a2b_base64(payload)


def _well_formed_base64(text: str) -> bool:
    """Only the alphabet in lines, then at most two ``=`` and line ends (ASCII ``text``).

    Deleting the alphabet with ``bytes.translate`` leaves the rest, and reads the text
    about five times faster than a regular expression would."""
    rest = b""
    for start in range(0, len(text), _BASE64_SLICE):
        rest += text[start:start + _BASE64_SLICE].encode("ascii").translate(None, _BASE64_LINES)
        if len(rest) > 2:
            return False
    return not rest or (rest in (b"=", b"==") and text.rstrip("\r\n").endswith(rest.decode("ascii")))
