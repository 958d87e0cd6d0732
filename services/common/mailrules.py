"""Rules about mail that more than one service applies, each defined once.

- **Ticket keys.** A queue key is 1-32 characters: an upper-case ASCII letter,
  then upper-case ASCII letters, digits or ``_`` (``SUPPORT``, ``IT_OPS``). A
  ticket key is ``<QUEUE>-<N>``, N a number of 1-18 digits (``SUPPORT-12``).
  deskmail writes it into a subject as ``[SUPPORT-12]``; it finds it in a subject
  bracketed (``[SUPPORT-12]``, ``[ support-012 ]``) or bare (``SUPPORT-12``, not
  inside a longer word or hyphenated chain: ``XSUPPORT-12``, ``SUPPORT-12x``,
  ``IT-SUPPORT-12`` hold no key), case-insensitively, with the number's leading
  zeros dropped. A bracketed key of a known queue wins over a bare one.

  There used to be three rules: the config's (the one above), the router's
  (brackets around anything, bare keys of any Unicode letters and hyphens) and
  the sender's (ASCII letters, digits and ``_`` of any length in brackets). The
  config's is the one chosen: only configured queues' keys are ever looked for,
  and they cannot hold a hyphen or a non-ASCII letter, so what the router's rule
  accepted beyond it could never name a ticket. Letters are matched as ASCII
  only: ``ſupport-3`` (a long s, which Unicode case folding turns into ``S``) is
  not ``SUPPORT-3``. Digits are any decimal digits, as before (``SUPPORT-１２``
  from a full-width keyboard is ``SUPPORT-12``).

- **Reply subjects.** Leading reply/forward prefixes (``Re:``, ``RE[2]:``, ``AW:``,
  ``Fwd:``, ``Ответ:``, ...) and ``subject_for``, the subject of deskmail's
  own mail: ``Re: [SUPPORT-12] original``.
- **Message-IDs.** ``new_message_id`` for outgoing mail (with a token only the
  holder of ``organization.message_id_key`` can write, checked by
  ``verify_message_id``), ``synthetic_message_id`` for incoming mail that has none.
- **Recipients.** ``blocked_recipients``: whom a queue may not mail.
- **Signatures.** ``signature_for``: a mailbox's signature by alias, default its
  first.
- **Header text and msg-ids.** ``check_header_text``: a value bound for one
  header line (an address, a display name, an alias, a subject) holds no line
  break, as ``str.splitlines`` knows them (CR, LF, VT, FF, FS, GS, RS, NEL,
  U+2028, U+2029), and no NUL; anything else is refused with
  ``HeaderTextError``, never repaired. ``is_msg_id``: what deskmail takes for a
  Message-ID (without brackets): 1-980 printable ASCII characters (no space,
  no control character, no non-ASCII letter, no ``<`` or ``>``), so that
  ``In-Reply-To: <id>`` fits one 998-character line. ``trim_references``:
  at most 50 ids, the first and the last ones. ``cap_text``: a subject or
  summary cut with an ellipsis.

Everything here is pure: no I/O, no clock (``new_message_id`` draws its nonce
from ``secrets`` unless given one).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from services.common.ids import SYNTHETIC_MESSAGE_ID_DOMAIN

if TYPE_CHECKING:  # the config's schema validates queue keys with the rule below
    from services.common.config import Config, Mailbox, Secret, Signature

__all__ = [
    "MAX_MSG_ID_CHARS",
    "MAX_REFERENCES",
    "MAX_SUBJECT_CHARS",
    "MAX_SUMMARY_CHARS",
    "QUEUE_KEY_RULE",
    "AddressError",
    "HeaderTextError",
    "UnknownSignature",
    "ascii_domain",
    "blocked_recipients",
    "cap_text",
    "check_header_text",
    "find_ticket_key",
    "format_ticket_key",
    "is_msg_id",
    "is_queue_key",
    "new_message_id",
    "parse_ticket_key",
    "signature_for",
    "strip_reply_prefixes",
    "subject_for",
    "synthetic_message_id",
    "trim_references",
    "sent_by_deskmail",
    "verify_message_id",
]

# ---------------------------------------------------------------- ticket keys

QUEUE_KEY_RULE = "a queue key is 1-32 upper-case letters, digits or _, starting with a letter"
_QUEUE_KEY = r"[A-Z][A-Z0-9_]{0,31}"
_NUMBER = r"\d{1,18}"
# In text a key matches in any case, folded as ASCII only (see the module docstring).
_KEY_IN_TEXT = rf"(?ai:{_QUEUE_KEY})"
_QUEUE_KEY_RE = re.compile(_QUEUE_KEY)
_TICKET_KEY_RE = re.compile(rf"({_KEY_IN_TEXT})-({_NUMBER})")
_BRACKETED_KEY = re.compile(rf"\[\s*({_KEY_IN_TEXT})-({_NUMBER})\s*\]")
_BARE_KEY = re.compile(rf"(?<![\w-])({_KEY_IN_TEXT})-({_NUMBER})(?![\w-])")


def is_queue_key(value: str) -> bool:
    """True for a valid queue key as configured (upper case, see QUEUE_KEY_RULE)."""
    return _QUEUE_KEY_RE.fullmatch(value) is not None


def format_ticket_key(queue: str, number: int) -> str:
    """``SUPPORT-12``: the ticket key as deskmail writes and stores it."""
    return f"{queue}-{number}"


def parse_ticket_key(value: str) -> tuple[str, int]:
    """``"SUPPORT-12"`` (any case, leading zeros allowed) -> ``("SUPPORT", 12)``; raises ValueError."""
    match = _TICKET_KEY_RE.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"{value!r} is not a ticket key (QUEUE-NUMBER, e.g. SUPPORT-12)")
    return match.group(1).upper(), int(match.group(2))


def find_ticket_key(subject: str, queue_keys: Collection[str]) -> str | None:
    """The first ticket key of a known queue in the subject, e.g. ``SUPPORT-12``.

    A bracketed key (``[SUPPORT-12]``, as deskmail writes it) wins over a bare
    one anywhere in the subject. Keys match case-insensitively and come back in
    upper case with the number's leading zeros dropped. ``queue_keys`` are the
    configured keys; one that breaks the queue key rule is never found.
    """
    known = {key.upper() for key in queue_keys}
    if not known:
        return None
    for pattern in (_BRACKETED_KEY, _BARE_KEY):
        for match in pattern.finditer(subject):
            key = match.group(1).upper()
            if key in known:
                return format_ticket_key(key, int(match.group(2)))
    return None


# ---------------------------------------------------------------- subjects

_REPLY_PREFIX = re.compile(
    r"(?:\s*(?:re|fwd?|aw|wg|sv|vs|antw|doorst|tr|rv|enc|rif|odp|pd"
    r"|ответ|отв|на|пересл|回复|答复|转发)\s*(?:\[\d+\]|\(\d+\))?\s*[:：])+\s*",
    re.IGNORECASE,
)


def strip_reply_prefixes(subject: str) -> str:
    """The subject without leading reply/forward prefixes (Re:, RE[2]:, Fwd:, AW:, Ответ:, ...)."""
    match = _REPLY_PREFIX.match(subject)
    return subject[match.end():].strip() if match else subject.strip()


def subject_for(ticket_key: str, original_subject: str) -> str:
    """``Re: [SUPPORT-12] original``, however many Re:/AW:/Fwd: and markers it had.

    Leading reply/forward prefixes and leading ticket markers are removed
    (repeatedly: "Re: [SUPPORT-12] AW: Re: x" -> "x"); a marker of this same
    ticket anywhere else in the subject is removed too, since it goes in front.
    Markers of other keys inside the text are left alone: they may be the
    customer's own order numbers. ``find_ticket_key`` reads the key back.
    Raises ValueError if ``ticket_key`` is not a ticket key.
    """
    queue, number = parse_ticket_key(ticket_key)
    key = format_ticket_key(queue, number)
    own = re.compile(rf"\[\s*(?ai:{re.escape(queue)})-0*{number}\s*\]")
    rest = " ".join(original_subject.split())
    while True:
        stripped = strip_reply_prefixes(rest)
        marker = _BRACKETED_KEY.match(stripped)
        if marker:
            stripped = stripped[marker.end():].strip()
        if stripped == rest:
            break
        rest = stripped
    rest = " ".join(own.sub(" ", rest).split())
    return f"Re: [{key}] {rest}" if rest else f"Re: [{key}]"


# ---------------------------------------------------------------- Message-IDs

_ID_SAFE = re.compile(r"[A-Za-z0-9_-]")
_NONCE_BYTES = 16
_MAC_BYTES = 16  # 128 bits: past guessing, and the id stays short
_HEX64 = re.compile(r"[0-9a-f]{64}")


class AddressError(ValueError):
    """An address or domain that cannot be written in mail headers or SMTP."""


def ascii_domain(domain: str) -> str:
    """The domain as mail headers and SMTP want it: lower case, IDN in punycode.

    Raises AddressError for a domain IDNA cannot encode.
    """
    domain = domain.strip().rstrip(".").lower()
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise AddressError(f"{domain!r} is not a valid domain name") from None


def new_message_id(
    outbound_id: str,
    from_address: str,
    *,
    key: Secret,
    ticket: str | None,
    nonce: bytes | None = None,
) -> str:
    """The Message-ID (without brackets) for an outbound mail:
    ``deskmail.<id>.<nonce>.<mac>@<domain>``.

    ``<nonce>`` is 16 random bytes and ``<mac>`` an HMAC-SHA256 (first 16 bytes)
    under ``key`` of the ticket key, the outbound id (which names the comment)
    and the nonce, both in hex: nobody without the key can make up a Message-ID
    deskmail would have written, nor derive one ticket's from another's, so an
    answer naming one proves its writer saw that mail. ``ticket`` is None for
    mail of no ticket (``deskmail mail send-test``). The result is random: call
    it once per mail and keep it with the mail (the outbox payload does), so a
    retried or re-consumed mail keeps its id and receivers can drop the
    duplicate. ``nonce`` is for tests only. Characters of the outbound id
    outside ``[A-Za-z0-9_-]`` are written as ``=XX`` (hex of their UTF-8 bytes),
    which keeps the result a valid dot-atom and distinct ids distinct. Raises
    AddressError for a sender domain that cannot be encoded.
    """
    nonce = secrets.token_bytes(_NONCE_BYTES) if nonce is None else nonce
    domain = ascii_domain(from_address.rpartition("@")[2] or "deskmail.invalid")
    mac = _message_id_mac(key, ticket, outbound_id, nonce)
    return f"deskmail.{_id_local(outbound_id)}.{nonce.hex()}.{mac}@{domain}"


def verify_message_id(message_id: str, *, key: Secret, ticket: str | None, outbound_id: str) -> bool:
    """True when ``message_id`` is one ``new_message_id`` wrote under ``key``
    for this ticket and outbound id (any domain, brackets allowed)."""
    local = message_id.strip().strip("<>").rpartition("@")[0]
    parts = local.split(".")  # the outbound id's own dots are written as =2E
    if len(parts) != 4 or parts[0] != "deskmail" or parts[1] != _id_local(outbound_id):
        return False
    try:
        nonce = bytes.fromhex(parts[2])
    except ValueError:
        return False
    if len(nonce) != _NONCE_BYTES:
        return False
    return hmac.compare_digest(parts[3], _message_id_mac(key, ticket, outbound_id, nonce))


def sent_by_deskmail(message_id: str | None, ticket: str | None, *, key: Secret) -> bool:
    """True when ``message_id`` is one deskmail wrote under ``key`` for the
    ticket its ``X-Deskmail-Ticket`` header names (``ticket``): mail deskmail
    sent that came back in (a loop), whatever its From says. The outbound id
    is read back from the Message-ID itself."""
    if not message_id or not ticket:
        return False
    parts = message_id.strip().strip("<>").rpartition("@")[0].split(".")
    if len(parts) != 4 or parts[0] != "deskmail":
        return False
    outbound_id = _id_from_local(parts[1])
    return outbound_id is not None and verify_message_id(message_id, key=key, ticket=ticket, outbound_id=outbound_id)


def _id_from_local(local: str) -> str | None:
    """The outbound id ``_id_local`` wrote as ``local``, or None."""
    try:
        return re.sub(r"(?:=[0-9A-F]{2})+", lambda m: bytes.fromhex(m.group(0).replace("=", "")).decode("utf-8"),
                      local)
    except UnicodeDecodeError:
        return None


def _id_local(outbound_id: str) -> str:
    return "".join(
        c if _ID_SAFE.fullmatch(c) else "".join(f"={b:02X}" for b in c.encode("utf-8"))
        for c in outbound_id
    )


def _message_id_mac(key: Secret, ticket: str | None, outbound_id: str, nonce: bytes) -> str:
    # JSON keeps the fields apart whatever they hold; the label keeps this key's
    # MACs from meaning anything anywhere else.
    fields = json.dumps(["deskmail message-id v1", ticket or "", outbound_id, nonce.hex()])
    digest = hmac.new(key.reveal().encode("utf-8"), fields.encode("utf-8"), hashlib.sha256).digest()
    return digest[:_MAC_BYTES].hex()


def synthetic_message_id(sha256_hex: str) -> str:
    """A stable Message-ID (without brackets) for mail that has none, from its content hash.

    Raises ValueError if ``sha256_hex`` is not 64 hex digits.
    """
    digest = sha256_hex.strip().lower()
    if not _HEX64.fullmatch(digest):
        raise ValueError(f"not a SHA-256 hex digest: {sha256_hex!r}")
    return digest + SYNTHETIC_MESSAGE_ID_DOMAIN


# ---------------------------------------------------------------- recipients


def blocked_recipients(config: Config, mailbox: Mailbox, emails: Sequence[str]) -> list[str]:
    """Recipients the mailbox's queue may not mail, in the given order: every
    non-member when the queue's ``allow_outbound_mail`` is off, else none."""
    queue = config.queue(mailbox.queue)
    if queue is not None and queue.allow_outbound_mail:
        return []
    return [email for email in emails if config.member(email) is None]


