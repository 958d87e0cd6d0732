"""The queue settings' two buttons: "check connection" and "send a test email".

``check_mailbox`` walks the steps a mailbox needs, IMAP first (if configured):
resolve the host, connect, TLS, log in, open the folder; then SMTP (if
configured): connect, TLS, log in. Each protocol stops at its first failure. Every
step is reported with a readable message that names the host and never the
password. ``send_test`` sends a short mail through the same compose and SMTP code
the sender uses, synchronously, and returns the server's answer.

Both block for up to a few ``sender.timeout_seconds`` / ``fetcher.timeout_seconds``;
call them off the request thread's event loop. A mailbox that is not configured, a
missing ``smtp:`` section or an unknown signature alias raise ``ValueError``.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from services.common import smtp as smtp_mod
from services.common.compose import as_bytes, compose, envelope_address, needs_smtputf8, recipients
from services.common.config import Config, Imap, Mailbox, Smtp
from services.common.config import message_id_key
from services.common.mailrules import blocked_recipients, new_message_id, signature_for
from services.common.smtp_failures import SmtpFailure
from services.fetcher import imap as imap_mod

StepName = Literal["dns", "connect", "tls", "login", "select", "smtp-connect", "smtp-tls", "smtp-login"]


@dataclass(frozen=True)
class Step:
    name: StepName
    ok: bool
    detail: str


def _mailbox(config: Config, address: str) -> Mailbox:
    mailbox = config.mailbox(address)
    if mailbox is None:
        raise ValueError(f"mailbox {address} is not configured")
    return mailbox


def check_mailbox(config: Config, address: str) -> list[Step]:
    """IMAP then SMTP steps of ``address``; each protocol stops at its first failure."""
    mailbox = _mailbox(config, address)
    steps: list[Step] = []
    if mailbox.imap is not None:
        steps += check_imap(mailbox.imap, config.fetcher.timeout_seconds)
    if mailbox.smtp is not None:
        steps += check_smtp(mailbox.smtp, config.sender.timeout_seconds)
    return steps


# ------------------------------------------------------------------ IMAP

_IMAP_HINTS: dict[str, str] = {
    "connect": "check host and port",
    "timeout": "check host, port and firewall",
    "tls": "check `security:` (ssl for port 993, starttls for 143), or set cafile for a private CA",
    "login": "check the login and the password (or app password)",
    "select": "check the folder name and the account's rights",
    "protocol": "the server answered something unexpected",
}


def check_imap(imap: Imap, timeout: float) -> list[Step]:
    where = f"{imap.host}:{imap.port}"
    steps: list[Step] = []
    resolved, detail = _resolve(imap.host, imap.port)
    steps.append(Step("dns", resolved, detail))
    if not resolved:
        return steps
    try:
        client = imap_mod.connect(imap, timeout)
    except imap_mod.MailboxError as exc:
        # dns was resolved above; timeouts and protocol errors are reported at connect
        failed: StepName = {"tls": "tls", "login": "login", "select": "select"}.get(
            exc.reason, "connect")  # type: ignore[assignment]
        if failed in ("tls", "login"):
            steps.append(Step("connect", True, f"connected to {where}"))
        if failed == "login":
            steps.append(Step("tls", True, _tls_used(imap.security)))
        steps.append(Step(failed, False, _imap_detail(exc, imap)))
        return steps
    steps.append(Step("connect", True, f"connected to {where}"))
    steps.append(Step("tls", True, _tls_used(imap.security)))
    steps.append(Step("login", True, f"logged in as {imap.login}"))
    try:
        imap_mod.select(imap_mod.guarded(client), imap.folder)
        steps.append(Step("select", True, f"opened folder {imap.folder}"))
    except imap_mod.SESSION_ERRORS as exc:  # MailboxError, socket and IMAP errors
        error = imap_mod.classify(exc, where, during="select")
        steps.append(Step("select", False, _imap_detail(error, imap)))
    finally:
        with contextlib.suppress(Exception):
            client.logout()
    return steps


def _imap_detail(exc: imap_mod.MailboxError, imap: Imap) -> str:
    message = exc.message
    if exc.reason == "login":
        message = f"login refused by {imap.host} for {imap.login}: " + message.split(": ", 1)[-1]
    hint = _IMAP_HINTS.get(exc.reason)
    return f"{message} — {hint}" if hint else message


def _tls_used(security: str) -> str:
    return {"ssl": "TLS from the start (ssl)", "starttls": "upgraded with STARTTLS",
            "none": "no TLS (security: none)"}[security]


# ------------------------------------------------------------------ SMTP

_SMTP_STEP: dict[str, StepName] = {"connect": "smtp-connect", "tls": "smtp-tls", "login": "smtp-login",
                                   "send": "smtp-connect"}


def check_smtp(smtp: Smtp, timeout: float) -> list[Step]:
    where = f"{smtp.host}:{smtp.port}"
    login = smtp.login or smtp.address
    steps: list[Step] = []
    try:
        client = smtp_mod.connect(smtp, timeout)
    except SmtpFailure as failure:
        failed = _SMTP_STEP[failure.stage]
        if failed in ("smtp-tls", "smtp-login"):
            steps.append(Step("smtp-connect", True, f"connected to {where}"))
        if failed == "smtp-login":
            steps.append(Step("smtp-tls", True, _tls_used(smtp.security)))
        steps.append(Step(failed, False, failure.reply))
        return steps
    with contextlib.suppress(Exception):
        client.quit()
    steps.append(Step("smtp-connect", True, f"connected to {where}"))
    steps.append(Step("smtp-tls", True, _tls_used(smtp.security)))
    if smtp.password is None:
        steps.append(Step("smtp-login", True, "no password configured: sending without login"))
    else:
        steps.append(Step("smtp-login", True, f"logged in as {login}"))
    return steps


def send_test(config: Config, address: str, to: str, signature_alias: str | None = None) -> smtp_mod.SendResult:
    """Send "deskmail test email from <address>" to ``to``; returns the server's answer.

    Uses the mailbox's first signature unless ``signature_alias`` names another.
    The queue's "allow sending mail outside" switch applies as for any mail.
    Raises ``ValueError`` (configuration) or ``failures.TemporaryFailure`` /
    ``failures.PermanentFailure`` (the server's refusal or unreachability).
    """
    mailbox = _mailbox(config, address)
    if mailbox.smtp is None:
        raise ValueError(f"mailbox {mailbox.address} has no outgoing mail (smtp:) settings")
    signature = signature_for(mailbox, signature_alias)  # UnknownSignature is a ValueError
    outbound_id = f"test-{uuid.uuid4().hex}"
    from_address = mailbox.smtp.address
    mail: dict[str, Any] = {
        "id": outbound_id, "kind": "test", "ticket": None, "comment_id": None, "queue": mailbox.queue,
        "mailbox": mailbox.address, "from_address": from_address,
        "alias": signature.alias if signature else config.organization.name,
        "signature": signature.text if signature else None,
        "to": [{"email": to, "name": None}], "cc": [],
        "subject": f"deskmail test email from {mailbox.address}",
        "text": (f"This is a test email from deskmail, sent through the outgoing mail settings of "
                 f"{mailbox.address} ({mailbox.smtp.host}:{mailbox.smtp.port}).\n"
                 "If you can read it, answers to tickets of this queue can go out by email."),
        "html": None, "message_id": new_message_id(outbound_id, from_address, key=message_id_key(config), ticket=None),
        "in_reply_to": None, "references": [], "attachments": [],
        "created_at": datetime.now(timezone.utc),
    }
    rcpts = recipients(mail)
    blocked = blocked_recipients(config, mailbox, rcpts)
    if blocked:
        raise ValueError(f"queue {mailbox.queue} does not allow sending mail outside the organization; "
                         f"{', '.join(blocked)} is not a member")
    message = compose(mail)
    pool = smtp_mod.SmtpPool(timeout=config.sender.timeout_seconds)
    try:
        return pool.send(mailbox.smtp, envelope_address(from_address), rcpts, as_bytes(message),
                         smtputf8=needs_smtputf8(message))
    finally:
        pool.close()


def _resolve(host: str, port: int) -> tuple[bool, str]:
    """(True, "host resolves to ...") or (False, the reason it does not)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return False, f"cannot resolve {host}: {exc.strerror or exc} — check the host name"
    except UnicodeError:
        return False, f"{host!r} is not a valid host name — check the host name"
    addresses: list[str] = []
    for info in infos:
        if str(info[4][0]) not in addresses:
            addresses.append(str(info[4][0]))
    return True, f"{host} resolves to {', '.join(addresses)}"
