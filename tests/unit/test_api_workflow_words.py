"""The pure parts of the api's workflow: event words, filters, snippets, missed events."""

from __future__ import annotations

import textwrap
from datetime import datetime, timedelta, timezone

import pytest

from services.api import changes, queue_views
from services.api.queue_views import FilterError
from services.common.config import parse_text
from services.tickets import TicketEvent
from tests.harness.records import T0

CONFIG = parse_text(textwrap.dedent("""\
    organization:
      domains: [example.com]
      members:
        - {email: alice@example.com, name: Alice Agent}
        - {email: bob@example.com}
    queues:
      - key: SUPPORT
        mailboxes: [{address: support@example.com, ingress: true}]
    """))


def ev(kind: str, actor: str | None, old: str | None, new: str | None, reason: str | None = None,
       at: datetime = T0, n: int = 1) -> TicketEvent:
    return TicketEvent(n, kind, actor, old, new, reason, at)  # type: ignore[arg-type]


@pytest.mark.parametrize(("event", "actor", "text"), [
    (ev("status", "alice@example.com", "open", "waiting"), "Alice Agent", "changed status open → waiting"),
    (ev("status", "bob@example.com", "open", "in_progress"), "bob@example.com", "changed status open → in progress"),
    (ev("status", None, "waiting", "open", "reopened by customer reply"), "deskmail",
     "reopened by customer reply (status waiting → open)"),
    (ev("assignee", "alice@example.com", "", "bob@example.com"), "Alice Agent",
     "changed assignee unassigned → bob@example.com"),
    (ev("assignee", "bob@example.com", "alice@example.com", ""), "bob@example.com",
     "changed assignee Alice Agent → unassigned"),
    (ev("components", "bob@example.com", "", "billing, web"), "bob@example.com", "changed components none → billing, web"),
    (ev("follow_up", None, None, "SUPPORT-7", "customer mail on a closed ticket"), "deskmail",
     "follow-up SUPPORT-7 opened"),
])
def test_events_read_as_sentences(event: TicketEvent, actor: str, text: str) -> None:
    line = changes.describe(event, CONFIG)
    assert (line.actor, line.text) == (actor, text)
    assert line.link == ("SUPPORT-7" if event.kind == "follow_up" else None)


def test_the_missed_events_are_those_of_the_newest_changes() -> None:
    from services.tickets import TicketDetail

    at = [T0 + timedelta(minutes=i) for i in range(3)]
    events = (ev("status", "a@x", "open", "waiting", at=at[0], n=1), ev("status", "a@x", "waiting", "open", at=at[1], n=2),
              ev("assignee", "a@x", "", "a@x", at=at[1], n=3), ev("type", "a@x", "q", "t", at=at[2], n=4))
    detail = TicketDetail(key="S-1", queue="S", number=1, type=None, components=(), summary="", description="",
                          description_html=None, status="open", author_email="c@y", author_name=None,
                          author_member=False, created_at=T0, updated_at=T0, participants=(), thread=(),
                          attachments=(), message_ids=(), version=4, events=events)
    assert [e.id for e in changes.unseen_events(detail, 2)] == [2, 3, 4]
    assert [e.id for e in changes.unseen_events(detail, 3)] == [4]
    assert [e.id for e in changes.unseen_events(detail, 4)] == [4]  # at least the newest


@pytest.mark.parametrize(("snippet", "html"), [
    ("a \ue000printer\ue001 <b>jam</b>", "a <mark>printer</mark> &lt;b&gt;jam&lt;/b&gt;"),
    ("\ue000<script>\ue001", "<mark>&lt;script&gt;</mark>"),
    ("open \ue000never closed", "open <mark>never closed</mark>"),
    ("stray\ue001 end \ue000\ue000twice\ue001", "stray end <mark>twice</mark>"),
    ("", ""),
])
def test_a_snippet_is_escaped_before_its_marks_become_html(snippet: str, html: str) -> None:
    assert str(queue_views.snippet_html(snippet)) == html
    assert "\ue000" not in queue_views.snippet_text(snippet) and "\ue001" not in queue_views.snippet_text(snippet)


def test_filters_from_a_query_string() -> None:
    me = CONFIG.member("alice@example.com")
    f = queue_views.parse({"status": "open, waiting,open", "assignee": "me", "awaiting_reply": "1",
                           "sort": "created", "order": "asc", "type": " task "}, me, empty_is_unassigned=False)
    assert (f.status, f.assignee, f.awaiting_reply, f.sort, f.order, f.type) == (
        ("open", "waiting"), "alice@example.com", True, "created", "asc", "task")
    assert queue_views.parse({"assignee": ""}, me, empty_is_unassigned=True).assignee == ""
    assert queue_views.parse({"assignee": ""}, me, empty_is_unassigned=False).assignee is None
    assert queue_views.parse({"assignee": "none"}, me, empty_is_unassigned=False).assignee == ""
    assert queue_views.parse({"status": "any"}, me, empty_is_unassigned=False).status == ()
    for bad in ({"status": "done"}, {"sort": "random"}, {"order": "up"}, {"assignee": "two words"},
                {"awaiting_reply": "maybe"}, {"type": "x" * 256}):
        with pytest.raises(FilterError):
            queue_views.parse(bad, me, empty_is_unassigned=False)
    with pytest.raises(FilterError, match="signed-in agent"):
        queue_views.parse({"assignee": "me"}, None, empty_is_unassigned=False)


def test_shown_counts() -> None:
    from services.tickets import Count

    assert queue_views.shown_count(Count(1234, True)) == "1,234"
    assert queue_views.shown_count(Count(10_000, False)) == "10,000+"


def test_take_starts_only_an_open_ticket() -> None:
    from dataclasses import replace

    from services.tickets import TicketDetail

    me = CONFIG.member("alice@example.com")
    assert me is not None
    base = TicketDetail(key="S-1", queue="S", number=1, type=None, components=(), summary="", description="",
                        description_html=None, status="open", author_email="c@y", author_name=None,
                        author_member=False, created_at=datetime.now(timezone.utc),
                        updated_at=datetime.now(timezone.utc), participants=(), thread=(), attachments=(),
                        message_ids=())
    assert changes.take(base, me).status == "in_progress"
    for status in ("in_progress", "waiting", "resolved", "closed"):
        change = changes.take(replace(base, status=status), me)
        assert (change.status, change.assignee) == (None, "alice@example.com")
