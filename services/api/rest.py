"""The JSON API under /api/v1 (its OpenAPI document at /openapi.json; no docs page, see app.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field

from services.api import access, serialize
from services.api.context import ApiContext, context, signed_in_agent
from services.api.replies import ReplyError, ReplyRequest, post_reply
from services.common.config import Member
from services.tickets import TicketDetail

router = APIRouter(prefix="/api/v1", tags=["tickets"], dependencies=[Depends(signed_in_agent)])


class Error(BaseModel):
    detail: str


class RecipientOut(BaseModel):
    email: str
    name: str | None


class ParticipantOut(BaseModel):
    email: str
    name: str | None
    member: bool
    role: Literal["author", "participant"]


class DeliveryOut(BaseModel):
    comment_id: int
    outbound_id: str | None
    status: Literal["queued", "retrying", "sent", "failed"] | None
    detail: str | None = Field(description="The last SMTP reply or connection error.")
    updated_at: datetime | None


class CommentOut(BaseModel):
    id: int
    kind: Literal["mail_in", "mail_out", "note"]
    internal: bool
    author: str
    author_name: str | None
    author_verified: bool | None = Field(
        None, description="Incoming mail: sender authentication proved its From; null for an agent's comment.")
    created_at: datetime
    text: str
    message_id: str | None
    attachments: list[str]
    to: list[RecipientOut] | None = None
    cc: list[RecipientOut] | None = None
    signature: str | None = None
    delivery: DeliveryOut | None = None


class TicketSummaryOut(BaseModel):
    key: str
    queue: str
    type: str | None
    components: list[str]
    summary: str
    status: str
    author: str
    author_name: str | None
    created_at: datetime
    updated_at: datetime
    comments: int


class TicketPage(BaseModel):
    tickets: list[TicketSummaryOut]
    total: int
    limit: int
    offset: int


class TicketOut(BaseModel):
    key: str
    queue: str
    type: str | None
    components: list[str]
    summary: str
    status: str
    author: str
    author_name: str | None
    author_member: bool
    author_verified: bool = Field(description="Sender authentication proved the opening mail's From.")
    created_at: datetime
    updated_at: datetime
    description: str
    attachments: list[str]
    participants: list[ParticipantOut]
    thread: list[CommentOut]


class ReplyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The reply's plain text.")
    to: list[str] | None = Field(
        None, description="Recipients ('a@x.org' or 'Ann <a@x.org>'); omitted: the ticket's external participants."
    )
    cc: list[str] = []
    signature: str | None = Field(None, description="Signature alias; omitted: the mailbox's first signature.")
    internal: bool = Field(False, description="An internal comment: stored on the ticket, never emailed.")
    author: str | None = Field(
        None, description="The replying member's email; required unless api.user_header identifies the agent."
    )


_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": Error, "description": "The queue cannot send this mail (no SMTP, unknown signature)."},
    403: {"model": Error, "description": "Not a member, no access to the ticket's queue, "
                                         "or the queue may not mail outside the organization."},
    404: {"model": Error, "description": "No such ticket."},
}


@router.get("/tickets", response_model=TicketPage)
def list_tickets(
    queue: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
    ctx: ApiContext = Depends(context),
    agent: Member | None = Depends(signed_in_agent),
) -> dict[str, object]:
    """Tickets of the queues the agent sees, newest first; naming a queue the
    agent does not see is 403."""
    if queue is not None:
        access.require_queue(ctx.config, agent, queue)
        tickets = ctx.store.list_tickets(queue=queue, limit=limit, offset=offset)
        total = ctx.store.count_tickets(queue)
    else:
        seen = access.seen_queues(ctx.config, agent)
        tickets = access.list_tickets(ctx.store, seen, limit, offset)
        total = access.count_tickets(ctx.store, seen)
    return {
        "tickets": [serialize.summary(t) for t in tickets],
        "total": total,
        "limit": limit,
        "offset": offset,
    }


def _visible_ticket(ctx: ApiContext, agent: Member | None, key: str) -> TicketDetail:
    """The ticket; 404 when there is none, 403 when its queue is not the agent's."""
    detail = ctx.store.get_ticket(key)
    if detail is None:
        raise HTTPException(404, f"no ticket {key}")
    access.require_queue(ctx.config, agent, detail.queue)
    return detail


@router.get("/tickets/{key}", response_model=TicketOut, responses={403: _ERRORS[403], 404: _ERRORS[404]})
def get_ticket(
    key: str, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent)
) -> dict[str, object]:
    """The ticket and its whole thread, oldest first."""
    return serialize.ticket(_visible_ticket(ctx, agent, key))


@router.get("/tickets/{key}/deliveries", response_model=list[DeliveryOut],
            responses={403: _ERRORS[403], 404: _ERRORS[404]})
def get_deliveries(
    key: str, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent)
) -> list[dict[str, object]]:
    """Delivery status of every outgoing mail of the ticket (the ticket page polls this)."""
    detail = _visible_ticket(ctx, agent, key)
    return [serialize.delivery(e) for e in detail.thread if e.kind == "mail_out"]


@router.post(
    "/tickets/{key}/replies", response_model=CommentOut, status_code=201,
    responses={**_ERRORS, 422: {"model": Error, "description": "No text, no recipients, or a bad address."}},
)
def post_ticket_reply(
    key: str,
    body: ReplyIn,
    ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> dict[str, object]:
    """Reply on a ticket: an email to the recipients (delivery status ``queued``,
    then ``sent``/``failed`` as the sender reports), or an internal comment."""
    _visible_ticket(ctx, signed_in, key)
    author = _author(signed_in, body.author)
    request = ReplyRequest(
        ticket_key=key, author_email=author, text=body.text,
        to=tuple(body.to) if body.to is not None else None, cc=tuple(body.cc),
        signature=body.signature, internal=body.internal,
    )
    try:
        reply = post_reply(ctx.config, ctx.store, request)
    except ReplyError as exc:
        raise HTTPException(exc.status, exc.message) from None
    ctx.stored()
    return serialize.entry(reply.entry)


def _author(signed_in: Member | None, named: str | None) -> str:
    if signed_in is not None:
        if named and named.strip().lower() != signed_in.email:
            raise HTTPException(403, f"signed in as {signed_in.email}: cannot reply as {named}")
        return signed_in.email
    if not named:
        raise HTTPException(422, "author is required: name the replying member's email")
    return named
