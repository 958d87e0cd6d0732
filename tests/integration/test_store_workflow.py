"""The ticket workflow in the store, on SQLite and PostgreSQL: every transition and
its event, the mail rules (reopen, follow-up), auto-close, the version check with
two concurrent writers, the kept counts and the queue views' keyset pages.
"""

from __future__ import annotations

import itertools
import textwrap
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import func, insert, select

from services.common.config import parse_text
from services.ticketer.runner import AutoClose
from services.tickets import (
    TICKET_STATUSES,
    BadCursor,
    InvalidChange,
    Recipient,
    TicketChange,
    TicketStore,
    UnknownTicket,
    VersionConflict,
    View,
)
from services.tickets.tables import ticket_components, ticket_counts, tickets
from tests.harness.records import T0, command

pytestmark = pytest.mark.integration

ALICE = "alice@example.com"
BOB = "bob@example.com"
MEMBER = {"email": ALICE, "name": "Alice Agent", "member": True}


def reply(n: int, **overrides: Any) -> dict[str, Any]:
    return command(n, action="comment", classification="reply", **overrides)


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as s:
        s.migrate()
        yield s


def detail(store: TicketStore, key: str) -> Any:
    found = store.get_ticket(key)
    assert found is not None
    return found


def counts_match_tickets(store: TicketStore) -> None:
    """The kept counts equal a count of the tickets table, row by row."""
    with store.engine.connect() as conn:
        real = {(q, s, a or ""): n for q, s, a, n in conn.execute(
            select(tickets.c.queue, tickets.c.status, tickets.c.assignee, func.count())
            .group_by(tickets.c.queue, tickets.c.status, tickets.c.assignee))}
    assert store.ticket_counts() == real


# -- transitions -----------------------------------------------------------


@pytest.mark.parametrize(("old", "new"), [p for p in itertools.permutations(TICKET_STATUSES, 2)])
def test_every_transition_is_allowed_and_recorded(store: TicketStore, old: str, new: str) -> None:
    store.apply(command(1))
    t = T0 + timedelta(days=1)
    if old != "open":
        store.change_ticket("SUPPORT-1", TicketChange(status=old), actor=ALICE, expected_version=1, now=t)  # type: ignore[arg-type]
    before = detail(store, "SUPPORT-1")
    changed = store.change_ticket("SUPPORT-1", TicketChange(status=new), actor=BOB,  # type: ignore[arg-type]
                                  expected_version=before.version, now=t + timedelta(hours=1))
    after = detail(store, "SUPPORT-1")
    assert (after.status, after.version, changed.version) == (new, before.version + 1, before.version + 1)
    event = after.events[-1]
    assert (event.kind, event.actor, event.old_value, event.new_value, event.reason) == ("status", BOB, old, new, None)
    assert event.created_at == t + timedelta(hours=1) == after.updated_at
    assert [e.kind for e in after.events] == ["status"] * (2 if old != "open" else 1)
    done = ("resolved", "closed")
    if new in done and old not in done:
        assert after.resolved_at == t + timedelta(hours=1)
        assert changed.resolved_after == (after.resolved_at - after.created_at).total_seconds()
    else:
        assert changed.resolved_after is None
    if new not in done:
        assert after.resolved_at is None
    counts_match_tickets(store)


def test_assignee_type_and_components_change_with_one_event_each(store: TicketStore) -> None:
    store.apply(command(1))
    changed = store.change_ticket(
        "SUPPORT-1", TicketChange(status="in_progress", assignee=" Alice@Example.com ", type="incident",
                                  components=("web", "api", "web")),
        actor=ALICE, expected_version=1, now=T0 + timedelta(days=1))
    t = detail(store, "SUPPORT-1")
    assert (t.status, t.assignee, t.type, t.components, t.version) == (
        "in_progress", ALICE, "incident", ("web", "api"), 2)
    assert [(e.kind, e.old_value, e.new_value) for e in t.events] == [
        ("status", "open", "in_progress"), ("assignee", "", ALICE), ("type", "question", "incident"),
        ("components", "billing, web", "web, api")]
    assert changed.events == t.events
    # the same values again change nothing: no event, no new version
    same = store.change_ticket("SUPPORT-1", TicketChange(status="in_progress", assignee=ALICE),
                               actor=BOB, expected_version=2)
    assert (same.version, same.events) == (2, ())
    # unassign
    store.change_ticket("SUPPORT-1", TicketChange(assignee=""), actor=BOB, expected_version=2)
    t = detail(store, "SUPPORT-1")
    assert t.assignee is None and t.events[-1].new_value == ""
    with store.engine.connect() as conn:
        assert sorted(conn.execute(select(ticket_components.c.component)).scalars()) == ["api", "web"]
    counts_match_tickets(store)


