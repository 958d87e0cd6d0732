"""The plain-text form of a ticket and its thread (`deskmail tickets show`)."""

from __future__ import annotations

from typing import Any

from services.tickets import Recipient, ThreadEntry, TicketDetail


def _person(email: str, name: str | None) -> str:
    return f"{name} <{email}>" if name else email


def people(recipients: tuple[Recipient, ...]) -> str:
    return ", ".join(_person(p.email, p.name) for p in recipients)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


UNVERIFIED = " (not verified: the From line was not proven by sender authentication)"


def _heading(e: ThreadEntry, members: set[str]) -> str:
    who = _person(e.author_email, e.author_name)
    if e.kind == "mail_in":
        return f"mail from {who}" + (UNVERIFIED if e.author_email in members and not e.author_verified else "")
    if e.kind == "mail_out":
        return f"reply by mail from {who}"
    return f"{'internal comment' if e.internal else 'comment'} by {who}"


def as_text(t: TicketDetail) -> str:
    members = {p.email for p in t.participants if p.member}
    unverified = UNVERIFIED if t.author_member and not t.author_verified else ""
    lines = [
        f"{t.key}  {t.summary}",
        f"queue {t.queue} · type {t.type or '-'} · components {', '.join(t.components) or '-'} · status {t.status}",
        f"from {_person(t.author_email, t.author_name)}{unverified} · created {_when(t.created_at)}",
        "participants: " + (", ".join(
            f"{p.email} ({p.role}{'' if p.member else ', external'})" for p in t.participants) or "none"),
        "",
        f"--- mail from {_person(t.author_email, t.author_name)} · {_when(t.created_at)}",
        t.description.rstrip("\n"),
    ]
    opening = [a.filename for a in t.attachments if a.comment_id is None]
    if opening:
        lines.append(f"attachments: {', '.join(opening)}")
    for e in t.thread:
        lines += ["", f"--- {_heading(e, members)} · {_when(e.created_at)}"]
        if e.kind == "mail_out":
            lines.append(f"to: {people(e.to)}" + (f"; cc: {people(e.cc)}" if e.cc else ""))
            status = e.delivery_status or "-"
            lines.append(f"delivery: {status}" + (f" ({e.delivery_detail})" if e.delivery_detail else ""))
        lines.append(e.body.rstrip("\n"))
        files = [a.filename for a in t.attachments if a.comment_id == e.id]
        if files:
            lines.append(f"attachments: {', '.join(files)}")
    return "\n".join(lines) + "\n"