# ---------------------------------------------------------------- signatures


class UnknownSignature(ValueError):
    """The mailbox has no signature of that alias; the message lists the ones it has."""


def signature_for(mailbox: Mailbox, alias: str | None) -> Signature | None:
    """The mailbox's signature ``alias``; no alias (None or empty): its first
    signature, None if it has none. Raises UnknownSignature."""
    if not alias:
        return mailbox.signatures[0] if mailbox.signatures else None
    for signature in mailbox.signatures:
        if signature.alias == alias:
            return signature
    known = ", ".join(repr(s.alias) for s in mailbox.signatures) or "none"
    raise UnknownSignature(f"mailbox {mailbox.address} has no signature {alias!r} (it has: {known})")


# ---------------------------------------------------------------- header text and msg-ids
# Everything a header is built from may come from an attacker: a customer's
# mail (names, subjects, Message-IDs) or a typed form field. These rules keep
# each value on its own header line, and a mail's header block bounded.

# The line breaks str.splitlines() honours: each one is a line end to some
# parser, mail program or log viewer along the way.
LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_UNSAFE_HEADER_CHAR = re.compile("[\x00" + LINE_BREAKS + "]")
MAX_MSG_ID_CHARS = 980  # "In-Reply-To: <" + id + ">" within RFC 5322's 998-character line
_MSG_ID_CHARS = re.compile(r"[\x21-\x3b\x3d\x3f-\x7e]+")  # printable ASCII without < and >
MAX_REFERENCES = 50
MAX_SUMMARY_CHARS = 255  # a ticket's summary, from the subject of the mail that opened it
MAX_SUBJECT_CHARS = 900  # "Subject: " + an unbreakable run still fits a 998-character line
ELLIPSIS = "\u2026"


