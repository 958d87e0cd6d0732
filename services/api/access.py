"""Who sees what, applied to a request: the pages and the JSON API refuse alike.

The rule itself is ``services.common.permissions`` (a queue's ``access`` list,
``organization.admins``); this module applies it to the agent a request acts as
(``services.api.context.signed_in_agent``) and reads only what that agent may see.

``agent is None`` means no identity: ``api.auth.mode: none`` without an API
token. The api then runs on loopback only (``auth_refusal``) and, as before,
shows every queue and its settings to whoever uses that machine.

A ticket of a queue that is no longer configured has no access list: only admins
(and the no-identity mode) see it.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

from fastapi import HTTPException

from services.api.context import ApiContext
from services.common import permissions
from services.common.config import Config, Member
from services.tickets import TicketDetail, TicketStore, TicketSummary


def seen_queues(config: Config, agent: Member | None) -> frozenset[str] | None:
    """The keys of the queues the agent sees; None: every queue, configured or not."""
    if agent is None or permissions.is_admin(config, agent):
        return None
    return frozenset(q.key for q in permissions.visible_queues(config, agent))


def may_see_queue(config: Config, agent: Member | None, key: str) -> bool:
    seen = seen_queues(config, agent)
    return seen is None or key in seen


def require_queue(config: Config, agent: Member | None, key: str) -> None:
    """Raises HTTPException 403 (with the reason) unless the agent sees queue ``key``."""
    if not may_see_queue(config, agent, key):
        assert agent is not None
        raise HTTPException(403, f"{agent.email} has no access to queue {key}")


def may_manage(config: Config, agent: Member | None) -> bool:
    return agent is None or permissions.may_manage(config, agent)


def require_manager(config: Config, agent: Member | None) -> None:
    """Raises HTTPException 403 unless the agent may use queue settings (admins)."""
    if not may_manage(config, agent):
        assert agent is not None
        raise HTTPException(403, f"{agent.email} is not an admin: only organization.admins use queue settings")


def count_tickets(store: TicketStore, seen: frozenset[str] | None) -> int:
    if seen is None:
        return store.count_tickets()
    counts = store.count_by_queue()
    return sum(n for key, n in counts.items() if key in seen)


def list_tickets(store: TicketStore, seen: frozenset[str] | None, limit: int, offset: int) -> list[TicketSummary]:
    """Newest first across the queues in ``seen`` (None: all), as the store orders one queue.

    The store filters by one queue, so this merges each seen queue's newest
    ``offset + limit``: fine for a handful of queues and the first pages.
    """
    if seen is None:
        return store.list_tickets(limit=limit, offset=offset)
    per_queue: Sequence[list[TicketSummary]] = [
        store.list_tickets(key, limit=offset + limit, offset=0) for key in sorted(seen)
    ]
    merged = heapq.merge(*per_queue, key=lambda t: t.created_at, reverse=True)
    return list(merged)[offset:offset + limit]


def visible_ticket(ctx: ApiContext, agent: Member | None, key: str) -> TicketDetail:
    """The ticket; 404 when there is none, 403 when its queue is not the agent's."""
    detail = ctx.store.get_ticket(key)
    if detail is None:
        raise HTTPException(404, f"no ticket {key}")
    require_queue(ctx.config, agent, detail.queue)
    return detail
