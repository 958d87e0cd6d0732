"""OutboundMail -> MIME: the sender's pure core (no I/O, no clock, no randomness),
shared with the queue settings page's test mail (``services.mailcheck``).

``compose`` turns one decoded OutboundMail record into an ``EmailMessage`` that is
ready to hand to SMTP: the signature's alias as the From display name, the
signature appended to the text (and HTML) body, the subject as the record carries
it (``mailrules.subject_for`` put the ticket key in), ``X-Deskmail-Ticket``, the
pre-assigned Message-ID, and In-Reply-To/References so the customer's mail
program threads the answer under their mail.

Every value a header is built from may come from an outsider (a customer's
name, the subject of their mail, the ids of their thread) or a form field, so
compose refuses (``ComposeError``) a line break or NUL in an address, a name,
the alias, the subject or the ticket key (``mailrules.check_header_text``), and
a Message-ID, In-Reply-To or References id that is not a msg-id
(``mailrules.is_msg_id``): the router keeps only such ids, so one here is a
record from elsewhere, and refusing it names the problem where dropping it
would hide it. References are cut to ``mailrules.MAX_REFERENCES`` ids (the
first and the last ones), the subject to ``mailrules.MAX_SUBJECT_CHARS``
characters. The subject is always re-encoded by compose's own folding, never
copied: whatever it held arrives as one logical header.

Headers are 7-bit: non-ASCII names and subjects become RFC 2047 encoded-words
(UTF-8), IDN domains become punycode. Only a recipient whose local part is not
ASCII needs SMTPUTF8; then the message is built with ``policy.SMTPUTF8`` and
``message.policy.utf8`` tells the SMTP side to ask for it. Bodies are UTF-8 with
the transfer encoding the stdlib picks for 7-bit transport (quoted-printable or
base64), so no 8BITMIME support is needed.
"""

from __future__ import annotations

import base64
import hashlib
import html as html_lib
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from email import policy as email_policy
from email.header import Header
from email.headerregistry import HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from typing import Any

from services.common.mailrules import (
    MAX_SUBJECT_CHARS,
    AddressError,
    HeaderTextError,
    ascii_domain,
    cap_text,
    check_header_text,
    is_msg_id,
    trim_references,
)

__all__ = [
    "ComposeError",
    "as_bytes",
    "compose",
    "envelope_address",
    "needs_smtputf8",
    "recipients",
]


class ComposeError(ValueError):
    """The record cannot become a mail (a malformed address, a missing attachment)."""


class _Encoded(UnstructuredHeader):
    """A header whose value compose has already encoded; written as is, only folded.

    The stdlib's own folding is not used for these: in Python 3.11 it drops the
    space at a fold between two encoded-words of an unstructured header ("октябрь
    не" arrives as "октябрьне"), splits display names into encoded-words that its
    own parser then reads back with a space inside a word, and turns an
    In-Reply-To longer than a line into an encoded-word no mail program reads as a
    Message-ID. Here a line is folded only at a space (FWS), never inside a
    token, and lines stay under 78 characters where the tokens allow it (RFC 5322
    allows 998).
    """

    @classmethod
    def parse(cls, value: str, kwds: dict[str, Any]) -> None:
        kwds["parse_tree"] = cls.value_parser(value)
        kwds["decoded"] = value  # keep the encoded text: it is what goes on the wire

    def fold(self, *, policy: Any) -> str:  # type: ignore[override]
        line = f"{self.name}:"  # type: ignore[attr-defined]
        lines: list[str] = []
        empty = True  # nothing but the header name (or the fold's space) on this line yet
        for token in str(self).split(" "):
            if len(line) + 1 + len(token) > 78 and not empty:
                lines.append(line)
                line = ""
            line += " " + token
            empty = False
        lines.append(line)
        return str(policy.linesep).join(lines) + str(policy.linesep)


_ENCODED_HEADERS = ("from", "to", "cc", "subject", "in-reply-to", "references")


class _Registry(HeaderRegistry):
    """The stdlib's registry builds a new header class with ``type()`` at every lookup,
    twice per header set (its kind, then its ``max_count``): a tenth of composing a
    mail. The class depends only on the name, so each is built once."""

    def __init__(self) -> None:
        super().__init__()
        self._classes: dict[str, type] = {}

    def map_to_type(self, name: str, cls: type) -> None:  # type: ignore[override]
        super().map_to_type(name, cls)
        self._classes.clear()

    def __getitem__(self, name: str) -> type:
        key = name.lower()
        cls = self._classes.get(key)
        if cls is None:
            cls = self._classes[key] = super().__getitem__(name)
        return cls