class HeaderTextError(ValueError):
    """A value meant for one header line holds a line break or a NUL."""


def check_header_text(field: str, value: str) -> str:
    """``value`` unchanged when it can go into a header as one line, else HeaderTextError.

    ``field`` names the value for people ("To", "the alias", ...). Refused, not
    repaired: a line break in an address or a name is an injection attempt or a
    mistake, and neither should be mailed as something else than was typed.
    """
    found = _UNSAFE_HEADER_CHAR.search(value)
    if found is not None:
        char = found.group()
        what = "a NUL character" if char == "\x00" else f"a line break (U+{ord(char):04X})"
        shown = repr(value) if len(value) <= 80 else repr(value[:80]) + ELLIPSIS
        raise HeaderTextError(f"{field} {shown} contains {what}; header text must be one line")
    return value


def is_msg_id(value: str) -> bool:
    """True for an id (without angle brackets) deskmail reads and writes as a Message-ID.

    Looser than RFC 5322's ``id-left "@" id-right`` (real mail has ids without
    an ``@``) but never anything that cannot be written back as one ASCII token:
    1-MAX_MSG_ID_CHARS printable ASCII characters, no ``<`` or ``>``.
    """
    return 0 < len(value) <= MAX_MSG_ID_CHARS and _MSG_ID_CHARS.fullmatch(value) is not None


def trim_references(ids: Sequence[str], limit: int = MAX_REFERENCES) -> list[str]:
    """At most ``limit`` ids: the first (the thread's root) and the last ``limit - 1``
    (the nearest parents), as RFC 5322 3.6.4 suggests when a References list gets long."""
    if len(ids) <= limit:
        return list(ids)
    if limit <= 1:
        return list(ids[:limit])
    return [ids[0], *ids[len(ids) - (limit - 1):]]


def cap_text(text: str, limit: int) -> str:
    """``text`` when it has at most ``limit`` characters, else cut to ``limit`` ending in an ellipsis."""
    if len(text) <= limit:
        return text
    return text[: limit - 1].rstrip() + ELLIPSIS
