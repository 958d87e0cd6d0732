"""The server-rendered pages: queues, ticket lists, the ticket page with its reply
form and attachments, and a queue's mailbox settings with connection checks.

Everything is escaped by Jinja's autoescape. Mail is shown as its plain text; on
request (``?html=1``) as its HTML, only ever through ``services.api.sanitize``,
with remote images left out until the agent asks for them (``&images=1``).
Attachments are downloads, never pages (``services.api.files``). Every form
carries a CSRF token (``services.api.csrf``). Forms work without JavaScript; the
ticket page adds a small static script that polls delivery status while a mail
is queued or retrying (no inline script: the CSP forbids it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from services.api import access, csrf, files
from services.api.context import ApiContext, context, signed_in_agent
from services.api.replies import ReplyError, ReplyRequest, post_reply, reply_form
from services.api.sanitize import SafeHtml, clean_mail_html
from services.api.security import content_security_policy
from services.common.blobs import BlobMissing, BlobStore
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
    """The page, with this browser's form token (a new one, and its cookie, when
    the browser has none that this api signed)."""
    tokens: csrf.CsrfTokens = request.app.state.csrf
    token = request.cookies.get(csrf.COOKIE) or ""
    fresh = not tokens.valid(token)
    if fresh:
        token = tokens.mint()
    sign_out = request.app.state.deskmail.config.api.auth.mode == "oidc"  # a session cookie to clear
    response = templates.TemplateResponse(request, name, {**values, "csrf_token": token, "sign_out": sign_out},
                                          status_code=status)
    if fresh:
        secure = (request.app.state.deskmail.config.api.public_url or "").startswith("https:")
        response.set_cookie(csrf.COOKIE, token, httponly=True, samesite="lax", secure=secure, path="/")
    return response


def csrf_protect(request: Request, csrf_token: str = Form("")) -> None:
    """Refuse a form post without this browser's signed token (403, with the reason).
    The Origin check is in ``services.api.security``."""
    tokens: csrf.CsrfTokens = request.app.state.csrf
    problem = tokens.refusal(request.cookies.get(csrf.COOKIE), csrf_token)
    if problem is not None:
        raise HTTPException(403, problem)


# ------------------------------------------------------------------ lists


@router.get("/", response_class=HTMLResponse)
def home(
    request: Request, ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent)
) -> HTMLResponse:
    """The queues the agent sees, with the newest of their tickets."""
    seen = access.seen_queues(ctx.config, agent)
    counts = ctx.store.count_by_queue()
    queues = [(q, counts.get(q.key, 0)) for q in ctx.config.queues if seen is None or q.key in seen]
    return _render(request, "index.html", queues=queues, latest=access.list_tickets(ctx.store, seen, LATEST, 0),
                   total=sum(n for key, n in counts.items() if seen is None or key in seen),
                   manage=access.may_manage(ctx.config, agent))


@router.get("/queues/{key}", response_class=HTMLResponse)
def queue_page(
    request: Request, key: str, page: int = 1, ctx: ApiContext = Depends(context),
    agent: Member | None = Depends(signed_in_agent),
) -> HTMLResponse:
    queue = ctx.config.queue(key)
    total = ctx.store.count_tickets(key)
    if queue is None and total == 0:
        raise HTTPException(404, f"no queue {key}")
    access.require_queue(ctx.config, agent, key)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(1, page), pages)
    tickets = ctx.store.list_tickets(key, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    return _render(request, "queue.html", key=key, queue=queue, tickets=tickets, total=total,
                   page=page, pages=pages, manage=access.may_manage(ctx.config, agent))


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


def mail_html(detail: TicketDetail, remote_images: bool) -> dict[str | int, SafeHtml]:
    """The sanitised HTML of each mail that has one: "opening", then comment ids."""
    out: dict[str | int, SafeHtml] = {}
    if detail.description_html:
        out["opening"] = clean_mail_html(detail.description_html, remote_images=remote_images)
    for e in detail.thread:
        if e.html:
            out[e.id] = clean_mail_html(e.html, remote_images=remote_images)
    return out


def _ticket_page(
    request: Request, ctx: ApiContext, detail: TicketDetail, signed_in: Member | None,
    form: dict[str, Any] | None = None, error: str | None = None, status: int = 200,
    show_html: bool = False, remote_images: bool = False,
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
    numbered = list(enumerate(detail.attachments))  # the number is the download's address
    html = mail_html(detail, remote_images) if show_html else {}
    response = _render(
        request, "ticket.html", status=status,
        t=detail,
        queue=ctx.config.queue(detail.queue),
        all_files=numbered,
        opening_files=[(i, a) for i, a in numbered if a.comment_id is None],
        files={e.id: [(i, a) for i, a in numbered if a.comment_id == e.id] for e in detail.thread},
        has_html=bool(detail.description_html or any(e.html for e in detail.thread)),
        mail_html=html,
        show_html=show_html,
        remote_images=remote_images,
        blocked_images=sum(h.blocked_images for h in html.values()),
        members=members,
        reply=defaults,
        form=values,
        error=error,
        signed_in=signed_in,
        agents=ctx.config.organization.members,
        pending=any(e.delivery_status in PENDING_STATUSES for e in detail.thread),
    )
    if show_html and remote_images:  # the agent asked: this response only
        response.headers["content-security-policy"] = content_security_policy(remote_images=True)
    return response


def _visible_ticket(ctx: ApiContext, agent: Member | None, key: str) -> TicketDetail:
    """The ticket; 404 when there is none, 403 when its queue is not the agent's."""
    detail = ctx.store.get_ticket(key)
    if detail is None:
        raise HTTPException(404, f"no ticket {key}")
    access.require_queue(ctx.config, agent, detail.queue)
    return detail


