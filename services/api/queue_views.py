"""Queue views as an agent asks for them: filters from a query string, checked
once for the pages and the JSON API, turned into ``services.tickets.View``.

Filters (all optional; every value is hostile until checked here):

- ``status``: one status or several, comma-separated (``open,in_progress``);
- ``assignee``: ``me`` (the signed-in agent), ``none`` for unassigned, an
  address; absent (or, on the pages, ``anyone``) for anyone. The JSON API
  also takes an empty value for unassigned;
- ``type``, ``component``: exact values;
- ``awaiting_reply``: the customer wrote last and no agent has mailed since;
- ``sort`` ``updated``|``created``, ``order`` ``desc``|``asc``.

Counts come from the store's kept counts where the view allows it
(``count_view``; ``status_counts`` reads every status tab in one go) and are
a lower bound past ``listing.COUNT_CAP`` ("10,000+").

Search (``q``) uses ``TicketStore.search`` when the store has it, over the
view's queues only; the other filters do not apply to a search.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from markupsafe import Markup, escape

from services.common.config import Config, Member
from services.tickets import TICKET_STATUSES, Count, SearchHit, TicketStatus, TicketStore, View

MARK_START = "\ue000"
MARK_END = "\ue001"
Sort = Literal["updated", "created"]
Order = Literal["desc", "asc"]


class FilterError(ValueError):
    """A filter value deskmail does not accept; the message says which and why."""


@dataclass(frozen=True)
class Filters:
    """The filters as asked, each checked; ``assignee`` as the store takes it
    (an address, '' for unassigned, None for anyone)."""

    status: tuple[TicketStatus, ...] = ()
    assignee: str | None = None
    type: str | None = None
    component: str | None = None
    awaiting_reply: bool = False
    sort: Sort = "updated"
    order: Order = "desc"

    def view(self, queues: Sequence[str]) -> View:
        return View(tuple(queues), status=self.status, assignee=self.assignee, type=self.type,
                    component=self.component, awaiting_reply=self.awaiting_reply, sort=self.sort,
                    order=self.order)


def statuses(value: str | None) -> tuple[TicketStatus, ...]:
    """``open,waiting`` -> ("open", "waiting"); empty or ``any``: any status."""
    if value is None or value.strip() in ("", "any"):
        return ()
    out: list[TicketStatus] = []
    for part in value.split(","):
        name = part.strip()
        match = next((s for s in TICKET_STATUSES if s == name), None)
        if match is None:
            raise FilterError(f"status must be among {', '.join(TICKET_STATUSES)}, not {name[:40]!r}")
        if match not in out:
            out.append(match)
    return tuple(out)


def assignee_of(value: str | None, me: Member | None, *, empty_is_unassigned: bool) -> str | None:
    """The assignee filter as the store takes it."""
    if value is None:
        return None
    name = value.strip().lower()
    if name == "":
        return "" if empty_is_unassigned else None
    if name == "anyone":
        return None
    if name in ("none", "unassigned"):
        return ""
    if name == "me":
        if me is None:
            raise FilterError("assignee=me needs a signed-in agent: name an address instead")
        return me.email
    if "@" not in name or any(c.isspace() for c in name) or len(name) > 320:
        raise FilterError(f"assignee must be me, none or a member's address, not {value[:40]!r}")
    return name


def parse(params: Mapping[str, str | None], me: Member | None, *, empty_is_unassigned: bool) -> Filters:
    """Filters from query parameters; raises FilterError."""
    sort = (params.get("sort") or "updated").strip()
    order = (params.get("order") or "desc").strip()
    if sort not in ("updated", "created"):
        raise FilterError(f"sort must be updated or created, not {sort[:40]!r}")
    if order not in ("desc", "asc"):
        raise FilterError(f"order must be desc or asc, not {order[:40]!r}")
    awaiting = (params.get("awaiting_reply") or "").strip().lower()
    if awaiting not in ("", "0", "1", "true", "false", "yes", "no", "on"):
        raise FilterError(f"awaiting_reply must be true or false, not {awaiting[:40]!r}")

    def text(name: str) -> str | None:
        value = (params.get(name) or "").strip()
        if len(value) > 255:
            raise FilterError(f"{name} is longer than 255 characters")
        return value or None

    return Filters(
        status=statuses(params.get("status")),
        assignee=assignee_of(params.get("assignee"), me, empty_is_unassigned=empty_is_unassigned),
        type=text("type"),
        component=text("component"),
        awaiting_reply=awaiting in ("1", "true", "yes", "on"),
        sort=sort,  # type: ignore[arg-type]  # checked above
        order=order,  # type: ignore[arg-type]
    )


def view_queues(config: Config, store: TicketStore, seen: frozenset[str] | None) -> tuple[str, ...]:
    """The queues a view over "everything the agent sees" spans: the seen ones,
    or (None: all) every configured queue and every queue that still has tickets."""
    if seen is not None:
        return tuple(sorted(seen))
    keys = {q.key for q in config.queues} | {queue for queue, _, _ in store.ticket_counts()}
    return tuple(sorted(keys))


def status_counts(store: TicketStore, view: View) -> dict[str, Count]:
    """The count of each status tab of ``view`` (its own status filter aside), and
    "any" for all of them: one read of the kept counts when only status and
    assignee filter, else one (capped) count per status."""
    if view.type is None and view.component is None and not view.awaiting_reply:
        kept = store.ticket_counts(view.queues)
        per: dict[str, Count] = {}
        for status in TICKET_STATUSES:
            n = sum(v for (_, s, a), v in kept.items()
                    if s == status and (view.assignee is None or a == view.assignee.lower()))
            per[status] = Count(n, True)
        per["any"] = Count(sum(c.n for c in per.values()), True)
        return per
    out: dict[str, Count] = {s: store.count_view(replace(view, status=(s,))) for s in TICKET_STATUSES}
    out["any"] = store.count_view(replace(view, status=()))
    return out


def shown_count(count: Count) -> str:
    """"1,234", or "10,000+" for a count that stopped at the cap."""
    return f"{count.n:,}" + ("" if count.exact else "+")


def search(store: TicketStore, q: str, queues: Sequence[str], limit: int, offset: int) -> list[SearchHit]:
    """Ranked hits over ``queues``."""
    if not queues:
        return []
    return store.search(q, list(queues), limit=limit, offset=offset)


def snippet_html(snippet: str) -> Markup:
    """A search snippet for the page: its text escaped, then U+E000/U+E001 turned
    into <mark> and </mark>. Marks are paired here, whatever the text holds: a
    start inside a match or an end outside one is dropped, an open match is closed."""
    out: list[str] = []
    inside = False
    for part in _split_marks(snippet):
        if part == MARK_START:
            if not inside:
                out.append("<mark>")
                inside = True
        elif part == MARK_END:
            if inside:
                out.append("</mark>")
                inside = False
        else:
            out.append(str(escape(part)))
    if inside:
        out.append("</mark>")
    return Markup("".join(out))


def snippet_text(snippet: str) -> str:
    """The snippet without its marks (plain text)."""
    return snippet.replace(MARK_START, "").replace(MARK_END, "")


def _split_marks(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    for ch in text:
        if ch in (MARK_START, MARK_END):
            if current:
                parts.append("".join(current))
                current = []
            parts.append(ch)
        else:
            current.append(ch)
    if current:
        parts.append("".join(current))
    return parts
