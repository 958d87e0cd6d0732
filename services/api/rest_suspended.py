"""The JSON API of suspended mail (under /api/v1, documented in /openapi.json).

``GET /api/v1/suspended`` lists the rejections of the queues the agent sees,
newest first, with the keys of `deskmail suspended list --json`; dead letters
are not read here (`deskmail suspended list` reads the dead-letter topic).
``POST /api/v1/suspended/{id}/release`` (admins) puts one through the pipeline
and answers 202 once the broker has it: the ticket appears when the ticketer
has applied it, and ``released_ticket`` then names it.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field

from services import suspended
from services.api import access, suspended_access
from services.api.context import ApiContext, context, signed_in_agent
from services.api.rest import Error
from services.common.config import Member
from services.tickets import BadCursor, SuspendedMail

router = APIRouter(prefix="/api/v1", tags=["suspended"], dependencies=[Depends(signed_in_agent)])


class SuspendedOut(BaseModel):
    id: str = Field(description="The rejection's number: what release takes.")
    time: datetime = Field(description="When the mail arrived.")
    queue: str | None
    mailbox: str | None = Field(description="The address the mail arrived at.")
    sender: str | None = Field(description="The From address.")
    subject: str | None
    reason: str = Field(description="Why it made no ticket, as the router or ticketer said it.")
    reason_code: str = Field(description="The reason's code: external_not_accepted, no_queue_access, "
                                         "sender_not_authenticated, auto_reply, bounce, loop ...")
    released_ticket: str | None = Field(description="The ticket a release made or wrote into; null: suspended.")
    released_by: str | None = Field(None, description="The admin who released it.")
    released_at: datetime | None = Field(None, description="When the ticketer applied the release.")
    original: bool = Field(False, description="The raw mail was kept: it can be opened and released.")


class SuspendedPageOut(BaseModel):
    items: list[SuspendedOut]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null: the last page.")
    dead_letters: str = Field(description="Where the dead letters are listed (not here).")


class ReleasedOut(BaseModel):
    id: str
    detail: str = Field(description="What was put where; the ticket appears when the ticketer has applied it.")


def _out(r: SuspendedMail) -> dict[str, object]:
    item = suspended.from_rejection(r)
    return {**item.summary(), "time": item.time, "released_by": item.released_by,
            "released_at": item.released_at, "original": item.has_original}


@router.get("/suspended", response_model=SuspendedPageOut,
            responses={400: {"model": Error, "description": "A cursor this list did not hand out."},
                       403: {"model": Error, "description": "No access to the queue named."}})
def list_suspended(
    queue: str | None = Query(None, description="One queue; omitted: every queue the agent sees."),
    reason: str | None = Query(None, max_length=64, description="Only this reason code."),
    cursor: str | None = Query(None, description="next_cursor of the previous page."),
    limit: int = Query(50, ge=1, le=500),
    ctx: ApiContext = Depends(context),
    agent: Member | None = Depends(signed_in_agent),
) -> dict[str, object]:
    """Suspended mail (rejections) newest first, released ones included."""
    queues: list[str] | None
    if queue is not None:
        access.require_queue(ctx.config, agent, queue)
        queues = [queue]
    else:
        seen = access.seen_queues(ctx.config, agent)
        queues = None if seen is None else sorted(seen)
    try:
        page = ctx.store.list_suspended(queues, reason or None, limit=limit, cursor=cursor)
    except BadCursor as exc:
        raise HTTPException(400, str(exc)) from None
    return {"items": [_out(r) for r in page.items], "next_cursor": page.next_cursor,
            "dead_letters": suspended_access.DEAD_LETTERS_NOTE}


@router.post("/suspended/{item_id}/release", response_model=ReleasedOut, status_code=202,
             responses={403: {"model": Error, "description": "Not an admin."},
                        404: {"model": Error, "description": "No such suspended mail."},
                        409: {"model": Error, "description": "Released already, or its original was not kept."},
                        503: {"model": Error, "description": "No broker here, or it did not acknowledge: "
                                                             "nothing was released."}})
def release(
    item_id: str, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent),
) -> dict[str, object]:
    """Turn suspended mail into a ticket or comment through the normal pipeline, once.
    Send a JSON body (``{}``): a POST without one counts as a form and needs deskmail's Origin."""
    suspended_access.require_admin(ctx.config, agent)
    item = suspended_access.visible_item(ctx, agent, suspended_access.rejection_id(item_id))
    done = suspended_access.release(ctx, agent, item)
    return {"id": done.id, "detail": done.detail}
