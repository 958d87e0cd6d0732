"""`deskmail tickets set`: change a ticket's status, assignee, type or components.

The change is made as a member (``--as``) who may use the ticket's queue
(``services.common.permissions``: the queue's access list, or an admin); an
assignee must be such a member too. Every change is checked against a version:
the one given with ``--version``, else the one just read, so a change racing
another still fails instead of silently overwriting it (the store's UPDATE
carries the check).

Exit codes (``services.cli.common``): 1 when the change cannot be made here and
now (no such ticket, ``--as`` is not a member of the ticket's queue, somebody
else changed it first); 2 when the change asked for is not one that can be made
(an unknown status, an assignee who is not a member of the queue, an empty type).
"""

from __future__ import annotations

from typing import Any

import click

from services.cli.common import BadValue, config_option, fail, load_config, open_store
from services.cli.ticket_text import change_text, clean, event_line
from services.common import permissions
from services.common.config import Config, Member
from services.tickets import (
    TICKET_STATUSES,
    Changed,
    InvalidChange,
    TicketChange,
    TicketStatus,
    UnknownTicket,
    VersionConflict,
)


def may_have(config: Config, member: Member, queue_key: str) -> bool:
    """Whether the member may work on (and be assigned) tickets of the queue. A queue
    no longer configured has no access list: only admins."""
    queue = config.queue(queue_key)
    if queue is None:
        return permissions.is_admin(config, member)
    return permissions.may_see(config, member, queue)


def acting_member(config: Config, email: str) -> Member:
    """The member --as names; exit 1 for anyone else."""
    member = config.member(email.strip()) if email.strip() else None
    if member is None:
        fail(f"--as {email.strip()!r} is not an organization member: only members change tickets")
    return member


def assignee_value(config: Config, value: str | None, actor: Member, queue_key: str) -> str | None:
    """--assignee as a change: None unchanged, '' unassigned (``none``), ``me`` the actor,
    else a member who may use the queue. Raises BadValue."""
    if value is None:
        return None
    value = value.strip()
    if value.lower() == "none":
        return ""
    if value.lower() == "me":
        return actor.email
    member = config.member(value)
    if member is None:
        raise BadValue(f"--assignee {clean(value)!r} is not an organization member")
    if not may_have(config, member, queue_key):
        raise BadValue(f"--assignee {member.email} has no access to queue {queue_key}")
    return member.email


def one_status(value: str) -> TicketStatus:
    for status in TICKET_STATUSES:
        if value.strip() == status:
            return status
    raise BadValue(f"--status {clean(value)!r}: a status is one of {', '.join(TICKET_STATUSES)}")


def components_value(value: str | None) -> tuple[str, ...] | None:
    """--components a,b as a tuple; an empty value clears them."""
    if value is None:
        return None
    return tuple(dict.fromkeys(c.strip() for c in value.split(",") if c.strip()))


def describe(changed: Changed) -> str:
    """``SUPPORT-1: status open -> waiting, assignee - -> a@x.org; version 3``."""
    if not changed.events:
        return f"{changed.ticket_key}: no change; version {changed.version}"
    return f"{changed.ticket_key}: {', '.join(change_text(e) for e in changed.events)}; version {changed.version}"


def conflict(store: Any, exc: VersionConflict) -> str:
    """One line: who changed the ticket last, and what to do."""
    now = store.get_ticket(exc.key)
    newest = f"; newest change {event_line(now.events[-1])}" if now is not None and now.events else ""
    return (f"{exc.key} was changed by someone else (version {exc.current}, you had {exc.expected}){newest}; "
            f"nothing was changed: look at `deskmail tickets show {exc.key}` and try again")


@click.command("set", short_help="Change a ticket's status, assignee, type or components.")
@click.argument("key")
@click.option("--status", metavar="S", help="The new status: open, in_progress, waiting, resolved or closed.")
@click.option("--assignee", metavar="A",
              help="A member who may use the ticket's queue, 'me' (the --as member) or 'none' (unassign).")
@click.option("--type", "type_", metavar="T", help="The new type.")
@click.option("--components", metavar="A,B", help="The new components, comma separated ('' clears them).")
@click.option("--version", "expected", type=click.IntRange(min=1), metavar="N",
              help="Change only if the ticket is still at version N (as `tickets show` printed it). "
              "Default: the version read just before the change.")
@click.option("--as", "agent", envvar="DESKMAIL_AGENT", required=True, metavar="EMAIL",
              help="The organization member making the change (or DESKMAIL_AGENT).")
@config_option
def set_fields(
    key: str, status: str | None, assignee: str | None, type_: str | None, components: str | None,
    expected: int | None, agent: str, config_path: str | None,
) -> None:
    """Change a ticket's status, assignee, type or components, and print what
    changed ("SUPPORT-1: status open -> waiting; version 3") or "no change".

    Exit code 1: no such ticket, --as may not use its queue, or somebody changed
    it since the version checked (nothing is changed; the line names their
    change). Exit code 2: a value that cannot be set (an unknown status, an
    assignee who is not a member with access to the queue).
    """
    config = load_config(config_path)
    new_status = one_status(status) if status is not None else None
    if status is None and assignee is None and type_ is None and components is None:
        raise BadValue("nothing to change: give --status, --assignee, --type or --components")
    actor = acting_member(config, agent)
    with open_store(config) as store:
        ticket = store.get_ticket(key)
        if ticket is None:
            fail(f"no ticket {clean(key)}")
        if not may_have(config, actor, ticket.queue):
            fail(f"{actor.email} has no access to queue {ticket.queue}")
        change = TicketChange(status=new_status, assignee=assignee_value(config, assignee, actor, ticket.queue),
                              type=type_, components=components_value(components))
        try:
            changed = store.change_ticket(ticket.key, change, actor=actor.email,
                                          expected_version=expected if expected is not None else ticket.version)
        except VersionConflict as exc:
            fail(conflict(store, exc))
        except InvalidChange as exc:
            raise BadValue(str(exc)) from None
        except UnknownTicket:
            fail(f"no ticket {clean(key)}")
    click.echo(describe(changed))
