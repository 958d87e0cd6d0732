"""A TicketCommand checked once, so the SQL that applies it can trust its fields.

``Command.parse`` takes the dict fastavro decodes and raises ``InvalidCommand``
for anything the ticketer cannot apply: a missing field, an unknown action, a
naive ``received_at``, a value longer than its column. Such a command is a bad
record: the ticketer dead-letters it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.common import routing, suspended
from services.tickets import checks
from services.tickets.errors import InvalidCommand
from services.tickets.tables import CHARSET, COMMAND_ID, EMAIL, HASH, MESSAGE_ID, QUEUE, TAG, TICKET_PRIORITIES
from services.tickets.views import Action

_ACTIONS = ("create", "comment", "reject")
BLOB_REF = 1024  # a blob reference is short (sha256:<hex>); a longer one is not from deskmail
# The router writes at most five addresses and 300 characters of diagnostic (mailparse/dsn.py).
_BOUNCE_RECIPIENTS = 5 * (EMAIL + 2)
_BOUNCE_DIAGNOSTIC = 1_000


@dataclass(frozen=True)
class Person:
    email: str
    name: str | None
    member: bool
    verified: bool = False  # sender authentication proved this From (TicketCommand v3)


@dataclass(frozen=True)
class AttachmentFile:
    filename: str
    content_type: str
    size: int
    sha256: str
    blob_ref: str | None
    content_id: str | None = None  # how the mail's HTML refers to it (cid:), TicketCommand v4


@dataclass(frozen=True)
class BounceReport:
    """What a bounce says (TicketCommand v5 ``bounce``), from the bounce itself: a
    hint until ``original_message_id`` names mail deskmail sent."""

    original_message_id: str | None
    recipient: str | None
    status: str | None
    diagnostic: str | None
    permanent: bool

    def detail(self) -> str:
        """The outgoing comment's delivery detail: ``<status> <recipient>: <diagnostic>``."""
        head = " ".join(part for part in (self.status, self.recipient) if part)
        if head and self.diagnostic:
            return f"{head}: {self.diagnostic}"
        return head or self.diagnostic or "the report gives no reason"


@dataclass(frozen=True)
class RuleFields:
    """What the routing rules of the mail's queue set on the ticket it opens."""

    new_ticket_queue: str | None = None  # None: the command's queue
    assignee: str | None = None
    assignee_rule: str | None = None
    priority: str | None = None
    tags: tuple[str, ...] = ()
    matched: tuple[str, ...] = ()  # rule names, in order

    @classmethod
    def parse(cls, cmd: Mapping[str, Any]) -> RuleFields:
        priority = cmd.get("priority") or None
        if priority is not None and priority not in TICKET_PRIORITIES:
            raise InvalidCommand(f"priority must be one of {', '.join(TICKET_PRIORITIES)}, not {priority!r}")
        tags = tuple(dict.fromkeys(checks.bounded(t, "tag", TAG) for t in cmd.get("tags") or ()))
        matched = tuple(checks.bounded(n, "matched rule", routing.MAX_RULE_NAME) for n in cmd.get("matched_rules") or ())
        if len(tags) > routing.MAX_TAGS or len(matched) > routing.MAX_RULES:
            raise InvalidCommand(f"at most {routing.MAX_TAGS} tags and {routing.MAX_RULES} matched rules")
        assignee = checks.optional_bounded(cmd.get("assignee"), "assignee", EMAIL)
        return cls(
            new_ticket_queue=checks.optional_bounded(cmd.get("new_ticket_queue"), "new_ticket_queue", QUEUE),
            assignee=assignee.strip().lower() if assignee else None,
            assignee_rule=checks.optional_bounded(cmd.get("assignee_rule"), "assignee_rule", routing.MAX_RULE_NAME),
            priority=priority,
            tags=tags,
            matched=matched,
        )


