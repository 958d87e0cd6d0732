"""The statements of the hot paths, built once.

Building and cache-keying a statement costs more than running it on SQLite,
and ``apply`` runs about ten per command; so ``apply`` and the outgoing-mail
writes use these prebuilt statements with bind parameters. The queries for
pages and the CLI (``queries``) build theirs inline: they run far less often.
"""

from __future__ import annotations

from sqlalchemy import bindparam, delete, func, insert, literal, select, union_all, update
from sqlalchemy.dialects import postgresql, sqlite

from services.tickets.tables import (
    attachments,
    awaited_messages,
    comments,
    messages,
    outbox,
    participants,
    processed_commands,
    queue_counters,
    receipts,
    rejections,
    ticket_tags,
    tickets,
)
from services.tickets.views import PENDING_STATUSES

_pc = processed_commands
# One round trip answers "seen before?" three ways, in order of precedence: the
# command id; the IMAP receipt (receipts hold only uid > 0, so uid 0 never
# matches); the Message-ID in the queue, which also covers a re-fetch after a
# UIDVALIDITY change and the same mail delivered to two mailboxes of the queue.
SEEN_BEFORE = (
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
# A Message-ID known in one queue: a mail a routing rule moved to another queue is
# a duplicate there too (SEEN_BEFORE looks in the command's own queue).
KNOWN_MESSAGE = (
    select(tickets.c.key.label("ticket_key"), messages.c.comment_id)
    .select_from(messages.join(tickets, tickets.c.id == messages.c.ticket_id))
    .where(messages.c.queue == bindparam("queue"), messages.c.message_id == bindparam("message_id"))
)
INSERT_TAG = insert(ticket_tags)
REJECTED = select(rejections.c.id).where(rejections.c.command_id == bindparam("command_id"))
# Tickets of the command's queue only: threading never crosses queues. The
# comment's kind tells deskmail's own mail (mail_out) from mail it received.
# The queue is matched on the messages row, which holds its ticket's queue (both
# inserts write the ticket's; no statement moves a ticket to another queue): with
# the condition on tickets.queue instead, PostgreSQL's generic plan for a statement
# prepared while the tables were small scanned every ticket of the queue for each
# lookup (tests/integration/test_store_plans.py).
THREAD_MATCHES = (
    select(messages.c.message_id, comments.c.kind, tickets.c.id, tickets.c.key, tickets.c.updated_at,
           tickets.c.status)
    .select_from(
        messages.join(tickets, tickets.c.id == messages.c.ticket_id).outerjoin(
            comments, comments.c.id == messages.c.comment_id
        )
    )
    .where(
        messages.c.queue == bindparam("queue"),
        messages.c.message_id.in_(bindparam("message_ids", expanding=True)),
    )
)
# The tickets awaiting one of these Message-IDs in the queue (a reply to them opened
# the ticket before they came), oldest first.
AWAITING = (
    select(awaited_messages.c.id.label("awaited_id"), awaited_messages.c.message_id, tickets.c.id, tickets.c.key,
           tickets.c.updated_at, tickets.c.status)
    .select_from(awaited_messages.join(tickets, tickets.c.id == awaited_messages.c.ticket_id))
    .where(
        awaited_messages.c.queue == bindparam("queue"),
        awaited_messages.c.message_id.in_(bindparam("message_ids", expanding=True)),
    )
    .order_by(awaited_messages.c.id)
)
INSERT_AWAITED = insert(awaited_messages)
ARRIVED = delete(awaited_messages).where(
    awaited_messages.c.queue == bindparam("queue"), awaited_messages.c.message_id == bindparam("message_id"),
    awaited_messages.c.ticket_id.is_not(None))
# The outgoing mail a bounce reports on: mail deskmail sent from the command's queue,
# by its Message-ID, and the ticket it belongs to.
OUTGOING_BY_MESSAGE_ID = (
    select(comments.c.id.label("comment_id"), tickets.c.id, tickets.c.key, tickets.c.updated_at, tickets.c.status)
    .select_from(messages.join(comments, comments.c.id == messages.c.comment_id)
                 .join(tickets, tickets.c.id == messages.c.ticket_id))
    .where(
        messages.c.message_id == bindparam("message_id"),
        messages.c.queue == bindparam("queue"),
        comments.c.kind == "mail_out",
    )
)
# bounced is final: the first bounce of a mail names why it failed, a second one
# (another recipient, a late copy) changes nothing.
MARK_BOUNCED = (
    update(comments)
    .where(comments.c.id == bindparam("comment_id"), comments.c.delivery_status != "bounced")
    .values(
        delivery_status="bounced",
        delivery_detail=bindparam("new_detail"),
        delivery_updated_at=bindparam("new_updated_at"),
    )
)
# By the unique key alone; the caller compares the queue. With ``queue = :queue``
# in the WHERE clause, the same stale generic plan took a queue index and filtered
# every ticket of the queue by key.
TICKET_BY_KEY = select(tickets.c.id, tickets.c.key, tickets.c.updated_at, tickets.c.status,
                       tickets.c.queue).where(tickets.c.key == bindparam("key"))
IS_PARTICIPANT = select(participants.c.id).where(
    participants.c.ticket_id == bindparam("ticket_id"), participants.c.email == bindparam("email")
)
BUMP_COUNTER = (
    update(queue_counters)
    .where(queue_counters.c.queue == bindparam("counter_queue"))
    .values(last_number=queue_counters.c.last_number + 1)
    .returning(queue_counters.c.last_number)
)
INSERT_COUNTER = {
    "postgresql": postgresql.insert(queue_counters).on_conflict_do_nothing(
        index_elements=[queue_counters.c.queue]
    ),
    "sqlite": sqlite.insert(queue_counters).on_conflict_do_nothing(
        index_elements=[queue_counters.c.queue]
    ),
}
TOUCH_TICKET = (
    update(tickets)
    .where(tickets.c.id == bindparam("ticket_id"))
    .values(updated_at=bindparam("new_updated_at"))
)
KNOWN_PARTICIPANTS = select(participants.c.email).where(
    participants.c.ticket_id == bindparam("ticket_id")
)
INSERT_TICKET = insert(tickets)
INSERT_COMMENT = insert(comments)
INSERT_MESSAGE = insert(messages)
INSERT_PARTICIPANT = insert(participants)
INSERT_ATTACHMENT = insert(attachments)
INSERT_PROCESSED = insert(processed_commands)
INSERT_RECEIPT = insert(receipts)
INSERT_REJECTION = insert(rejections)
INSERT_OUTBOX = insert(outbox)
TICKET_FOR_REPLY = select(
    tickets.c.id, tickets.c.key, tickets.c.queue, tickets.c.summary, tickets.c.updated_at, tickets.c.created_at,
    tickets.c.first_response_at,
).where(tickets.c.key == bindparam("key"))
# An agent mailed the customer: nobody waits for an answer, and the first such mail is the first response.
ANSWERED = (
    update(tickets)
    .where(tickets.c.id == bindparam("ticket_id"))
    .values(awaiting_reply=False, first_response_at=func.coalesce(tickets.c.first_response_at,
                                                                  bindparam("answered_at")))
)
TICKET_MESSAGE_IDS = (
    select(messages.c.message_id)
    .where(messages.c.ticket_id == bindparam("ticket_id"))
    .order_by(messages.c.id)
)
PENDING_OUTBOX = (
    select(
        outbox.c.id, tickets.c.key.label("ticket_key"), outbox.c.comment_id, outbox.c.payload,
        outbox.c.created_at, outbox.c.relayed_at,
    )
    .join(tickets, tickets.c.id == outbox.c.ticket_id)
    .where(outbox.c.relayed_at.is_(None))
    .order_by(outbox.c.created_at, outbox.c.id)
)
MARK_RELAYED = (
    update(outbox)
    .where(outbox.c.id.in_(bindparam("ids", expanding=True)), outbox.c.relayed_at.is_(None))
    .values(relayed_at=bindparam("relayed"))
)
# A final status (sent, failed, bounced) is never overwritten: the WHERE admits
# only comments still queued or retrying.
RECORD_DELIVERY = (
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
