"""The queue views: the home page (the agent's queues with per-status counts, and
a view over all of them) and ``/queues/{key}``, with their live list updates.

Filters are GET parameters (``services.api.queue_views``), so a view is a
bookmark: ``/queues/SUPPORT?status=open&assignee=me&sort=created&order=asc``.
Pages are keyset pages ("Next" carries the cursor); a cursor that this list did
not hand out, or a filter value deskmail does not know, is a 400 page. Counts
come from the kept counts (never from counting the tickets table on the home
page). ``q`` shows ranked search results instead of the list.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from services.api import access, live, queue_views
from services.api.context import ApiContext, context, signed_in_agent
from services.api.queue_views import FilterError
from services.api.render import fragment, render
from services.common.config import Member
from services.tickets import TICKET_STATUSES, BadCursor

router = APIRouter(include_in_schema=False, dependencies=[Depends(signed_in_agent)])
PAGE_SIZE = 50
# The parameters a view keeps in its links; anything else in the query string is ignored.
KEPT = ("status", "assignee", "type", "component", "awaiting_reply", "sort", "order", "q")


def _query(params: dict[str, str], **changes: str | None) -> str:
    merged = {k: v for k, v in {**params, **changes}.items() if v}
    return f"?{urlencode(merged)}" if merged else ""


def _list_values(ctx: ApiContext, agent: Member | None, request: Request, queues: Sequence[str],
                 base: str) -> dict[str, Any]:
    """What the list part of a view shows (and its ETag); raises HTTPException 400."""
    raw = {k: request.query_params.get(k, "") for k in KEPT}
    kept = {k: v for k, v in raw.items() if v}
    q = raw["q"].strip()
    try:
        filters = queue_views.parse(raw, agent, empty_is_unassigned=False)
    except FilterError as exc:
        raise HTTPException(400, str(exc)) from None
    view = filters.view(queues)
    values: dict[str, Any] = {"base": base, "params": kept, "filters": filters, "q": q, "hits": None,
                              "rows": [], "next_link": None, "first_link": None,
                              "current_status": ",".join(filters.status) or "any"}
    if q:
        offset = _offset(request.query_params.get("offset", "0"))
        hits = queue_views.search(ctx.store, q[:500], queues, PAGE_SIZE, offset)
        values["hits"] = [(h, queue_views.snippet_html(h.snippet)) for h in hits]
        if len(hits) == PAGE_SIZE:
            values["next_link"] = base + _query({**kept, "offset": str(offset + PAGE_SIZE)})
        values["first_link"] = base + _query(kept) if offset else None
        values["etag"] = live.stamp("search", tuple((h.ticket.key, h.snippet, h.where) for h in hits), base, kept,
                                    offset)
        return values
    cursor = request.query_params.get("cursor") or None
    try:
        page = ctx.store.list_view(view, limit=PAGE_SIZE, cursor=cursor)
    except BadCursor as exc:
        raise HTTPException(400, f"{exc}: open the first page of the list again") from None
    count = ctx.store.count_view(view)
    tabs = queue_views.status_counts(ctx.store, view)
    values.update(
        rows=page.tickets,
        count=count,
        shown=queue_views.shown_count(count),
        tabs=[(s, queue_views.shown_count(tabs[s]), base + _query(kept, status=None if s == "any" else s))
              for s in ("any", *TICKET_STATUSES)],
        next_link=base + _query({**kept, "cursor": page.next_cursor}) if page.next_cursor else None,
        first_link=base + _query(kept) if cursor else None,
    )
    values["etag"] = live.rows_stamp(page.tickets, base, kept, cursor, page.next_cursor, count,
                                     tuple(sorted((k, c.n) for k, c in tabs.items())))
    return values


def _offset(value: str) -> int:
    try:
        offset = int(value)
    except ValueError:
        raise HTTPException(400, "offset must be a number") from None
    if not 0 <= offset <= 10_000:
        raise HTTPException(400, "offset must be 0..10000")
    return offset


def _choices(ctx: ApiContext, queues: Sequence[str]) -> dict[str, Any]:
    """The type and component options of the filter form: what the queues' mailboxes give new tickets."""
    boxes = [m for key in queues if (q := ctx.config.queue(key)) is not None for m in q.mailboxes]
    return {"types": sorted({m.ticket_type for m in boxes if m.ticket_type}),
            "components": sorted({c for m in boxes for c in m.components})}


def _live_url(live_base: str, request: Request) -> str:
    kept = {k: request.query_params[k] for k in (*KEPT, "cursor", "offset") if request.query_params.get(k)}
    return live_base + (f"?{urlencode(kept)}" if kept else "")


def _live(request: Request, values: dict[str, Any]) -> Response:
    etag = values["etag"]
    if live.unchanged(request, etag):
        return live.not_modified(etag)
    return live.fragments(etag, {"view-list": fragment("_view_list.html", **values)})


def _queue_keys(ctx: ApiContext, agent: Member | None, key: str) -> tuple[str]:
    known = ctx.config.queue(key) is not None or any(q == key for q, _, _ in ctx.store.ticket_counts([key]))
    if not known:
        raise HTTPException(404, f"no queue {key}")
    access.require_queue(ctx.config, agent, key)
    return (key,)


@router.get("/", response_class=HTMLResponse)
def home(
    request: Request, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent)
) -> HTMLResponse:
    """The agent's queues with their tickets per status, and a view over all of them."""
    seen = access.seen_queues(ctx.config, agent)
    queues = queue_views.view_queues(ctx.config, ctx.store, seen)
    kept = ctx.store.ticket_counts(queues)
    per_status: dict[str, dict[str, int]] = {k: {s: 0 for s in TICKET_STATUSES} for k in queues}
    for (queue, status, _), n in kept.items():
        per_status.setdefault(queue, {s: 0 for s in TICKET_STATUSES})[status] += n
    configured = [q for q in ctx.config.queues if q.key in per_status]
    values = _list_values(ctx, agent, request, queues, "/")
    return render(request, "index.html", queues=[(q, per_status[q.key], sum(per_status[q.key].values()))
                                                  for q in configured],
                  statuses=TICKET_STATUSES, manage=access.may_manage(ctx.config, agent), signed_in=agent,
                  live_url=_live_url("/home/live", request), **_choices(ctx, queues), **values)


@router.get("/home/live")
def home_live(
    request: Request, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent)
) -> Response:
    queues = queue_views.view_queues(ctx.config, ctx.store, access.seen_queues(ctx.config, agent))
    return _live(request, _list_values(ctx, agent, request, queues, "/"))


@router.get("/queues/{key}", response_class=HTMLResponse)
def queue_page(
    request: Request, key: str, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent),
) -> HTMLResponse:
    """One queue's view: filters, status tabs with counts, keyset pages, search."""
    queues = _queue_keys(ctx, agent, key)
    values = _list_values(ctx, agent, request, queues, f"/queues/{key}")
    waiting = sum(n for (queue, _), n in ctx.store.suspended_counts(key).items() if queue == key)
    return render(request, "queue.html", key=key, queue=ctx.config.queue(key), statuses=TICKET_STATUSES,
                  manage=access.may_manage(ctx.config, agent), live_url=_live_url(f"/queues/{key}/live", request),
                  suspended_count=waiting, **_choices(ctx, queues), **values)


@router.get("/queues/{key}/live")
def queue_live(
    request: Request, key: str, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent),
) -> Response:
    """304 while the list is as the page shows it, else its new list part."""
    return _live(request, _list_values(ctx, agent, request, _queue_keys(ctx, agent, key), f"/queues/{key}"))