@pytest.mark.parametrize("change", [
    TicketChange(status="done"),  # type: ignore[arg-type]
    TicketChange(assignee="not an address"),
    TicketChange(type=" "),
    TicketChange(components=("x" * 300,)),
])
def test_a_bad_change_is_refused_and_changes_nothing(store: TicketStore, change: TicketChange) -> None:
    store.apply(command(1))
    with pytest.raises(InvalidChange):
        store.change_ticket("SUPPORT-1", change, actor=ALICE, expected_version=1)
    t = detail(store, "SUPPORT-1")
    assert (t.version, t.events) == (1, ())


def test_an_unknown_ticket(store: TicketStore) -> None:
    with pytest.raises(UnknownTicket):
        store.change_ticket("SUPPORT-9", TicketChange(status="closed"), actor=ALICE, expected_version=None)


# -- the version check -----------------------------------------------------


def test_a_stale_version_is_a_conflict_not_a_lost_update(store: TicketStore) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(assignee=ALICE), actor=ALICE, expected_version=1)
    with pytest.raises(VersionConflict) as info:
        store.change_ticket("SUPPORT-1", TicketChange(assignee=BOB), actor=BOB, expected_version=1)
    assert (info.value.expected, info.value.current) == (1, 2)
    assert "changed by someone else" in str(info.value)
    assert detail(store, "SUPPORT-1").assignee == ALICE


def test_two_concurrent_writers_one_wins_the_other_gets_a_conflict(db_url: str) -> None:
    with TicketStore(db_url) as first, TicketStore(db_url) as second:
        first.migrate()
        first.apply(command(1))
        for round_ in range(5):
            version = detail(first, "SUPPORT-1").version
            barrier = threading.Barrier(2)
            outcomes: dict[str, str] = {}

            def write(store: TicketStore, who: str) -> None:
                barrier.wait()
                try:
                    store.change_ticket("SUPPORT-1", TicketChange(assignee=who), actor=who,
                                        expected_version=version)
                    outcomes[who] = "won"
                except VersionConflict:
                    outcomes[who] = "conflict"

            threads = [threading.Thread(target=write, args=(s, who)) for s, who in ((first, ALICE), (second, BOB))]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
            assert sorted(outcomes.values()) == ["conflict", "won"], (round_, outcomes)
            winner = next(who for who, outcome in outcomes.items() if outcome == "won")
            t = detail(first, "SUPPORT-1")
            assert (t.assignee, t.version) == (winner, version + 1)
            # make the next round's change a real change for both writers
            first.change_ticket("SUPPORT-1", TicketChange(assignee=""), actor=ALICE, expected_version=None)
        counts_match_tickets(first)


# -- what mail does to the status -------------------------------------------


@pytest.mark.parametrize("status", ["waiting", "resolved"])
def test_a_customer_reply_reopens_a_waiting_or_resolved_ticket(store: TicketStore, status: str) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(status=status), actor=ALICE, expected_version=1,  # type: ignore[arg-type]
                        now=T0 + timedelta(hours=1))
    applied = store.apply(reply(2, in_reply_to="msg-1@customer.org", received_at=T0 + timedelta(hours=2)))
    assert (applied.outcome, applied.ticket_key) == ("commented", "SUPPORT-1")
    t = detail(store, "SUPPORT-1")
    assert (t.status, t.version, t.awaiting_reply) == ("open", 3, True)
    last = t.events[-1]
    assert (last.kind, last.actor, last.old_value, last.new_value, last.reason) == (
        "status", None, status, "open", "reopened by customer reply")
    counts_match_tickets(store)


@pytest.mark.parametrize("status", ["open", "in_progress"])
def test_a_customer_reply_leaves_an_active_ticket_as_it_is(store: TicketStore, status: str) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(status=status), actor=ALICE, expected_version=1)  # type: ignore[arg-type]
    store.apply(reply(2, in_reply_to="msg-1@customer.org"))
    t = detail(store, "SUPPORT-1")
    assert t.status == status and [e.reason for e in t.events if e.reason] == []


def test_a_members_mail_does_not_reopen_nor_wait_for_an_answer(store: TicketStore) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting"), actor=ALICE, expected_version=1)
    store.apply(reply(2, in_reply_to="msg-1@customer.org", author=MEMBER))
    assert detail(store, "SUPPORT-1").status == "waiting"


