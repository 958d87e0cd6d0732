"""`deskmail tickets list`: a queue view or a search, page by page with a cursor.

A view (``TicketStore.list_view``) is read by keyset, never by offset: ``--limit``
tickets are fetched in pages of at most ``listing.MAX_LIMIT``, and the cursor
printed after them starts the next call right after the last ticket shown, at
the same cost on the first page and the ten-thousandth. ``--search`` asks
``TicketStore.search`` for ranked hits instead; its cursor holds the position in
the ranking and the query it belongs to.

The next cursor is printed only when more tickets follow: in text mode as the
last line on standard error (``next: --cursor XYZ``), so standard output stays one
line per ticket; with ``--json`` as a last line ``{"next_cursor": "XYZ"}`` on
standard output, the one line without a ``key``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from services.cli.common import BadValue, config_option, load_config, open_store
from services.cli.ticket_text import snippet_text, summary_row
from services.common.config import Config
from services.tickets import TICKET_STATUSES, BadCursor, SearchHit, TicketStatus, TicketSummary, View
from services.tickets.listing import MAX_LIMIT


def parse_statuses(values: Sequence[str]) -> tuple[TicketStatus, ...]:
    """--status values, each one status or several separated by commas; raises BadValue."""
    wanted = [s.strip() for value in values for s in value.split(",") if s.strip()]
    bad = [s for s in wanted if s not in TICKET_STATUSES]
    if bad:
        raise BadValue(f"--status {', '.join(bad)}: a status is one of {', '.join(TICKET_STATUSES)}")
    return tuple(dict.fromkeys(s for s in TICKET_STATUSES if s in wanted))


def assignee_filter(config: Config, value: str | None, agent: str | None) -> str | None:
    """--assignee as a view's filter: None anyone, '' unassigned (``none``), an address;
    ``me`` is the member given by --as. Raises BadValue."""
    if value is None:
        return None
    value = value.strip()
    if value.lower() == "none":
        return ""
    if value.lower() == "me":
        if not agent:
            raise BadValue("--assignee me needs --as EMAIL (or DESKMAIL_AGENT)")
        member = config.member(agent.strip())
        if member is None:
            raise BadValue(f"--as {agent.strip()!r} is not an organization member")
        return member.email
    if "@" not in value:
        raise BadValue(f"--assignee {value!r}: give an address, 'me' or 'none'")
    return value.lower()


def _search_cursor(query: str, offset: int) -> str:
    raw = json.dumps(["search", _query_id(query), offset], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _search_offset(cursor: str, query: str) -> int:
    try:
        kind, query_id, offset = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise BadValue("--cursor: not a cursor this command printed") from None
    if kind != "search" or query_id != _query_id(query) or not isinstance(offset, int) or offset < 0:
        raise BadValue("--cursor: it belongs to another list or search")
    return offset


def _query_id(query: str) -> str:
    return hashlib.sha256(query.encode()).hexdigest()[:12]


def summary_json(t: TicketSummary) -> dict[str, Any]:
    """The API's summary of a ticket, plus ``created``, the name scripts read before it."""
    from services.api import serialize

    data = serialize.summary(t)
    data.setdefault("created", t.created_at.isoformat())
    return data


class Output:
    """Prints tickets as text rows or JSON lines, and the next cursor as the module says."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.shown = 0
        tty = sys.stdout.isatty()
        self.marks = ("\x1b[1m", "\x1b[22m") if tty and not as_json else ("\u00ab", "\u00bb")

    def ticket(self, t: TicketSummary) -> None:
        self.shown += 1
        click.echo(json.dumps(summary_json(t), ensure_ascii=False) if self.as_json else summary_row(t))

    def hit(self, h: SearchHit) -> None:
        self.shown += 1
        if self.as_json:
            data = summary_json(h.ticket) | {"snippet": h.snippet, "where": h.where, "comment_id": h.comment_id,
                                             "rank": h.rank}
            click.echo(json.dumps(data, ensure_ascii=False))
            return
        where = f"comment {h.comment_id}" if h.where == "comment" and h.comment_id is not None else h.where
        click.echo(summary_row(h.ticket))
        # click.echo drops escape sequences when stdout is no terminal; ours are put in only for one
        click.echo(f"    {where}: {snippet_text(h.snippet, *self.marks)}", color=True)

    def end(self, next_cursor: str | None) -> None:
        if next_cursor is not None:
            if self.as_json:
                click.echo(json.dumps({"next_cursor": next_cursor}))
            else:
                click.echo(f"next: --cursor {next_cursor}", err=True)
        elif not self.as_json and not self.shown:
            click.echo("no tickets", err=True)


def list_view(store: Any, view: View, limit: int, cursor: str | None, out: Output) -> str | None:
    """Print up to ``limit`` tickets of ``view`` after ``cursor``; the cursor after them
    (None: none left). Pages of at most MAX_LIMIT, each starting at the last one's cursor."""
    remaining = limit
    while remaining:
        try:
            page = store.list_view(view, limit=min(remaining, MAX_LIMIT), cursor=cursor)
        except BadCursor as exc:
            raise BadValue(f"--cursor: {exc}") from None
        for t in page.tickets:
            out.ticket(t)
        remaining -= len(page.tickets)
        cursor = page.next_cursor
        if cursor is None:
            return None
    return cursor


