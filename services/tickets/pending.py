"""Replies held back until the mail they answer is applied, for a few seconds at most.

The router keys a mail by the first Message-ID of its References (the thread's
root), else its In-Reply-To. A client that trims References to the parent alone
gets its reply keyed by the parent, while the parent is keyed by the root: the two
travel on different partitions, and the reply may reach the ticketer first. Applied
at once it would open a ticket of its own, and the thread would be one ticket or
two depending on the order partitions happened to deliver in.

So a reply that names only Message-IDs deskmail does not know is held back
(``hold``): its record is kept in ``pending_replies`` with the time it is due, and
each Message-ID it answers in ``awaited_messages``. When a mail with one of those
Message-IDs is applied, ``arrived`` hands back the held replies, which the ticketer
applies right after it, so they thread as if they had come in order. A reply whose
mail never comes is applied when it is due (``due``) and opens its ticket then; that
ticket still awaits the mail (``apply.py``: a late parent joins it).

Held replies live in the database, so a restart loses none; applying one deletes
its row in the same transaction (``release``), and the command's id keeps a second
apply a duplicate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import bindparam, delete, insert, select
from sqlalchemy.engine import Connection

from services.tickets.driver import Executor
from services.tickets.tables import awaited_messages, pending_replies

__all__ = ["Hold", "arrived", "due", "hold", "is_held", "release"]

MAX_AWAITED = 50  # Message-IDs one reply may wait for (References keeps at most 50)

_HELD = select(pending_replies.c.id).where(pending_replies.c.command_id == bindparam("command_id"))
_INSERT_HELD = insert(pending_replies)
_INSERT_AWAITED = insert(awaited_messages)
_AWAITED_BY_HELD = (
    select(pending_replies.c.id, pending_replies.c.payload)
    .select_from(awaited_messages.join(pending_replies, pending_replies.c.id == awaited_messages.c.pending_id))
    .where(awaited_messages.c.queue == bindparam("queue"), awaited_messages.c.message_id == bindparam("message_id"))
    .order_by(pending_replies.c.id)
)
_FORGET_AWAITED = delete(awaited_messages).where(
    awaited_messages.c.pending_id.in_(bindparam("pending_ids", expanding=True)))
_FORGET_HELD = delete(pending_replies).where(pending_replies.c.id == bindparam("pending_id"))


@dataclass(frozen=True)
class Hold:
    """How to hold a reply back: its record as consumed, and until when."""

    payload: bytes
    until: datetime


def is_held(sql: Executor, command_id: str) -> bool:
    return sql.execute(_HELD, {"command_id": command_id}).first() is not None


def hold(sql: Executor, command_id: str, queue: str, message_ids: Sequence[str], how: Hold) -> None:
    """Keep the reply ``command_id`` until one of ``message_ids`` arrives or ``how.until``."""
    result = sql.execute(_INSERT_HELD, {"command_id": command_id, "queue": queue, "payload": how.payload,
                                        "due_at": how.until})
    pending_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
    sql.execute(_INSERT_AWAITED, [
        {"queue": queue, "message_id": m, "ticket_id": None, "pending_id": pending_id}
        for m in dict.fromkeys(message_ids[:MAX_AWAITED])
    ])


def arrived(sql: Executor, queue: str, message_id: str) -> list[bytes]:
    """The held replies that await ``message_id`` in ``queue``, oldest first; they
    await nothing else from now on (they are applied next)."""
    rows = sql.execute(_AWAITED_BY_HELD, {"queue": queue, "message_id": message_id}).all()
    if rows:
        sql.execute(_FORGET_AWAITED, {"pending_ids": [r.id for r in rows]})
    return [bytes(r.payload) for r in dict((r.id, r) for r in rows).values()]


def release(sql: Executor, command_id: str) -> None:
    """The held reply ``command_id`` is being applied: forget it (in that transaction)."""
    row = sql.execute(_HELD, {"command_id": command_id}).first()
    if row is None:
        return
    sql.execute(_FORGET_AWAITED, {"pending_ids": [row.id]})
    sql.execute(_FORGET_HELD, {"pending_id": row.id})


def due(conn: Connection, now: datetime, limit: int) -> list[bytes]:
    """Held replies whose wait is over, oldest first."""
    rows = conn.execute(
        select(pending_replies.c.payload).where(pending_replies.c.due_at <= now)
        .order_by(pending_replies.c.due_at, pending_replies.c.id).limit(limit)
    ).all()
    return [bytes(r.payload) for r in rows]
