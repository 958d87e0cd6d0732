"""The server-rendered pages: queues, ticket lists, the ticket page with its reply
form, and a queue's mailbox settings with connection checks.

Everything is escaped by Jinja's autoescape; mail is shown as its plain text,
never as HTML. Forms work without JavaScript; the ticket page adds a small
script that polls delivery status while a mail is queued or retrying.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jinja2
from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.api.context import ApiContext, context, signed_in_agent
from services.api.replies import ReplyError, ReplyRequest, post_reply, reply_form
from services.common.config import Config, Mailbox, Member, Secret
from services.tickets import PENDING_STATUSES, Recipient, TicketDetail

TEMPLATES = Path(__file__).resolve().parent / "templates"
PAGE_SIZE = 50
LATEST = 15
# Remembers the "Reply as" choice of this browser (only without api.user_header).
AGENT_COOKIE = "deskmail_agent"

templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value, in every template
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
)
templates.env.filters["when"] = lambda v: v.strftime("%Y-%m-%d %H:%M UTC") if v else ""
templates.env.filters["size"] = lambda n: f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} B"

router = APIRouter(include_in_schema=False, dependencies=[Depends(signed_in_agent)])


def _render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, values, status_code=status)


def same_origin(request: Request) -> None:
    """Refuse a form posted from another site (a browser sends Origin on POST).
    Behind a proxy that rewrites Host, its X-Forwarded-Host names the site."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return
    hosts = {request.headers.get("host"), *request.headers.get("x-forwarded-host", "").split(",")}
    if urlsplit(origin).netloc not in {h.strip() for h in hosts if h}:
        raise HTTPException(403, "form posted from another site")


# ------------------------------------------------------------------ lists


@router.get("/", response_class=HTMLResponse)
def home(request: Request, ctx: ApiContext = Depends(context)) -> HTMLResponse:
    counts = ctx.store.count_by_queue()
    queues = [(q, counts.get(q.key, 0)) for q in ctx.config.queues]
    return _render(request, "index.html", queues=queues, latest=ctx.store.list_tickets(limit=LATEST),
                   total=sum(counts.values()))