def search(store: Any, query: str, queues: tuple[str, ...], limit: int, cursor: str | None,
           out: Output) -> str | None:
    """Print up to ``limit`` search hits after ``cursor``; the cursor after them (None: no more)."""
    offset = _search_offset(cursor, query) if cursor else 0
    remaining = limit
    while remaining:
        # One hit more than printed tells whether another page follows.
        asked = min(remaining + 1, MAX_LIMIT)
        hits: list[SearchHit] = store.search(query, queues, limit=asked, offset=offset)
        for h in hits[:remaining]:
            out.hit(h)
        shown = min(len(hits), remaining)
        offset += shown
        remaining -= shown
        if len(hits) < asked:
            return None
    return _search_cursor(query, offset)


@click.command("list", short_help="List or search tickets, a page at a time.")
@click.option("--queue", "queues", multiple=True, metavar="Q",
              help="Only this queue (repeatable). Default: every configured queue.")
@click.option("--status", "statuses", multiple=True, metavar="S",
              help=f"Only these statuses (repeatable or comma separated): {', '.join(TICKET_STATUSES)}.")
@click.option("--assignee", metavar="A", help="Only tickets assigned to A (an address), 'me' (needs --as) or "
              "'none' (unassigned).")
@click.option("--as", "agent", envvar="DESKMAIL_AGENT", metavar="EMAIL",
              help="The organization member 'me' stands for (or DESKMAIL_AGENT).")
@click.option("--type", "type_", metavar="T", help="Only tickets of this type.")
@click.option("--component", metavar="C", help="Only tickets with this component.")
@click.option("--awaiting", is_flag=True, help="Only tickets whose customer wrote last and got no answer yet.")
@click.option("--sort", type=click.Choice(["updated", "created"]), default=None,
              help="Order by last change or by creation.  [default: updated]")
@click.option("--order", type=click.Choice(["desc", "asc"]), default=None,
              help="Newest (desc) or oldest (asc) first.  [default: desc]")
@click.option("--search", "query", metavar="Q",
              help="Tickets matching Q, best first, each with a snippet (matches in \u00ab\u00bb, bold on a "
              "terminal; in JSON between U+E000 and U+E001). Takes only --queue, --limit and --cursor.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True, help="At most this many tickets.")
@click.option("--cursor", metavar="C", help="Continue after the tickets a previous call printed (its next cursor), "
              "with the same options.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@config_option
def list_tickets(
    queues: tuple[str, ...], statuses: tuple[str, ...], assignee: str | None, agent: str | None,
    type_: str | None, component: str | None, awaiting: bool, sort: str | None, order: str | None,
    query: str | None, limit: int, cursor: str | None, as_json: bool, config_path: str | None,
) -> None:
    """List tickets, most recently changed first, with filters; or search them.

    Text: one line per ticket (key, created, author, comments, status, assignee,
    summary). When more tickets follow, the last line on standard error is
    `next: --cursor C`: run the same command with `--cursor C` for the next ones.
    With --json: one object per ticket, and when more follow a last line
    {"next_cursor": "C"}.
    """
    config = load_config(config_path)
    keys = tuple(dict.fromkeys(queues)) or tuple(q.key for q in config.queues)
    out = Output(as_json)
    if query is not None:
        given = {"--status": statuses, "--assignee": assignee, "--type": type_, "--component": component,
                 "--awaiting": awaiting, "--sort": sort, "--order": order}
        used = [name for name, value in given.items() if value]
        if used:
            raise BadValue(f"--search ranks by relevance: it takes no {', '.join(used)}")
        if not query.strip():
            raise BadValue("--search needs words to look for")
        with open_store(config) as store:
            out.end(search(store, query, keys, limit, cursor, out))
        return
    try:
        view = View(
            queues=keys, status=parse_statuses(statuses), assignee=assignee_filter(config, assignee, agent),
            type=type_, component=component, awaiting_reply=awaiting,
            sort="created" if sort == "created" else "updated", order="asc" if order == "asc" else "desc",
        )
    except ValueError as exc:  # more queues than one view reads
        raise BadValue(str(exc)) from None
    with open_store(config) as store:
        out.end(list_view(store, view, limit, cursor, out))
