"""Tickets as JSON-ready dicts: one shape for the JSON API and `deskmail tickets show --json`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.tickets import (
    AttachmentInfo,
    Participant,
    Recipient,
    ThreadEntry,
    TicketDetail,
    TicketEvent,
    TicketSummary,
)

KIND_LABELS = {"mail_in": "incoming mail", "mail_out": "outgoing mail", "note": "comment"}


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def summary(t: TicketSummary) -> dict[str, Any]:
    return {
        "key": t.key, "queue": t.queue, "type": t.type, "components": list(t.components),
        "summary": t.summary, "status": t.status, "author": t.author_email, "author_name": t.author_name,
        "created_at": iso(t.created_at), "updated_at": iso(t.updated_at), "comments": t.comment_count,
        "assignee": t.assignee, "version": t.version, "awaiting_reply": t.awaiting_reply,
    }


def event(e: TicketEvent) -> dict[str, Any]:
    """A field change: ``actor`` None is deskmail itself (a reopening, auto-close)."""
    return {"id": e.id, "kind": e.kind, "actor": e.actor, "old_value": e.old_value, "new_value": e.new_value,
            "reason": e.reason, "created_at": iso(e.created_at)}


def hit(t: TicketSummary, snippet: str, where: str) -> dict[str, Any]:
    """A search result: the summary, with the snippet (U+E000/U+E001 mark matches) and where it matched."""
    return {**summary(t), "snippet": snippet, "where": where}


def recipient(r: Recipient) -> dict[str, Any]:
    return {"email": r.email, "name": r.name}


def participant(p: Participant) -> dict[str, Any]:
    return {"email": p.email, "name": p.name, "member": p.member, "role": p.role}


def attachment(a: AttachmentInfo) -> dict[str, Any]:
    # stored false: listed only, its content left out (a size limit, services/router/limits.py)
    return {"filename": a.filename, "content_type": a.content_type, "size": a.size, "comment_id": a.comment_id,
            "stored": a.blob_ref is not None}


def entry(e: ThreadEntry, files: tuple[AttachmentInfo, ...] = ()) -> dict[str, Any]:
    """One comment; ``delivery`` is set for outgoing mail only."""
    out: dict[str, Any] = {
        "id": e.id, "kind": e.kind, "internal": e.internal, "author": e.author_email,
        "author_name": e.author_name, "author_verified": e.author_verified,
        "created_at": iso(e.created_at), "text": e.body, "quoted": e.quoted,
        "charset_detected": e.charset_detected, "automatic": e.automatic,
        "message_id": e.message_id, "attachments": [a.filename for a in files if a.comment_id == e.id],
    }
    if e.kind == "mail_out":
        out.update({
            "to": [recipient(r) for r in e.to], "cc": [recipient(r) for r in e.cc],
            "signature": e.signature_alias,
            "delivery": delivery(e),
        })
    return out


def delivery(e: ThreadEntry) -> dict[str, Any]:
    return {
        "comment_id": e.id, "outbound_id": e.outbound_id, "status": e.delivery_status,
        "detail": e.delivery_detail, "updated_at": iso(e.delivery_updated_at),
    }


def ticket(t: TicketDetail) -> dict[str, Any]:
    """The ticket and its whole thread, oldest first (the opening mail is ``description``)."""
    return {
        "key": t.key, "queue": t.queue, "type": t.type, "components": list(t.components),
        "summary": t.summary, "status": t.status, "author": t.author_email, "author_name": t.author_name,
        "author_member": t.author_member, "author_verified": t.author_verified,
        "created_at": iso(t.created_at), "updated_at": iso(t.updated_at),
        "description": t.description, "charset_detected": t.charset_detected,
        "attachments": [a.filename for a in t.attachments if a.comment_id is None],
        "participants": [participant(p) for p in t.participants],
        "thread": [entry(e, t.attachments) for e in t.thread],
        "assignee": t.assignee, "version": t.version, "awaiting_reply": t.awaiting_reply,
        "first_response_at": iso(t.first_response_at), "resolved_at": iso(t.resolved_at),
        "follow_up_of": t.follow_up_of, "follow_ups": list(t.follow_ups),
        "events": [event(e) for e in t.events],
        "priority": t.priority, "tags": list(t.tags), "rules": list(t.matched_rules),
    }
