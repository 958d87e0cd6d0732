"""Schema of the tickets database (SQLAlchemy Core).

The Alembic migrations in ``services/tickets/migrations`` create exactly this
schema; a test compares the two on SQLite and PostgreSQL. Column types stay
portable between both backends. Every timestamp is stored in UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator

from services.common.routing import MAX_TAG, PRIORITIES

# Deterministic constraint names, identical on both backends, so migrations can
# name them and autogenerate comparisons line up.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

# Bounded columns; the store refuses longer values as an invalid command, so
# both backends behave alike (SQLite would not enforce a VARCHAR length).
# An address is at most 64 + 1 + 255 octets; a Message-ID fits a 998-octet line.
EMAIL = 320
MESSAGE_ID = 998
QUEUE = 64
TICKET_KEY = 96
COMMAND_ID = 128
HASH = 64
CHARSET = 40  # a Python codec name
OUTBOUND_ID = 128
REASON_CODE = 64  # the part of a rejection's reason before the first ":"
TAG = MAX_TAG  # a tag routing rules put on a ticket
# Where an outgoing comment's mail stands; NULL for incoming mail and notes.
DELIVERY_STATUSES = ("queued", "retrying", "sent", "failed", "bounced")
# A ticket's workflow (services/tickets/workflow.py): waiting is for the customer.
TICKET_STATUSES = ("open", "in_progress", "waiting", "resolved", "closed")
EVENT_KINDS = ("status", "assignee", "type", "components", "follow_up")
TICKET_PRIORITIES = PRIORITIES  # low, normal, high, urgent: set by routing rules


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored in UTC.

    PostgreSQL keeps ``timestamptz``; SQLite keeps text without an offset, so
    values are converted to UTC before binding and read back as UTC.
    Naive datetimes are refused: a time without a zone is a bug upstream.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware value")
        return value.astimezone(timezone.utc)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


queue_counters = Table(
    "queue_counters",
    metadata,
    Column("queue", String(QUEUE), primary_key=True),
    Column("last_number", Integer, nullable=False),
)

tickets = Table(
    "tickets",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(TICKET_KEY), nullable=False),
    Column("queue", String(QUEUE), nullable=False),
    Column("number", Integer, nullable=False),
    Column("summary", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("description_html", Text, nullable=True),
    # The charset the router detected for the opening mail's text (it declared
    # none, or one its bytes are not valid in); NULL: decoded as declared.
    Column("charset_detected", String(CHARSET), nullable=True),
    Column("type", String(64), nullable=True),
    Column("components", JSON, nullable=False),
    Column("author_email", String(EMAIL), nullable=False),
    Column("author_name", Text, nullable=True),
    Column("author_member", Boolean, nullable=False),
    # Sender authentication proved the opening mail's From (false before 0004: no proof kept).
    Column("author_verified", Boolean, nullable=False, server_default=text("false")),
    Column("status", String(32), nullable=False, server_default=text("'open'")),
    Column("created_at", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("command_id", String(COMMAND_ID), nullable=False),
    # The configured mailbox the opening mail arrived at (NULL before 0002):
    # replies go out through its SMTP settings.
    Column("mailbox", String(EMAIL), nullable=True),
    # The agent working the ticket (a member's address); NULL: unassigned.
    Column("assignee", String(EMAIL), nullable=True),
    # Bumped by every change of status, assignee, type or components, by an agent
    # or by mail: the optimistic check that turns a lost update into a conflict.
    Column("version", Integer, nullable=False, server_default=text("1")),
    # The customer wrote last and no agent has mailed an answer since.
    Column("awaiting_reply", Boolean, nullable=False, server_default=text("false")),
    Column("first_response_at", UtcDateTime, nullable=True),  # the first mail an agent sent
    Column("resolved_at", UtcDateTime, nullable=True),  # when it last became resolved or closed
    # A follow-up opened by customer mail on a closed ticket names that ticket.
    Column("follow_up_of", Integer, ForeignKey("tickets.id"), nullable=True),
    # Set by the routing rules of the opening mail (NULL: none, and before 0009).
    Column("priority", String(16), nullable=True),
    Column("matched_rules", JSON, nullable=True),  # the names of the rules that matched, in order
    CheckConstraint("status IN ('open', 'in_progress', 'waiting', 'resolved', 'closed')", name="status"),
    CheckConstraint("priority IN ('low', 'normal', 'high', 'urgent')", name="priority"),
    UniqueConstraint("key"),
    UniqueConstraint("queue", "number"),
    Index(None, "created_at"),
    # Queue views: keyset pagination, newest first, per filter (services/tickets/listing.py).
    Index(None, "queue", "updated_at", "id"),
    Index(None, "queue", "created_at", "id"),
    Index(None, "queue", "status", "updated_at", "id"),
    Index(None, "queue", "assignee", "updated_at", "id"),
    Index(None, "queue", "status", "assignee", "updated_at", "id"),
    Index(None, "queue", "type", "updated_at", "id"),
    Index(None, "queue", "awaiting_reply", "updated_at", "id"),
    Index(None, "status", "resolved_at"),  # auto-close
    Index(None, "follow_up_of"),  # a ticket page's follow-ups
)

# A ticket's components, one row each, for the component filter of the queue view.
ticket_components = Table(
    "ticket_components",
    metadata,
    Column("ticket_id", Integer, ForeignKey("tickets.id"), primary_key=True),
    Column("component", String(255), primary_key=True),
    Index(None, "component", "ticket_id"),
)

# A ticket's tags (set by routing rules), one row each, for a tag filter.
ticket_tags = Table(
    "ticket_tags",
    metadata,
    Column("ticket_id", Integer, ForeignKey("tickets.id"), primary_key=True),
    Column("tag", String(TAG), primary_key=True),
    Index(None, "tag", "ticket_id"),
)

# Tickets per (queue, status, assignee), kept in the transaction of every change:
# the queue views' counts and the tickets gauge without counting a million rows.
# ``assignee`` is '' for unassigned (a primary key column cannot be NULL).
ticket_counts = Table(
    "ticket_counts",
    metadata,
    Column("queue", String(QUEUE), primary_key=True),
    Column("status", String(32), primary_key=True),
    Column("assignee", String(EMAIL), primary_key=True),
    Column("n", Integer, nullable=False),
)

# Every change of a ticket's fields, by an agent or by mail: who, when, from -> to.
ticket_events = Table(
    "ticket_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ticket_id", Integer, ForeignKey("tickets.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("actor", String(EMAIL), nullable=True),  # NULL: deskmail itself (mail, auto-close)
    Column("old_value", Text, nullable=True),
    Column("new_value", Text, nullable=True),
    Column("reason", Text, nullable=True),  # "reopened by customer reply", "auto-closed after 7 days"
    Column("created_at", UtcDateTime, nullable=False),
    CheckConstraint("kind IN ('status', 'assignee', 'type', 'components', 'follow_up')", name="kind"),
    Index(None, "ticket_id", "created_at"),
)

comments = Table(
    "comments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ticket_id", Integer, ForeignKey("tickets.id"), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("author_email", String(EMAIL), nullable=False),
    Column("author_name", Text, nullable=True),
    Column("body", Text, nullable=False),
    # Incoming mail: the quoted history and signature split off the new text
    # in body (services/router/replysplit.py); NULL when nothing was.
    Column("quoted", Text, nullable=True),
    Column("html", Text, nullable=True),
    Column("charset_detected", String(CHARSET), nullable=True),
    # An automatic reply or a bounce on the ticket's thread: shown, and it changed nothing.
    Column("automatic", Boolean, nullable=False, server_default=text("false")),
    Column("message_id", String(MESSAGE_ID), nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    Column("command_id", String(COMMAND_ID), nullable=True),
    # An agent's comment: internal notes are never emailed; an outgoing mail
    # (kind mail_out) carries its recipients, signature and delivery state.
    Column("internal", Boolean, nullable=False, server_default=text("false")),
    Column("outbound_id", String(OUTBOUND_ID), nullable=True),
    Column("to_addrs", JSON, nullable=True),
    Column("cc_addrs", JSON, nullable=True),
    Column("signature_alias", Text, nullable=True),
    # Incoming mail only: sender authentication proved its From. NULL for an
    # agent's comment, which is no mail (the agent signed in).
    Column("author_verified", Boolean, nullable=True),
    Column("delivery_status", String(16), nullable=True),
    # The last SMTP reply or connection error; for a bounce "<status> <recipient>: <diagnostic>".
    Column("delivery_detail", Text, nullable=True),
    Column("delivery_updated_at", UtcDateTime, nullable=True),
    CheckConstraint("kind IN ('mail_in', 'mail_out', 'note')", name="kind"),
    CheckConstraint(
        "delivery_status IN ('queued', 'retrying', 'sent', 'failed', 'bounced')", name="delivery_status"
    ),
    Index(None, "ticket_id", "created_at"),
    Index(None, "outbound_id", unique=True),
)

participants = Table(
    "participants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ticket_id", Integer, ForeignKey("tickets.id"), nullable=False),
    Column("email", String(EMAIL), nullable=False),
    Column("name", Text, nullable=True),
    Column("member", Boolean, nullable=False),
    Column("role", String(16), nullable=False),
    CheckConstraint("role IN ('author', 'participant')", name="role"),
    UniqueConstraint("ticket_id", "email"),
)

attachments = Table(
    "attachments",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ticket_id", Integer, ForeignKey("tickets.id"), nullable=False),
    Column("comment_id", Integer, ForeignKey("comments.id"), nullable=True),
    Column("filename", Text, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("size", BigInteger, nullable=False),
    Column("sha256", String(HASH), nullable=False),
    Column("blob_ref", Text, nullable=True),
    # The part's Content-ID: the mail's HTML shows it inline as src="cid:...".
    Column("content_id", String(MESSAGE_ID), nullable=True),
    Index(None, "ticket_id"),
)

# Every Message-ID known per queue: the ticket's own mail, each reply, and
# (later) each outgoing mail, so replies thread by In-Reply-To/References and a
# re-fetched mail is recognised as a duplicate.
messages = Table(
    "messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("queue", String(QUEUE), nullable=False),
    Column("message_id", String(MESSAGE_ID), nullable=False),
    Column("ticket_id", Integer, ForeignKey("tickets.id"), nullable=False),
    Column("comment_id", Integer, ForeignKey("comments.id"), nullable=True),
    UniqueConstraint("queue", "message_id"),
    Index(None, "message_id"),
    Index(None, "ticket_id"),  # a ticket page's Message-IDs
)

# Replies to mail deskmail does not know yet, held back for a few seconds: the mail
# they answer comes from another partition and may be applied after them
# (services/tickets/pending.py). ``payload`` is the TicketCommand record as consumed.
pending_replies = Table(
    "pending_replies",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("command_id", String(COMMAND_ID), nullable=False),
    Column("queue", String(QUEUE), nullable=False),
    Column("payload", LargeBinary, nullable=False),
    Column("due_at", UtcDateTime, nullable=False),
    UniqueConstraint("command_id"),
    Index(None, "due_at"),
)

# Message-IDs deskmail does not know yet that something awaits: a held-back reply
# (``pending_id``), or a ticket a reply opened once its wait was over (``ticket_id``).
# When a mail with such a Message-ID comes, the reply is applied after it, and a mail
# awaited by a ticket joins that ticket instead of opening a second one.
awaited_messages = Table(
    "awaited_messages",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("queue", String(QUEUE), nullable=False),
    Column("message_id", String(MESSAGE_ID), nullable=False),
    Column("ticket_id", Integer, ForeignKey("tickets.id"), nullable=True),
    Column("pending_id", Integer, ForeignKey("pending_replies.id"), nullable=True),
    Index(None, "queue", "message_id"),
    Index(None, "ticket_id"),
    Index(None, "pending_id"),
)

# IMAP idempotency: one row per fetched (mailbox, UIDVALIDITY, UID), only for uid > 0.
receipts = Table(
    "receipts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("mailbox", String(EMAIL), nullable=False),
    Column("uidvalidity", BigInteger, nullable=False),
    Column("uid", BigInteger, nullable=False),
    Column("command_id", String(COMMAND_ID), nullable=False),
    Column("ticket_id", Integer, ForeignKey("tickets.id"), nullable=False),
    UniqueConstraint("mailbox", "uidvalidity", "uid"),
)

processed_commands = Table(
    "processed_commands",
    metadata,
    Column("command_id", String(COMMAND_ID), primary_key=True),
    Column("outcome", String(16), nullable=False),
    Column("ticket_key", String(TICKET_KEY), nullable=False),
    Column("comment_id", Integer, nullable=True),
    Column("applied_at", UtcDateTime, nullable=False),
    CheckConstraint("outcome IN ('created', 'commented')", name="outcome"),
)

rejections = Table(
    "rejections",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("command_id", String(COMMAND_ID), nullable=False),
    Column("mailbox", String(EMAIL), nullable=False),
    Column("queue", String(QUEUE), nullable=True),
    Column("classification", String(16), nullable=False),
    Column("author_email", String(EMAIL), nullable=False),
    Column("subject", Text, nullable=False),
    Column("message_id", String(MESSAGE_ID), nullable=False),
    Column("reason", Text, nullable=True),
    Column("received_at", UtcDateTime, nullable=False),
    Column("recorded_at", UtcDateTime, nullable=False),
    # Suspended mail (services/tickets/suspended.py): the raw mail in the blob
    # store (NULL before 0007: nothing to release), the reason's code for the
    # filter and the gauge, and the release an admin made of it.
    Column("raw_ref", Text, nullable=True),
    Column("reason_code", String(REASON_CODE), nullable=False, server_default=text("'other'")),
    Column("released_at", UtcDateTime, nullable=True),
    Column("released_by", String(EMAIL), nullable=True),
    Column("released_ticket", String(TICKET_KEY), nullable=True),  # the ticket the release made or wrote into
    UniqueConstraint("command_id"),
    Index(None, "received_at"),  # retention
    # The suspended list, newest first: per queue, and per queue and reason.
    Index(None, "queue", "received_at", "id"),
    Index(None, "queue", "reason_code", "received_at", "id"),
    Index(None, "raw_ref"),  # retention: is a blob still referred to?
)

# Mail from outside the organization as it was applied, for the rate limits
# (services/tickets/ratelimit.py); pruned once no window reaches a row.
mail_arrivals = Table(
    "mail_arrivals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("author_email", String(EMAIL), nullable=False),
    Column("ticket_id", Integer, nullable=False),  # no foreign key: pruning needs no order
    Column("received_at", UtcDateTime, nullable=False),
    Index(None, "author_email", "received_at"),
    Index(None, "ticket_id", "received_at"),
    Index(None, "received_at"),
)

# Transactional outbox: an outgoing comment and its encoded OutboundMail are
# written in one transaction; a relay produces unrelayed rows to
# deskmail.mail.outbound and sets relayed_at only after the broker's ack.
outbox = Table(
    "outbox",
    metadata,
    Column("id", String(OUTBOUND_ID), primary_key=True),  # the OutboundMail id
    Column("ticket_id", Integer, ForeignKey("tickets.id"), nullable=False),
    Column("comment_id", Integer, ForeignKey("comments.id"), nullable=False),
    Column("payload", LargeBinary, nullable=False),  # Avro single-object OutboundMail
    Column("created_at", UtcDateTime, nullable=False),
    Column("relayed_at", UtcDateTime, nullable=True),
    Index(None, "relayed_at", "created_at"),
)

# API tokens for scripts and the CLI (`deskmail tokens`): only the SHA-256 of a
# token is kept, so a copy of the database reveals no usable token.
TOKEN_NAME = 200
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("member_email", String(EMAIL), nullable=False),
    Column("name", String(TOKEN_NAME), nullable=False),
    Column("token_sha256", String(HASH), nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("expires_at", UtcDateTime, nullable=True),  # NULL: never
    Column("revoked_at", UtcDateTime, nullable=True),
    Column("last_used_at", UtcDateTime, nullable=True),
    UniqueConstraint("token_sha256"),
)
