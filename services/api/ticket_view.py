"""The ticket page: what it shows and the fragments its live updates swap in.

``page`` renders the whole page; ``live_parts`` the parts a poll replaces (the
status line, the details, the thread with its events, the change controls).
The thread interleaves comments and events by time ("Alice changed status
open → waiting", "deskmail: reopened by customer reply"). The reply form's
fields are only ever rendered by ``page``: a live update never replaces what
the agent is typing.

``form`` holds what the agent typed (after a refusal or a conflict) or the
defaults; it also carries the ticket version the page was rendered with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse

from services.api import access, changes, live
from services.api.context import ApiContext
from services.api.render import fragment, render
from services.api.replies import reply_form
from services.api.htmlquote import split_html
from services.api.sanitize import SafeHtml, clean_mail_html
from services.api.security import content_security_policy
from services.common.config import Member
from services.tickets import PENDING_STATUSES, TICKET_STATUSES, Recipient, ThreadEntry, TicketDetail

# Remembers the "Reply as" choice of this browser (only without api.user_header).
AGENT_COOKIE = "deskmail_agent"
# The statuses "Send and set status" offers (Zendesk's submit-as); "" keeps the status.
SUBMIT_AS = ("waiting", "in_progress", "resolved", "open", "closed")


@dataclass(frozen=True)
class Item:
    """One line of the thread: a comment or an event."""

    comment: ThreadEntry | None = None
    event: changes.EventLine | None = None


@dataclass(frozen=True)
class Notice:
    """A refusal or a conflict to show above the forms."""

    message: str
    events: tuple[changes.EventLine, ...] = ()


def address_list(people: Sequence[Recipient]) -> str:
    """Recipients as an agent types them: ``Ann <ann@x.org>, bob@y.org``."""
    out = []
    for p in people:
        if p.name:
            name = f'"{p.name}"' if any(c in p.name for c in ',;<>"@') else p.name
            out.append(f"{name} <{p.email}>")
        else:
            out.append(p.email)
    return ", ".join(out)


def mail_html(detail: TicketDetail, remote_images: bool) -> dict[str | int, SafeHtml]:
    """The sanitised HTML of each mail that has one: "opening", then comment
    ids; for a reply whose text was split, its new part only (see quoted_html)."""
    out: dict[str | int, SafeHtml] = {}
    if detail.description_html:
        out["opening"] = clean_mail_html(detail.description_html, remote_images=remote_images,
                                         inline=inline_parts(detail, None))
    for e in detail.thread:
        if e.html:
            new = split_html(e.html)[0] if e.quoted is not None else e.html
            out[e.id] = clean_mail_html(new, remote_images=remote_images, inline=inline_parts(detail, e.id))
    return out


def inline_parts(detail: TicketDetail, comment_id: int | None) -> dict[str, str]:
    """A mail's parts with a Content-ID (lower case) and the path that serves
    each: its HTML shows them as src="cid:..."."""
    return {a.content_id.lower(): f"/tickets/{quote(detail.key)}/files/{n}"
            for n, a in enumerate(detail.attachments) if a.content_id and a.comment_id == comment_id}


def quoted_html(detail: TicketDetail, remote_images: bool) -> dict[int, SafeHtml]:
    """The sanitised quoted history of each split reply's HTML, by comment id."""
    out: dict[int, SafeHtml] = {}
    for e in detail.thread:
        if e.html and e.quoted is not None:
            quoted = split_html(e.html)[1]
            if quoted is not None:
                out[e.id] = clean_mail_html(quoted, remote_images=remote_images, inline=inline_parts(detail, e.id))
    return out


def items(ctx: ApiContext, detail: TicketDetail) -> list[Item]:
    """Comments and events, oldest first; at one instant the comment comes first
    (a reply that set a status)."""
    keyed: list[tuple[Any, int, int, Item]] = [(e.created_at, 0, e.id, Item(comment=e)) for e in detail.thread]
    keyed += [(ev.created_at, 1, ev.id, Item(event=changes.describe(ev, ctx.config))) for ev in detail.events]
    return [item for *_, item in sorted(keyed, key=lambda k: k[:3])]


