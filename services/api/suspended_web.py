"""The "Suspended" tab of a queue: mail that made no ticket, with its original
and a Release button for admins.

``/queues/{key}/suspended`` lists the queue's rejections newest first (keyset
pages; ``?reason=`` one reason code), released ones with the ticket they
became. Admins get the original as a download (``text/plain; charset=utf-8``,
``Content-Disposition: attachment``, never rendered: the mail is the sender's
text, not deskmail's) and a Release form (the page's CSRF token, like every
form). A release returns when the broker has the mail; the page then says the
ticket appears in a moment (Post/Redirect/Get, so a reload does not post it
again). Dead letters are not read here (see ``suspended_access``).
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.api import access, files, suspended_access
from services.api.context import ApiContext, context, signed_in_agent
from services.api.render import csrf_protect, render
from services.common.blobs import BlobStore
from services.common.config import Member
from services.common.suspended import REASON_CODES
from services.tickets import BadCursor

router = APIRouter(include_in_schema=False, dependencies=[Depends(signed_in_agent)])
PAGE_SIZE = 50
_REASON_CODE = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _queue(ctx: ApiContext, agent: Member | None, key: str) -> None:
    """404 for a queue deskmail does not know, 403 for one the agent does not see."""
    known = (ctx.config.queue(key) is not None
             or any(q == key for q, _, _ in ctx.store.ticket_counts([key]))
             or bool(ctx.store.suspended_counts(key)))
    if not known:
        raise HTTPException(404, f"no queue {key}")
    access.require_queue(ctx.config, agent, key)


def _page(request: Request, ctx: ApiContext, agent: Member | None, key: str, *, status: int = 200,
          error: str | None = None, notice: str | None = None) -> HTMLResponse:
    reason = (request.query_params.get("reason") or "").strip() or None
    if reason is not None and not _REASON_CODE.fullmatch(reason):  # deskmail's codes and routing rules' names
        raise HTTPException(400, "reason must be a reason code such as external_not_accepted")
    cursor = request.query_params.get("cursor") or None
    try:
        page = ctx.store.list_suspended([key], reason, limit=PAGE_SIZE, cursor=cursor)
    except BadCursor as exc:
        raise HTTPException(400, f"{exc}: open the first page of the list again") from None
    waiting = {code: n for (queue, code), n in ctx.store.suspended_counts(key).items() if queue == key}
    configured = ctx.config.queue(key)
    dropping = {r.name for r in configured.rules if r.drop} if configured is not None else set()
    codes = sorted(set(waiting) | set(REASON_CODES) | dropping | ({reason} if reason else set()))
    base = f"/queues/{key}/suspended"

    def link(**params: str | None) -> str:
        kept = {k: v for k, v in {"reason": reason, **params}.items() if v}
        return base + (f"?{urlencode(kept)}" if kept else "")

    tabs = [("any", sum(waiting.values()), base, reason is None)]
    tabs += [(code, waiting.get(code, 0), f"{base}?{urlencode({'reason': code})}", reason == code) for code in codes]
    return render(request, "suspended.html", status=status, key=key, queue=configured, items=page.items,
                  tabs=tabs, admin=suspended_access.may_release(ctx.config, agent),
                  next_link=link(cursor=page.next_cursor) if page.next_cursor else None,
                  first_link=link() if cursor else None, error=error, notice=notice,
                  dead_letters_note=suspended_access.DEAD_LETTERS_NOTE)


@router.get("/queues/{key}/suspended", response_class=HTMLResponse)
def suspended_page(
    request: Request, key: str, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent),
) -> HTMLResponse:
    """The queue's suspended mail: time, sender, subject, reason; original and Release for admins."""
    _queue(ctx, agent, key)
    released = (request.query_params.get("released") or "").strip()
    notice = None
    if released.isdigit() and len(released) <= 18:
        notice = (f"Suspended mail {released} was released: it becomes a ticket or comment in a moment "
                  "(reload to see which).")
    return _page(request, ctx, agent, key, notice=notice)


def _own_item(ctx: ApiContext, agent: Member | None, key: str, item_id: str) -> Any:
    _queue(ctx, agent, key)
    suspended_access.require_admin(ctx.config, agent)
    item = suspended_access.visible_item(ctx, agent, suspended_access.rejection_id(item_id))
    if item.queue != key:
        raise HTTPException(404, f"queue {key} has no suspended mail {item.id}")
    return item


@router.post("/queues/{key}/suspended/{item_id}/release", dependencies=[Depends(csrf_protect)],
             response_class=HTMLResponse)
def release_button(
    request: Request, key: str, item_id: str, ctx: ApiContext = Depends(context),
    agent: Member | None = Depends(signed_in_agent),
) -> Response:
    """Release one suspended mail through the pipeline; back to the list with a notice."""
    item = _own_item(ctx, agent, key, item_id)
    try:
        suspended_access.release(ctx, agent, item)
    except HTTPException as exc:
        if exc.status_code in (409, 503):  # the list again, with the reason
            return _page(request, ctx, agent, key, status=exc.status_code, error=str(exc.detail))
        raise
    return RedirectResponse(f"/queues/{key}/suspended?{urlencode({'released': item.id})}", status_code=303)


@router.get("/queues/{key}/suspended/{item_id}/original")
def original(
    request: Request, key: str, item_id: str, ctx: ApiContext = Depends(context),
    agent: Member | None = Depends(signed_in_agent),
) -> Response:
    """The raw mail, as a download of plain text: never a page of deskmail's."""
    item = _own_item(ctx, agent, key, item_id)
    blobs: BlobStore = request.app.state.blobs
    raw = suspended_access.original(blobs, item)
    return Response(raw, media_type="text/plain; charset=utf-8", headers={
        "content-disposition": files.content_disposition(f"suspended-{item.id}.eml"),
        "content-security-policy": files.ATTACHMENT_CSP,
        "cache-control": "private, no-store",
    })
