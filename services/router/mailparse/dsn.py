"""Reading a delivery status notification: which mail it reports on, for whom, and why.

The parser calls :func:`read` for every mail ``classify.is_bounce`` takes for a
bounce. Each answer is taken from the most trusted place that has one:

- **the reported mail** (its Message-ID, X-Deskmail-Ticket and Subject): the
  headers of a ``message/rfc822`` (or ``message/global``) part, else of a
  ``text/rfc822-headers`` part, else the report's ``X-Original-Message-ID``,
  else the headers quoted in the text (Exim, qmail, Mail.ru: ``Message-ID:
  <...>`` below the explanation), else the bounce's own In-Reply-To or the last
  of its References (Exim and Gmail name the original there);
- **the failed recipients**: the per-recipient groups of a
  ``message/delivery-status`` part (Original-Recipient, else Final-Recipient;
  only the groups whose Action is failed when some are), else
  ``X-Failed-Recipients`` (Exim, Gmail), else the addresses the explanation
  names (``dsn_text.explanation_recipients``); at most five;
- **the status**: the first such recipient's ``Status``, else the first enhanced
  status code (``5.1.1``) in the diagnostic, else in the explanation;
- **the diagnostic**: that recipient's ``Diagnostic-Code`` without its type
  (``smtp;``), else the remote server's reply the explanation quotes, else its
  first sentence that explains the failure; one line, at most 300 characters;
- **permanent**: by ``Action`` (failed: yes; delayed, delivered, relayed,
  expanded: no), else by the status class (5: yes; 4 and 2: no), else by the
  diagnostic's reply code, else no when the text or subject reads like a delay
  warning; a bounce that says none of this counts as a failure.

Everything in a bounce comes from whoever sent it. Each part is read up to
64 KB and the text up to 100 KB, fields, lines and values are counted and cut
(``dsn_text``), and nothing here raises on garbage: it yields fewer answers,
or None when the bounce says nothing readable at all.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from services.common.mailrules import MAX_SUMMARY_CHARS, is_msg_id
from services.router.mailparse import dsn_text, msgids
from services.router.mailparse.decoding import decode_words
from services.router.mailparse.model import Attachment, Dsn

__all__ = ["MAX_DIAGNOSTIC_CHARS", "MAX_RECIPIENTS", "read"]

MAX_DIAGNOSTIC_CHARS = 300
MAX_RECIPIENTS = 5
_PART_BYTES = 65_536
_TEXT_CHARS = 100_000
_MAIL_TYPES = ("message/rfc822", "message/global")
_HEADER_TYPES = ("text/rfc822-headers", "message/global-headers")
_REPORT_TYPES = ("message/delivery-status", "message/global-delivery-status")
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_REPLY_CODE = re.compile(r"(?<!\d)([245])\d\d(?!\d)")
_DIAGNOSTIC_TYPE = re.compile(r"^[\w-]{1,20};[ \t]*")
_NOT_FAILED = frozenset({"delayed", "delivered", "relayed", "expanded"})


def read(
    text: str,
    parts: Sequence[Attachment],
    *,
    subject: str = "",
    failed_recipients: str = "",
    replied_to: str | None = None,
) -> Dsn | None:
    """What the bounce with body ``text`` and parts ``parts`` says, or None.

    ``failed_recipients`` is its X-Failed-Recipients header, ``replied_to`` its
    In-Reply-To (else the last of its References). Never raises.
    """
    text = text[:_TEXT_CHARS]
    explanation, quoted = dsn_text.split(text)
    report = _report(parts)
    per_recipient = [g for g in report if "final-recipient" in g or "original-recipient" in g]
    failed = [g for g in per_recipient if _action(g) == "failed"]
    chosen = failed or per_recipient
    first = chosen[0] if chosen else {}

    original = _original_headers(parts) or dsn_text.quoted_headers(quoted)
    message_id = _msg_id(original.get("message-id", ""))
    if message_id is None and report:
        message_id = _msg_id(report[0].get("x-original-message-id", ""))
    if message_id is None and replied_to and is_msg_id(replied_to):
        message_id = replied_to

    recipients = _recipients(chosen, failed_recipients, explanation)
    diagnostic = _diagnostic(first, explanation, recipients)
    status = _status(first, diagnostic, explanation)
    if message_id is None and not recipients and status is None and diagnostic is None:
        return None
    ticket = " ".join(original.get("x-deskmail-ticket", "").split())[:100] or None
    original_subject = dsn_text.one_line(decode_words(original.get("subject", "")), MAX_SUMMARY_CHARS) or None
    return Dsn(
        original_message_id=message_id,
        original_ticket=ticket,
        original_subject=original_subject,
        recipients=tuple(recipients),
        status=status,
        diagnostic=diagnostic,
        permanent=_permanent(_action(first), status, diagnostic, explanation, subject),
    )


def _part_text(part: Attachment) -> str:
    return part.payload[:_PART_BYTES].decode("utf-8", "replace")


def _report(parts: Sequence[Attachment]) -> list[dict[str, str]]:
    for part in parts:
        if part.content_type in _REPORT_TYPES:
            return dsn_text.groups(_part_text(part))
    return []


def _original_headers(parts: Sequence[Attachment]) -> dict[str, str]:
    """The reported mail's header fields from its own part: a whole mail first, then headers only."""
    for types in (_MAIL_TYPES, _HEADER_TYPES):
        for part in parts:
            if part.content_type in types:
                fields = dsn_text.header_fields(_part_text(part))
                if fields:
                    return fields
    return {}


def _msg_id(value: str) -> str | None:
    for candidate in msgids.candidates(value)[:5]:
        if is_msg_id(candidate):
            return candidate
    return None


def _action(group: dict[str, str]) -> str:
    words = group.get("action", "").split()
    return words[0].lower() if words else ""


def _recipients(chosen: list[dict[str, str]], failed_header: str, explanation: str) -> list[str]:
    found: list[str] = []
    for group in chosen:
        email = dsn_text.address(group.get("original-recipient", "")) or dsn_text.address(
            group.get("final-recipient", ""))
        if email is not None and email not in found:
            found.append(email)
    if not found:
        for item in failed_header.split(",")[:MAX_RECIPIENTS * 4]:
            email = dsn_text.address(item)
            if email is not None and email not in found:
                found.append(email)
    if not found:
        found = dsn_text.explanation_recipients(explanation, MAX_RECIPIENTS)
    return found[:MAX_RECIPIENTS]


def _diagnostic(first: dict[str, str], explanation: str, recipients: list[str]) -> str | None:
    value = _DIAGNOSTIC_TYPE.sub("", first.get("diagnostic-code", "").strip(), count=1)
    if not value.strip():
        value = dsn_text.reply_text(explanation) or dsn_text.first_sentence(explanation, recipients) or ""
    return dsn_text.one_line(value, MAX_DIAGNOSTIC_CHARS) or None


def _status(first: dict[str, str], diagnostic: str | None, explanation: str) -> str | None:
    for text in (first.get("status", "")[:40], diagnostic or "", explanation[:20_000]):
        match = _STATUS.search(text)
        if match is not None:
            return ".".join(match.groups())
    return None


def _permanent(action: str, status: str | None, diagnostic: str | None, explanation: str, subject: str) -> bool:
    if action == "failed":
        return True
    if action in _NOT_FAILED:
        return False
    if status is not None:
        return status.startswith("5")
    code = _REPLY_CODE.search(diagnostic or "")
    if code is not None:
        return code.group(1) == "5"
    return not dsn_text.says_delayed(explanation, subject)
