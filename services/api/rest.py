"""The JSON API under /api/v1 (its OpenAPI document at /openapi.json; no docs page, see app.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from services.api import access, serialize, ticket_metrics
from services.api.api_models import MARKS, ConflictOut, CountOut, EventOut, Status
from services.api.context import ApiContext, context, signed_in_agent
from services.api.replies import ReplyConflict, ReplyError, ReplyRequest, post_reply
from services.common.config import Member
from services.tickets import DeliveryStatus, TicketDetail, TicketEvent

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
    status: DeliveryStatus | None = Field(
        description="queued, retrying, sent, failed, or bounced: a delivery status notification came back for "
                    "the mail (final; no later delivery event replaces it).")
    detail: str | None = Field(description="The last SMTP reply or connection error; for bounced, what the "
                                           "bounce says: '<status> <recipient>: <diagnostic>'.")
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
    text: str = Field(description="The comment's text; for a reply by mail, its new part only.")
    quoted: str | None = Field(
        None, description="A reply by mail: the quoted history and signature block split off text; "
                          "null when nothing was (the text is then the whole mail).")
    charset_detected: str | None = Field(
        None, description="The charset the mail's text was decoded with, where it declared none or a wrong one.")
    automatic: bool = Field(False, description="An automatic reply or bounce on the thread: stored, and it "
                                                "changed nothing (no reopening, no follow-up).")
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
    assignee: str | None = Field(None, description="The assigned member's address; null: unassigned.")
    version: int = Field(1, description="Send it back with a change (PATCH, a reply's set_status).")
    awaiting_reply: bool = Field(False, description="The customer wrote last and no agent has mailed since.")
    snippet: str | None = Field(None, description="Search results only: where the query matched. " + MARKS)
    where: Literal["summary", "description", "comment"] | None = Field(
        None, description="Search results only: the part of the ticket the snippet is from.")


class TicketPage(BaseModel):
    tickets: list[TicketSummaryOut]
    total: int = Field(description="Tickets in the list (count.n); for search results, the hits on this page.")
    limit: int
    offset: int = Field(description="The offset asked for (offset paging of the unfiltered list, and of search).")
    next_cursor: str | None = Field(None, description="Pass as cursor for the next page; null: the last page.")
    count: CountOut | None = Field(None, description="Tickets in the list; null for search results.")


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
    description: str = Field(description="The opening mail's whole text.")
    charset_detected: str | None = Field(
        None, description="The charset the opening mail's text was decoded with, where it declared none or a wrong one.")
    attachments: list[str]
    participants: list[ParticipantOut]
    thread: list[CommentOut]
    assignee: str | None = Field(description="The assigned member's address; null: unassigned.")
    version: int = Field(description="Send it back with a change (PATCH, a reply's set_status).")
    awaiting_reply: bool = Field(description="The customer wrote last and no agent has mailed since.")
    first_response_at: datetime | None = Field(description="When an agent first mailed the customer.")
    resolved_at: datetime | None = Field(description="When the ticket last became resolved or closed.")
    follow_up_of: str | None = Field(description="The closed ticket this one follows up (its key).")
    follow_ups: list[str] = Field(description="Tickets opened as follow-ups of this one (their keys).")
    events: list[EventOut] = Field(description="Changes of status, assignee, type, components; oldest first.")
    priority: str | None = Field(None, description="low, normal, high or urgent, set by a routing rule; null: none.")
    tags: list[str] = Field(default_factory=list, description="Tags routing rules put on the ticket, sorted.")
    rules: list[str] = Field(default_factory=list,
                             description="The routing rules the opening mail matched, in order; [] when none.")


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
    set_status: Status | None = Field(None, description="Set this status with the reply (\"send and set "
                                                         "waiting\"), in the same transaction.")
    version: int | None = Field(None, description="With set_status: the ticket version the agent saw; another "
                                                  "version answers 409 and stores nothing. Omitted: no check.")


class ReplyOut(CommentOut):
    ticket_version: int | None = Field(None, description="The ticket's version after set_status changed it; "
                                                          "null when the status stayed.")
    events: list[EventOut] = Field([], description="The events set_status recorded.")


_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": Error, "description": "The queue cannot send this mail (no SMTP, unknown signature)."},
    403: {"model": Error, "description": "Not a member, no access to the ticket's queue, "
                                         "or the queue may not mail outside the organization."},
    404: {"model": Error, "description": "No such ticket."},
}


@router.get("/tickets/{key}", response_model=TicketOut, responses={403: _ERRORS[403], 404: _ERRORS[404]})
def get_ticket(
    key: str, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent)
) -> dict[str, object]:
    """The ticket and its whole thread, oldest first."""
    return serialize.ticket(access.visible_ticket(ctx, agent, key))


@router.get("/tickets/{key}/deliveries", response_model=list[DeliveryOut],
            responses={403: _ERRORS[403], 404: _ERRORS[404]})
def get_deliveries(
    key: str, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent)
) -> list[dict[str, object]]:
    """Delivery status of every outgoing mail of the ticket (the ticket page polls this)."""
    detail = access.visible_ticket(ctx, agent, key)
    return [serialize.delivery(e) for e in detail.thread if e.kind == "mail_out"]


@router.post(
    "/tickets/{key}/replies", response_model=ReplyOut, status_code=201,
    responses={**_ERRORS, 409: {"model": ConflictOut, "description": "set_status with a version the ticket "
                                                                     "no longer has: nothing was stored."},
               422: {"model": Error, "description": "No text, no recipients, or a bad address."}},
)
def post_ticket_reply(
    key: str,
    body: ReplyIn,
    ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> dict[str, object] | JSONResponse:
    """Reply on a ticket: an email to the recipients (delivery status ``queued``,
    then ``sent``/``failed`` as the sender reports), or an internal comment;
    with ``set_status``, the ticket's status changes in the same transaction."""
    detail = access.visible_ticket(ctx, signed_in, key)
    author = _author(signed_in, body.author)
    request = ReplyRequest(
        ticket_key=key, author_email=author, text=body.text,
        to=tuple(body.to) if body.to is not None else None, cc=tuple(body.cc),
        signature=body.signature, internal=body.internal, set_status=body.set_status,
        expected_version=body.version if body.set_status is not None else None,
    )
    try:
        reply = post_reply(ctx.config, ctx.store, request)
    except ReplyConflict as exc:
        return JSONResponse(conflict_body(exc.message, exc.current, exc.events), status_code=409)
    except ReplyError as exc:
        raise HTTPException(exc.status, exc.message) from None
    ctx.stored()
    ticket_metrics.observe_reply(reply, detail.queue)
    changed = reply.changed
    return {**serialize.entry(reply.entry), "ticket_version": changed.version if changed else None,
            "events": [serialize.event(e) for e in changed.events] if changed else []}


def conflict_body(message: str, current: int, events: Sequence[TicketEvent]) -> dict[str, object]:
    """The 409 answer: what happened, the version now, the changes the caller missed."""
    return {"detail": message, "version": current, "events": [serialize.event(e) for e in events]}


def _author(signed_in: Member | None, named: str | None) -> str:
    if signed_in is not None:
        if named and named.strip().lower() != signed_in.email:
            raise HTTPException(403, f"signed in as {signed_in.email}: cannot reply as {named}")
        return signed_in.email
    if not named:
        raise HTTPException(422, "author is required: name the replying member's email")
    return named
