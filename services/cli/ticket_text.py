"""The plain-text form of tickets for the terminal (`deskmail tickets list|show|set`).

Everything shown may come from a customer's mail, and a terminal obeys control
characters (an escape sequence can recolour, retitle or rewrite what was printed;
a carriage return overwrites a line). So every value goes through ``clean`` (one
line) or ``clean_text`` (a body), which replace control characters with U+FFFD.

``show`` interleaves the ticket's events (status, assignee, type, components,
follow-ups) with its comments by time; an event and a comment at the same time
show the comment first, since such an event follows from it (a customer's reply
reopening the ticket, a reply sent with "set waiting").
"""

from __future__ import annotations

import unicodedata
from typing import Any

from services.tickets import MARK_END, MARK_START, Recipient, ThreadEntry, TicketDetail, TicketEvent, TicketSummary

_REPLACEMENT = "\ufffd"


def _unsafe(ch: str, keep: str) -> bool:
    return ch not in keep and (unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029")


def clean(value: str | None) -> str:
    """``value`` as one line without control characters (None and '' are '')."""
    if not value:
        return ""
    return "".join(_REPLACEMENT if _unsafe(ch, "") else ch for ch in value)


def clean_text(value: str) -> str:
    """A body for the terminal: line breaks and tabs kept, other control characters replaced."""
    value = value.replace("\r\n", "\n")
    return "".join(_REPLACEMENT if _unsafe(ch, "\n\t") else ch for ch in value)


def _person(email: str, name: str | None) -> str:
    return clean(f"{name} <{email}>" if name else email)


def people(recipients: tuple[Recipient, ...]) -> str:
    return ", ".join(_person(p.email, p.name) for p in recipients)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def summary_row(t: TicketSummary) -> str:
    """One line of `tickets list`: key, created, author, comments, status, assignee, summary
    (the summary last: it is the one column with spaces)."""
    return (f"{clean(t.key):<14} {t.created_at.isoformat()[:19]}  {clean(t.author_email):<30} {t.comment_count:>3}  "
            f"{clean(t.status):<11} {clean(t.assignee) or '-':<30} {clean(t.summary)}")


def snippet_text(snippet: str, start: str = "\u00ab", end: str = "\u00bb") -> str:
    """A search snippet as one clean line, each match between ``start`` and ``end``
    (put in after cleaning, so they may be a terminal's own escape sequences)."""
    return clean(snippet).replace(MARK_START, start).replace(MARK_END, end)


def change_text(e: TicketEvent) -> str:
    """What an event changed: ``status open -> waiting``, ``assignee - -> a@x.org``
    (``-``: none), ``follow-up SUPPORT-7 opened``."""
    if e.kind == "follow_up":
        return f"follow-up {clean(e.new_value)} opened"
    return f"{e.kind} {clean(e.old_value) or '-'} -> {clean(e.new_value) or '-'}"


def event_line(e: TicketEvent) -> str:
    """``2026-12-03 10:00 alice@example.com: status open -> waiting``; deskmail's own
    changes carry their reason: ``deskmail: status waiting -> open (reopened by customer reply)``."""
    reason = f" ({clean(e.reason)})" if e.reason else ""
    return f"{e.created_at:%Y-%m-%d %H:%M} {clean(e.actor) or 'deskmail'}: {change_text(e)}{reason}"


UNVERIFIED = " (not verified: the From line was not proven by sender authentication)"


def _heading(e: ThreadEntry, members: set[str]) -> str:
    who = _person(e.author_email, e.author_name)
    if e.kind == "mail_in":
        kind = "automatic reply" if e.automatic else "mail"
        return f"{kind} from {who}" + (UNVERIFIED if e.author_email in members and not e.author_verified else "")
    if e.kind == "mail_out":
        return f"reply by mail from {who}"
    return f"{'internal comment' if e.internal else 'comment'} by {who}"


def _comment(t: TicketDetail, e: ThreadEntry, members: set[str], with_quoted: bool) -> list[str]:
    lines = [f"--- {_heading(e, members)} · {_when(e.created_at)}"]
    if e.kind == "mail_out":
        lines.append(f"to: {people(e.to)}" + (f"; cc: {people(e.cc)}" if e.cc else ""))
        if e.delivery_status == "bounced":  # it had been sent: what came back is the news
            when = f" {_when(e.delivery_updated_at)}" if e.delivery_updated_at else ""
            lines.append(f"delivery: BOUNCED{when}: {clean(e.delivery_detail) or 'the mail came back undelivered'}")
        else:
            status = e.delivery_status or "-"
            lines.append(f"delivery: {status}" + (f" ({clean(e.delivery_detail)})" if e.delivery_detail else ""))
    lines.append(clean_text(e.body).rstrip("\n"))
    if e.quoted is not None:
        quoted = clean_text(e.quoted).rstrip("\n")
        if with_quoted:
            lines += ["[quoted text]", quoted]
        else:
            n = quoted.count("\n") + 1
            lines.append(f"[quoted text: {n} line{'s' if n != 1 else ''} not shown; --quoted shows them]")
    files = [clean(a.filename) for a in t.attachments if a.comment_id == e.id]
    if files:
        lines.append(f"attachments: {', '.join(files)}")
    return lines


def _header(t: TicketDetail) -> list[str]:
    unverified = UNVERIFIED if t.author_member and not t.author_verified else ""
    lines = [
        f"{clean(t.key)}  {clean(t.summary)}",
        f"queue {clean(t.queue)} · type {clean(t.type) or '-'} · components {clean(', '.join(t.components)) or '-'}"
        f" · status {t.status} · assignee {clean(t.assignee) or '-'} · version {t.version}",
        f"from {_person(t.author_email, t.author_name)}{unverified} · created {_when(t.created_at)}"
        + (f" · first response {_when(t.first_response_at)}" if t.first_response_at else "")
        + (f" · resolved {_when(t.resolved_at)}" if t.resolved_at else ""),
    ]
    if t.awaiting_reply:
        lines.append("awaiting an answer: the customer wrote last")
    if t.follow_up_of:
        lines.append(f"follow-up of {clean(t.follow_up_of)}")
    if t.follow_ups:
        lines.append(f"follow-ups: {', '.join(clean(k) for k in t.follow_ups)}")
    if t.priority or t.tags or t.matched_rules:  # set by routing rules
        lines.append(f"priority {clean(t.priority or '') or '-'} · tags {clean(', '.join(t.tags)) or '-'}"
                     f" · rules {clean(', '.join(t.matched_rules)) or '-'}")
    lines.append("participants: " + (", ".join(
        f"{clean(p.email)} ({p.role}{'' if p.member else ', external'})" for p in t.participants) or "none"))
    return lines


def as_text(t: TicketDetail, *, with_quoted: bool = False) -> str:
    """The ticket, its opening mail, then its comments and events oldest first."""
    members = {p.email for p in t.participants if p.member}
    lines = _header(t) + [
        "",
        f"--- mail from {_person(t.author_email, t.author_name)} · {_when(t.created_at)}",
        clean_text(t.description).rstrip("\n"),
    ]
    opening = [clean(a.filename) for a in t.attachments if a.comment_id is None]
    if opening:
        lines.append(f"attachments: {', '.join(opening)}")
    timeline: list[tuple[Any, int, int, ThreadEntry | TicketEvent]] = [
        (e.created_at, 0, i, e) for i, e in enumerate(t.thread)]
    timeline += [(e.created_at, 1, i, e) for i, e in enumerate(t.events)]
    previous_was_event = False
    for _, _, _, item in sorted(timeline, key=lambda row: row[:3]):
        if isinstance(item, TicketEvent):
            # A run of events is one block: one line each, a blank line before the run.
            lines += [event_line(item)] if previous_was_event else ["", event_line(item)]
            previous_was_event = True
        else:
            lines += ["", *_comment(t, item, members, with_quoted)]
            previous_was_event = False
    return "\n".join(lines) + "\n"