def test_mail_on_a_closed_ticket_opens_a_linked_follow_up(store: TicketStore) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(status="closed"), actor=ALICE, expected_version=1)
    applied = store.apply(reply(2, in_reply_to="msg-1@customer.org", subject="Re: Subject 1", text="Again!"))
    assert (applied.outcome, applied.ticket_key) == ("created", "SUPPORT-2")
    old, new = detail(store, "SUPPORT-1"), detail(store, "SUPPORT-2")
    assert old.status == "closed" and old.thread == () and old.follow_ups == ("SUPPORT-2",)
    assert (old.events[-1].kind, old.events[-1].new_value) == ("follow_up", "SUPPORT-2")
    assert (new.status, new.follow_up_of, new.description, new.awaiting_reply) == ("open", "SUPPORT-1", "Again!", True)
    # the same mail again is a duplicate; an answer to the follow-up threads onto it
    assert store.apply(reply(2, in_reply_to="msg-1@customer.org")).outcome == "duplicate"
    assert store.apply(reply(3, in_reply_to="msg-2@customer.org")).ticket_key == "SUPPORT-2"
    assert store.count_tickets() == 2
    counts_match_tickets(store)


def test_a_reopen_queue_reopens_a_closed_ticket_instead(store: TicketStore) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(status="closed"), actor=ALICE, expected_version=1)
    applied = store.apply(reply(2, in_reply_to="msg-1@customer.org"), closed_reply="reopen")
    assert (applied.outcome, applied.ticket_key) == ("commented", "SUPPORT-1")
    t = detail(store, "SUPPORT-1")
    assert (t.status, t.events[-1].reason, len(t.thread)) == ("open", "reopened by customer reply", 1)
    assert store.count_tickets() == 1


# -- replies, first response and awaiting ------------------------------------


def agent_reply(store: TicketStore, n: int, **kw: Any) -> Any:
    return store.add_reply(
        "SUPPORT-1", author_email=ALICE, author_name="Alice", text=f"Answer {n}", send_email=True,
        to=[Recipient("ann@customer.org")], outbound_id=f"out-{n}", message_id=f"out-{n}@example.com",
        build_outbound=lambda _: b"encoded", now=T0 + timedelta(hours=n), **kw)


def test_send_and_set_waiting_in_one_action(store: TicketStore) -> None:
    store.apply(command(1))
    assert detail(store, "SUPPORT-1").awaiting_reply
    first = agent_reply(store, 2, set_status="waiting", expected_version=1)
    t = detail(store, "SUPPORT-1")
    assert (t.status, t.version, t.awaiting_reply) == ("waiting", 2, False)
    assert first.changed.events[0].new_value == "waiting"
    assert t.first_response_at == T0 + timedelta(hours=2)
    assert first.first_response_after == (T0 + timedelta(hours=2) - t.created_at).total_seconds()
    assert agent_reply(store, 3).first_response_after is None  # only the first mail is the first response
    # a stale version refuses the reply and its status together
    with pytest.raises(VersionConflict):
        agent_reply(store, 4, set_status="resolved", expected_version=1)
    assert len(detail(store, "SUPPORT-1").thread) == 2


def test_an_internal_note_does_not_answer_the_customer(store: TicketStore) -> None:
    store.apply(command(1))
    store.add_reply("SUPPORT-1", author_email=ALICE, author_name=None, text="n", send_email=False, internal=True)
    t = detail(store, "SUPPORT-1")
    assert t.awaiting_reply and t.first_response_at is None


# -- auto-close --------------------------------------------------------------


def test_resolved_tickets_close_after_the_queues_days(store: TicketStore) -> None:
    for n in (1, 2, 3):
        store.apply(command(n))
    resolved = T0 + timedelta(days=1)
    store.change_ticket("SUPPORT-1", TicketChange(status="resolved"), actor=ALICE, expected_version=1, now=resolved)
    store.change_ticket("SUPPORT-2", TicketChange(status="resolved"), actor=ALICE, expected_version=1,
                        now=resolved + timedelta(days=3))
    store.change_ticket("SUPPORT-3", TicketChange(status="waiting"), actor=ALICE, expected_version=1, now=resolved)
    assert store.auto_close("SUPPORT", 7, now=resolved + timedelta(days=6)) == []
    assert store.auto_close("SUPPORT", 7, now=resolved + timedelta(days=7, seconds=1)) == ["SUPPORT-1"]
    assert store.auto_close("SUPPORT", 7, now=resolved + timedelta(days=7, seconds=2)) == []  # done once
    assert store.auto_close("SUPPORT", 0, now=resolved + timedelta(days=100)) == []  # 0: never
    assert store.auto_close("OTHER", 7, now=resolved + timedelta(days=100)) == []
    t = detail(store, "SUPPORT-1")
    assert (t.status, t.events[-1].actor, t.events[-1].reason) == (
        "closed", None, "closed automatically 7 days after it was resolved")
    assert detail(store, "SUPPORT-3").status == "waiting"
    counts_match_tickets(store)


