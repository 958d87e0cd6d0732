"""The tickets database: the one module that owns the SQL.

``TicketStore.apply`` turns one TicketCommand (the dict fastavro decodes) into
tickets, comments, participants and attachments, all in one transaction, and
is idempotent: a command already applied, an IMAP message already received
(mailbox, UIDVALIDITY, UID), or a Message-ID already known in the queue answers
``duplicate`` and changes nothing.

Errors: a malformed command raises ``InvalidCommand`` (dead-letter it).
Database errors propagate unchanged; ``sqlalchemy.exc.OperationalError``
(connection lost, database locked) is transient and left to the caller's retry
policy. A unique-constraint race with a concurrent ticketer is handled here by
re-running the command once, which then sees the other side's effect.

Agents' comments (``add_reply``) use the transactional outbox: the comment, its
pre-assigned Message-ID and, for a comment that is emailed, the encoded
OutboundMail in ``outbox`` are written in one transaction. ``relay_outbox``
hands unrelayed rows to a publisher and marks them relayed only after it
returned (the broker acknowledged). A crash between the ack and that commit
relays the rows again: the same outbound id reaches the sender twice, and the
mail may then be sent twice; only that window can duplicate a mail.
``record_delivery`` applies the sender's DeliveryEvents to the comment.

The result and request types live in ``services.tickets.views`` and are
re-exported here.
"""

from __future__ import annotations

