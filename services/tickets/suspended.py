"""Suspended mail in the tickets database: the ``rejections`` rows, listed,
released and expired.

A rejection is recorded by ``apply`` (the router's ``reject``, or a
``reply_only`` mail without a known thread) with the raw mail's blob reference
and its reason code. An admin's release comes back through the pipeline as a
command named ``release:<command id>``; applying it marks the rejection
released in the same transaction (``mark_released``), so the row says which
ticket it became the moment that ticket exists, and never before.

The list is newest first by mail time, paged by keyset: the cursor holds the
time and id of the last row shown, and each filter (queue; queue and reason
code) has an index that ends with (received_at, id). Retention deletes rows by
mail time through the ``received_at`` index and reports which blobs no
remaining row refers to (the ``raw_ref`` index), for the caller to delete.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import bindparam, delete, func, literal, select, tuple_, update
from sqlalchemy.engine import Connection

from services.common.suspended import reason_code
from services.tickets.driver import Executor
from services.tickets.listing import BadCursor
from services.tickets.rows import build
from services.tickets.tables import REASON_CODE, UtcDateTime, rejections

MAX_LIMIT = 500
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CURSOR = re.compile(r"(-?\d{1,20})\.(\d{1,18})")
_MARK_RELEASED = (
    update(rejections)
    .where(rejections.c.command_id == bindparam("rejected_command"), rejections.c.released_at.is_(None))
    .values(released_at=bindparam("at"), released_by=bindparam("by"), released_ticket=bindparam("ticket_key"))
)


@dataclass(frozen=True)
class SuspendedMail:
    """One rejection as the suspended list shows it."""

    id: int
    command_id: str
    mailbox: str
    queue: str | None
    classification: str
    author_email: str
    subject: str
    message_id: str
    reason: str | None
    reason_code: str
    received_at: datetime
    recorded_at: datetime
    raw_ref: str | None  # None: recorded before originals were kept; cannot be released
    released_at: datetime | None
    released_by: str | None
    released_ticket: str | None


@dataclass(frozen=True)
class SuspendedPage:
    items: tuple[SuspendedMail, ...]
    next_cursor: str | None  # None: this was the last page


@dataclass(frozen=True)
class Expired:
    """One round of retention: rows deleted, and the blobs nothing refers to any more."""

    deleted: int
    unreferenced: tuple[str, ...]


def stored_reason_code(reason: str | None) -> str:
    return reason_code(reason)[:REASON_CODE]


def page(conn: Connection, queues: Sequence[str] | None, code: str | None, limit: int,
         cursor: str | None) -> SuspendedPage:
    """Newest first; ``queues`` None: every row (rows without a queue too). Raises BadCursor."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
    if queues is not None and not queues:
        return SuspendedPage((), None)
    query = select(rejections)
    if queues is not None:
        query = query.where(rejections.c.queue.in_(sorted(set(queues))))
    if code is not None:
        query = query.where(rejections.c.reason_code == code)
    if cursor:
        at, row_id = _decode(cursor)
        key = tuple_(rejections.c.received_at, rejections.c.id)
        query = query.where(key < tuple_(literal(at, UtcDateTime()), literal(row_id)))
    rows = conn.execute(
        query.order_by(rejections.c.received_at.desc(), rejections.c.id.desc()).limit(limit + 1)).all()
    items = tuple(build(SuspendedMail, r) for r in rows[:limit])
    last = items[-1] if len(rows) > limit else None
    return SuspendedPage(items, _encode(last.received_at, last.id) if last else None)


def get(conn: Connection, rejection_id: int) -> SuspendedMail | None:
    row = conn.execute(select(rejections).where(rejections.c.id == rejection_id)).first()
    return None if row is None else build(SuspendedMail, row)


def mark_released(conn: Connection | Executor, command_id: str, ticket_key: str, by: str | None,
                  now: datetime) -> bool:
    """Record on ``conn``'s transaction that the rejection ``command_id`` became (or
    wrote into) ``ticket_key``. True when it was not marked before; a second
    release's duplicate changes nothing."""
    params = {"rejected_command": command_id, "at": now, "by": by, "ticket_key": ticket_key}
    if isinstance(conn, Executor):
        return bool(conn.execute(_MARK_RELEASED, params).rowcount)
    with Executor(conn) as sql:
        return bool(sql.execute(_MARK_RELEASED, params).rowcount)


def keep_original(conn: Connection, command_id: str, raw_ref: str) -> bool:
    """Name the original of the rejection ``command_id`` where it has none (the
    ticketer's own refusals, rebuilt afterwards); True when it was set now."""
    result = conn.execute(
        update(rejections)
        .where(rejections.c.command_id == command_id, rejections.c.raw_ref.is_(None))
        .values(raw_ref=raw_ref)
    )
    return bool(result.rowcount)


def lacks_original(conn: Connection, command_id: str) -> bool:
    """True when the rejection ``command_id`` exists without an original."""
    row = conn.execute(
        select(rejections.c.id).where(rejections.c.command_id == command_id, rejections.c.raw_ref.is_(None))
    ).first()
    return row is not None


def counts(conn: Connection, queue: str | None = None) -> dict[tuple[str, str], int]:
    """Rejections not released, per (queue or '', reason code), of one queue or all:
    one GROUP BY over the (queue, reason_code, ...) index."""
    query = (select(rejections.c.queue, rejections.c.reason_code, func.count())
             .where(rejections.c.released_at.is_(None))
             .group_by(rejections.c.queue, rejections.c.reason_code))
    if queue is not None:
        query = query.where(rejections.c.queue == queue)
    return {(queue or "", code): int(n) for queue, code, n in conn.execute(query).all()}


def expire(conn: Connection, before: datetime, limit: int) -> Expired:
    """Delete up to ``limit`` rejections of mail received before ``before``, oldest
    first, on ``conn``'s transaction; returns their blob references that no
    remaining rejection refers to."""
    rows = conn.execute(
        select(rejections.c.id, rejections.c.raw_ref)
        .where(rejections.c.received_at < before)
        .order_by(rejections.c.received_at, rejections.c.id)
        .limit(limit)
    ).all()
    if not rows:
        return Expired(0, ())
    conn.execute(delete(rejections).where(rejections.c.id.in_([r.id for r in rows])))
    refs = sorted({r.raw_ref for r in rows if r.raw_ref})
    kept = set(conn.execute(
        select(rejections.c.raw_ref).where(rejections.c.raw_ref.in_(refs)).distinct()).scalars()) if refs else set()
    return Expired(len(rows), tuple(ref for ref in refs if ref not in kept))


def _encode(at: datetime, row_id: int) -> str:
    return f"{(at - _EPOCH) // timedelta(microseconds=1)}.{row_id}"


def _decode(cursor: str) -> tuple[datetime, int]:
    match = _CURSOR.fullmatch(cursor.strip())
    if match is None:
        raise BadCursor("not a cursor of the suspended list")
    try:
        at = _EPOCH + timedelta(microseconds=int(match.group(1)))
    except OverflowError:
        raise BadCursor("not a cursor of the suspended list") from None
    return at, int(match.group(2))