def _registry() -> HeaderRegistry:
    registry = _Registry()
    for name in _ENCODED_HEADERS:
        registry.map_to_type(name, _Encoded)  # type: ignore[arg-type]  # BaseHeader is mixed in by the registry
    return registry


# cte_type 7bit: set_content picks quoted-printable or base64 for UTF-8 text.
POLICY = email_policy.SMTP.clone(header_factory=_registry(), cte_type="7bit")
POLICY_UTF8 = email_policy.SMTPUTF8.clone(header_factory=_registry(), cte_type="7bit")

# A local part that needs no quotes (RFC 5322 dot-atom, plus UTF-8 under SMTPUTF8).
_LOCAL_ATOM = re.compile(r"[^\s\"(),.:;<>@\[\]\\]+(?:\.[^\s\"(),.:;<>@\[\]\\]+)*")


def envelope_address(email: str) -> str:
    """The address as SMTP wants it: domain in punycode, local part untouched.

    Raises ComposeError for something that is not one address on one line.
    """
    _one_line("the address", email)
    local, at, domain = email.strip().rpartition("@")
    if not at or not local or not domain:
        raise ComposeError(f"{email!r} is not an email address")
    try:
        return f"{local}@{ascii_domain(domain)}"
    except AddressError as exc:
        raise ComposeError(str(exc)) from None


def recipients(mail: Mapping[str, Any]) -> list[str]:
    """Envelope recipients: To then Cc, each once (case-insensitively), punycode domains."""
    seen: set[str] = set()
    out: list[str] = []
    for rcpt in [*mail["to"], *mail.get("cc", [])]:
        address = envelope_address(rcpt["email"])
        if address.lower() not in seen:
            seen.add(address.lower())
            out.append(address)
    return out


def compose(mail: Mapping[str, Any], *, attachments: Mapping[str, bytes] | None = None) -> EmailMessage:
    """Build the MIME message for one decoded OutboundMail record.

    ``attachments`` maps each ``blob_ref`` of ``mail["attachments"]`` to its bytes
    (the runner reads them from the blob store). Raises ``ComposeError`` for an
    address that cannot be written, header text that is not one line, an id that
    is not a msg-id, or an attachment that was not supplied.
    """
    _check_header_values(mail)
    smtputf8 = any(not _local_part(r["email"]).isascii() for r in [*mail["to"], *mail.get("cc", [])]) \
        or not _local_part(mail["from_address"]).isascii()
    message = EmailMessage(policy=POLICY_UTF8 if smtputf8 else POLICY)
    message["From"] = _address(mail["alias"], mail["from_address"])
    message["To"] = ", ".join(_address(r.get("name"), r["email"]) for r in mail["to"])
    if mail.get("cc"):
        message["Cc"] = ", ".join(_address(r.get("name"), r["email"]) for r in mail["cc"])
    message["Subject"] = _encode_text(cap_text(" ".join(mail["subject"].split()), MAX_SUBJECT_CHARS))
    message["Date"] = _datetime(mail["created_at"])
    message["Message-ID"] = f"<{mail['message_id']}>"
    if mail.get("in_reply_to"):
        message["In-Reply-To"] = f"<{_bare(mail['in_reply_to'])}>"
    references = trim_references([_bare(r) for r in mail.get("references") or [] if _bare(r)])
    if references:
        message["References"] = " ".join(f"<{r}>" for r in references)
    if mail.get("ticket"):
        message["X-Deskmail-Ticket"] = mail["ticket"]

    signature = mail.get("signature") or ""
    message.set_content(_text_body(mail["text"], signature), charset="utf-8")
    if mail.get("html"):
        message.add_alternative(_html_body(mail["html"], signature), subtype="html", charset="utf-8")
    blobs = attachments or {}
    for item in mail.get("attachments") or []:
        data = blobs.get(item["blob_ref"])
        if data is None:
            raise ComposeError(f"attachment {item['filename']!r} ({item['blob_ref']}) was not supplied")
        maintype, _, subtype = (item["content_type"] or "application/octet-stream").lower().partition("/")
        if not subtype or maintype in ("multipart", "message"):
            maintype, subtype = "application", "octet-stream"
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=item["filename"])
    _set_boundaries(message, mail["message_id"])
    return message