@router.get("/queues/{key}", response_class=HTMLResponse)
def queue_page(request: Request, key: str, page: int = 1, ctx: ApiContext = Depends(context)) -> HTMLResponse:
    queue = ctx.config.queue(key)
    total = ctx.store.count_tickets(key)
    if queue is None and total == 0:
        raise HTTPException(404, f"no queue {key}")
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(1, page), pages)
    tickets = ctx.store.list_tickets(key, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    return _render(request, "queue.html", key=key, queue=queue, tickets=tickets, total=total,
                   page=page, pages=pages)


# ------------------------------------------------------------------ ticket


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


def _ticket_page(
    request: Request, ctx: ApiContext, detail: TicketDetail, signed_in: Member | None,
    form: dict[str, Any] | None = None, error: str | None = None, status: int = 200,
) -> HTMLResponse:
    defaults = reply_form(ctx.config, detail, ctx.store.ticket_mailbox(detail.key))
    values = form or {
        "text": "",
        "to": address_list(defaults.to),
        "cc": "",
        "signature": defaults.signatures[0].alias if defaults.signatures else "",
        "send_email": defaults.send_email,
        "author": request.cookies.get(AGENT_COOKIE, ""),
    }
    members = {m.email for m in ctx.config.organization.members}
    return _render(
        request, "ticket.html", status=status,
        t=detail,
        queue=ctx.config.queue(detail.queue),
        opening_files=[a for a in detail.attachments if a.comment_id is None],
        files={e.id: [a for a in detail.attachments if a.comment_id == e.id] for e in detail.thread},
        members=members,
        reply=defaults,
        form=values,
        error=error,
        signed_in=signed_in,
        agents=ctx.config.organization.members,
        pending=any(e.delivery_status in PENDING_STATUSES for e in detail.thread),
    )


@router.get("/tickets/{key}", response_class=HTMLResponse)
def ticket_page(
    request: Request, key: str, ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> HTMLResponse:
    detail = ctx.store.get_ticket(key)
    if detail is None:
        raise HTTPException(404, f"no ticket {key}")
    return _ticket_page(request, ctx, detail, signed_in)


@router.post("/tickets/{key}/reply", response_class=HTMLResponse, dependencies=[Depends(same_origin)])
def ticket_reply(
    request: Request,
    key: str,
    text: str = Form(""),
    to: str = Form(""),
    cc: str = Form(""),
    signature: str = Form(""),
    send_email: str = Form(""),
    author: str = Form(""),
    ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> Response:
    """Store the reply and redirect to the ticket (POST-redirect-GET); on a
    refusal show the page again with the error and what was typed."""
    detail = ctx.store.get_ticket(key)
    if detail is None:
        raise HTTPException(404, f"no ticket {key}")
    emailed = send_email in ("on", "1", "true", "yes")
    request_ = ReplyRequest(
        ticket_key=key,
        author_email=signed_in.email if signed_in is not None else author,
        text=text,
        to=(to,) if emailed else (),
        cc=(cc,) if emailed else (),
        signature=signature or None,
        internal=not emailed,
    )
    try:
        reply = post_reply(ctx.config, ctx.store, request_)
    except ReplyError as exc:
        form = {"text": text, "to": to, "cc": cc, "signature": signature, "send_email": emailed, "author": author}
        return _ticket_page(request, ctx, detail, signed_in, form=form, error=exc.message, status=exc.status)
    ctx.stored()
    response = RedirectResponse(f"/tickets/{key}#c{reply.entry.id}", status_code=303)
    if signed_in is None:
        response.set_cookie(AGENT_COOKIE, reply.entry.author_email, max_age=365 * 86400, httponly=True,
                            samesite="lax")
    return response


# ------------------------------------------------------------------ settings


def secret_source(secret: Secret | None) -> str:
    """Where a password comes from, never the password itself."""
    if secret is None:
        return "none"
    kind, _, name = secret.source.partition(":")
    if kind == "env":
        return f"set from environment variable {name}"
    if kind == "file":
        return f"read from file {name}"
    return "set"


def _settings_page(
    request: Request, config: Config, key: str, *, results: dict[str, Any] | None = None, status: int = 200
) -> HTMLResponse:
    queue = config.queue(key)
    if queue is None:
        raise HTTPException(404, f"no queue {key}")
    return _render(request, "settings.html", status=status, queue=queue, results=results or {},
                   secret_source=secret_source)


@router.get("/queues/{key}/settings", response_class=HTMLResponse)
def settings_page(request: Request, key: str, ctx: ApiContext = Depends(context)) -> HTMLResponse:
    return _settings_page(request, ctx.config, key)


def _mailbox_of(config: Config, key: str, address: str) -> Mailbox:
    mailbox = config.mailbox(address)
    if mailbox is None or mailbox.queue != key:
        raise HTTPException(404, f"queue {key} has no mailbox {address}")
    return mailbox


@router.post("/queues/{key}/settings/check", response_class=HTMLResponse, dependencies=[Depends(same_origin)])
def settings_check(
    request: Request, key: str, mailbox: str = Form(...), ctx: ApiContext = Depends(context)
) -> HTMLResponse:
    """Log in to the mailbox's IMAP and SMTP servers and show each step."""
    from services.mailcheck import check_mailbox

    box = _mailbox_of(ctx.config, key, mailbox)
    steps = check_mailbox(ctx.config, box.address)
    return _settings_page(request, ctx.config, key, results={box.address: {"check": steps}})


@router.post("/queues/{key}/settings/test", response_class=HTMLResponse, dependencies=[Depends(same_origin)])
def settings_test(
    request: Request, key: str, mailbox: str = Form(...), to: str = Form(""), signature: str = Form(""),
    ctx: ApiContext = Depends(context),
) -> HTMLResponse:
    """Send a test email from the mailbox to ``to`` and show the server's answer."""
    from services.common.smtp_failures import SmtpFailure
    from services.mailcheck import send_test

    box = _mailbox_of(ctx.config, key, mailbox)
    result: dict[str, Any]
    status = 200
    if not to.strip():
        result, status = {"test_error": "enter the address to send the test email to"}, 422
    else:
        try:
            sent = send_test(ctx.config, box.address, to.strip(), signature_alias=signature or None)
        except ValueError as exc:  # a recipient the queue may not mail, an unknown signature
            result = {"test_error": str(exc)}
        except SmtpFailure as failure:  # the server refused or could not be reached
            result = {"test_error": f"not sent: {failure.reply}"}
        else:
            result = {"test_done": f"{to.strip()}: {sent.code} {sent.reply}"}
    return _settings_page(request, ctx.config, key, results={box.address: result}, status=status)
