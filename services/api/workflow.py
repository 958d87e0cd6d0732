"""The ticket page's routes: the page, the reply, a change, "Take", and its live updates.

Every form post carries the CSRF token (``render.csrf_protect``) and passes the
Origin check (``services.api.security``). The change controls and "Take"
submit the reply form (their inputs name it with ``form="reply"``), so
whatever the agent typed in the reply comes along: after a refusal or a
version conflict the page is shown again with all of it, with a 4xx status;
a change that succeeded while a reply draft was typed shows the page with the
draft instead of redirecting, so the draft survives (a reload re-posts the
old version and gets a conflict, which changes nothing).

A refused post answers with the page and the reason (403, 404, 409, 422);
what was asked is never half done.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.api import access, changes, live, ticket_metrics, ticket_view
from services.api.context import ApiContext, context, signed_in_agent
from services.api.render import csrf_protect
from services.api.replies import ReplyConflict, ReplyError, ReplyRequest, post_reply
from services.api.ticket_view import AGENT_COOKIE, Notice
from services.common.config import Member
from services.tickets import TicketDetail

router = APIRouter(include_in_schema=False, dependencies=[Depends(signed_in_agent)])


def _draft(
    text: str = Form(""), to: str = Form(""), cc: str = Form(""), signature: str = Form(""),
    send_email: str = Form(""), author: str = Form(""), set_status: str = Form(""),
    status: str = Form(""), assignee: str = Form(""), type: str = Form(""),
    components: list[str] = Form([]), components_shown: str = Form(""), version: str = Form(""),
) -> dict[str, Any]:
    """Everything the reply form posts, as the page shows it again."""
    return {
        "text": text, "to": to, "cc": cc, "signature": signature,
        "send_email": send_email in ("on", "1", "true", "yes"), "author": author, "set_status": set_status,
        "status": status, "assignee": assignee, "type": type, "components": components,
        "components_shown": bool(components_shown), "version": version,
    }


def _version(form: dict[str, Any]) -> int | None:
    try:
        return int(form["version"])
    except (TypeError, ValueError):
        return None


def _refused(request: Request, ctx: ApiContext, key: str, signed_in: Member | None, form: dict[str, Any],
             error: changes.ChangeError | ReplyError) -> HTMLResponse:
    """The page again, with the reason, the agent's input and, after a conflict,
    the changes they missed; the form then carries the current version."""
    detail = access.visible_ticket(ctx, signed_in, key)
    if not form.get("components_shown"):  # posted without the change controls: show the ticket's own
        form = {**form, **ticket_view.change_values(detail), "version": _version(form) or detail.version}
    lines: tuple[changes.EventLine, ...] = ()
    if isinstance(error, (changes.ChangeConflict, ReplyConflict)):
        lines = tuple(changes.describe(e, ctx.config) for e in error.events)
        form = {**form, "version": detail.version}
    message = error.message
    if lines:
        message = f"{key} changed while you were editing, so nothing was saved or sent: " + changes.summary(lines)
    return ticket_view.page(request, ctx, detail, signed_in, form=form, notice=Notice(message, lines),
                            status=error.status)


@router.get("/tickets/{key}", response_class=HTMLResponse)
def ticket_page(
    request: Request, key: str, html: bool = False, images: bool = False, ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> HTMLResponse:
    """The ticket; ``html``: show each mail's sanitised HTML, ``images``: with its https images."""
    detail = access.visible_ticket(ctx, signed_in, key)
    return ticket_view.page(request, ctx, detail, signed_in, show_html=html or images, remote_images=images)