def default_form(request: Request, ctx: ApiContext, detail: TicketDetail) -> dict[str, Any]:
    defaults = reply_form(ctx.config, detail, ctx.store.ticket_mailbox(detail.key))
    return {
        "text": "",
        "to": address_list(defaults.to),
        "cc": "",
        "signature": defaults.signatures[0].alias if defaults.signatures else "",
        "send_email": defaults.send_email,
        "author": request.cookies.get(AGENT_COOKIE, ""),
        "set_status": "",
        **change_values(detail),
    }


def change_values(detail: TicketDetail) -> dict[str, Any]:
    """The change controls' values: the ticket's own, at its version."""
    return {"status": detail.status, "assignee": detail.assignee or "", "type": detail.type or "",
            "components": list(detail.components), "version": detail.version}


def _options(ctx: ApiContext, detail: TicketDetail, form: dict[str, Any]) -> dict[str, Any]:
    queue = ctx.config.queue(detail.queue)
    mailboxes = queue.mailboxes if queue is not None else ()
    members = list(changes.assignable(ctx.config, detail.queue))
    extra = [a for a in (detail.assignee,) if a and all(m.email != a for m in members)]
    types = sorted({m.ticket_type for m in mailboxes if m.ticket_type} | ({detail.type} if detail.type else set()))
    components = list(dict.fromkeys([*(c for m in mailboxes for c in m.components), *detail.components,
                                     *form.get("components", [])]))
    return {"assignees": members, "former_assignees": extra, "types": types, "component_options": components}


def view_query(show_html: bool, remote_images: bool) -> str:
    params = {"html": "1"} if show_html else {}
    if remote_images:
        params["images"] = "1"
    return f"?{urlencode(params)}" if params else ""


def _values(ctx: ApiContext, detail: TicketDetail, signed_in: Member | None, form: dict[str, Any],
            show_html: bool, remote_images: bool) -> dict[str, Any]:
    numbered = list(enumerate(detail.attachments))  # the number is the download's address
    html = mail_html(detail, remote_images) if show_html else {}
    quoted = quoted_html(detail, remote_images) if show_html else {}
    return {
        "t": detail,
        "queue": ctx.config.queue(detail.queue),
        "all_files": numbered,
        "opening_files": [(i, a) for i, a in numbered if a.comment_id is None],
        "files": {e.id: [(i, a) for i, a in numbered if a.comment_id == e.id] for e in detail.thread},
        "has_html": bool(detail.description_html or any(e.html for e in detail.thread)),
        "mail_html": html,
        "quoted_html": quoted,
        "show_html": show_html,
        "remote_images": remote_images,
        "blocked_images": sum(h.blocked_images for h in (*html.values(), *quoted.values())),
        "members": {m.email for m in ctx.config.organization.members},
        "names": {m.email: m.name or m.email for m in ctx.config.organization.members},
        "signed_in": signed_in,
        "items": items(ctx, detail),
        "statuses": TICKET_STATUSES,
        "submit_as": SUBMIT_AS,
        "form": form,
        "pending": any(e.delivery_status in PENDING_STATUSES for e in detail.thread),
        **_options(ctx, detail, form),
    }


def page(
    request: Request, ctx: ApiContext, detail: TicketDetail, signed_in: Member | None, *,
    form: dict[str, Any] | None = None, notice: Notice | None = None, status: int = 200,
    show_html: bool = False, remote_images: bool = False,
) -> HTMLResponse:
    values = form or default_form(request, ctx, detail)
    view = view_query(show_html, remote_images)
    response = render(
        request, "ticket.html", status=status,
        reply=reply_form(ctx.config, detail, ctx.store.ticket_mailbox(detail.key)),
        agents=ctx.config.organization.members,
        notice=notice,
        live_url=f"/tickets/{detail.key}/live{view}",
        etag=live.ticket_stamp(detail, view),
        **_values(ctx, detail, signed_in, values, show_html, remote_images),
    )
    if show_html and remote_images:  # the agent asked: this response only
        response.headers["content-security-policy"] = content_security_policy(remote_images=True)
    return response


PARTS = {"ticket-head": "_ticket_head.html", "details": "_details.html", "thread-entries": "_thread.html",
         "change-fields": "_change_fields.html"}


def live_parts(ctx: ApiContext, detail: TicketDetail, signed_in: Member | None, *, show_html: bool,
               remote_images: bool) -> dict[str, str]:
    """The fragments a live update swaps in, by element id (rendered as on the page)."""
    values = _values(ctx, detail, signed_in, change_values(detail), show_html, remote_images)
    return {element: fragment(name, **values) for element, name in PARTS.items()}
