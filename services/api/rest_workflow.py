"""The JSON API of queue work: the filtered ticket list and PATCH of a ticket's
workflow fields (under /api/v1, documented in /openapi.json).

``GET /api/v1/tickets`` keeps what existing callers rely on: the same fields
(``tickets``, ``total``, ``limit``, ``offset``), newest created first by
default, ``limit`` up to 500, and ``offset`` paging of the unfiltered list.
Everything new is added beside it: filters, ``sort``/``order``, keyset pages
(``cursor`` -> ``next_cursor``), ``count`` {n, exact}, and search (``q``).
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse

from services.api import access, changes, queue_views, serialize
from services.api.api_models import ConflictOut, TicketChangedOut, TicketPatch
from services.api.context import ApiContext, context, signed_in_agent
from services.api.queue_views import FilterError, Filters
from services.api.rest import _ERRORS, Error, TicketPage, conflict_body
from services.common.config import Member
from services.tickets import BadCursor, TicketStore, TicketSummary, View
from services.tickets.listing import MAX_LIMIT

router = APIRouter(prefix="/api/v1", tags=["tickets"], dependencies=[Depends(signed_in_agent)])
MAX_PAGE = 500


def _collect(store: TicketStore, view: View, limit: int, cursor: str | None) -> tuple[list[TicketSummary], str | None]:
    """``limit`` tickets from ``cursor`` on, in store pages of at most MAX_LIMIT."""
    out: list[TicketSummary] = []
    while len(out) < limit:
        page = store.list_view(view, limit=min(MAX_LIMIT, limit - len(out)), cursor=cursor)
        out.extend(page.tickets)
        cursor = page.next_cursor
        if cursor is None:
            break
    return out, cursor


@router.get("/tickets", response_model=TicketPage,
            responses={400: {"model": Error, "description": "A cursor this list did not hand out."},
                       403: _ERRORS[403],
                       422: {"model": Error, "description": "A filter value deskmail does not know."}})
def list_tickets(
    queue: str | None = Query(None, description="One queue; omitted: every queue the agent sees."),
    status: str | None = Query(None, description="A status, or several comma-separated "
                                                  "(open,in_progress,waiting,resolved,closed)."),
    assignee: str | None = Query(None, description="'me', 'none' or empty for unassigned, or a member's "
                                                    "address; omitted: anyone."),
    type: str | None = Query(None, description="Only tickets of this type."),
    component: str | None = Query(None, description="Only tickets with this component."),
    awaiting_reply: bool = Query(False, description="Only tickets whose customer wrote last, not answered yet."),
    sort: Literal["created", "updated"] = Query("created", description="Sort by creation (as before) or by "
                                                                         "the last update."),
    order: Literal["desc", "asc"] = Query("desc", description="Newest (desc) or oldest (asc) first."),
    q: str | None = Query(None, max_length=500, description="Search words: ranked results with a snippet "
                                                             "instead of the list; only queue applies with it."),
    cursor: str | None = Query(None, description="next_cursor of the previous page."),
    limit: int = Query(50, ge=1, le=MAX_PAGE),
    offset: int = Query(0, ge=0, description="Offset paging: only of the unfiltered list (kept for existing "
                                              "callers) and of search results; use cursor otherwise."),
    ctx: ApiContext = Depends(context),
    agent: Member | None = Depends(signed_in_agent),
) -> dict[str, object]:
    """Tickets of the queues the agent sees (naming a queue the agent does not see is 403)."""
    if queue is not None:
        access.require_queue(ctx.config, agent, queue)
        queues: tuple[str, ...] = (queue,)
    else:
        queues = queue_views.view_queues(ctx.config, ctx.store, access.seen_queues(ctx.config, agent))
    try:
        filters = queue_views.parse(
            {"status": status, "assignee": assignee, "type": type, "component": component,
             "awaiting_reply": "1" if awaiting_reply else "", "sort": sort, "order": order},
            agent, empty_is_unassigned=True)
    except FilterError as exc:
        raise HTTPException(422, str(exc)) from None
    if q is not None and q.strip():
        return _search(ctx, q.strip(), queues, filters, limit, offset)
    if offset:
        return _by_offset(ctx, agent, queue, filters, cursor, limit, offset)
    view = filters.view(queues)
    try:
        tickets, next_cursor = _collect(ctx.store, view, limit, cursor)
    except BadCursor as exc:
        raise HTTPException(400, str(exc)) from None
    count = ctx.store.count_view(view)
    return {"tickets": [serialize.summary(t) for t in tickets], "total": count.n, "limit": limit, "offset": 0,
            "next_cursor": next_cursor, "count": {"n": count.n, "exact": count.exact}}


def _by_offset(ctx: ApiContext, agent: Member | None, queue: str | None, filters: Filters, cursor: str | None,
               limit: int, offset: int) -> dict[str, object]:
    """The list as it was before views: newest created first, paged by offset."""
    if filters != Filters(sort="created") or cursor is not None:
        raise HTTPException(422, "offset pages only the unfiltered list, newest created first: "
                                 "use cursor (next_cursor) with filters or another sort")
    if queue is not None:
        tickets = ctx.store.list_tickets(queue=queue, limit=limit, offset=offset)
        total = ctx.store.count_tickets(queue)
    else:
        seen = access.seen_queues(ctx.config, agent)
        tickets = access.list_tickets(ctx.store, seen, limit, offset)
        total = access.count_tickets(ctx.store, seen)
    return {"tickets": [serialize.summary(t) for t in tickets], "total": total, "limit": limit, "offset": offset,
            "next_cursor": None, "count": {"n": total, "exact": True}}


def _search(ctx: ApiContext, q: str, queues: tuple[str, ...], filters: Filters, limit: int,
            offset: int) -> dict[str, object]:
    if filters != Filters(sort=filters.sort, order=filters.order):
        raise HTTPException(422, "q searches the queues as a whole: only queue applies with it, not status, "
                                 "assignee, type, component or awaiting_reply")
    hits = queue_views.search(ctx.store, q, queues, limit, offset)
    return {"tickets": [serialize.hit(h.ticket, h.snippet, h.where) for h in hits], "total": len(hits),
            "limit": limit, "offset": offset, "next_cursor": None, "count": None}


@router.patch(
    "/tickets/{key}", response_model=TicketChangedOut,
    responses={403: _ERRORS[403], 404: _ERRORS[404],
               409: {"model": ConflictOut, "description": "The ticket is at another version: nothing changed."},
               422: {"model": Error, "description": "A bad value, or an assignee who may not use the queue."}},
)
def patch_ticket(
    key: str, body: TicketPatch, ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> dict[str, object] | JSONResponse:
    """Change status, assignee, type and components in one step, checked against ``version``."""
    detail = access.visible_ticket(ctx, signed_in, key)
    try:
        if signed_in is not None and body.actor and body.actor.strip().lower() != signed_in.email:
            raise changes.ChangeForbidden(f"signed in as {signed_in.email}: cannot change as {body.actor}")
        by = changes.actor(ctx.config, signed_in, body.actor)
        change = changes.plan_change(ctx.config, detail, status=body.status, assignee=body.assignee,
                                     type_=body.type, components=body.components, me=by)
        changed = changes.apply_change(ctx.store, key, change, by=by, expected_version=body.version)
    except changes.ChangeConflict as exc:
        return JSONResponse(conflict_body(exc.message, exc.current, exc.events), status_code=409)
    except changes.ChangeError as exc:
        raise HTTPException(exc.status, exc.message) from None
    now = ctx.store.get_ticket(key)
    if now is None:
        raise HTTPException(404, f"no ticket {key}")
    return {"key": now.key, "queue": now.queue, "version": now.version, "status": now.status,
            "assignee": now.assignee, "type": now.type, "components": list(now.components),
            "events": [serialize.event(e) for e in changed.events]}