def _check_header_values(mail: Mapping[str, Any]) -> None:
    """ComposeError for a header value that is not one line or an id that is not a msg-id."""
    _one_line("the From address", mail["from_address"])
    _one_line("the alias", mail["alias"] or "")
    for field, people in (("To", mail["to"]), ("Cc", mail.get("cc") or [])):
        for person in people:
            _one_line(f"the {field} address", person["email"])
            _one_line(f"the {field} name", person.get("name") or "")
    _one_line("the subject", mail["subject"])
    _one_line("the ticket key", mail.get("ticket") or "")
    for item in mail.get("attachments") or []:
        _one_line("the attachment name", item["filename"])
        _one_line("the attachment type", item["content_type"] or "")
    ids = [("Message-ID", mail["message_id"])]
    if mail.get("in_reply_to"):
        ids.append(("In-Reply-To", _bare(mail["in_reply_to"])))
    ids += [("References", _bare(r)) for r in mail.get("references") or [] if _bare(r)]
    for header, value in ids:
        if not is_msg_id(value):
            shown = repr(value) if len(value) <= 80 else repr(value[:80]) + "…"
            raise ComposeError(f"{header} id {shown} is not a msg-id (1-980 printable ASCII characters)")


def _one_line(field: str, value: str) -> None:
    try:
        check_header_text(field, value)
    except HeaderTextError as exc:
        raise ComposeError(str(exc)) from None


def _set_boundaries(message: EmailMessage, seed: str) -> None:
    """Boundaries derived from the Message-ID instead of random ones, so one record
    always composes to the same bytes. ``=_`` cannot occur in base64 or
    quoted-printable text, and 24 hex digits make a clash with 7-bit text moot."""
    digest = hashlib.sha256(seed.encode("utf-8")).hexdigest()[:24]
    for index, part in enumerate(p for p in message.walk() if p.is_multipart()):
        part.set_boundary(f"=_deskmail_{digest}_{index}")


def _text_body(text: str, signature: str) -> str:
    body = _lines(text).rstrip("\n")
    if signature.strip():
        body += "\n\n" + _lines(signature).strip("\n")
    return body + "\n"


def _html_body(html: str, signature: str) -> str:
    if not signature.strip():
        return html
    lines = _lines(signature).strip("\n").split("\n")
    block = "<p>" + "<br>\n".join(html_lib.escape(line) for line in lines) + "</p>"
    closing = re.search(r"</body\s*>", html, re.IGNORECASE)
    if closing:
        return html[:closing.start()] + block + "\n" + html[closing.start():]
    return html.rstrip("\n") + "\n" + block + "\n"


def _lines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _address(name: str | None, email: str) -> str:
    """``"Name" <local@domain>``: an ASCII name quoted, any other one encoded.

    A non-ASCII name is one encoded-word, however long: split into several, the
    stdlib's parser reads it back with a space where the split was, and RFC
    2047 decoders in mail programs accept long encoded-words.
    """
    addr_spec = envelope_address(email)
    local = addr_spec.rpartition("@")[0]
    if not _LOCAL_ATOM.fullmatch(local):  # a local part that needs quoting
        addr_spec = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"@' + addr_spec.rpartition("@")[2]
    display = " ".join((name or "").split())
    if not display:
        return addr_spec
    if display.isascii():
        quoted = '"' + display.replace("\\", "\\\\").replace('"', '\\"') + '"'
    else:
        quoted = "=?utf-8?b?" + base64.b64encode(display.encode("utf-8")).decode("ascii") + "?="
    return f"{quoted} <{addr_spec}>"


def _encode_text(text: str) -> str:
    """An unstructured value (the subject) as RFC 2047: ASCII words before the first
    non-ASCII one stay readable ("Re: [SUPPORT-12]"), the rest becomes UTF-8
    encoded-words of at most 75 characters that carry their own spaces, split
    between characters (decoders join adjacent encoded-words without a space)."""
    if text.isascii() and "=?" not in text:
        return text
    words = text.split(" ")
    plain = 0
    while plain < len(words) and words[plain].isascii() and "=?" not in words[plain]:
        plain += 1
    # The first encoded-word is sized to fit the line after "Subject: " and the plain words.
    taken = len("Subject: ") + sum(len(word) + 1 for word in words[:plain])
    name = "x" * (taken - 2) if taken < 50 else None  # Header reserves len(name) + 2
    encoded = Header(" ".join(words[plain:]), "utf-8", maxlinelen=78, header_name=name).encode(linesep="\n")
    return " ".join([*words[:plain], *encoded.split("\n ")])


def _local_part(email: str) -> str:
    return email.strip().rpartition("@")[0]


def _bare(message_id: str) -> str:
    return message_id.strip().strip("<>").strip()


def _datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(int(value) / 1000, tz=timezone.utc)


def as_bytes(message: EmailMessage) -> bytes:
    """The message as SMTP DATA (CRLF line ends), in the message's own policy."""
    return message.as_bytes(policy=message.policy)


def needs_smtputf8(message: EmailMessage) -> bool:
    return bool(getattr(message.policy, "utf8", False))