@dataclass(frozen=True)
class Command:
    """A TicketCommand checked once, so the SQL below can trust its fields."""

    id: str
    action: Action
    classification: str
    queue: str | None
    mailbox: str
    ticket_type: str | None
    components: tuple[str, ...]
    author: Person
    participants: tuple[Person, ...]
    subject: str
    text: str
    html: str | None
    attachments: tuple[AttachmentFile, ...]
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]
    ticket_key_hint: str | None
    uidvalidity: int
    uid: int
    received_at: datetime
    reason: str | None
    reply_only: bool
    quoted_from: int | None = None  # TicketCommand v4: where the quoted history begins in ``text``
    charset_detected: str | None = None  # TicketCommand v4
    raw_ref: str | None = None  # TicketCommand v4: the raw mail of a (possible) rejection, in the blob store
    # A release of suspended mail: the stored command id of the rejection it overrides
    # (taken from the id before a long id is digested, so the link survives it).
    release_of: str | None = None
    bounce: BounceReport | None = None  # TicketCommand v5: what a bounce reports
    # What routing rules set (TicketCommand v5), used only when the mail opens a ticket.
    rules: RuleFields = RuleFields()

    @property
    def ticket_queue(self) -> str | None:
        """The queue a new ticket of this command opens in (a rule may have moved it)."""
        return self.rules.new_ticket_queue or self.queue

    def reply_parts(self) -> tuple[str, str | None]:
        """A comment's new text and what was split off it (None: nothing was)."""
        if self.quoted_from is None:
            return self.text, None
        return self.text[:self.quoted_from].rstrip(), self.text[self.quoted_from:]

    @classmethod
    def parse(cls, cmd: Mapping[str, Any]) -> Command:
        """Raises InvalidCommand for a missing field, an unknown action, a
        naive ``received_at`` or a value longer than its column."""
        try:
            action = cmd["action"]
            if action not in _ACTIONS:
                raise InvalidCommand(f"unknown action {action!r}")
            queue = checks.optional_bounded(cmd.get("queue"), "queue", QUEUE)
            if action != "reject" and queue is None:
                raise InvalidCommand(f"action {action!r} needs a queue")
            quoted_from = cmd.get("quoted_from")
            if quoted_from is not None and not (isinstance(quoted_from, int) and 0 < quoted_from < len(cmd["text"])):
                raise InvalidCommand(f"quoted_from {quoted_from!r} is not an offset inside text")
            received_at = cmd["received_at"]
            if not isinstance(received_at, datetime) or received_at.tzinfo is None:
                raise InvalidCommand(f"received_at must be a timezone-aware datetime: {received_at!r}")
            original = suspended.released_of(cmd["id"]) if isinstance(cmd["id"], str) else None
            return cls(
                id=command_key(cmd["id"]),
                action=action,
                classification=checks.bounded(cmd["classification"], "classification", 16),
                queue=queue,
                mailbox=checks.bounded(cmd["mailbox"], "mailbox", EMAIL),
                ticket_type=checks.optional_bounded(cmd.get("ticket_type"), "ticket_type", 64),
                components=tuple(checks.text(c) for c in cmd.get("components") or ()),
                author=_person(cmd["author"]),
                participants=tuple(_person(p) for p in cmd.get("participants") or ()),
                subject=checks.text(cmd["subject"]),
                text=checks.text(cmd["text"]),
                html=checks.optional_text(cmd.get("html")),
                attachments=tuple(_attachment(a) for a in cmd.get("attachments") or ()),
                message_id=checks.bounded(cmd["message_id"], "message_id", MESSAGE_ID),
                in_reply_to=cmd.get("in_reply_to") or None,
                references=tuple(cmd.get("references") or ()),
                ticket_key_hint=cmd.get("ticket_key_hint") or None,
                uidvalidity=int(cmd.get("source_uidvalidity") or 0),
                uid=int(cmd.get("source_uid") or 0),
                received_at=received_at,
                reason=checks.optional_text(cmd.get("reason")),
                reply_only=bool(cmd.get("reply_only", False)),
                quoted_from=quoted_from,
                charset_detected=checks.optional_bounded(cmd.get("charset_detected"), "charset_detected", CHARSET),
                raw_ref=checks.optional_bounded(cmd.get("raw_ref"), "raw_ref", BLOB_REF),
                release_of=None if original is None else command_key(original),
                bounce=_bounce(cmd.get("bounce")),
                rules=RuleFields.parse(cmd),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidCommand):
                raise
            raise InvalidCommand(f"malformed TicketCommand: {exc!r}") from exc


def command_key(value: Any) -> str:
    """The stored form of a command id: as is, or a digest when it is longer than the column.

    Ids embed the mailbox address (``imap:<address>:<uidvalidity>:<uid>``), and an
    address may be up to 254 characters; the digest keeps such ids stable and unique.
    """
    if isinstance(value, str) and len(value) > COMMAND_ID and "\x00" not in value:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return checks.bounded(value, "id", COMMAND_ID)


def _person(value: Mapping[str, Any]) -> Person:
    return Person(
        email=checks.bounded(value["email"], "email", EMAIL, empty_ok=True),
        name=checks.optional_text(value.get("name")),
        member=bool(value.get("member")),
        verified=bool(value.get("verified")),
    )


def _bounce(value: Mapping[str, Any] | None) -> BounceReport | None:
    if value is None:
        return None
    return BounceReport(
        original_message_id=checks.optional_bounded(value.get("original_message_id"), "bounce.original_message_id",
                                                    MESSAGE_ID),
        recipient=checks.optional_bounded(value.get("recipient"), "bounce.recipient", _BOUNCE_RECIPIENTS),
        status=checks.optional_bounded(value.get("status"), "bounce.status", 16),
        diagnostic=checks.optional_bounded(value.get("diagnostic"), "bounce.diagnostic", _BOUNCE_DIAGNOSTIC),
        permanent=bool(value.get("permanent")),
    )


def _attachment(value: Mapping[str, Any]) -> AttachmentFile:
    return AttachmentFile(
        filename=checks.text(value["filename"]),
        content_type=checks.bounded(value["content_type"], "content_type", 255),
        size=int(value["size"]),
        sha256=checks.bounded(value["sha256"], "sha256", HASH),
        blob_ref=checks.optional_text(value.get("blob_ref")),
        content_id=checks.optional_bounded(value.get("content_id"), "content_id", MESSAGE_ID),
    )
