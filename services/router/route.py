"""The router's pure core: one inbound mail + the config -> one TicketCommand.

The address's defaults (queue, type, components) and its access decision come
first; the queue's routing rules (``rules``) then refine or drop what goes on.
No I/O: the runner fetches the raw bytes, stores attachment payloads (and the raw
mail of a refusal, ``keeps_original``) and produces the command. Raises ``MalformedMail`` for mail that cannot be read and
``UnknownMailbox`` for mail addressed to a mailbox the config does not have (both
are dead-lettered by the runner, so a config fix plus a replay recovers them).
"""

from __future__ import annotations

import html as htmllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common import mailrules, routing, suspended
from services.common.blobs import ref_for_sha256
from services.common.config import Config, Secret
from services.router import classify, limits, replysplit, rules, senderauth
from services.router.access import decide
from services.router.mailparse import Dsn, ParsedMail, parse

MAX_TEXT_CHARS = 1_000_000


class UnknownMailbox(Exception):
    """The mail arrived at an address that is not configured."""


@dataclass(frozen=True)
class Routed:
    command: dict[str, Any]
    key: bytes
    attachments: list[bytes] = field(default_factory=list)  # payloads for the blob store

    @property
    def action(self) -> str:
        return str(self.command["action"])

    @property
    def keeps_original(self) -> bool:
        """The command is, or may become, a rejection (a ``reply_only`` mail, an
        auto-reply or a bounce the ticketer finds no thread for): its raw mail
        must be kept for release. A released mail is never refused again."""
        if self.command["id"].startswith(suspended.RELEASE_PREFIX):
            return False
        return (self.action == "reject" or bool(self.command["reply_only"])
                or self.command["classification"] in ("auto_reply", "bounce"))


def reports_on_own_mail(dsn: Dsn, hint: str | None, queue_keys: Sequence[str], own_key: Secret | None) -> bool:
    """True when the bounce reports on mail deskmail sent: the Message-ID it names
    verifies under ``own_key`` for a ticket the reported mail names (its
    X-Deskmail-Ticket, the ticket key in its subject) or the bounce's subject
    does (``hint``). Without the key nothing verifies, and the bounce threads by
    its own headers only."""
    if own_key is None or dsn.original_message_id is None:
        return False
    subject_key = mailrules.find_ticket_key(dsn.original_subject or "", queue_keys)
    tickets = dict.fromkeys(t for t in (dsn.original_ticket, subject_key, hint) if t)
    return any(mailrules.sent_by_deskmail(dsn.original_message_id, ticket, key=own_key) for ticket in tickets)


def bounce_record(dsn: Dsn | None) -> dict[str, Any] | None:
    """TicketCommand's ``bounce``: what the report says, the failed recipients joined by ", "."""
    if dsn is None:
        return None
    return {"original_message_id": dsn.original_message_id, "recipient": ", ".join(dsn.recipients) or None,
            "status": dsn.status, "diagnostic": dsn.diagnostic, "permanent": dsn.permanent}


def _person(address: Any, config: Config) -> dict[str, Any]:
    # A participant's address is only named in To/Cc, never checked: not verified.
    return {"email": address.email, "name": address.name, "member": config.member(address.email) is not None,
            "verified": False}


# The Message-ID key, or how to get it when a mail needs it (the router looks it up then).
OwnKey = Secret | Callable[[], Secret | None] | None


def route(inbound: dict[str, Any], raw: bytes, config: Config, own_key: OwnKey = None) -> Routed:
    if config.mailbox(inbound["mailbox"]) is None:  # before parsing: the cheaper refusal
        raise UnknownMailbox(f"mailbox {inbound['mailbox']} is not in the configuration")
    return decide_command(inbound, parse(raw), config, own_key)


