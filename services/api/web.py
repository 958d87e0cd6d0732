"""The server-rendered pages that are not the queue views or the ticket itself:
attachment downloads and a queue's mailbox settings with connection checks.

The queue views are ``services.api.views_web``, the ticket page and its forms
``services.api.workflow``; the Jinja environment and the form-token check are
``services.api.render`` (re-exported here as ``templates`` and ``csrf_protect``).
Mail is shown as its plain text; on request (``?html=1``) as its HTML, only
ever through ``services.api.sanitize``. Attachments are downloads, never pages
(``services.api.files``). Every form carries a CSRF token (``services.api.csrf``).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from services.api import access, files
from services.api.context import ApiContext, context, signed_in_agent
from services.api.render import csrf_protect, render, templates
from services.common.blobs import BlobMissing, BlobStore
from services.common.config import Config, Mailbox, Member, Secret

__all__ = ["csrf_protect", "router", "templates"]

log = logging.getLogger("deskmail.api")
router = APIRouter(include_in_schema=False, dependencies=[Depends(signed_in_agent)])


@router.get("/tickets/{key}/files/{number}")
def attachment(
    request: Request, key: str, number: int, ctx: ApiContext = Depends(context),
    agent: Member | None = Depends(signed_in_agent),
) -> Response:
    """An attachment's bytes, as a download of a safe type (``services.api.files``)."""
    detail = access.visible_ticket(ctx, agent, key)
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
    except OSError as exc:  # the folder or the bucket cannot be read now; the message names no secret
        log.warning("attachment not served", extra={"stage": "api", "ticket": key, "error": str(exc)})
        raise HTTPException(503, f"the blob store is unavailable, try again: {exc}") from None
    return Response(data, media_type=files.served_type(info.content_type), headers={
        "content-disposition": files.content_disposition(info.filename),
        "content-security-policy": files.ATTACHMENT_CSP,
        "cache-control": "private, no-store",
    })


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
    return render(request, "settings.html", status=status, queue=queue, results=results or {},
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