@router.get("/tickets/{key}/live")
def ticket_live(
    request: Request, key: str, html: bool = False, images: bool = False, ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> Response:
    """304 while the ticket is as the page shows it, else the page's changed fragments."""
    detail = access.visible_ticket(ctx, signed_in, key)
    etag = live.ticket_stamp(detail, ticket_view.view_query(html or images, images))
    if live.unchanged(request, etag):
        return live.not_modified(etag)
    parts = ticket_view.live_parts(ctx, detail, signed_in, show_html=html or images, remote_images=images)
    return live.fragments(etag, parts, version=detail.version, status=detail.status)


@router.post("/tickets/{key}/reply", response_class=HTMLResponse, dependencies=[Depends(csrf_protect)])
def ticket_reply(
    request: Request, key: str, form: dict[str, Any] = Depends(_draft), ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> Response:
    """Store the reply (and the status chosen with it) and redirect to the ticket
    (POST-redirect-GET); on a refusal show the page again with what was typed."""
    detail = access.visible_ticket(ctx, signed_in, key)
    emailed = form["send_email"]
    try:
        set_status = changes.status_of(form["set_status"])
    except changes.ChangeError as exc:
        return _refused(request, ctx, key, signed_in, form, exc)
    request_ = ReplyRequest(
        ticket_key=key,
        author_email=signed_in.email if signed_in is not None else form["author"],
        text=form["text"],
        to=(form["to"],) if emailed else (),
        cc=(form["cc"],) if emailed else (),
        signature=form["signature"] or None,
        internal=not emailed,
        set_status=set_status,
        expected_version=_version(form) if set_status is not None else None,
    )
    try:
        reply = post_reply(ctx.config, ctx.store, request_)
    except ReplyError as exc:
        return _refused(request, ctx, key, signed_in, form, exc)
    ctx.stored()
    ticket_metrics.observe_reply(reply, detail.queue)
    response = RedirectResponse(f"/tickets/{key}#c{reply.entry.id}", status_code=303)
    if signed_in is None:
        response.set_cookie(AGENT_COOKIE, reply.entry.author_email, max_age=365 * 86400, httponly=True,
                            samesite="lax")
    return response


def _changed(request: Request, ctx: ApiContext, key: str, signed_in: Member | None,
             form: dict[str, Any]) -> Response:
    """After a stored change: back to the ticket, or (a reply draft was typed) the
    page itself with the draft."""
    if not form["text"].strip():
        return RedirectResponse(f"/tickets/{key}", status_code=303)
    detail = access.visible_ticket(ctx, signed_in, key)
    return ticket_view.page(request, ctx, detail, signed_in,
                            form={**form, **ticket_view.change_values(detail), "set_status": form["set_status"]})


@router.post("/tickets/{key}/change", response_class=HTMLResponse, dependencies=[Depends(csrf_protect)])
def ticket_change(
    request: Request, key: str, form: dict[str, Any] = Depends(_draft), ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> Response:
    """Change status, assignee, type and components at once, checked against the
    version the page showed."""
    detail = access.visible_ticket(ctx, signed_in, key)
    try:
        by = changes.actor(ctx.config, signed_in, form["author"])
        change = changes.plan_change(
            ctx.config, detail, status=form["status"] or None, assignee=form["assignee"],
            type_=_type_field(detail, form["type"]),
            components=form["components"] if form["components_shown"] else None, me=by,
        )
        version = _version(form)
        if version is None:
            raise changes.ChangeError("the form has no ticket version: reload the page and try again")
        changes.apply_change(ctx.store, key, change, by=by, expected_version=version)
    except changes.ChangeError as exc:
        return _refused(request, ctx, key, signed_in, form, exc)
    return _changed(request, ctx, key, signed_in, form)


def _type_field(detail: TicketDetail, typed: str) -> str | None:
    """An empty type field on a ticket without a type changes nothing; emptied on
    one with a type, it is passed on for the store to refuse (a type cannot be removed)."""
    if not typed.strip() and detail.type is None:
        return None
    return typed


@router.post("/tickets/{key}/take", response_class=HTMLResponse, dependencies=[Depends(csrf_protect)])
def ticket_take(
    request: Request, key: str, form: dict[str, Any] = Depends(_draft), ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> Response:
    """Assign the ticket to the agent (and start it when it is open; see ``changes.take``)."""
    detail = access.visible_ticket(ctx, signed_in, key)
    try:
        by = changes.actor(ctx.config, signed_in, form["author"])
        changes.check_assignee(ctx.config, detail.queue, by.email)
        version = _version(form)
        changes.apply_change(ctx.store, key, changes.take(detail, by), by=by,
                             expected_version=version if version is not None else detail.version)
    except changes.ChangeError as exc:
        return _refused(request, ctx, key, signed_in, form, exc)
    return _changed(request, ctx, key, signed_in, form)
