"""An agent's change of a ticket's workflow fields, decided once for the page and the API.

``plan_change`` turns what was asked (status, assignee, type, components, as
typed or sent) into a ``TicketChange`` and refuses what the store would accept
but deskmail must not: an assignee who is not an organization member, or who
may not use the ticket's queue (admins may be assigned anywhere). ``take`` is
"assign to me" (see its docstring for the status it sets). ``apply_change``
stores it with the version the agent saw and observes the resolution-time
histogram; a concurrent change surfaces as ``ChangeConflict`` carrying the
events the agent has not seen, so a page or a 409 can say who changed what.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from services.api import ticket_metrics
from services.common import permissions
from services.common.config import Config, Member
from services.tickets import (
    TICKET_STATUSES,
    Changed,
    InvalidChange,
    TicketChange,
    TicketDetail,
    TicketEvent,
    TicketStatus,
    TicketStore,
    UnknownTicket,
    VersionConflict,
)


class ChangeError(Exception):
    """The change was refused; nothing was stored. ``status`` is the HTTP status."""

    status = 422

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ChangeForbidden(ChangeError):
    status = 403


class ChangeNotFound(ChangeError):
    status = 404


class ChangeConflict(ChangeError):
    """Somebody else changed the ticket since the agent read it (version ``current``)."""

    status = 409

    def __init__(self, message: str, current: int, events: tuple[TicketEvent, ...]):
        super().__init__(message)
        self.current = current
        self.events = events


def assignable(config: Config, queue: str) -> tuple[Member, ...]:
    """The members who may be assigned a ticket of ``queue``: those its access list
    admits, and the admins (a queue no longer configured: the admins alone)."""
    configured = config.queue(queue)
    return tuple(
        m for m in config.organization.members
        if permissions.is_admin(config, m) or (configured is not None and permissions.member_may_use(m, configured))
    )


def check_assignee(config: Config, queue: str, value: str) -> str:
    """``value`` as stored ('' unassigns); ChangeError unless it names an assignable member."""
    address = value.strip().lower()
    if not address:
        return ""
    member = config.member(address)
    if member is None:
        raise ChangeError(f"{address} is not an organization member and cannot be assigned")
    if member not in assignable(config, queue):
        raise ChangeError(f"{address} has no access to queue {queue} and cannot be assigned its tickets")
    return member.email


def status_of(value: str | None) -> TicketStatus | None:
    """A status as sent; None for none. ChangeError for one deskmail does not know."""
    if value is None or value == "":
        return None
    for status in TICKET_STATUSES:
        if value == status:
            return status
    raise ChangeError(f"status must be one of {', '.join(TICKET_STATUSES)}, not {value[:40]!r}")


def plan_change(
    config: Config, ticket: TicketDetail, *, status: str | None = None, assignee: str | None = None,
    type_: str | None = None, components: Sequence[str] | None = None, me: Member | None = None,
) -> TicketChange:
    """What to store; None leaves a field as it is. ``assignee`` may be ``me`` (the
    acting agent). Raises ChangeError."""
    if assignee is not None and assignee.strip().lower() == "me":
        if me is None:
            raise ChangeError("assignee 'me' needs a signed-in agent: name the member's address")
        assignee = me.email
    who = check_assignee(config, ticket.queue, assignee) if assignee is not None else None
    return TicketChange(
        status=status_of(status),
        assignee=who,
        type=type_,
        components=tuple(components) if components is not None else None,
    )


def take(ticket: TicketDetail, me: Member) -> TicketChange:
    """"Take": assign the ticket to ``me``; an ``open`` ticket also becomes
    ``in_progress``. Only ``open``: a ``waiting`` ticket waits for the customer
    whoever holds it, and a resolved or closed one is done, so taking it must not
    quietly reopen it (the agent sets that status deliberately)."""
    return TicketChange(assignee=me.email, status="in_progress" if ticket.status == "open" else None)


def actor(config: Config, signed_in: Member | None, named: str | None) -> Member:
    """Who makes the change: the signed-in agent, or (no sign-in) the member named."""
    if signed_in is not None:
        return signed_in
    member = config.member(named.strip()) if named and named.strip() else None
    if member is None:
        raise ChangeForbidden("say who you are: choose an organization member in \u201cReply as\u201d "
                              "(API: the actor field)")
    return member


def unseen_events(ticket: TicketDetail, expected: int) -> tuple[TicketEvent, ...]:
    """The events of the changes made since version ``expected``, oldest first.

    Each change bumps the version once and may record several events at one
    instant, so the newest ``current - expected`` instants are the unseen ones;
    at least the newest event is returned."""
    instants = sorted({e.created_at for e in ticket.events})
    missed = max(1, ticket.version - expected)
    since = instants[-missed:] if instants else []
    return tuple(e for e in ticket.events if since and e.created_at >= since[0])


def conflict(store: TicketStore, exc: VersionConflict) -> ChangeConflict:
    """The ChangeConflict of a VersionConflict, with the events the agent missed."""
    now = store.get_ticket(exc.key)
    events = unseen_events(now, exc.expected) if now is not None else ()
    return ChangeConflict(str(exc), exc.current, events)


def apply_change(store: TicketStore, key: str, change: TicketChange, *, by: Member,
                 expected_version: int | None) -> Changed:
    """Store the change as ``by``; observe the resolution time when it finished the
    ticket. Raises ChangeError (ChangeConflict, ChangeNotFound, or 422)."""
    try:
        changed = store.change_ticket(key, change, actor=by.email, expected_version=expected_version)
    except VersionConflict as exc:
        raise conflict(store, exc) from None
    except UnknownTicket:
        raise ChangeNotFound(f"no ticket {key}") from None
    except InvalidChange as exc:
        raise ChangeError(str(exc)) from None
    ticket_metrics.observe_change(changed)
    return changed


@dataclass(frozen=True)
class EventLine:
    """One event as the thread shows it: "Alice changed status open → waiting"."""

    event: TicketEvent
    actor: str  # a member's name, an address, or "deskmail"
    text: str  # what happened, after the actor
    link: str | None = None  # the key of the ticket the event names (follow-ups)


FIELD_NAMES = {"status": "status", "assignee": "assignee", "type": "type", "components": "components"}


def describe(event: TicketEvent, config: Config) -> EventLine:
    """The words for an event (pure: names from the config)."""
    def who(address: str | None, empty: str) -> str:
        if not address:
            return empty
        member = config.member(address)
        return member.name if member is not None and member.name else address

    name = who(event.actor, "deskmail")
    if event.kind == "follow_up":
        return EventLine(event, name, f"follow-up {event.new_value} opened", link=event.new_value)
    empty = "unassigned" if event.kind == "assignee" else "none"
    old, new = event.old_value, event.new_value
    if event.kind == "assignee":
        old, new = who(old, empty), who(new, empty)
    else:
        old, new = (old or empty).replace("_", " "), (new or empty).replace("_", " ")
    change = f"{FIELD_NAMES.get(event.kind, event.kind)} {old} \u2192 {new}"
    if event.actor is None and event.reason:
        return EventLine(event, name, f"{event.reason} ({change})")
    text = f"changed {change}" + (f" ({event.reason})" if event.reason else "")
    return EventLine(event, name, text)


def summary(lines: Sequence[EventLine]) -> str:
    """"Alice changed status open → waiting; deskmail: reopened by customer reply (...)"."""
    return "; ".join(f"{line.actor}{':' if line.event.actor is None else ''} {line.text}" for line in lines)