def test_a_customer_reply_before_the_deadline_keeps_it_open(store: TicketStore) -> None:
    store.apply(command(1))
    store.change_ticket("SUPPORT-1", TicketChange(status="resolved"), actor=ALICE, expected_version=1, now=T0)
    store.apply(reply(2, in_reply_to="msg-1@customer.org", received_at=T0 + timedelta(days=2)))
    assert store.auto_close("SUPPORT", 7, now=T0 + timedelta(days=30)) == []
    assert detail(store, "SUPPORT-1").status == "open"


# -- queue views ----------------------------------------------------------------


def test_views_filter_count_and_sort(store: TicketStore) -> None:
    for n in range(1, 11):
        store.apply(command(n, components=["web"] if n % 2 else ["billing"],
                            ticket_type="task" if n <= 3 else "question"))
    store.apply(command(11, queue="SALES"))
    for n in (1, 2, 3):
        store.change_ticket(f"SUPPORT-{n}", TicketChange(assignee=ALICE, status="in_progress"), actor=ALICE,
                            expected_version=1, now=T0 + timedelta(days=1, minutes=n))
    store.change_ticket("SUPPORT-4", TicketChange(status="closed"), actor=ALICE, expected_version=1,
                        now=T0 + timedelta(days=2))
    agent_reply(store, 60)  # SUPPORT-1 answered, the newest change

    def keys(**kw: Any) -> list[str]:
        view = View(queues=kw.pop("queues", ("SUPPORT",)), **kw)
        return [t.key for t in store.list_view(view, limit=50).tickets]

    def n(**kw: Any) -> tuple[int, bool]:
        c = store.count_view(View(queues=kw.pop("queues", ("SUPPORT",)), **kw))
        return c.n, c.exact

    assert keys()[:5] == ["SUPPORT-1", "SUPPORT-4", "SUPPORT-3", "SUPPORT-2", "SUPPORT-10"]  # newest change first
    assert keys(sort="created")[:2] == ["SUPPORT-10", "SUPPORT-9"]
    assert keys(sort="created", order="asc")[:2] == ["SUPPORT-1", "SUPPORT-2"]
    assert keys(assignee=ALICE) == ["SUPPORT-1", "SUPPORT-3", "SUPPORT-2"]
    assert n(assignee=ALICE) == (3, True)
    assert set(keys(assignee="")) == {f"SUPPORT-{i}" for i in range(4, 11)}
    assert keys(status=("closed",)) == ["SUPPORT-4"] and n(status=("closed",)) == (1, True)
    assert n(status=("open",), assignee="") == (6, True)
    assert set(keys(type="task")) == {"SUPPORT-1", "SUPPORT-2", "SUPPORT-3"} and n(type="task") == (3, True)
    assert set(keys(component="billing")) == {"SUPPORT-2", "SUPPORT-4", "SUPPORT-6", "SUPPORT-8", "SUPPORT-10"}
    assert "SUPPORT-1" not in keys(awaiting_reply=True) and n(awaiting_reply=True) == (9, True)
    assert keys(queues=("SALES",)) == ["SALES-1"]
    assert set(keys(queues=("SUPPORT", "SALES"))) == {*(f"SUPPORT-{i}" for i in range(1, 11)), "SALES-1"}
    assert keys(queues=()) == [] and n(queues=()) == (0, True)
    with pytest.raises(ValueError):
        View(queues=("SUPPORT",), status=("done",))  # type: ignore[arg-type]


def test_a_cursor_from_elsewhere_is_refused(store: TicketStore) -> None:
    store.apply(command(1))
    store.apply(command(2))
    page = store.list_view(View(queues=("SUPPORT",)), limit=1)
    assert page.next_cursor is not None
    for bad in ("nonsense", page.next_cursor[:-3] + "AAA", "eyJ4IjoxfQ"):
        with pytest.raises(BadCursor):
            store.list_view(View(queues=("SUPPORT",)), limit=1, cursor=bad)
    with pytest.raises(BadCursor):  # a cursor of another sort order
        store.list_view(View(queues=("SUPPORT",), sort="created"), limit=1, cursor=page.next_cursor)


