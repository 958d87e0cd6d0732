"""Reads for the ticket page, the JSON API and the CLI, each on a connection
the store opens (and closes) for it.

These run far less often than ``apply``, so they build their statements inline.
Lists are newest first (by mail time, then by insertion), paged by ``limit``
and ``offset``, which the store has checked before it connected.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from services.tickets import workflow
from services.tickets.rows import build, thread_entry
from services.tickets.tables import attachments, comments, messages, participants, rejections, ticket_tags, tickets
from services.tickets.views import AttachmentInfo, Participant, Rejection, TicketDetail, TicketSummary


def count_tickets(conn: Connection, queue: str | None) -> int:
    query = select(func.count()).select_from(tickets)
    if queue is not None:
        query = query.where(tickets.c.queue == queue)
    return int(conn.execute(query).scalar_one())


def list_tickets(conn: Connection, queue: str | None, limit: int, offset: int) -> list[TicketSummary]:
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
    rows = conn.execute(query.limit(limit).offset(offset)).all()
    return [
        build(TicketSummary, r, components=tuple(r.components), comment_count=int(r.comment_count))
        for r in rows
    ]


def get_ticket(conn: Connection, key: str) -> TicketDetail | None:
    """The ticket with its participants, thread, attachments and Message-IDs;
    call before anything else ran on ``conn`` (it sets the isolation level)."""
    if conn.dialect.name == "postgresql":
        # One snapshot for the reads below.
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
    linked = tickets.alias("linked")
    follow_up_of = None
    if t.follow_up_of is not None:
        follow_up_of = conn.execute(select(linked.c.key).where(linked.c.id == t.follow_up_of)).scalar()
    follow_ups = conn.execute(
        select(linked.c.key).where(linked.c.follow_up_of == t.id).order_by(linked.c.id)
    ).scalars().all()
    tags = conn.execute(
        select(ticket_tags.c.tag).where(ticket_tags.c.ticket_id == t.id).order_by(ticket_tags.c.tag)
    ).scalars().all()
    return build(
        TicketDetail,
        t,
        components=tuple(t.components),
        participants=tuple(build(Participant, p) for p in people),
        thread=tuple(thread_entry(e) for e in entries),
        attachments=tuple(build(AttachmentInfo, f) for f in files),
        message_ids=tuple(message_ids),
        follow_up_of=follow_up_of,
        follow_ups=tuple(follow_ups),
        events=workflow.events_of(conn, t.id),
        tags=tuple(tags),
        matched_rules=tuple(t.matched_rules or ()),
    )


def list_rejections(conn: Connection, mailbox: str | None, limit: int, offset: int) -> list[Rejection]:
    query = select(rejections)
    if mailbox is not None:
        query = query.where(rejections.c.mailbox == mailbox)
    query = query.order_by(rejections.c.received_at.desc(), rejections.c.id.desc())
    rows = conn.execute(query.limit(limit).offset(offset)).all()
    return [build(Rejection, r) for r in rows]


def count_by_queue(conn: Connection) -> dict[str, int]:
    query = select(tickets.c.queue, func.count()).group_by(tickets.c.queue)
    return {queue: int(n) for queue, n in conn.execute(query).all()}


def ticket_mailbox(conn: Connection, key: str) -> str | None:
    value = conn.execute(select(tickets.c.mailbox).where(tickets.c.key == key)).scalar()
    return None if value is None else str(value)
