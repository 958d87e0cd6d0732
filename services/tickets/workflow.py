"""A ticket's workflow: status, assignee, type and components, each change an event.

Statuses: ``open``, ``in_progress``, ``waiting`` (for the customer), ``resolved``,
``closed``. An agent may move a ticket from any status to any other; the mail
path moves it by rule (``after_customer_mail``):

- a customer's mail on a ``waiting`` or ``resolved`` ticket reopens it (``open``,
  event reason "reopened by customer reply");
- mail on a ``closed`` ticket opens a follow-up ticket linked to it, or, where
  the queue says ``closed_reply: reopen``, reopens it (the caller decides, see
  ``services.tickets.apply``);
- ``auto_close`` closes ``resolved`` tickets after the queue's days without
  customer mail (any such mail would have reopened them).

Every change writes one ``ticket_events`` row (who, when, old -> new), bumps the
ticket's ``version`` and ``updated_at``, and moves the ticket between the
``ticket_counts`` rows of its (queue, status, assignee), all on the caller's
transaction. ``change`` checks the version the caller read: a concurrent change
raises ``VersionConflict`` instead of being overwritten. The UPDATE itself
carries the check (``WHERE version = :expected``), so two writers racing past
the read still cannot both win.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from services.common import routing
from services.tickets import checks
from services.tickets.driver import Executor
from services.tickets.errors import InvalidChange, InvalidCommand, UnknownTicket, VersionConflict
from services.tickets.rows import build, inserted_id
from services.tickets.tables import EMAIL, ticket_components, ticket_counts, ticket_events, tickets
from services.tickets.views import (
    DONE_STATUSES,
    TICKET_STATUSES,
    Changed,
    TicketChange,
    TicketEvent,
    TicketStatus,
)

REOPENED_BY_CUSTOMER = "reopened by customer reply"
_MAX_COMPONENTS = 50
_MAX_FIELD = 255

# The statements of mail's changes, built once (services/tickets/driver.py runs them).
_TICKET = select(tickets).where(tickets.c.id == bindparam("ticket_id"))
_AWAITING_REPLY = update(tickets).where(tickets.c.id == bindparam("ticket_id")).values(awaiting_reply=True)
# The columns set are the parameters given besides these two, as Core does for an UPDATE.
_CHANGE = update(tickets).where(tickets.c.id == bindparam("ticket_id"),
                                tickets.c.version == bindparam("expected_version"))
_VERSION = select(tickets.c.version).where(tickets.c.id == bindparam("ticket_id"))
_INSERT_EVENT = insert(ticket_events)
_INSERT_COMPONENT = insert(ticket_components)
_DELETE_COMPONENTS = delete(ticket_components).where(
    ticket_components.c.ticket_id == bindparam("ticket_id"),
    ticket_components.c.component.in_(bindparam("components", expanding=True)))


def check_change(change: TicketChange) -> TicketChange:
    """``change`` with its values checked and normalised; raises InvalidChange."""
    try:
        status = change.status
        if status is not None and status not in TICKET_STATUSES:
            raise InvalidChange(f"status must be one of {', '.join(TICKET_STATUSES)}, not {status!r}")
        assignee = change.assignee
        if assignee is not None:
            assignee = checks.bounded(assignee, "assignee", EMAIL, empty_ok=True).strip().lower()
            if assignee and ("@" not in assignee or any(ch.isspace() for ch in assignee)):
                raise InvalidChange(f"assignee {change.assignee!r} is not an email address")
        type_ = change.type
        if type_ is not None:
            type_ = checks.bounded(type_.strip(), "type", _MAX_FIELD)
        components = change.components
        if components is not None:
            if len(components) > _MAX_COMPONENTS:
                raise InvalidChange(f"at most {_MAX_COMPONENTS} components")
            components = tuple(dict.fromkeys(checks.bounded(c.strip(), "component", _MAX_FIELD) for c in components))
    except InvalidCommand as exc:
        raise InvalidChange(str(exc)) from exc
    return TicketChange(status=status, assignee=assignee, type=type_, components=components)


def change(conn: Connection, key: str, c: TicketChange, *, actor: str, expected_version: int | None,
           now: datetime) -> Changed:
    """Apply an agent's change to ticket ``key``. ``expected_version`` None skips the
    check (a script that means "whatever it is now"). Raises UnknownTicket,
    VersionConflict, InvalidChange."""
    c = check_change(c)
    row = conn.execute(select(tickets).where(tickets.c.key == key)).first()
    if row is None:
        raise UnknownTicket(key)
    if expected_version is not None and row.version != expected_version:
        raise VersionConflict(key, expected_version, row.version)
    with Executor(conn) as sql:
        return _apply(sql, row, c, actor=actor, reason=None, now=now)


def after_customer_mail(sql: Executor, ticket_id: int, now: datetime) -> Changed | None:
    """A customer's mail arrived on a ticket that is not closed: ``waiting`` and
    ``resolved`` become ``open`` again, and the customer now waits for an answer."""
    row = sql.execute(_TICKET, {"ticket_id": ticket_id}).one()
    sql.execute(_AWAITING_REPLY, {"ticket_id": ticket_id})
    if row.status in ("waiting", "resolved"):
        return _apply(sql, row, TicketChange(status="open"), actor=None, reason=REOPENED_BY_CUSTOMER, now=now)
    return None


def reopen(sql: Executor, ticket_id: int, now: datetime) -> Changed:
    """A closed ticket of a ``closed_reply: reopen`` queue gets mail: open again."""
    row = sql.execute(_TICKET, {"ticket_id": ticket_id}).one()
    return _apply(sql, row, TicketChange(status="open"), actor=None, reason=REOPENED_BY_CUSTOMER, now=now)


def record_follow_up(sql: Executor, closed_id: int, follow_up_key: str, now: datetime) -> None:
    """On the closed ticket: "follow-up KEY opened" (its fields do not change)."""
    _event(sql, closed_id, "follow_up", None, None, follow_up_key, "customer mail on a closed ticket", now)


def auto_close(conn: Connection, queue: str, days: int, now: datetime, limit: int = 500) -> list[str]:
    """Close up to ``limit`` tickets of ``queue`` resolved more than ``days`` ago;
    returns their keys. A resolved ticket that got customer mail was reopened,
    so every ticket still resolved has had none since."""
    if days <= 0:
        return []
    cutoff = now - timedelta(days=days)
    rows = conn.execute(
        select(tickets)
        .where(tickets.c.status == "resolved", tickets.c.resolved_at < cutoff, tickets.c.queue == queue)
        .order_by(tickets.c.resolved_at, tickets.c.id)
        .limit(limit)
    ).all()
    closed = []
    with Executor(conn) as sql:
        for row in rows:
            reason = f"closed automatically {days} day{'s' if days != 1 else ''} after it was resolved"
            _apply(sql, row, TicketChange(status="closed"), actor=None, reason=reason, now=now)
            closed.append(row.key)
    return closed


def count_new_ticket(sql: Executor, queue: str, ticket_id: int, components: Sequence[str],
                     assignee: str | None = None) -> None:
    """A ticket was just created (open; unassigned, or assigned by a routing rule):
    count it and index its components."""
    _count(sql, queue, "open", assignee or "", +1)
    _set_components(sql, ticket_id, (), tuple(components))


def record_rule_assignee(sql: Executor, ticket_id: int, assignee: str, rule: str | None, now: datetime) -> None:
    """On a new ticket: deskmail assigned it, by routing rule ``rule`` (the
    ticket row already holds the assignee, and its version stays 1)."""
    reason = routing.assigned_reason(rule) if rule else "routing rule"
    _event(sql, ticket_id, "assignee", None, "", assignee, reason, now)


def events_of(conn: Connection, ticket_id: int) -> tuple[TicketEvent, ...]:
    rows = conn.execute(
        select(ticket_events).where(ticket_events.c.ticket_id == ticket_id)
        .order_by(ticket_events.c.created_at, ticket_events.c.id)
    ).all()
    return tuple(build(TicketEvent, r) for r in rows)


def counts(conn: Connection, queues: Sequence[str] | None = None) -> dict[tuple[str, str, str], int]:
    """Tickets per (queue, status, assignee or '') from the kept counts."""
    query = select(ticket_counts).where(ticket_counts.c.n != 0)
    if queues is not None:
        query = query.where(ticket_counts.c.queue.in_(list(queues)))
    return {(r.queue, r.status, r.assignee): int(r.n) for r in conn.execute(query)}


def _apply(sql: Executor, row: Any, c: TicketChange, *, actor: str | None, reason: str | None,
           now: datetime) -> Changed:
    values: dict[str, Any] = {}
    new_events: list[TicketEvent] = []
    resolved_after: float | None = None
    old_assignee = row.assignee or ""
    if c.status is not None and c.status != row.status:
        values["status"] = c.status
        if c.status in DONE_STATUSES and row.status not in DONE_STATUSES:
            values["resolved_at"] = now
            resolved_after = max(0.0, (now - row.created_at).total_seconds())
        elif c.status not in DONE_STATUSES:
            values["resolved_at"] = None
        if c.status == "resolved" and row.status == "closed":
            values["resolved_at"] = now  # auto-close counts from the newest resolution
        new_events.append(_event(sql, row.id, "status", actor, row.status, c.status, reason, now))
    if c.assignee is not None and c.assignee != old_assignee:
        values["assignee"] = c.assignee or None
        new_events.append(_event(sql, row.id, "assignee", actor, old_assignee, c.assignee, reason, now))
    if c.type is not None and c.type != (row.type or ""):
        values["type"] = c.type
        new_events.append(_event(sql, row.id, "type", actor, row.type or "", c.type, reason, now))
    old_components = tuple(row.components or ())
    if c.components is not None and c.components != old_components:
        values["components"] = list(c.components)
        _set_components(sql, row.id, old_components, c.components)
        new_events.append(_event(sql, row.id, "components", actor, ", ".join(old_components),
                                 ", ".join(c.components), reason, now))
    if not values:
        return Changed(row.key, row.queue, row.version, ())
    values["version"] = row.version + 1
    if now > row.updated_at:
        values["updated_at"] = now
    done = sql.execute(_CHANGE, {**values, "ticket_id": row.id, "expected_version": row.version})
    if done.rowcount != 1:  # changed between our read and this write
        current = sql.execute(_VERSION, {"ticket_id": row.id}).scalar_one()
        raise VersionConflict(row.key, row.version, int(current))
    new_status = values.get("status", row.status)
    new_assignee = values.get("assignee", row.assignee) or ""
    if (new_status, new_assignee) != (row.status, old_assignee):
        _count(sql, row.queue, row.status, old_assignee, -1)
        _count(sql, row.queue, new_status, new_assignee, +1)
    return Changed(row.key, row.queue, row.version + 1, tuple(new_events), resolved_after)


def _event(sql: Executor, ticket_id: int, kind: str, actor: str | None, old: str | None, new: str | None,
           reason: str | None, now: datetime) -> TicketEvent:
    values = {"ticket_id": ticket_id, "kind": kind, "actor": actor, "old_value": old, "new_value": new,
              "reason": reason, "created_at": now}
    event_id = inserted_id(sql.execute(_INSERT_EVENT, values))
    return TicketEvent(event_id, kind, actor, old, new, reason, now)  # type: ignore[arg-type]


def _upsert_count(insert_: Any) -> Any:
    return insert_.on_conflict_do_update(
        index_elements=[ticket_counts.c.queue, ticket_counts.c.status, ticket_counts.c.assignee],
        set_={"n": ticket_counts.c.n + insert_.excluded.n},
    )


_UPSERT_COUNT = {
    name: _upsert_count(dialect.insert(ticket_counts))
    for name, dialect in (("postgresql", postgresql), ("sqlite", sqlite))
}


def _count(sql: Executor, queue: str, status: TicketStatus | str, assignee: str, delta: int) -> None:
    sql.execute(_UPSERT_COUNT[sql.dialect_name], {"queue": queue, "status": status, "assignee": assignee, "n": delta})


def _set_components(sql: Executor, ticket_id: int, old: Sequence[str], new: Sequence[str]) -> None:
    old = [c[:_MAX_FIELD] for c in old]
    new = list(dict.fromkeys(c[:_MAX_FIELD] for c in new))
    gone = [c for c in old if c not in new]
    added = [c for c in new if c not in old]
    if gone:
        sql.execute(_DELETE_COMPONENTS, {"ticket_id": ticket_id, "components": gone})
    if added:
        sql.execute(_INSERT_COMPONENT, [{"ticket_id": ticket_id, "component": c} for c in added])