@router.get("/tickets/{key}", response_class=HTMLResponse)
def ticket_page(
    request: Request, key: str, html: bool = False, images: bool = False, ctx: ApiContext = Depends(context),
    signed_in: Member | None = Depends(signed_in_agent),
) -> HTMLResponse:
    """The ticket; ``html``: show each mail's sanitised HTML, ``images``: with its https images."""
    detail = _visible_ticket(ctx, signed_in, key)
    return _ticket_page(request, ctx, detail, signed_in, show_html=html or images, remote_images=images)


@router.get("/tickets/{key}/files/{number}")
def attachment(
    request: Request, key: str, number: int, ctx: ApiContext = Depends(context),
    agent: Member | None = Depends(signed_in_agent),
) -> Response:
    """An attachment's bytes, as a download of a safe type (``services.api.files``)."""
    detail = _visible_ticket(ctx, agent, key)
    if not 0 <= number < len(detail.attachments):
        raise HTTPException(404, f"ticket {key} has no attachment {number}")
    info = detail.attachments[number]
    if info.blob_ref is None:
        raise HTTPException(404, f"the content of {info.filename} was not stored")
    blobs: BlobStore = request.app.state.blobs
    try:
        data = blobs.get(info.blob_ref)
    except BlobMissing:
        raise HTTPException(404, f"the content of {info.filename} is missing from the blob store") from None
    return Response(data, media_type=files.served_type(info.content_type), headers={
        "content-disposition": files.content_disposition(info.filename),
        "content-security-policy": files.ATTACHMENT_CSP,
        "cache-control": "private, no-store",
    })


@router.post("/tickets/{key}/reply", response_class=HTMLResponse, dependencies=[Depends(csrf_protect)])
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
    detail = _visible_ticket(ctx, signed_in, key)
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


def manager_only(ctx: ApiContext = Depends(context), agent: Member | None = Depends(signed_in_agent)) -> None:
    """Queue settings (connection checks, test emails) are for organization.admins: 403 for anyone else."""
    access.require_manager(ctx.config, agent)


@router.get("/queues/{key}/settings", response_class=HTMLResponse, dependencies=[Depends(manager_only)])
def settings_page(request: Request, key: str, ctx: ApiContext = Depends(context)) -> HTMLResponse:
    return _settings_page(request, ctx.config, key)


def _mailbox_of(config: Config, key: str, address: str) -> Mailbox:
    mailbox = config.mailbox(address)
    if mailbox is None or mailbox.queue != key:
        raise HTTPException(404, f"queue {key} has no mailbox {address}")
    return mailbox


@router.post("/queues/{key}/settings/check", response_class=HTMLResponse, dependencies=[Depends(manager_only), Depends(csrf_protect)])
def settings_check(
    request: Request, key: str, mailbox: str = Form(...), ctx: ApiContext = Depends(context)
) -> HTMLResponse:
    """Log in to the mailbox's IMAP and SMTP servers and show each step."""
    from services.mailcheck import check_mailbox

    box = _mailbox_of(ctx.config, key, mailbox)
    steps = check_mailbox(ctx.config, box.address)
    return _settings_page(request, ctx.config, key, results={box.address: {"check": steps}})


@router.post("/queues/{key}/settings/test", response_class=HTMLResponse, dependencies=[Depends(manager_only), Depends(csrf_protect)])
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
