"""Queue views: filtered ticket lists with keyset pagination, and their counts.

A view is one or more queues (the ones an agent may see) and filters: status,
assignee (an address, '' for unassigned, or anyone), type, component, and
"customer replied, not answered yet" (``awaiting_reply``), sorted by updated or
created time, newest or oldest first.

Pagination is by keyset, never by offset: the cursor holds the sort value and
the id of the last ticket shown, and the next page starts strictly after it,
so a page costs the same at ticket 50 and at ticket 999,950, and a ticket
that changes while an agent pages moves instead of appearing twice on one
page. Each filter has an index that starts with (queue, filter) and ends with
(sort time, id) (``tables.tickets``), so a page reads about ``limit`` index
entries. A view over several queues (or statuses) is a UNION ALL of one such
read per queue (and status), merged and cut to ``limit``.

Counts: status and assignee views are read from ``ticket_counts`` (kept with
every change, services/tickets/workflow.py): exact and cheap. A view with
another filter is counted up to ``COUNT_CAP`` rows; beyond that the count is
reported as a lower bound.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, literal, select, tuple_, union_all
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from services.tickets.rows import build
from services.tickets.tables import UtcDateTime, comments, ticket_components, ticket_counts, tickets
from services.tickets.views import TICKET_STATUSES, TicketStatus, TicketSummary

Sort = Literal["updated", "created"]
Order = Literal["desc", "asc"]
COUNT_CAP = 10_000
MAX_LIMIT = 200
MAX_QUEUES = 200


class BadCursor(ValueError):
    """A cursor this view did not hand out (edited, or from another sort)."""


@dataclass(frozen=True)
class View:
    queues: tuple[str, ...]
    status: tuple[TicketStatus, ...] = ()  # empty: any status
    assignee: str | None = None  # an address; '' unassigned; None anyone
    type: str | None = None
    component: str | None = None
    awaiting_reply: bool = False  # only tickets whose customer waits for an answer
    sort: Sort = "updated"
    order: Order = "desc"

    def __post_init__(self) -> None:
        bad = [s for s in self.status if s not in TICKET_STATUSES]
        if bad:
            raise ValueError(f"status must be among {', '.join(TICKET_STATUSES)}, not {', '.join(bad)}")
        if self.sort not in ("updated", "created") or self.order not in ("desc", "asc"):
            raise ValueError("sort is updated or created, order desc or asc")
        if len(self.queues) > MAX_QUEUES:
            raise ValueError(f"at most {MAX_QUEUES} queues in one view")


@dataclass(frozen=True)
class Page:
    tickets: tuple[TicketSummary, ...]
    next_cursor: str | None  # None: this was the last page


@dataclass(frozen=True)
class Count:
    n: int
    exact: bool  # False: at least n (the count stopped at COUNT_CAP)


def page(conn: Connection, view: View, limit: int = 50, cursor: str | None = None) -> Page:
    """One page of ``view``: at most ``limit`` tickets after ``cursor``. Raises BadCursor."""
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {limit}")
    if not view.queues:
        return Page((), None)
    after = _decode(cursor, view) if cursor else None
    column = tickets.c.updated_at if view.sort == "updated" else tickets.c.created_at
    desc = view.order == "desc"

    def one_part(queue: str, status: TicketStatus | None) -> Select[Any]:
        where = _filters(view if status is None else replace(view, status=(status,)))
        query = select(tickets.c.id, column.label("sort_at")).where(tickets.c.queue == queue, *where)
        if after is not None:
            at, ticket_id = after
            # A row-value comparison: both engines use it as the bound of the index range
            # (an OR of the two cases is only a filter on PostgreSQL: every page would
            # scan from the top).
            key, bound = tuple_(column, tickets.c.id), tuple_(literal(at, UtcDateTime()), literal(ticket_id))
            query = query.where(key < bound if desc else key > bound)
        return query.order_by(column.desc() if desc else column.asc(),
                              tickets.c.id.desc() if desc else tickets.c.id.asc()).limit(limit + 1)

    # One index range per queue, and per status when several are asked for.
    statuses: tuple[TicketStatus | None, ...] = tuple(dict.fromkeys(view.status)) if len(view.status) > 1 else (None,)
    parts = [one_part(q, s).subquery() for q in dict.fromkeys(view.queues) for s in statuses]
    if len(parts) == 1:
        ids = select(parts[0].c.id, parts[0].c.sort_at)
    else:
        merged = union_all(*(select(p.c.id, p.c.sort_at) for p in parts)).subquery()
        ids = select(merged.c.id, merged.c.sort_at)
    keys = ids.subquery()
    ordered = (keys.c.sort_at.desc(), keys.c.id.desc()) if desc else (keys.c.sort_at.asc(), keys.c.id.asc())
    rows = conn.execute(select(keys.c.id, keys.c.sort_at).order_by(*ordered).limit(limit + 1)).all()
    shown = rows[:limit]
    found = summaries(conn, [r.id for r in shown])
    next_cursor = None
    if len(rows) > limit:
        last = shown[-1]
        next_cursor = _encode(view, last.sort_at, int(last.id))
    return Page(tuple(found), next_cursor)


def count(conn: Connection, view: View) -> Count:
    """How many tickets ``view`` holds: exact from the kept counts for status and
    assignee filters, else counted up to COUNT_CAP."""
    if not view.queues:
        return Count(0, True)
    if view.type is None and view.component is None and not view.awaiting_reply:
        query = select(func.coalesce(func.sum(ticket_counts.c.n), 0)).where(
            ticket_counts.c.queue.in_(list(view.queues)))
        if view.status:
            query = query.where(ticket_counts.c.status.in_(list(view.status)))
        if view.assignee is not None:
            query = query.where(ticket_counts.c.assignee == view.assignee)
        return Count(int(conn.execute(query).scalar_one()), True)
    inner = select(tickets.c.id).where(tickets.c.queue.in_(list(view.queues)), *_filters(view)).limit(COUNT_CAP + 1)
    n = int(conn.execute(select(func.count()).select_from(inner.subquery())).scalar_one())
    return Count(min(n, COUNT_CAP), n <= COUNT_CAP)


def summaries(conn: Connection, ids: Sequence[int]) -> list[TicketSummary]:
    """TicketSummary rows for ``ids``, in that order."""
    if not ids:
        return []
    comment_count = (
        select(func.count()).where(comments.c.ticket_id == tickets.c.id).scalar_subquery().label("comment_count")
    )
    rows = conn.execute(select(tickets, comment_count).where(tickets.c.id.in_(list(ids)))).all()
    by_id = {r.id: r for r in rows}
    return [
        build(TicketSummary, r, components=tuple(r.components), comment_count=int(r.comment_count))
        for r in (by_id[i] for i in ids if i in by_id)
    ]


def _filters(view: View) -> list[Any]:
    where: list[Any] = []
    if len(view.status) == 1:
        where.append(tickets.c.status == view.status[0])
    elif view.status:
        where.append(tickets.c.status.in_(list(view.status)))
    if view.assignee == "":
        where.append(tickets.c.assignee.is_(None))
    elif view.assignee is not None:
        where.append(tickets.c.assignee == view.assignee.lower())
    if view.type is not None:
        where.append(tickets.c.type == view.type)
    if view.component is not None:
        where.append(tickets.c.id.in_(
            select(ticket_components.c.ticket_id).where(ticket_components.c.component == view.component)))
    if view.awaiting_reply:
        where.append(tickets.c.awaiting_reply.is_(True))
    return where


def _encode(view: View, at: datetime, ticket_id: int) -> str:
    raw = json.dumps([view.sort, view.order, at.isoformat(), ticket_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(cursor: str, view: View) -> tuple[datetime, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        sort, order, at, ticket_id = json.loads(raw)
        when = datetime.fromisoformat(at)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise BadCursor("the cursor is not one this list handed out") from exc
    if (sort, order) != (view.sort, view.order) or not isinstance(ticket_id, int) or when.tzinfo is None:
        raise BadCursor("the cursor belongs to another sort order")
    return when, ticket_id