import hashlib

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from alembic import command as alembic_command
from sqlalchemy import (
    Engine,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, CursorResult, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from services.common.ids import SYNTHETIC_MESSAGE_ID_DOMAIN
from services.tickets.migrations import alembic_config
from services.tickets.tables import (
    COMMAND_ID,
    EMAIL,
    HASH,
    MESSAGE_ID,
    OUTBOUND_ID,
    QUEUE,
    attachments,
    comments,
    messages,
    outbox,
    participants,
    processed_commands,
    queue_counters,
    receipts,
    rejections,
    tickets,
)
from services.tickets.views import (
    PENDING_STATUSES,
    Action,
    Applied,
    AttachmentInfo,
    CommentKind,
    DeliveryStatus,
    OutboundBuilder,
    OutboxRecord,
    Outcome,
    Participant,
    Recipient,
    Rejection,
    Reply,
    Role,
    Threading,
    ThreadEntry,
    TicketDetail,
    TicketSummary,
)

__all__ = [
    "Action", "Applied", "AttachmentInfo", "CommentKind", "DeliveryStatus", "InvalidCommand",
    "InvalidDeliveryEvent", "InvalidReply", "OutboundBuilder", "OutboxRecord", "Outcome",
    "Participant", "Recipient", "Rejection", "Reply", "Role", "Threading", "ThreadEntry",
    "TicketDetail", "TicketStore", "TicketSummary", "UnknownTicket",
]

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


# pg_advisory_xact_lock key serialising `migrate()` across processes ("deskmail").
_MIGRATION_LOCK = 0x6465736B6D61696C
# Execution option read by the SQLite "begin" hook: IMMEDIATE takes the write lock
# up front, so two writers never deadlock upgrading a read lock.
_SQLITE_BEGIN = "deskmail_sqlite_begin"
# Only the newest References are searched: real threads are short, and a
# hostile header must not turn into a huge IN list.
_MAX_THREAD_CANDIDATES = 200
# An outgoing mail's References: the thread's first Message-ID and the newest
# ones, as RFC 5322 suggests for long threads.
_MAX_REFERENCES = 20
_ACTIONS = ("create", "comment", "reject")
_T = TypeVar("_T", bound="DataclassInstance")


class InvalidCommand(ValueError):
    """The command lacks a field or has a value the ticketer cannot apply."""


class InvalidReply(ValueError):
    """An agent's comment the store cannot keep: no text, no recipients for a
    mail, a value longer than its column, or an outbound id already used."""


class InvalidDeliveryEvent(ValueError):
    """A DeliveryEvent lacks a field or has a value the ticketer cannot record."""


class UnknownTicket(LookupError):
    """No ticket has this key."""


@dataclass(frozen=True)
class _Person:
    email: str
    name: str | None
    member: bool


@dataclass(frozen=True)
class _Attachment:
    filename: str
    content_type: str
    size: int
    sha256: str
    blob_ref: str | None


@dataclass(frozen=True)
class _Command:
    """A TicketCommand checked once, so the SQL below can trust its fields."""

    id: str
    action: Action
    classification: str
    queue: str | None
    mailbox: str
    ticket_type: str | None
    components: tuple[str, ...]
    author: _Person
    participants: tuple[_Person, ...]
    subject: str
    text: str
    html: str | None
    attachments: tuple[_Attachment, ...]
    message_id: str
    in_reply_to: str | None
    references: tuple[str, ...]
    ticket_key_hint: str | None
    uidvalidity: int
    uid: int
    received_at: datetime
    reason: str | None
    reply_only: bool

    @classmethod
    def parse(cls, cmd: Mapping[str, Any]) -> _Command:
        """Raises InvalidCommand for a missing field, an unknown action, a
        naive ``received_at`` or a value longer than its column."""
        try:
            action = cmd["action"]
            if action not in _ACTIONS:
                raise InvalidCommand(f"unknown action {action!r}")
            queue = _optional_bounded(cmd.get("queue"), "queue", QUEUE)
            if action != "reject" and queue is None:
                raise InvalidCommand(f"action {action!r} needs a queue")
            received_at = cmd["received_at"]
            if not isinstance(received_at, datetime) or received_at.tzinfo is None:
                raise InvalidCommand(f"received_at must be a timezone-aware datetime: {received_at!r}")
            return cls(
                id=_command_key(cmd["id"]),
                action=action,
                classification=_bounded(cmd["classification"], "classification", 16),
                queue=queue,
                mailbox=_bounded(cmd["mailbox"], "mailbox", EMAIL),
                ticket_type=_optional_bounded(cmd.get("ticket_type"), "ticket_type", 64),
                components=tuple(_text(c) for c in cmd.get("components") or ()),
                author=_person(cmd["author"]),
                participants=tuple(_person(p) for p in cmd.get("participants") or ()),
                subject=_text(cmd["subject"]),
                text=_text(cmd["text"]),
                html=_optional_text(cmd.get("html")),
                attachments=tuple(_attachment(a) for a in cmd.get("attachments") or ()),
                message_id=_bounded(cmd["message_id"], "message_id", MESSAGE_ID),
                in_reply_to=cmd.get("in_reply_to") or None,
                references=tuple(cmd.get("references") or ()),
                ticket_key_hint=cmd.get("ticket_key_hint") or None,
                uidvalidity=int(cmd.get("source_uidvalidity") or 0),
                uid=int(cmd.get("source_uid") or 0),
                received_at=received_at,
                reason=_optional_text(cmd.get("reason")),
                reply_only=bool(cmd.get("reply_only", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, InvalidCommand):
                raise
            raise InvalidCommand(f"malformed TicketCommand: {exc!r}") from exc


def _person(value: Mapping[str, Any]) -> _Person:
    return _Person(
        email=_bounded(value["email"], "email", EMAIL, empty_ok=True),
        name=_optional_text(value.get("name")),
        member=bool(value.get("member")),
    )


def _attachment(value: Mapping[str, Any]) -> _Attachment:
    return _Attachment(
        filename=_text(value["filename"]),
        content_type=_bounded(value["content_type"], "content_type", 255),
        size=int(value["size"]),
        sha256=_bounded(value["sha256"], "sha256", HASH),
        blob_ref=_optional_text(value.get("blob_ref")),
    )


def _text(value: Any) -> str:
    """Free text without NUL characters, which PostgreSQL text cannot hold."""
    if not isinstance(value, str):
        raise InvalidCommand(f"expected a string, got {type(value).__name__}")
    return value.replace("\x00", "")


def _optional_text(value: Any) -> str | None:
    return None if value is None else _text(value)


def _command_key(value: Any) -> str:
    """The stored form of a command id: as is, or a digest when it is longer than the column.

    Ids embed the mailbox address (``imap:<address>:<uidvalidity>:<uid>``), and an
    address may be up to 254 characters; the digest keeps such ids stable and unique.
    """
    if isinstance(value, str) and len(value) > COMMAND_ID and "\x00" not in value:
        return "sha256:" + hashlib.sha256(value.encode()).hexdigest()
    return _bounded(value, "id", COMMAND_ID)


def _bounded(value: Any, field: str, limit: int, *, empty_ok: bool = False) -> str:
    """An identifier stored in a bounded column: a string, not too long, no NUL."""
    if not isinstance(value, str):
        raise InvalidCommand(f"{field} must be a string, got {type(value).__name__}")
    if not value and not empty_ok:
        raise InvalidCommand(f"{field} must not be empty")
    if len(value) > limit or "\x00" in value:
        raise InvalidCommand(f"{field} is longer than {limit} characters or holds NUL: {value[:80]!r}")
    return value


def _optional_bounded(value: Any, field: str, limit: int) -> str | None:
    return None if value is None or value == "" else _bounded(value, field, limit)


@dataclass(frozen=True)
class _Ticket:
    id: int
    key: str
    updated_at: datetime


class TicketStore:
    """Tickets DB on SQLite (``sqlite:///path``) or PostgreSQL
    (``postgresql+psycopg://...``). Thread-safe: one engine, pooled connections.
    Several stores (processes) may share one database."""

    def __init__(self, url: str, *, sqlite_busy_timeout_s: float = 30.0) -> None:
        self._url = make_url(url)
        self._backend = self._url.get_backend_name()
        if self._backend == "sqlite":
            self._engine = _sqlite_engine(url, sqlite_busy_timeout_s)
        else:
            self._engine = create_engine(self._url, pool_pre_ping=True)

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> TicketStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision. Safe to call from several
        processes at once: the upgrade runs in one transaction under a lock
        (PostgreSQL advisory lock; SQLite's write lock)."""
        with self._write() as conn:
            if self._backend == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
            url = self._url.render_as_string(hide_password=False)
            alembic_command.upgrade(alembic_config(url, conn), "head")

    # -- applying commands ------------------------------------------------

    def apply(self, cmd: Mapping[str, Any]) -> Applied:
        """Apply one TicketCommand in one transaction (see the module docstring)."""
        command = _Command.parse(cmd)
        try:
            return self._apply_once(command)
        except IntegrityError:
            # A concurrent ticketer committed the same command, mail or participant
            # first. Our transaction was rolled back; the re-run sees its effect.
            return self._apply_once(command)

    def _apply_once(self, c: _Command) -> Applied:
        with self._write() as conn:
            duplicate = _find_duplicate(conn, c)
            if duplicate is not None:
                return duplicate
            if c.action == "reject":
                _insert_rejection(conn, c)
                return Applied("rejected", None, None)
            ticket = _resolve_thread(conn, c) if c.action == "comment" else None
            if ticket is None and c.reply_only:  # may answer a known thread, not open a ticket
                if conn.execute(_REJECTED, {"command_id": c.id}).first():
                    return Applied("duplicate", None, None)
                _insert_rejection(conn, c)
                return Applied("rejected", None, None)
            if ticket is None:
                ticket_id, applied = _create_ticket(conn, c)
            else:
                ticket_id, applied = ticket.id, _add_comment(conn, c, ticket)
            _record(conn, c, ticket_id, applied)
            return applied

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            if self._backend == "sqlite":
                conn.execution_options(**{_SQLITE_BEGIN: "IMMEDIATE"})
            with conn.begin():
                yield conn

    # -- queries for the CLI and the API -----------------------------------

    def count_tickets(self, queue: str | None = None) -> int:
        query = select(func.count()).select_from(tickets)
        if queue is not None:
            query = query.where(tickets.c.queue == queue)
        with self._engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def list_tickets(
        self, queue: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[TicketSummary]:
        """Newest first (by mail time, then by insertion)."""
        _check_page(limit, offset)
        comment_count = (
            select(func.count())
            .where(comments.c.ticket_id == tickets.c.id)
            .scalar_subquery()
            .label("comment_count")
        )
        query = select(tickets, comment_count)
        if queue is not None:
            query = query.where(tickets.c.queue == queue)
        query = query.order_by(tickets.c.created_at.desc(), tickets.c.id.desc())
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [
            _build(TicketSummary, r, components=tuple(r.components), comment_count=int(r.comment_count))
            for r in rows
        ]

    def get_ticket(self, key: str) -> TicketDetail | None:
        with self._engine.connect() as conn:
            if self._backend == "postgresql":
                # One snapshot for the five reads below.
                conn.execution_options(isolation_level="REPEATABLE READ")
            t = conn.execute(select(tickets).where(tickets.c.key == key)).first()
            if t is None:
                return None
            people = conn.execute(
                select(participants)
                .where(participants.c.ticket_id == t.id)
                .order_by(participants.c.id)
            ).all()
            entries = conn.execute(
                select(comments)
                .where(comments.c.ticket_id == t.id)
                .order_by(comments.c.created_at, comments.c.id)
            ).all()
            files = conn.execute(
                select(attachments)
                .where(attachments.c.ticket_id == t.id)
                .order_by(attachments.c.id)
            ).all()
            message_ids = conn.execute(
                select(messages.c.message_id)
                .where(messages.c.ticket_id == t.id)
                .order_by(messages.c.id)
            ).scalars().all()
        return _build(
            TicketDetail,
            t,
            components=tuple(t.components),
            participants=tuple(_build(Participant, p) for p in people),
            thread=tuple(_thread_entry(e) for e in entries),
            attachments=tuple(_build(AttachmentInfo, f) for f in files),
            message_ids=tuple(message_ids),
        )

    def list_rejections(
        self, mailbox: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[Rejection]:
        """Newest first (by mail time, then by insertion)."""
        _check_page(limit, offset)
        query = select(rejections)
        if mailbox is not None:
            query = query.where(rejections.c.mailbox == mailbox)
        query = query.order_by(rejections.c.received_at.desc(), rejections.c.id.desc())
        with self._engine.connect() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        return [_build(Rejection, r) for r in rows]

    def count_by_queue(self) -> dict[str, int]:
        """Tickets per queue (queues without tickets are absent)."""
        query = select(tickets.c.queue, func.count()).group_by(tickets.c.queue)
        with self._engine.connect() as conn:
            return {queue: int(n) for queue, n in conn.execute(query).all()}

    def ticket_mailbox(self, key: str) -> str | None:
        """The configured mailbox the ticket's opening mail arrived at (None for
        tickets created before that was recorded, or for unknown keys)."""
        with self._engine.connect() as conn:
            value = conn.execute(select(tickets.c.mailbox).where(tickets.c.key == key)).scalar()
        return None if value is None else str(value)

    # -- agents' comments and outgoing mail --------------------------------

    def add_reply(
        self,
        ticket_key: str,
        *,
        author_email: str,
        author_name: str | None,
        text: str,
        html: str | None = None,
        send_email: bool,
        internal: bool = False,
        to: Sequence[Recipient] = (),
        cc: Sequence[Recipient] = (),
        signature_alias: str | None = None,
        outbound_id: str | None = None,
        message_id: str | None = None,
        build_outbound: OutboundBuilder | None = None,
        now: datetime | None = None,
    ) -> Reply:
        """Store an agent's comment on ``ticket_key`` in one transaction.

        With ``send_email`` the comment is an outgoing mail (kind ``mail_out``,
        status ``queued``): ``outbound_id``, the pre-assigned ``message_id``
        (without brackets) and ``build_outbound`` are required, and at least one
        ``to`` recipient. The Message-ID is registered for the ticket's queue, so
        the customer's answer threads back by In-Reply-To; ``build_outbound``
        gets the comment id and the threading headers (In-Reply-To: the thread's
        newest known Message-ID; References: its first and newest ones) and
        returns the encoded OutboundMail, written to ``outbox`` in the same
        transaction. Recipients not yet on the ticket become participants.
        Without ``send_email`` the comment is a note and nothing is mailed.

        Authorization (who may mail whom) is the caller's job. Raises
        UnknownTicket, InvalidReply; whatever ``build_outbound`` raises rolls
        the comment back and propagates.
        """
        draft = _ReplyDraft.parse(
            author_email=author_email, author_name=author_name, text=text, html=html,
            send_email=send_email, internal=internal, to=to, cc=cc,
            signature_alias=signature_alias, outbound_id=outbound_id, message_id=message_id,
            build_outbound=build_outbound,
        )
        created_at = now or datetime.now(timezone.utc)
        if created_at.tzinfo is None:
            raise InvalidReply(f"now must be timezone-aware: {created_at!r}")
        try:
            with self._write() as conn:
                return _add_reply(conn, ticket_key, draft, created_at)
        except IntegrityError as exc:
            # Unique outbound id and (queue, Message-ID): a caller reusing ids.
            raise InvalidReply(
                f"outbound id {outbound_id!r} or Message-ID {message_id!r} is already in use"
            ) from exc

    def pending_outbox(self, limit: int = 100) -> list[OutboxRecord]:
        """Outgoing mail not yet relayed to the broker, oldest first."""
        _check_page(limit, 0)
        with self._engine.connect() as conn:
            rows = conn.execute(_PENDING_OUTBOX.limit(limit)).all()
        return [_build(OutboxRecord, r) for r in rows]

    def mark_relayed(self, ids: Iterable[str], now: datetime | None = None) -> int:
        """Mark outbox rows relayed (call only after the broker's ack); returns
        how many were still pending. Ids already relayed or unknown are ignored."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        with self._write() as conn:
            return _mark_relayed(conn, wanted, now or datetime.now(timezone.utc))

    def relay_outbox(self, publish: Callable[[Sequence[OutboxRecord]], None], limit: int = 100) -> int:
        """Hand up to ``limit`` unrelayed rows, oldest first, to ``publish`` and
        mark them relayed once it returns; returns how many were relayed.

        ``publish`` must return only after the broker acknowledged every record
        (and raise otherwise: then nothing is marked and the error propagates).
        The rows stay locked while it runs (PostgreSQL: ``FOR UPDATE SKIP
        LOCKED``, so concurrent relays take disjoint rows; SQLite: the database
        write lock), so two relays never publish the same row.
        """
        _check_page(limit, 0)
        with self._write() as conn:
            rows = conn.execute(_PENDING_OUTBOX.limit(limit).with_for_update(of=outbox, skip_locked=True)).all()
            if not rows:
                return 0
            records = [_build(OutboxRecord, r) for r in rows]
            publish(records)
            return _mark_relayed(conn, [r.id for r in records], datetime.now(timezone.utc))

    def record_delivery(self, event: Mapping[str, Any]) -> bool:
        """Apply one DeliveryEvent (the dict fastavro decodes) to its comment.

        Returns True when the comment's delivery state changed. Returns False
        for an outbound id no comment has (a test mail, another deployment's
        mail) and for an event arriving after a final status: ``sent`` and
        ``failed`` are never overwritten, so a late ``retrying`` or a
        redelivered event changes nothing. Raises InvalidDeliveryEvent.
        """
        outbound_id, status, detail, at = _parse_delivery(event)
        with self._write() as conn:
            result = conn.execute(
                _RECORD_DELIVERY,
                {"event_outbound_id": outbound_id, "new_status": status,
                 "new_detail": detail, "new_updated_at": at},
            )
            return bool(result.rowcount == 1)


# -- statements, built once: building and cache-keying a statement costs more
# than running it on SQLite, and apply() runs about ten per command ---------------

_pc = processed_commands
# One round trip answers "seen before?" three ways, in order of precedence: the
# command id; the IMAP receipt (receipts hold only uid > 0, so uid 0 never
# matches); the Message-ID in the queue, which also covers a re-fetch after a
# UIDVALIDITY change and the same mail delivered to two mailboxes of the queue.
_SEEN_BEFORE = (
    union_all(
        select(literal(1).label("precedence"), _pc.c.ticket_key, _pc.c.comment_id).where(
            _pc.c.command_id == bindparam("command_id")
        ),
        select(literal(2), _pc.c.ticket_key, _pc.c.comment_id)
        .select_from(receipts.join(_pc, _pc.c.command_id == receipts.c.command_id))
        .where(
            receipts.c.mailbox == bindparam("mailbox"),
            receipts.c.uidvalidity == bindparam("uidvalidity"),
            receipts.c.uid == bindparam("uid"),
        ),
        select(literal(3), tickets.c.key, messages.c.comment_id)
        .select_from(messages.join(tickets, tickets.c.id == messages.c.ticket_id))
        .where(
            messages.c.queue == bindparam("queue"),
            messages.c.message_id == bindparam("message_id"),
        ),
    )
    .order_by("precedence")
    .limit(1)
)
_REJECTED = select(rejections.c.id).where(rejections.c.command_id == bindparam("command_id"))
_THREAD_MATCHES = select(
    messages.c.queue, messages.c.message_id, tickets.c.id, tickets.c.key, tickets.c.updated_at
).where(
    messages.c.message_id.in_(bindparam("message_ids", expanding=True)),
    tickets.c.id == messages.c.ticket_id,
)
_TICKET_BY_KEY = select(tickets.c.id, tickets.c.key, tickets.c.updated_at).where(
    tickets.c.key == bindparam("key"), tickets.c.queue == bindparam("queue")
)
_BUMP_COUNTER = (
    update(queue_counters)
    .where(queue_counters.c.queue == bindparam("counter_queue"))
    .values(last_number=queue_counters.c.last_number + 1)
    .returning(queue_counters.c.last_number)
)
_INSERT_COUNTER = {
    "postgresql": postgresql.insert(queue_counters).on_conflict_do_nothing(
        index_elements=[queue_counters.c.queue]
    ),
    "sqlite": sqlite.insert(queue_counters).on_conflict_do_nothing(
        index_elements=[queue_counters.c.queue]
    ),
}
_TOUCH_TICKET = (
    update(tickets)
    .where(tickets.c.id == bindparam("ticket_id"))
    .values(updated_at=bindparam("new_updated_at"))
)
_KNOWN_PARTICIPANTS = select(participants.c.email).where(
    participants.c.ticket_id == bindparam("ticket_id")
)
_INSERT_TICKET = insert(tickets)
_INSERT_COMMENT = insert(comments)
_INSERT_MESSAGE = insert(messages)
_INSERT_PARTICIPANT = insert(participants)
_INSERT_ATTACHMENT = insert(attachments)
_INSERT_PROCESSED = insert(processed_commands)
_INSERT_RECEIPT = insert(receipts)
_INSERT_REJECTION = insert(rejections)
_INSERT_OUTBOX = insert(outbox)
_TICKET_FOR_REPLY = select(
    tickets.c.id, tickets.c.key, tickets.c.queue, tickets.c.summary, tickets.c.updated_at
).where(tickets.c.key == bindparam("key"))
_TICKET_MESSAGE_IDS = (
    select(messages.c.message_id)
    .where(messages.c.ticket_id == bindparam("ticket_id"))
    .order_by(messages.c.id)
)
_PENDING_OUTBOX = (
    select(
        outbox.c.id, tickets.c.key.label("ticket_key"), outbox.c.comment_id, outbox.c.payload,
        outbox.c.created_at, outbox.c.relayed_at,
    )
    .join(tickets, tickets.c.id == outbox.c.ticket_id)
    .where(outbox.c.relayed_at.is_(None))
    .order_by(outbox.c.created_at, outbox.c.id)
)
_MARK_RELAYED = (
    update(outbox)
    .where(outbox.c.id.in_(bindparam("ids", expanding=True)), outbox.c.relayed_at.is_(None))
    .values(relayed_at=bindparam("relayed"))
)
# A final status (sent, failed) is never overwritten: the WHERE admits only
# comments still queued or retrying.
_RECORD_DELIVERY = (
    update(comments)
    .where(
        comments.c.outbound_id == bindparam("event_outbound_id"),
        comments.c.delivery_status.in_(PENDING_STATUSES),
    )
    .values(
        delivery_status=bindparam("new_status"),
        delivery_detail=bindparam("new_detail"),
        delivery_updated_at=bindparam("new_updated_at"),
    )
)


# -- the steps of one command (all on the caller's transaction) --------------


def _find_duplicate(conn: Connection, c: _Command) -> Applied | None:
    row = conn.execute(
        _SEEN_BEFORE,
        {
            "command_id": c.id,
            "mailbox": c.mailbox,
            "uidvalidity": c.uidvalidity,
            "uid": c.uid,
            "queue": c.queue,
            "message_id": c.message_id,
        },
    ).first()
    if row is not None:
        return Applied("duplicate", row.ticket_key, row.comment_id)
    if c.action == "reject" and conn.execute(_REJECTED, {"command_id": c.id}).first():
        return Applied("duplicate", None, None)
    return None


def _insert_rejection(conn: Connection, c: _Command) -> None:
    # A rejection does not mark the mail as processed: replaying the topic after
    # a rule fix may still turn the same command id into a ticket.
    conn.execute(
        _INSERT_REJECTION,
        {
            "command_id": c.id,
            "mailbox": c.mailbox,
            "queue": c.queue,
            "classification": c.classification,
            "author_email": c.author.email,
            "subject": c.subject,
            "message_id": c.message_id,
            "reason": c.reason,
            "received_at": c.received_at,
            "recorded_at": datetime.now(timezone.utc),
        },
    )


def _record(conn: Connection, c: _Command, ticket_id: int, applied: Applied) -> None:
    conn.execute(
        _INSERT_PROCESSED,
        {
            "command_id": c.id,
            "outcome": applied.outcome,
            "ticket_key": applied.ticket_key,
            "comment_id": applied.comment_id,
            "applied_at": datetime.now(timezone.utc),
        },
    )
    if c.uid > 0:
        conn.execute(
            _INSERT_RECEIPT,
            {
                "mailbox": c.mailbox,
                "uidvalidity": c.uidvalidity,
                "uid": c.uid,
                "command_id": c.id,
                "ticket_id": ticket_id,
            },
        )


def _resolve_thread(conn: Connection, c: _Command) -> _Ticket | None:
    """In-Reply-To, then References newest first, against known Message-IDs
    (this queue before any other queue); then the ticket key in the subject,
    which must name a ticket of this queue."""
    candidates: list[str] = []
    for message_id in (c.in_reply_to, *reversed(c.references)):
        if message_id and message_id not in candidates:
            candidates.append(message_id)
    candidates = candidates[:_MAX_THREAD_CANDIDATES]
    row: Any = None  # a Row from either query below
    if candidates:
        matches = conn.execute(_THREAD_MATCHES, {"message_ids": candidates}).all()
        rank = {message_id: i for i, message_id in enumerate(candidates)}
        row = min(
            matches,
            key=lambda r: (r.queue != c.queue, rank[r.message_id], r.id),
            default=None,
        )
    if row is None and c.ticket_key_hint is not None and not c.reply_only:  # a key in a subject is easy to guess
        row = conn.execute(_TICKET_BY_KEY, {"key": c.ticket_key_hint, "queue": c.queue}).first()
    if row is None:
        return None
    return _Ticket(id=row.id, key=row.key, updated_at=row.updated_at)


def _create_ticket(conn: Connection, c: _Command) -> tuple[int, Applied]:
    assert c.queue is not None
    number = _next_number(conn, c.queue)
    key = f"{c.queue}-{number}"
    result = conn.execute(
        _INSERT_TICKET,
        {
            "key": key,
            "queue": c.queue,
            "number": number,
            "summary": c.subject.strip() or "(no subject)",
            "description": c.text,
            "description_html": c.html,
            "type": c.ticket_type,
            "components": list(c.components),
            "author_email": c.author.email,
            "author_name": c.author.name,
            "author_member": c.author.member,
            "status": "open",
            "created_at": c.received_at,
            "updated_at": c.received_at,
            "command_id": c.id,
            "mailbox": c.mailbox,
        },
    )
    ticket_id = _inserted_id(result)
    _register_message(conn, c, ticket_id, None)
    _add_participants(conn, ticket_id, c, author_role="author", known=set())
    _add_attachments(conn, c.attachments, ticket_id, None)
    return ticket_id, Applied("created", key, None)


def _next_number(conn: Connection, queue: str) -> int:
    """Next ticket number of the queue: gap-free, because the counter row is
    locked until this transaction ends and rolls back with it."""
    number = conn.execute(_BUMP_COUNTER, {"counter_queue": queue}).scalar_one_or_none()
    if number is None:
        # First ticket of the queue. ON CONFLICT DO NOTHING: a concurrent
        # ticketer may be inserting the same row; either way it then exists.
        conn.execute(_INSERT_COUNTER[conn.dialect.name], {"queue": queue, "last_number": 0})
        number = conn.execute(_BUMP_COUNTER, {"counter_queue": queue}).scalar_one()
    return int(number)


def _add_comment(conn: Connection, c: _Command, ticket: _Ticket) -> Applied:
    result = conn.execute(
        _INSERT_COMMENT,
        {
            "ticket_id": ticket.id,
            "kind": "mail_in",
            "author_email": c.author.email,
            "author_name": c.author.name,
            "body": c.text,
            "html": c.html,
            "message_id": c.message_id,
            "created_at": c.received_at,
            "command_id": c.id,
        },
    )
    comment_id = _inserted_id(result)
    _register_message(conn, c, ticket.id, comment_id)
    known = set(conn.execute(_KNOWN_PARTICIPANTS, {"ticket_id": ticket.id}).scalars())
    _add_participants(conn, ticket.id, c, author_role="participant", known=known)
    _add_attachments(conn, c.attachments, ticket.id, comment_id)
    if c.received_at > ticket.updated_at:
        conn.execute(_TOUCH_TICKET, {"ticket_id": ticket.id, "new_updated_at": c.received_at})
    return Applied("commented", ticket.key, comment_id)


def _register_message(conn: Connection, c: _Command, ticket_id: int, comment_id: int | None) -> None:
    conn.execute(
        _INSERT_MESSAGE,
        {"queue": c.queue, "message_id": c.message_id, "ticket_id": ticket_id, "comment_id": comment_id},
    )


def _add_participants(
    conn: Connection, ticket_id: int, c: _Command, author_role: Role, known: set[str]
) -> None:
    rows: list[dict[str, Any]] = []
    for person, role in ((c.author, author_role), *((p, "participant") for p in c.participants)):
        email = person.email.strip().lower()
        if not email or email in known:
            continue
        known.add(email)
        rows.append(
            {"ticket_id": ticket_id, "email": email, "name": person.name,
             "member": person.member, "role": role}
        )
    if rows:
        conn.execute(_INSERT_PARTICIPANT, rows)


def _add_attachments(
    conn: Connection, files: Sequence[_Attachment], ticket_id: int, comment_id: int | None
) -> None:
    if files:
        conn.execute(
            _INSERT_ATTACHMENT,
            [
                {"ticket_id": ticket_id, "comment_id": comment_id, "filename": f.filename,
                 "content_type": f.content_type, "size": f.size, "sha256": f.sha256,
                 "blob_ref": f.blob_ref}
                for f in files
            ],
        )


# -- agents' comments (all on the caller's transaction) -----------------------


@dataclass(frozen=True)
class _ReplyDraft:
    """The arguments of ``add_reply`` checked once, before the transaction."""

    author_email: str
    author_name: str | None
    text: str
    html: str | None
    send_email: bool
    internal: bool
    to: tuple[Recipient, ...]
    cc: tuple[Recipient, ...]
    signature_alias: str | None
    outbound_id: str | None
    message_id: str | None
    build_outbound: OutboundBuilder | None

    @classmethod
    def parse(cls, **kw: Any) -> _ReplyDraft:
        try:
            text = _text(kw["text"])
            if not text.strip():
                raise InvalidReply("a comment needs text")
            send_email = bool(kw["send_email"])
            internal = bool(kw["internal"])
            to = tuple(_recipient(r) for r in kw["to"])
            cc = tuple(_recipient(r) for r in kw["cc"])
            draft = cls(
                author_email=_bounded(kw["author_email"], "author_email", EMAIL).strip().lower(),
                author_name=_optional_text(kw["author_name"]),
                text=text,
                html=_optional_text(kw["html"]),
                send_email=send_email,
                internal=internal,
                to=to,
                cc=cc,
                signature_alias=_optional_text(kw["signature_alias"]),
                outbound_id=_optional_bounded(kw["outbound_id"], "outbound_id", OUTBOUND_ID),
                message_id=_optional_bounded(kw["message_id"], "message_id", MESSAGE_ID),
                build_outbound=kw["build_outbound"],
            )
        except InvalidReply:
            raise
        except (InvalidCommand, TypeError, ValueError) as exc:
            raise InvalidReply(str(exc)) from exc
        if send_email:
            if internal:
                raise InvalidReply("an internal comment is never emailed")
            if not to:
                raise InvalidReply("an emailed comment needs at least one To recipient")
            if draft.outbound_id is None or draft.message_id is None or draft.build_outbound is None:
                raise InvalidReply("an emailed comment needs outbound_id, message_id and build_outbound")
        elif to or cc:
            raise InvalidReply("recipients given for a comment that is not emailed")
        return draft


def _recipient(value: Any) -> Recipient:
    if not isinstance(value, Recipient):
        raise InvalidReply(f"a recipient must be a Recipient, got {type(value).__name__}")
    email = _bounded(value.email, "recipient", EMAIL).strip().lower()
    if "@" not in email or any(ch.isspace() for ch in email):
        raise InvalidReply(f"{value.email!r} is not an email address")
    return Recipient(email, _optional_text(value.name), bool(value.member))


def _add_reply(conn: Connection, key: str, d: _ReplyDraft, created_at: datetime) -> Reply:
    t = conn.execute(_TICKET_FOR_REPLY, {"key": key}).first()
    if t is None:
        raise UnknownTicket(key)
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    if d.send_email:
        # Ids deskmail made up for mail that had none mean nothing to anyone else's mail program.
        known = [m for m in conn.execute(_TICKET_MESSAGE_IDS, {"ticket_id": t.id}).scalars()
                 if not m.endswith(SYNTHETIC_MESSAGE_ID_DOMAIN)]
        in_reply_to = known[-1] if known else None
        references = _references(known)
    status: DeliveryStatus | None = "queued" if d.send_email else None
    values = {
        "ticket_id": t.id,
        "kind": "mail_out" if d.send_email else "note",
        "author_email": d.author_email,
        "author_name": d.author_name,
        "body": d.text,
        "html": d.html,
        "message_id": d.message_id if d.send_email else None,
        "created_at": created_at,
        "command_id": None,
        "internal": d.internal,
        "outbound_id": d.outbound_id if d.send_email else None,
        "to_addrs": [_recipient_json(r) for r in d.to] if d.send_email else None,
        "cc_addrs": [_recipient_json(r) for r in d.cc] if d.send_email else None,
        "signature_alias": d.signature_alias,
        "delivery_status": status,
        "delivery_detail": None,
        "delivery_updated_at": created_at if d.send_email else None,
    }
    comment_id = _inserted_id(conn.execute(_INSERT_COMMENT, values))
    if d.send_email:
        assert d.build_outbound is not None and d.message_id is not None
        conn.execute(
            _INSERT_MESSAGE,
            {"queue": t.queue, "message_id": d.message_id, "ticket_id": t.id, "comment_id": comment_id},
        )
        payload = d.build_outbound(Threading(
            ticket_key=t.key, queue=t.queue, summary=t.summary, comment_id=comment_id,
            in_reply_to=in_reply_to, references=references, created_at=created_at,
        ))
        if not isinstance(payload, bytes) or not payload:
            raise InvalidReply("build_outbound must return the encoded OutboundMail")
        conn.execute(
            _INSERT_OUTBOX,
            {"id": d.outbound_id, "ticket_id": t.id, "comment_id": comment_id, "payload": payload,
             "created_at": created_at, "relayed_at": None},
        )
        _add_recipients(conn, t.id, (*d.to, *d.cc))
    if created_at > t.updated_at:
        conn.execute(_TOUCH_TICKET, {"ticket_id": t.id, "new_updated_at": created_at})
    return Reply(t.key, _thread_entry({**values, "id": comment_id}))


def _references(known: Sequence[str]) -> tuple[str, ...]:
    if len(known) <= _MAX_REFERENCES:
        return tuple(known)
    return (known[0], *known[len(known) - _MAX_REFERENCES + 1:])


def _add_recipients(conn: Connection, ticket_id: int, people: Sequence[Recipient]) -> None:
    known = set(conn.execute(_KNOWN_PARTICIPANTS, {"ticket_id": ticket_id}).scalars())
    rows = []
    for person in people:
        if person.email not in known:
            known.add(person.email)
            rows.append({"ticket_id": ticket_id, "email": person.email, "name": person.name,
                         "member": person.member, "role": "participant"})
    if rows:
        conn.execute(_INSERT_PARTICIPANT, rows)


def _mark_relayed(conn: Connection, ids: list[str], now: datetime) -> int:
    return int(conn.execute(_MARK_RELAYED, {"ids": ids, "relayed": now}).rowcount)


def _parse_delivery(event: Mapping[str, Any]) -> tuple[str, DeliveryStatus, str | None, datetime]:
    try:
        outbound_id = _bounded(event["outbound_id"], "outbound_id", OUTBOUND_ID)
        status = event["status"]
        if status not in ("sent", "retrying", "failed"):
            raise InvalidDeliveryEvent(f"unknown delivery status {status!r}")
        at = event["time"]
        if not isinstance(at, datetime) or at.tzinfo is None:
            raise InvalidDeliveryEvent(f"time must be a timezone-aware datetime: {at!r}")
        parts = [str(event.get("smtp_code") or ""), _text(event.get("smtp_reply") or "")]
        detail = " ".join(p.strip() for p in parts if p.strip()) or None
    except InvalidDeliveryEvent:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidDeliveryEvent(f"malformed DeliveryEvent: {exc!r}") from exc
    return outbound_id, status, detail, at


def _recipient_json(r: Recipient) -> dict[str, Any]:
    return {"email": r.email, "name": r.name, "member": r.member}


def _recipients(value: Any) -> tuple[Recipient, ...]:
    return tuple(
        Recipient(str(r["email"]), r.get("name"), bool(r.get("member"))) for r in value or ()
    )


def _thread_entry(row: Any) -> ThreadEntry:
    """A ThreadEntry from a comments row (or the same-named values of a new one)."""
    mapping = row if isinstance(row, Mapping) else row._mapping
    values = {f.name: mapping[f.name] for f in fields(ThreadEntry) if f.name not in ("to", "cc")}
    values["internal"] = bool(values["internal"])
    return ThreadEntry(**values, to=_recipients(mapping["to_addrs"]), cc=_recipients(mapping["cc_addrs"]))


def _inserted_id(result: CursorResult[Any]) -> int:
    key = result.inserted_primary_key
    assert key is not None, "INSERT did not report its primary key"
    return int(key[0])


def _build(cls: type[_T], row: Any, **overrides: Any) -> _T:
    """A result dataclass from the row's same-named columns, plus ``overrides``."""
    mapping = row._mapping
    values = {f.name: mapping[f.name] for f in fields(cls) if f.name not in overrides}
    return cls(**values, **overrides)


def _check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise ValueError(f"limit and offset must be >= 0, got {limit}, {offset}")


# -- engines ------------------------------------------------------------------


def _sqlite_engine(url: str, busy_timeout_s: float) -> Engine:
    parsed = make_url(url)
    database = parsed.database
    in_memory = database in (None, "", ":memory:")
    if in_memory:
        # One shared connection, or every pooled connection sees its own empty DB.
        engine = create_engine(
            parsed, poolclass=StaticPool, connect_args={"check_same_thread": False}
        )
    else:
        if not parsed.query.get("uri"):
            Path(str(database)).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed)
    busy_timeout_ms = int(busy_timeout_s * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let the "begin" hook below issue BEGIN, instead of the driver's own
        # implicit (and deferred) transaction handling.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get(_SQLITE_BEGIN, "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