def decide_command(inbound: dict[str, Any], mail: ParsedMail, config: Config, own_key: OwnKey = None) -> Routed:
    """The command for one parsed mail. ``own_key`` is the key deskmail signs
    its Message-IDs with (or a function giving it, called only for mail that
    may be deskmail's own: a bounce, an X-Deskmail-Ticket header): with it, mail
    deskmail itself sent is recognised whatever its From (a loop through another
    system or another queue)."""
    key = (own_key() if callable(own_key) else own_key) if mail.dsn is not None or mail.deskmail_ticket else None
    mailbox = config.mailbox(inbound["mailbox"])
    if mailbox is None:
        raise UnknownMailbox(f"mailbox {inbound['mailbox']} is not in the configuration")
    own = config.own_addresses
    sender = mail.from_addr.email

    message_id = mail.message_id or mailrules.synthetic_message_id(inbound["sha256"])
    thread_key = classify.thread_key(message_id, mail.in_reply_to, mail.references)
    queue_keys = [q.key for q in config.queues]
    hint = mailrules.find_ticket_key(mail.subject, queue_keys)
    # A bounce of mail deskmail sent belongs to that mail's thread, whatever its own
    # headers say (many bounces have no In-Reply-To): it is keyed by that mail.
    own_bounce = mail.dsn is not None and reports_on_own_mail(mail.dsn, hint, queue_keys, key)
    if own_bounce:
        assert mail.dsn is not None and mail.dsn.original_message_id is not None
        thread_key = mail.dsn.original_message_id
    answers = bool(mail.in_reply_to or mail.references or own_bounce)  # names mail by its Message-ID
    threaded = answers or bool(hint)

    # Newsletters and list mail count as machine mail unless the config says otherwise.
    bulk = mail.list_mail and not mail.auto_submitted and config.automatic_mail.mailing_lists == "automatic"
    if mail.bounce:
        classification = "bounce"
    elif mail.auto_submitted or bulk:
        classification = "auto_reply"
    elif threaded:
        classification = "reply"
    else:
        classification = "new"

    action, reason, detail = ("comment" if threaded else "create"), None, None
    trusted = config.organization.sender_authentication.trusted_authserv_ids
    if trusted and inbound.get("source") == "smtp":  # the ingress wrote its own verdict (services/fetcher/mailauth.py)
        trusted = (*trusted, config.ingress.authserv_id)
    # verified: the From was proven. Without trust configured nothing is proven, yet
    # members keep their rights by the From line alone (config check warns).
    verified = bool(trusted) and senderauth.verify(mail.trace, sender, mail.from_header, trusted).authenticated
    authenticated = not trusted or verified
    access = decide(config, mailbox, sender, authenticated=authenticated)
    if sender in own:
        action, reason, detail = "reject", "loop", f"mail from deskmail's own address {sender}"
    elif key is not None and mailrules.sent_by_deskmail(mail.message_id, mail.deskmail_ticket, key=key):
        action, reason = "reject", "loop"
        detail = f"mail deskmail itself sent for {mail.deskmail_ticket} came back (its signed Message-ID)"
    elif not access.allowed and access.reason == "external_not_accepted" and answers:
        # An outsider answering mail an agent sent: welcome on a thread deskmail knows by
        # Message-ID, refused otherwise. Only the ticketer knows the threads (reply_only).
        action, reason, detail = "comment", access.reason, f"{access.detail}; accepted only as a reply to a known thread"
    elif not access.allowed:
        action, reason, detail = "reject", access.reason, access.detail
    elif bulk and not threaded:
        action, reason = "reject", "bulk"
        detail = "mailing-list or newsletter mail (List-Id, List-Unsubscribe) that belongs to no thread opens no ticket"
    elif classification in ("bounce", "auto_reply") and not threaded:
        action, reason = "reject", classification
        detail = f"{classification.replace('_', '-')} that belongs to no thread opens no ticket"
    reply_only = action == "comment" and not access.allowed
    command_id = inbound["id"]
    release_of = inbound.get("release_of")
    if release_of:
        # An admin released this mail from the suspended list: the refusal is
        # overridden, so it is routed as a member's mail would be, never rejected
        # again, and may open a ticket. Its own id makes a second release a duplicate.
        if action == "reject":
            action = "comment" if threaded else "create"
        reply_only = False
        reason, detail = suspended.released_reason(inbound.get("released_by")), None
        command_id = suspended.release_command_id(release_of)

    queue = config.queue(mailbox.queue)
    verdict = limits.Verdict(kept=mail.attachments, left_out=())
    if action != "reject" and not release_of:  # an admin's release takes the mail whole
        if queue is not None:
            verdict = limits.check(mail.attachments, int(inbound.get("size") or 0), queue.limits)
        if verdict.over and queue is not None and queue.limits.over_limit == "suspend":
            action, reason, detail, reply_only = "reject", limits.REASON, verdict.summary, False

    text = mail.text[:MAX_TEXT_CHARS]
    # Only a reply can become a comment; the ticketer still keeps the whole
    # text when it opens a ticket for it.
    quoted_from = replysplit.split(text) if threaded else None
    html = mail.html[:MAX_TEXT_CHARS] if mail.html else None
    outcome = rules.Outcome(ticket_type=mailbox.ticket_type, components=mailbox.components)
    if action != "reject" and queue is not None and queue.rules:
        # Mail refused above stays refused for its own reason; the rules see what goes on.
        facts = rules.Facts.of(mail, text[:quoted_from] if quoted_from else text, authenticated=verified)
        outcome = rules.apply_rules(config, queue, facts, released=bool(release_of),
                                    ticket_type=mailbox.ticket_type, components=mailbox.components)
        if outcome.dropped_by is not None:
            action, reply_only = "reject", False
            reason, detail = routing.dropped_reason(outcome.dropped_by, mailbox.queue), None

    seen = {sender}
    participants = []
    for address in (*mail.to, *mail.cc):
        if address.email in seen or address.email in own:
            continue
        seen.add(address.email)
        participants.append(_person(address, config))

    stored = {id(a) for a in verdict.kept} if action != "reject" else set()
    if verdict.over and action != "reject":
        # The agent reads first what is missing, in the text and in the HTML shown instead of it.
        prefix = verdict.note + "\n\n"
        text = prefix + text
        quoted_from = None if quoted_from is None else quoted_from + len(prefix)
        if html is not None:
            html = f"<p><strong>{htmllib.escape(verdict.note)}</strong></p>\n" + html
    command = {
        "id": command_id,
        "action": action,
        "classification": classification,
        "queue": mailbox.queue,
        "mailbox": mailbox.address,
        "ticket_type": outcome.ticket_type,
        "components": list(outcome.components),
        "author": {"email": sender, "name": mail.from_addr.name, "member": access.member,
                   "verified": verified},
        "participants": participants,
        "subject": mail.subject,
        "text": text,
        "html": html,
        "quoted_from": quoted_from,
        "charset_detected": mail.charset_detected,
        "attachments": [
            {
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "sha256": a.sha256,
                # An attachment left out by a size limit is listed without its content.
                "blob_ref": ref_for_sha256(a.sha256) if id(a) in stored or action == "reject" else None,
                "content_id": a.content_id,
            }
            for a in mail.attachments
        ],
        "message_id": message_id,
        "in_reply_to": mail.in_reply_to,
        "references": list(mail.references),
        "thread_key": thread_key,
        "ticket_key_hint": hint,
        "source_uidvalidity": inbound["uidvalidity"],
        "source_uid": inbound["uid"],
        "received_at": inbound["received_at"],
        "matched_rule": f"mailbox:{mailbox.address}",
        "reason": reason if detail is None else f"{reason}: {detail}",
        "reply_only": reply_only,
        "raw_ref": None,  # the runner stores the raw mail of a refusal and names it here
        "bounce": bounce_record(mail.dsn) if classification == "bounce" else None,
        # What the queue's routing rules set; the ticketer uses it only when the mail opens a ticket.
        "new_ticket_queue": outcome.queue,
        "assignee": outcome.assignee,
        "assignee_rule": outcome.assignee_rule,
        "priority": outcome.priority,
        "tags": list(outcome.tags),
        "matched_rules": list(outcome.matched),
    }
    payloads = [a.payload for a in mail.attachments if id(a) in stored]
    return Routed(command=command, key=thread_key.encode(), attachments=payloads)