def _generate(store: TicketStore, count: int, queues: tuple[str, ...]) -> None:
    """``count`` tickets straight into the tables (applying mail one by one would take minutes)."""
    statuses = TICKET_STATUSES
    rows, per_queue = [], dict.fromkeys(queues, 0)
    for i in range(count):
        queue = queues[i % len(queues)]
        per_queue[queue] += 1
        # many tickets share one updated_at, so the id must break ties
        at = datetime(2026, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=i // 7)
        rows.append({"key": f"{queue}-{per_queue[queue]}", "queue": queue, "number": per_queue[queue],
                     "summary": f"s{i}", "description": "d", "type": "question", "components": [],
                     "author_email": "c@customer.org", "author_member": False,
                     "status": statuses[i % len(statuses)], "assignee": ALICE if i % 3 == 0 else None,
                     "created_at": at, "updated_at": at, "command_id": f"gen-{i}"})
    with store.engine.begin() as conn:
        for start in range(0, len(rows), 10_000):
            conn.execute(insert(tickets), rows[start:start + 10_000])
        conn.execute(insert(ticket_counts), [
            {"queue": q, "status": s, "assignee": a, "n": sum(
                1 for r in rows if (r["queue"], r["status"], r["assignee"] or "") == (q, s, a))}
            for q in queues for s in statuses for a in ("", ALICE)])
    with store.engine.begin() as conn:  # what autovacuum would do after a bulk load: plans need statistics
        conn.exec_driver_sql("ANALYZE")


def test_paging_100000_tickets_returns_each_exactly_once(db_url: str) -> None:
    with TicketStore(db_url) as store:
        store.migrate()
        _generate(store, 100_000, ("SUPPORT", "SALES"))
        for filters in ({}, {"assignee": ALICE, "sort": "created", "order": "asc"},
                        {"queues": ("SUPPORT", "SALES"), "status": ("waiting", "closed")}):
            view = View(queues=filters.pop("queues", ("SUPPORT",)), **filters)  # type: ignore[arg-type]
            expected = store.count_view(view)
            assert expected.exact
            seen: list[str] = []
            cursor = None
            while True:
                page = store.list_view(view, limit=200, cursor=cursor)
                seen.extend(t.key for t in page.tickets)
                cursor = page.next_cursor
                if cursor is None:
                    break
            assert len(seen) == len(set(seen)) == expected.n > 0, view
            with store.engine.connect() as conn:
                query = select(func.count()).select_from(tickets).where(tickets.c.queue.in_(view.queues))
                if view.status:
                    query = query.where(tickets.c.status.in_(view.status))
                if view.assignee:
                    query = query.where(tickets.c.assignee == view.assignee)
                assert conn.execute(query).scalar_one() == expected.n, view


def test_the_ticketers_auto_close_round_closes_each_queue_after_its_days(db_url: str, tmp_path: Any) -> None:
    config = parse_text(textwrap.dedent(f"""\
        database: {{url: "{db_url}"}}
        data_dir: {tmp_path}
        queues:
          - {{key: SUPPORT, auto_close_days: 2, mailboxes: [{{address: support@example.com, ingress: true}}]}}
          - {{key: SALES, auto_close_days: 0, mailboxes: [{{address: sales@example.com, ingress: true}}]}}
        """), str(tmp_path / "deskmail.yaml"))
    with TicketStore(db_url) as store:
        store.migrate()
        for n, queue in ((1, "SUPPORT"), (2, "SUPPORT"), (3, "SALES")):
            store.apply(command(n, queue=queue))
        for key in ("SUPPORT-1", "SUPPORT-2", "SALES-1"):
            store.change_ticket(key, TicketChange(status="resolved"), actor=ALICE, expected_version=1, now=T0)
        before = REGISTRY.get_sample_value("deskmail_ticketer_auto_closed_total", {"queue": "SUPPORT"}) or 0
        rounds = AutoClose(store, config, threading.Event())
        assert rounds.run_once(now=T0 + timedelta(days=1)) == 0
        assert rounds.run_once(now=T0 + timedelta(days=3)) == 2
        assert [detail(store, k).status for k in ("SUPPORT-1", "SUPPORT-2", "SALES-1")] == [
            "closed", "closed", "resolved"]  # SALES: 0 days means never
        assert REGISTRY.get_sample_value("deskmail_ticketer_auto_closed_total", {"queue": "SUPPORT"}) == before + 2
