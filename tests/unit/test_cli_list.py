"""`deskmail tickets list`'s pure parts: its filter values, and how it pages a view and
a search with the cursor it prints (a store that answers from a list stands in)."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from services.cli.common import BadValue
from services.cli.ticket_list import Output, list_view, parse_statuses, search
from services.tickets import Page, SearchHit, TicketSummary, View
from services.tickets.listing import MAX_LIMIT
from tests.harness.records import T0


def summary(n: int) -> TicketSummary:
    return TicketSummary(key=f"SUPPORT-{n}", queue="SUPPORT", number=n, type=None, components=(),
                         summary=f"Subject {n}", status="open", author_email="ann@customer.org", author_name=None,
                         created_at=T0, updated_at=T0, comment_count=0)


class ListStore:
    """Views and search over ``n`` tickets, cursor = the index of the next ticket; records each call."""

    def __init__(self, n: int) -> None:
        self.tickets = [summary(i) for i in range(1, n + 1)]
        self.calls: list[tuple[int, Any]] = []

    def list_view(self, view: View, limit: int, cursor: str | None) -> Page:
        assert 1 <= limit <= MAX_LIMIT
        self.calls.append((limit, cursor))
        start = int(cursor) if cursor else 0
        end = start + limit
        return Page(tuple(self.tickets[start:end]), str(end) if end < len(self.tickets) else None)

    def search(self, query: str, queues: tuple[str, ...], limit: int, offset: int) -> list[SearchHit]:
        assert 1 <= limit <= MAX_LIMIT
        self.calls.append((limit, offset))
        return [SearchHit(t, f"\ue000{query}\ue001 in {t.key}", "summary", None, 1.0)
                for t in self.tickets[offset:offset + limit]]


def printed_keys(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [json.loads(line)["key"] for line in capsys.readouterr().out.splitlines()]


def test_statuses_repeat_or_split_on_commas_and_an_unknown_one_is_refused() -> None:
    assert parse_statuses(["waiting,open", " resolved ", "open"]) == ("open", "waiting", "resolved")
    assert parse_statuses([]) == ()
    with pytest.raises(BadValue, match="--status pending"):
        parse_statuses(["open,pending"])


@pytest.mark.parametrize("n, limit", [(450, 420), (10, 10), (10, 3), (400, 400)])
def test_a_view_is_read_in_pages_of_at_most_max_limit_and_resumed_by_its_cursor(
        n: int, limit: int, capsys: pytest.CaptureFixture[str]) -> None:
    store = ListStore(n)
    seen: list[str] = []
    cursor = None
    while True:
        cursor = list_view(store, View(queues=("SUPPORT",)), limit, cursor, Output(as_json=True))
        page = printed_keys(capsys)
        assert len(page) == min(limit, n - len(seen))
        seen += page
        if cursor is None:
            break
    assert seen == [t.key for t in store.tickets]
    assert max(limit for limit, _ in store.calls) == min(limit, MAX_LIMIT)


@pytest.mark.parametrize("n, limit", [(7, 3), (6, 3), (450, 250), (2, 5)])
def test_search_pages_show_every_hit_once_and_end_without_a_cursor(
        n: int, limit: int, capsys: pytest.CaptureFixture[str]) -> None:
    store = ListStore(n)
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        cursor = search(store, "invoice", ("SUPPORT",), limit, cursor, Output(as_json=True))
        seen += printed_keys(capsys)
        if cursor is None:
            break
    assert seen == [t.key for t in store.tickets]
    # n a multiple of the limit: the extra hit asked for tells the last page it is the last
    assert len(seen) == n


def test_a_search_cursor_belongs_to_its_query(capsys: pytest.CaptureFixture[str]) -> None:
    store = ListStore(5)
    cursor = search(store, "invoice", ("SUPPORT",), 2, None, Output(as_json=True))
    assert cursor is not None
    with pytest.raises(BadValue, match="another"):
        search(store, "refund", ("SUPPORT",), 2, cursor, Output(as_json=True))
    with pytest.raises(BadValue, match="not a cursor"):
        search(store, "invoice", ("SUPPORT",), 2, "%%%", Output(as_json=True))


def test_a_search_hit_in_text_shows_where_it_matched(capsys: pytest.CaptureFixture[str]) -> None:
    out = Output(as_json=False)
    out.hit(SearchHit(replace(summary(3), summary="Invoice\x1b[2J"), "the \ue000invoice\ue001 is wrong", "comment", 42, 0.5))
    out.end(None)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("SUPPORT-3 ") and lines[0].endswith("Invoice\ufffd[2J")
    assert lines[1] == "    comment 42: the \u00abinvoice\u00bb is wrong"
