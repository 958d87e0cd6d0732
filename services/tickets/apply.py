"""Applying one TicketCommand: the steps, all on the caller's transaction.

``apply_command`` is idempotent: a command already applied, an IMAP message
already received (mailbox, UIDVALIDITY, UID), or a Message-ID already known in
the queue answers ``duplicate`` and changes nothing. A ``comment`` is threaded
by In-Reply-To/References within its queue, then by the ticket key in the
subject when its author is a participant or a member (``_resolve_thread``);
one that finds no thread opens a ticket, unless it is ``reply_only`` (then it
is rejected). A bounce whose report names the Message-ID of mail deskmail sent
from the queue goes onto that mail's ticket, whatever its own headers, and a
permanent one marks that outgoing comment ``bounced`` (``_after_bounce``). A
mail that opens a ticket gets what the routing rules set (``Command.rules``:
assignee, priority, tags, another queue); a comment does not.
Ticket numbers come from a counter row locked by the transaction,
so they have no gaps. A unique-constraint race with a concurrent ticketer
raises ``IntegrityError`` here; the store re-runs the command once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any, Literal

from sqlalchemy.engine import Connection

from services.common.mailrules import format_ticket_key
from services.common.suspended import released_by
from services.tickets import statements as st
from services.tickets import pending, ratelimit, suspended, workflow
from services.tickets.commands import AttachmentFile, Command
from services.tickets.driver import Executor
from services.tickets.rows import inserted_id
from services.tickets.views import Applied, Role

# Only the newest References are searched: real threads are short, and a
# hostile header must not turn into a huge IN list.
_MAX_THREAD_CANDIDATES = 200
_MAX_AWAITED = 50  # Message-IDs one mail may make its ticket await (References keeps at most 50)


@dataclass(frozen=True)
class _Ticket:
    id: int
    key: str
    updated_at: datetime
    status: str


ClosedReply = Literal["follow_up", "reopen"]
# Mail a machine wrote (router classification): stored on its ticket, never a trigger.
MACHINE_MAIL = frozenset({"auto_reply", "bounce"})
_MACHINE_WORDS = {"auto_reply": "an automatic reply", "bounce": "a delivery status notification"}


def apply_command(conn: Connection, c: Command, closed_reply: ClosedReply = "follow_up",
                  limits: ratelimit.Limits = ratelimit.NONE, hold: pending.Hold | None = None) -> Applied:
    """Apply ``c`` on ``conn``'s transaction (the caller commits). Mail that threads
    onto a closed ticket opens a follow-up ticket linked to it, or with
    ``closed_reply="reopen"`` reopens it (the queue's ``closed_reply`` setting).
    Mail from outside the organization past ``limits`` is a rejection
    (``rate_limited``).
    A release of suspended mail marks its rejection released with the ticket it
    became or wrote into (also when that mail turns out to be known already).
    With ``hold``, a reply to mail not known yet is held back (``deferred``,
    services/tickets/pending.py); without it, ``c`` is applied now (a held reply
    whose mail came, or whose wait is over). A mail that is applied hands back the
    held replies that awaited it (``Applied.released``).

    The statements run on ``conn``'s DBAPI cursor (services/tickets/driver.py), in
    the transaction or SAVEPOINT the caller began; nothing here begins or commits."""
    with Executor(conn) as sql:
        return apply_on(sql, c, closed_reply, limits, hold)


def apply_on(sql: Executor, c: Command, closed_reply: ClosedReply = "follow_up",
             limits: ratelimit.Limits = ratelimit.NONE, hold: pending.Hold | None = None) -> Applied:
    """``apply_command`` on an executor of the caller's transaction."""
    if hold is None:
        pending.release(sql, c.id)
    applied = _apply(sql, c, closed_reply, limits, hold)
    if applied.outcome in ("created", "commented"):
        released = pending.arrived(sql, c.queue or "", c.message_id)
        if released:
            applied = replace(applied, released=tuple(released))
    if c.classification == "bounce" and applied.outcome != "duplicate" and applied.bounce is None:
        applied = replace(applied, bounce="unmatched")
    if c.release_of is not None and applied.ticket_key is not None:
        suspended.mark_released(sql, c.release_of, applied.ticket_key, released_by(c.reason),
                                datetime.now(timezone.utc))
    return applied


def _apply(sql: Executor, c: Command, closed_reply: ClosedReply, limits: ratelimit.Limits,
           hold: pending.Hold | None) -> Applied:
    duplicate = _find_duplicate(sql, c)
    if duplicate is not None:
        return duplicate
    if c.action == "reject":
        _insert_rejection(sql, c)
        return Applied("rejected", None, None)
    reported = _reported_mail(sql, c)
    if reported is not None:  # a bounce belongs to the mail it reports on, whatever its headers say
        ticket: _Ticket | None = _Ticket(id=reported.id, key=reported.key, updated_at=reported.updated_at,
                                         status=reported.status)
    else:
        ticket = _resolve_thread(sql, c) if c.action == "comment" else None
    # An admin's release overrides the refusal of machine mail too (services/common/suspended.py).
    machine = c.classification in MACHINE_MAIL and c.release_of is None
    if ticket is None and reported is None and not c.reply_only:
        # The mail a ticket's opening reply answered, come later from another
        # partition (or another answer to that same mail): it joins that ticket.
        ticket = _awaiting(sql, c)
    if (ticket is None and hold is not None and c.action == "comment" and not c.reply_only and not machine
            and c.release_of is None and _thread_candidates(c)):
        # It answers mail deskmail does not know yet, which may be on its way.
        if not pending.is_held(sql, c.id):
            pending.hold(sql, c.id, c.queue or "", _thread_candidates(c), hold)
        return Applied("deferred", None)
    if ticket is None and (c.reply_only or machine):
        # An outsider may answer a known thread, not open a ticket; an
        # auto-reply or a bounce opens none either.
        if sql.execute(st.REJECTED, {"command_id": c.id}).first():
            return Applied("duplicate", None, None)
        if machine and c.reason is None:
            c = replace(c, reason=f"{c.classification}: {_MACHINE_WORDS[c.classification]} on no thread deskmail knows")
        _insert_rejection(sql, c)
        return Applied("rejected", None, None)
    opens_ticket = ticket is None or (ticket.status == "closed" and closed_reply == "follow_up")
    if opens_ticket and c.ticket_queue != c.queue:
        # A routing rule moved it: the queue it opens in may know the mail already.
        known = sql.execute(st.KNOWN_MESSAGE, {"queue": c.ticket_queue, "message_id": c.message_id}).first()
        if known is not None:
            return Applied("duplicate", known.ticket_key, known.comment_id)
    limited = _rate_limited(sql, c, ticket, limits)
    if limited is not None:
        if sql.execute(st.REJECTED, {"command_id": c.id}).first():
            return Applied("duplicate", None, None)
        _insert_rejection(sql, replace(c, reason=limited))
        return Applied("rejected", None, None, reason=limited)
    if machine and ticket is not None:
        # Recorded on the ticket, whatever its status, and it changes nothing:
        # no reopening, no follow-up, no "customer replied".
        applied = _add_comment(sql, c, ticket)
        _record(sql, c, ticket.id, applied)
        return _after_bounce(sql, c, reported, applied)
    if ticket is not None and ticket.status == "closed" and closed_reply == "follow_up":
        ticket_id, applied = _create_ticket(sql, c, follow_up_of=ticket)
    elif ticket is None:
        ticket_id, applied = _create_ticket(sql, c)
        if c.action == "comment":  # a reply to mail not known (yet): await it
            _await(sql, c, ticket_id)
    else:
        if ticket.status == "closed":
            workflow.reopen(sql, ticket.id, _event_time(c))
        ticket_id, applied = ticket.id, _add_comment(sql, c, ticket)
    _record(sql, c, ticket_id, applied)
    return _after_bounce(sql, c, reported, applied)


def _reported_mail(sql: Executor, c: Command) -> Any:
    """The outgoing comment (with its ticket) a bounce reports on, or None: mail
    deskmail sent from the command's queue with the Message-ID the report names.
    Only mail deskmail sent counts: a report naming mail deskmail received is a
    bounce like any other, threaded by its own headers."""
    if c.action != "comment" or c.bounce is None or c.bounce.original_message_id is None:
        return None
    return sql.execute(st.OUTGOING_BY_MESSAGE_ID,
                        {"message_id": c.bounce.original_message_id, "queue": c.queue}).first()


def _after_bounce(sql: Executor, c: Command, reported: Any, applied: Applied) -> Applied:
    """A bounce stored on the ticket of the mail it reports on marks that mail
    ``bounced`` when the failure is permanent; a delay warning marks nothing."""
    if reported is None or c.bounce is None or applied.ticket_key != reported.key:
        return applied  # (a follow-up ticket: only a released bounce is applied as a person's mail)
    if not c.bounce.permanent:
        return replace(applied, bounce="delayed")
    sql.execute(st.MARK_BOUNCED, {"comment_id": reported.comment_id, "new_detail": c.bounce.detail(),
                                   "new_updated_at": c.received_at})
    return replace(applied, bounce="bounced")


def _rate_limited(sql: Executor, c: Command, ticket: _Ticket | None, limits: ratelimit.Limits) -> str | None:
    """The reason to set ``c`` aside as a flood, or None. Members are never
    limited, nor is mail an admin released."""
    if c.author.member or c.release_of is not None:
        return None
    reason = ratelimit.check_sender(sql, limits, c.author.email, c.received_at)
    if reason is None and ticket is not None:
        reason = ratelimit.check_ticket(sql, limits, ticket.id, ticket.key, c.received_at)
    return reason


def _event_time(c: Command) -> datetime:
    """When a mail's effect on a ticket's fields is recorded: when deskmail applies
    it (a replayed old mail changes the ticket now, not in the past)."""
    return max(datetime.now(timezone.utc), c.received_at)


def _find_duplicate(sql: Executor, c: Command) -> Applied | None:
    row = sql.execute(
        st.SEEN_BEFORE,
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
    if c.action == "reject" and sql.execute(st.REJECTED, {"command_id": c.id}).first():
        return Applied("duplicate", None, None)
    return None


def _insert_rejection(sql: Executor, c: Command) -> None:
    # A rejection does not mark the mail as processed: replaying the topic after
    # a rule fix may still turn the same command id into a ticket.
    sql.execute(
        st.INSERT_REJECTION,
        {
            "command_id": c.id,
            "mailbox": c.mailbox,
            "queue": c.queue,
            "classification": c.classification,
            "author_email": c.author.email,
            "subject": c.subject,
            "message_id": c.message_id,
            "reason": c.reason,
            "reason_code": suspended.stored_reason_code(c.reason),
            "raw_ref": c.raw_ref,
            "received_at": c.received_at,
            "recorded_at": datetime.now(timezone.utc),
        },
    )


def _record(sql: Executor, c: Command, ticket_id: int, applied: Applied) -> None:
    if not c.author.member:
        ratelimit.record(sql, c.author.email, ticket_id, c.received_at)
    sql.execute(
        st.INSERT_PROCESSED,
        {
            "command_id": c.id,
            "outcome": applied.outcome,
            "ticket_key": applied.ticket_key,
            "comment_id": applied.comment_id,
            "applied_at": datetime.now(timezone.utc),
        },
    )
    if c.uid > 0:
        sql.execute(
            st.INSERT_RECEIPT,
            {
                "mailbox": c.mailbox,
                "uidvalidity": c.uidvalidity,
                "uid": c.uid,
                "command_id": c.id,
                "ticket_id": ticket_id,
            },
        )


def _thread_candidates(c: Command) -> list[str]:
    """The Message-IDs ``c`` answers: In-Reply-To, then References newest first."""
    candidates: list[str] = []
    for message_id in (c.in_reply_to, *reversed(c.references)):
        if message_id and message_id not in candidates:
            candidates.append(message_id)
    return candidates[:_MAX_THREAD_CANDIDATES]


def _awaiting(sql: Executor, c: Command) -> _Ticket | None:
    """The ticket that awaits ``c``: opened by a reply to ``c`` that was applied
    first (partitions deliver out of order: a reply whose References name only its
    parent is keyed by the parent, the parent by its own root), or by another reply
    to a mail ``c`` answers too. Without it, the order the partitions happened to
    deliver in would decide whether the thread is one ticket or two. ``c``'s own
    Message-ID is then no longer awaited; the Message-IDs it answers that are not
    known yet become awaited by the ticket in turn."""
    wanted = [c.message_id, *_thread_candidates(c)]
    # Like a key in a subject, an awaited Message-ID admits only the ticket's
    # participants and members: a stranger's reply naming a Message-ID to come
    # does not pull someone else's mail into the stranger's ticket.
    rows = [r for r in sql.execute(st.AWAITING, {"queue": c.queue, "message_ids": wanted})
            if _may_name(sql, c, r.id)]
    if not rows:
        return None
    row = next((r for r in rows if r.message_id == c.message_id), rows[0])
    sql.execute(st.ARRIVED, {"queue": c.queue, "message_id": c.message_id})
    if c.action == "create" or row.message_id == c.message_id:
        _await(sql, c, row.id)
    return _Ticket(id=row.id, key=row.key, updated_at=row.updated_at, status=row.status)


def _await(sql: Executor, c: Command, ticket_id: int) -> None:
    """Record that ``ticket_id`` awaits the mails ``c`` answers which deskmail does not know."""
    candidates = _thread_candidates(c)[:_MAX_AWAITED]
    if not candidates:
        return
    known = {r.message_id for r in sql.execute(st.THREAD_MATCHES, {"message_ids": candidates, "queue": c.queue})}
    known |= {r.message_id for r in sql.execute(st.AWAITING, {"queue": c.queue, "message_ids": candidates})
              if r.id == ticket_id}
    rows = [{"queue": c.queue, "message_id": m, "ticket_id": ticket_id} for m in candidates if m not in known]
    if rows:
        sql.execute(st.INSERT_AWAITED, rows)


def _resolve_thread(sql: Executor, c: Command) -> _Ticket | None:
    """The ticket ``c`` writes into, or None (see "Threading: who may write into
    a ticket" in docs/security.md):

    - In-Reply-To, then References newest first, naming a Message-ID of a ticket
      of the command's queue: never another queue's, whatever the headers say.
      A ``reply_only`` command (an outsider on a members-only address) counts
      only the Message-IDs of mail deskmail sent, not of mail it received;
    - else the ticket key in the subject, of this queue, if the author may write
      into that ticket by name (``_may_name``). A ``reply_only`` command never
      threads by key.
    """
    candidates = _thread_candidates(c)
    row: Any = None  # a Row from either query below
    if candidates:
        matches = sql.execute(st.THREAD_MATCHES, {"message_ids": candidates, "queue": c.queue}).all()
        if c.reply_only:
            matches = [r for r in matches if r.kind == "mail_out"]
        rank = {message_id: i for i, message_id in enumerate(candidates)}
        row = min(matches, key=lambda r: (rank[r.message_id], r.id), default=None)
    if row is None and c.ticket_key_hint is not None and not c.reply_only:
        found = sql.execute(st.TICKET_BY_KEY, {"key": c.ticket_key_hint}).first()
        if found is not None and found.queue == c.queue and _may_name(sql, c, found.id):
            row = found
    if row is None:
        return None
    return _Ticket(id=row.id, key=row.key, updated_at=row.updated_at, status=row.status)


def _may_name(sql: Executor, c: Command, ticket_id: int) -> bool:
    """A key in a subject is easy to guess: it admits only the ticket's
    participants and the organization's members. The router sends a member's
    comment only for a queue the member has access to (it rejects the others),
    so ``author.member`` here means "a member with access to this queue"; the
    flag is what the router read from the From address until sender
    authentication proves it."""
    if c.author.member:
        return True
    email = c.author.email.strip().lower()
    return bool(email) and sql.execute(st.IS_PARTICIPANT, {"ticket_id": ticket_id, "email": email}).first() is not None


def _create_ticket(sql: Executor, c: Command, follow_up_of: _Ticket | None = None) -> tuple[int, Applied]:
    """A new ticket in ``c.ticket_queue``, with what the routing rules set."""
    queue = c.ticket_queue
    assert queue is not None
    rules = c.rules
    number = _next_number(sql, queue)
    key = format_ticket_key(queue, number)
    result = sql.execute(
        st.INSERT_TICKET,
        {
            "key": key,
            "queue": queue,
            "number": number,
            "summary": c.subject.strip() or "(no subject)",
            "description": c.text,  # a new ticket keeps the whole text, quotes and all
            "description_html": c.html,
            "charset_detected": c.charset_detected,
            "type": c.ticket_type,
            "components": list(c.components),
            "author_email": c.author.email,
            "author_name": c.author.name,
            "author_member": c.author.member,
            "author_verified": c.author.verified,
            "status": "open",
            "created_at": c.received_at,
            "updated_at": c.received_at,
            "command_id": c.id,
            "mailbox": c.mailbox,
            "awaiting_reply": not c.author.member,
            "follow_up_of": follow_up_of.id if follow_up_of is not None else None,
            "assignee": rules.assignee,
            "priority": rules.priority,
            "matched_rules": list(rules.matched) or None,
        },
    )
    ticket_id = inserted_id(result)
    workflow.count_new_ticket(sql, queue, ticket_id, c.components, rules.assignee)
    if rules.assignee is not None:
        workflow.record_rule_assignee(sql, ticket_id, rules.assignee, rules.assignee_rule, c.received_at)
    if rules.tags:
        sql.execute(st.INSERT_TAG, [{"ticket_id": ticket_id, "tag": tag} for tag in rules.tags])
    if follow_up_of is not None:
        workflow.record_follow_up(sql, follow_up_of.id, key, _event_time(c))
    _register_message(sql, c, ticket_id, None, queue)
    _add_participants(sql, ticket_id, c, author_role="author", known=set())
    _add_attachments(sql, c.attachments, ticket_id, None)
    return ticket_id, Applied("created", key, None)


def _next_number(sql: Executor, queue: str) -> int:
    """Next ticket number of the queue: gap-free, because the counter row is
    locked until this transaction ends and rolls back with it."""
    number = sql.execute(st.BUMP_COUNTER, {"counter_queue": queue}).scalar_one_or_none()
    if number is None:
        # First ticket of the queue. ON CONFLICT DO NOTHING: a concurrent
        # ticketer may be inserting the same row; either way it then exists.
        sql.execute(st.INSERT_COUNTER[sql.dialect_name], {"queue": queue, "last_number": 0})
        number = sql.execute(st.BUMP_COUNTER, {"counter_queue": queue}).scalar_one()
    return int(number)


def _add_comment(sql: Executor, c: Command, ticket: _Ticket) -> Applied:
    body, quoted = c.reply_parts()
    result = sql.execute(
        st.INSERT_COMMENT,
        {
            "ticket_id": ticket.id,
            "kind": "mail_in",
            "author_email": c.author.email,
            "author_name": c.author.name,
            "author_verified": c.author.verified,
            "body": body,
            "quoted": quoted,
            "html": c.html,
            "charset_detected": c.charset_detected,
            "automatic": c.classification in MACHINE_MAIL,
            "message_id": c.message_id,
            "created_at": c.received_at,
            "command_id": c.id,
        },
    )
    comment_id = inserted_id(result)
    _register_message(sql, c, ticket.id, comment_id, c.queue)  # threading kept it in its queue
    known = set(sql.execute(st.KNOWN_PARTICIPANTS, {"ticket_id": ticket.id}).scalars())
    _add_participants(sql, ticket.id, c, author_role="participant", known=known)
    _add_attachments(sql, c.attachments, ticket.id, comment_id)
    if c.received_at > ticket.updated_at and c.classification not in MACHINE_MAIL:
        sql.execute(st.TOUCH_TICKET, {"ticket_id": ticket.id, "new_updated_at": c.received_at})
    if not c.author.member and c.classification not in MACHINE_MAIL:
        workflow.after_customer_mail(sql, ticket.id, _event_time(c))
    return Applied("commented", ticket.key, comment_id)


def _register_message(sql: Executor, c: Command, ticket_id: int, comment_id: int | None, queue: str | None) -> None:
    """``queue``: the ticket's, so replies to the mail thread where the ticket is."""
    sql.execute(
        st.INSERT_MESSAGE,
        {"queue": queue, "message_id": c.message_id, "ticket_id": ticket_id, "comment_id": comment_id},
    )


def _add_participants(
    sql: Executor, ticket_id: int, c: Command, author_role: Role, known: set[str]
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
        sql.execute(st.INSERT_PARTICIPANT, rows)


def _add_attachments(
    sql: Executor, files: Sequence[AttachmentFile], ticket_id: int, comment_id: int | None
) -> None:
    if files:
        sql.execute(
            st.INSERT_ATTACHMENT,
            [
                {"ticket_id": ticket_id, "comment_id": comment_id, "filename": f.filename,
                 "content_type": f.content_type, "size": f.size, "sha256": f.sha256,
                 "blob_ref": f.blob_ref, "content_id": f.content_id}
                for f in files
            ],
        )
