"""Who may do what with a queue: one rule for mail and for agents.

A queue's ``access`` list decides both who may open tickets in it by mail (the
router) and which agents see and answer its tickets (the api), as in the
reference product. An entry is a member's address, ``group:NAME``, or
``members``/``everyone``; an empty list admits every member.
``organization.admins`` (addresses or ``group:NAME``) see every queue and alone
may use a queue's settings page (check connection, send a test email).
Pure: config in, answer out.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.common.config import Config, Member, Queue


def _listed(member: Member, entries: Iterable[str]) -> bool:
    for entry in entries:
        if entry.startswith("group:") and entry[6:] in member.groups:
            return True
        if entry.lower() == member.email:
            return True
    return False


def member_may_use(member: Member, queue: Queue) -> bool:
    """Whether the queue's access list admits the member (by mail or on the page)."""
    if not queue.access:
        return True
    if any(entry in ("everyone", "members") for entry in queue.access):
        return True
    return _listed(member, queue.access)


def is_admin(config: Config, member: Member) -> bool:
    return _listed(member, config.organization.admins)


def may_see(config: Config, member: Member, queue: Queue) -> bool:
    """Whether the agent sees and answers the queue's tickets."""
    return is_admin(config, member) or member_may_use(member, queue)


def visible_queues(config: Config, member: Member) -> tuple[Queue, ...]:
    return tuple(q for q in config.queues if may_see(config, member, q))


def may_manage(config: Config, member: Member) -> bool:
    """Whether the agent may use queue settings pages (check connection, test email)."""
    return is_admin(config, member)
