"""Rate limits on mail from outside the organization: per sender and per ticket.

A flood (a broken autoresponder that no header gives away, a script, a
customer's mail client stuck in a loop) must not bury a queue. Every mail
applied from a non-member is logged in ``mail_arrivals`` with its author, its
ticket and its own arrival time; before the next one is applied, the
arrivals in the window before it are counted. Past the limit the mail is a
rejection with reason ``rate_limited`` (suspended: visible and releasable)
instead of a ticket or comment. Windows count the mails' arrival times, not
the clock, on both sides of a mail (mail is applied in partition order, not
arrival order): no span of the window's length ever holds more accepted mail
than the limit, in any order, and a burst lets exactly the limit through. A
mail an admin released is never limited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, bindparam, delete, func, insert, select
from sqlalchemy.engine import Connection

from services.tickets.driver import Executor
from services.tickets.tables import mail_arrivals

__all__ = ["Limit", "Limits", "check_sender", "check_ticket", "prune", "record"]


@dataclass(frozen=True)
class Limit:
    mails: int  # 0: no limit
    minutes: int


@dataclass(frozen=True)
class Limits:
    per_sender: Limit = Limit(20, 10)
    per_ticket: Limit = Limit(50, 10)


NONE = Limits(Limit(0, 1), Limit(0, 1))


def _arrivals(who: ColumnElement[bool]) -> object:
    """How many arrivals of ``who`` lie between ``after`` and ``before``, counting up to ``mails``."""
    window = (mail_arrivals.c.received_at > bindparam("after"), mail_arrivals.c.received_at < bindparam("before"))
    return select(func.count()).select_from(
        select(mail_arrivals.c.id).where(who, *window).limit(bindparam("mails")).subquery())


_BY_SENDER = _arrivals(mail_arrivals.c.author_email == bindparam("email"))
_BY_TICKET = _arrivals(mail_arrivals.c.ticket_id == bindparam("ticket_id"))
_RECORD = insert(mail_arrivals)


def check_sender(sql: Executor, limits: Limits, email: str, at: datetime) -> str | None:
    """The rejection reason when ``email`` sent more than the limit allows
    in the window before ``at``; None otherwise."""
    limit = limits.per_sender
    if limit.mails <= 0 or not email:
        return None
    n = _count(sql, _BY_SENDER, {"email": email.lower()}, limit, at)
    if n < limit.mails:
        return None
    return f"rate_limited: more than {limit.mails} mails from {email} in {limit.minutes} minutes"


def check_ticket(sql: Executor, limits: Limits, ticket_id: int, ticket_key: str, at: datetime) -> str | None:
    """The rejection reason when the ticket got more mail from outside than
    the limit allows in the window before ``at``; None otherwise."""
    limit = limits.per_ticket
    if limit.mails <= 0:
        return None
    n = _count(sql, _BY_TICKET, {"ticket_id": ticket_id}, limit, at)
    if n < limit.mails:
        return None
    return f"rate_limited: more than {limit.mails} mails on {ticket_key} in {limit.minutes} minutes"


def _count(sql: Executor, query: object, who: dict[str, object], limit: Limit, at: datetime) -> int:
    # Both sides of ``at``: mails are applied in the order their partitions
    # deliver them, not by arrival time. Counting only the earlier ones would
    # let a later mail applied first make room for earlier ones; counting a
    # window either side keeps any span of ``minutes`` at ``mails`` at most,
    # whatever the order.
    window = timedelta(minutes=limit.minutes)
    params = {**who, "after": at - window, "before": at + window, "mails": limit.mails}
    return int(sql.execute(query, params).scalar_one())  # type: ignore[arg-type]


def record(sql: Executor, email: str, ticket_id: int, at: datetime) -> None:
    sql.execute(_RECORD, {"author_email": email.lower(), "ticket_id": ticket_id, "received_at": at})


def prune(conn: Connection, before: datetime) -> int:
    """Forget arrivals older than ``before`` (no window reaches them); returns how many."""
    return int(conn.execute(delete(mail_arrivals).where(mail_arrivals.c.received_at < before)).rowcount or 0)
