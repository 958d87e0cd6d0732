"""Agents' comments, the outbox and delivery status in the TicketStore, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import func, inspect, select, text

from services.tickets import (
    Applied,
    InvalidDeliveryEvent,
    InvalidReply,
    OutboxRecord,
    Participant,
    Recipient,
    Threading,
    ThreadEntry,
    TicketStore,
    UnknownTicket,
)
from services.tickets.migrations import alembic_config
from services.tickets.search import include_object
from services.tickets.tables import metadata
from tests.harness.records import command

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
NOW = datetime(2025, 3, 2, 10, 0, tzinfo=timezone.utc)
CAROL = Recipient("carol@customer.org", "Carol")


def counts(store: TicketStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one() for t in metadata.sorted_tables}


class Builder:
    """An outbound builder that records what the store handed it."""

    def __init__(self) -> None:
        self.seen: list[Threading] = []

    def __call__(self, threading_: Threading) -> bytes:
        self.seen.append(threading_)
        return f"mail for comment {threading_.comment_id}".encode()


def mail(store: TicketStore, key: str = "SUPPORT-1", n: int = 1, builder: Builder | None = None,
         **overrides: Any) -> Any:
    args: dict[str, Any] = {
        "author_email": "alice@example.com", "author_name": "Alice Agent", "text": f"Answer {n}",
        "send_email": True, "to": [Recipient("ann@customer.org", "Ann")], "cc": [CAROL],
        "signature_alias": "Example support", "outbound_id": f"out-{n}",
        "message_id": f"deskmail.out-{n}@example.com", "build_outbound": builder or Builder(),
        "now": NOW + timedelta(minutes=n),
    }
    args.update(overrides)
    return store.add_reply(key, **args)


def event(outbound_id: str, status: str, code: int | None = 250, reply: str | None = "2.0.0 Ok",
          at: datetime = NOW) -> dict[str, Any]:
    return {"id": f"{outbound_id}:1:{status}", "outbound_id": outbound_id, "ticket": "SUPPORT-1", "comment_id": 1,
            "status": status, "attempt": 1, "smtp_code": code, "smtp_reply": reply,
            "message_id": f"deskmail.{outbound_id}@example.com", "time": at}


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as s:
        s.migrate()
        s.apply(command(1))
        yield s


# -- schema ----------------------------------------------------------------


def test_schema_at_head_matches_tables(store: TicketStore) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True,
                                                         "include_object": include_object})
        assert context.get_current_revision() == head == "0011"
        assert compare_metadata(context, metadata) == []


def test_upgrade_keeps_existing_comments_and_downgrade_removes_the_new_columns(db_url: str) -> None:
    config = alembic_config(db_url)
    alembic_command.upgrade(config, "0001")
    with TicketStore(db_url) as s:
        with s.engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO tickets (id, key, queue, number, summary, description, components, author_email,"
                " author_member, status, created_at, updated_at, command_id) VALUES (1, 'SUPPORT-1', 'SUPPORT', 1,"
                " 's', 'd', '[]', 'ann@customer.org', false, 'open', :t, :t, 'cmd-1')"), {"t": T0})
            conn.execute(text(
                "INSERT INTO comments (ticket_id, kind, author_email, body, created_at) "
                "VALUES (1, 'mail_in', 'ann@customer.org', 'old reply', :t)"), {"t": T0})
        s.migrate()
        detail = s.get_ticket("SUPPORT-1")
        assert detail is not None and s.ticket_mailbox("SUPPORT-1") is None
        (old,) = detail.thread
        assert (old.body, old.internal, old.delivery_status, old.to) == ("old reply", False, None, ())
        # Mail stored before 0004 kept no proof of its From: not verified.
        assert (detail.author_verified, old.author_verified) == (False, False)
        # the CHECK on delivery_status holds on both backends
        with pytest.raises(Exception, match="(?i)check"):
            with s.engine.begin() as conn:
                conn.execute(text("UPDATE comments SET delivery_status = 'lost'"))
        mail(s)
    alembic_command.downgrade(config, "0001")
    with TicketStore(db_url) as s:
        names = {c["name"] for c in inspect(s.engine).get_columns("comments")}
        assert "delivery_status" not in names and "internal" not in names and "outbox" not in inspect(
            s.engine).get_table_names()
        s.migrate()
        assert s.get_ticket("SUPPORT-1") is not None


# -- add_reply -------------------------------------------------------------


def test_an_emailed_reply_writes_comment_message_id_outbox_and_participants(store: TicketStore) -> None:
    builder = Builder()
    reply = mail(store, builder=builder)
    expected = ThreadEntry(
        id=reply.entry.id, kind="mail_out", author_email="alice@example.com", author_name="Alice Agent",
        body="Answer 1", html=None, message_id="deskmail.out-1@example.com", created_at=NOW + timedelta(minutes=1),
        internal=False, outbound_id="out-1", to=(Recipient("ann@customer.org", "Ann"),), cc=(CAROL,),
        signature_alias="Example support", delivery_status="queued", delivery_detail=None,
        delivery_updated_at=NOW + timedelta(minutes=1),
    )
    assert reply.ticket_key == "SUPPORT-1" and reply.entry == expected
    assert builder.seen == [Threading(
        ticket_key="SUPPORT-1", queue="SUPPORT", summary="Subject 1", comment_id=reply.entry.id,
        in_reply_to="msg-1@customer.org", references=("msg-1@customer.org",), created_at=NOW + timedelta(minutes=1),
    )]
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None
    assert detail.thread == (expected,)
    assert detail.message_ids == ("msg-1@customer.org", "deskmail.out-1@example.com")
    assert detail.updated_at == NOW + timedelta(minutes=1)
    assert detail.participants == (
        Participant("ann@customer.org", "Ann Customer", False, "author"),
        Participant("carol@customer.org", "Carol", False, "participant"),
    )
    assert store.pending_outbox() == [OutboxRecord(
        id="out-1", ticket_key="SUPPORT-1", comment_id=reply.entry.id,
        payload=f"mail for comment {reply.entry.id}".encode(), created_at=NOW + timedelta(minutes=1), relayed_at=None,
    )]


def test_the_customers_answer_threads_back_by_in_reply_to(store: TicketStore) -> None:
    mail(store)
    answer = command(2, action="comment", classification="reply", subject="Re: something else",
                     in_reply_to="deskmail.out-1@example.com")
    applied = store.apply(answer)
    assert applied.outcome == "commented" and applied.ticket_key == "SUPPORT-1"
    # and the next reply answers the customer's newest mail
    builder = Builder()
    mail(store, n=2, builder=builder)
    assert builder.seen[0].in_reply_to == "msg-2@customer.org"
    assert builder.seen[0].references == ("msg-1@customer.org", "deskmail.out-1@example.com", "msg-2@customer.org")


def test_made_up_message_ids_are_not_sent_as_threading_headers(store: TicketStore) -> None:
    # mail that arrived without a Message-ID is known by one deskmail made up from its hash
    synthetic = "ab" * 32 + "@deskmail.invalid"
    created = store.apply(command(50, message_id=synthetic, thread_key=synthetic))
    builder = Builder()
    mail(store, key=created.ticket_key, n=50, builder=builder)
    assert (builder.seen[0].in_reply_to, builder.seen[0].references) == (None, ())


def test_references_keep_the_first_and_the_newest_ids(store: TicketStore) -> None:
    for n in range(2, 31):
        store.apply(command(n, action="comment", classification="reply", in_reply_to="msg-1@customer.org"))
    builder = Builder()
    mail(store, builder=builder)
    refs = builder.seen[0].references
    assert len(refs) == 20 and refs[0] == "msg-1@customer.org"
    assert refs[1:] == tuple(f"msg-{n}@customer.org" for n in range(12, 31))
    assert builder.seen[0].in_reply_to == "msg-30@customer.org"


def test_an_internal_comment_is_stored_and_never_mailed(store: TicketStore) -> None:
    before = counts(store)
    reply = store.add_reply("SUPPORT-1", author_email="Alice@Example.com", author_name=None, text="Call him.",
                            send_email=False, internal=True, now=NOW)
    assert (reply.entry.kind, reply.entry.internal, reply.entry.author_email) == ("note", True, "alice@example.com")
    assert (reply.entry.delivery_status, reply.entry.outbound_id, reply.entry.message_id) == (None, None, None)
    after = counts(store)
    assert after["comments"] == before["comments"] + 1
    assert {k: v for k, v in after.items() if k != "comments"} == {k: v for k, v in before.items() if k != "comments"}
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and detail.thread == (reply.entry,)


@pytest.mark.parametrize("overrides, message", [
    ({"text": "  "}, "needs text"),
    ({"to": []}, "at least one To recipient"),
    ({"internal": True}, "never emailed"),
    ({"send_email": False}, "recipients given for a comment that is not emailed"),
    ({"outbound_id": None}, "needs outbound_id, message_id and build_outbound"),
    ({"to": [Recipient("not an address")]}, "is not an email address"),
    ({"author_email": "x" * 400 + "@example.com"}, "longer than 320"),
])
def test_an_invalid_reply_stores_nothing(store: TicketStore, overrides: dict[str, Any], message: str) -> None:
    before = counts(store)
    with pytest.raises(InvalidReply, match=message):
        mail(store, **overrides)
    assert counts(store) == before


def test_unknown_ticket_failed_builder_and_reused_ids_store_nothing(store: TicketStore) -> None:
    before = counts(store)
    with pytest.raises(UnknownTicket):
        mail(store, key="SUPPORT-99")

    def broken(_: Threading) -> bytes:
        raise RuntimeError("cannot encode")

    with pytest.raises(RuntimeError, match="cannot encode"):
        mail(store, build_outbound=broken)
    assert counts(store) == before
    mail(store)
    after_one = counts(store)
    with pytest.raises(InvalidReply, match="already in use"):
        mail(store, message_id="deskmail.other@example.com")  # same outbound id
    with pytest.raises(InvalidReply, match="already in use"):
        mail(store, outbound_id="out-other")  # same Message-ID in the queue
    assert counts(store) == after_one


# -- the outbox --------------------------------------------------------------


def test_relay_publishes_oldest_first_and_marks_after_publish(store: TicketStore) -> None:
    for n in (1, 2, 3):
        mail(store, n=n)
    published: list[list[str]] = []
    assert store.relay_outbox(lambda rows: published.append([r.id for r in rows]), limit=2) == 2
    assert store.relay_outbox(lambda rows: published.append([r.id for r in rows]), limit=2) == 1
    assert store.relay_outbox(lambda rows: published.append([r.id for r in rows])) == 0
    assert published == [["out-1", "out-2"], ["out-3"]]
    assert store.pending_outbox() == []


def test_a_failed_publish_leaves_the_rows_pending(store: TicketStore) -> None:
    mail(store)

    def down(rows: Any) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        store.relay_outbox(down)
    assert [r.id for r in store.pending_outbox()] == ["out-1"]


def test_mark_relayed_counts_only_pending_rows(store: TicketStore) -> None:
    mail(store, n=1)
    mail(store, n=2)
    assert store.mark_relayed(["out-1", "out-1", "nope"]) == 1
    assert store.mark_relayed(["out-1"]) == 0
    assert [r.id for r in store.pending_outbox()] == ["out-2"]
    assert store.mark_relayed([]) == 0


def test_concurrent_relays_never_publish_a_row_twice(store: TicketStore, db_url: str) -> None:
    for n in range(1, 21):
        mail(store, n=n)
    published: list[str] = []
    lock = threading.Lock()

    def slow(rows: Any) -> None:
        time.sleep(0.2)  # keep the rows held while the other relay runs
        with lock:
            published.extend(r.id for r in rows)

    others = [TicketStore(db_url) for _ in range(3)]
    try:
        threads = [threading.Thread(target=lambda s=s: s.relay_outbox(slow, limit=5)) for s in others]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        store.relay_outbox(slow, limit=100)
    finally:
        for s in others:
            s.close()
    assert sorted(published) == sorted(f"out-{n}" for n in range(1, 21))
    assert store.pending_outbox() == []


# -- delivery events -----------------------------------------------------------


def status(store: TicketStore) -> tuple[str | None, str | None, datetime | None]:
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None
    e = [e for e in detail.thread if e.kind == "mail_out"][0]
    return e.delivery_status, e.delivery_detail, e.delivery_updated_at


def test_delivery_goes_queued_retrying_sent_and_stays_sent(store: TicketStore) -> None:
    mail(store)
    assert store.record_delivery(event("out-1", "retrying", 451, "4.7.1 try again later", NOW)) is True
    assert status(store) == ("retrying", "451 4.7.1 try again later", NOW)
    assert store.record_delivery(event("out-1", "sent", 250, "2.0.0 Ok: queued", NOW + timedelta(seconds=5)))
    assert status(store) == ("sent", "250 2.0.0 Ok: queued", NOW + timedelta(seconds=5))
    # a late retrying event, a redelivered sent, even a failed: final stays final
    assert store.record_delivery(event("out-1", "retrying", 451, "late", NOW + timedelta(seconds=9))) is False
    assert store.record_delivery(event("out-1", "sent", 250, "again", NOW + timedelta(seconds=9))) is False
    assert store.record_delivery(event("out-1", "failed", 550, "no", NOW + timedelta(seconds=9))) is False
    assert status(store) == ("sent", "250 2.0.0 Ok: queued", NOW + timedelta(seconds=5))


def test_failed_is_final_too(store: TicketStore) -> None:
    mail(store)
    assert store.record_delivery(event("out-1", "failed", 550, "5.1.1 no such user"))
    assert store.record_delivery(event("out-1", "sent")) is False
    assert status(store)[:2] == ("failed", "550 5.1.1 no such user")


def test_events_for_unknown_outbound_ids_change_nothing(store: TicketStore) -> None:
    mail(store)
    before = counts(store)
    assert store.record_delivery(event("test-123", "sent")) is False
    assert store.record_delivery(event("out-1", "sent", None, "connection refused")) is True
    assert status(store)[1] == "connection refused"
    assert counts(store) == before


@pytest.mark.parametrize("broken", [
    {"status": "bounced"},
    {"time": datetime(2025, 1, 1)},
    {"outbound_id": None},
])
def test_a_malformed_delivery_event_is_refused(store: TicketStore, broken: dict[str, Any]) -> None:
    with pytest.raises(InvalidDeliveryEvent):
        store.record_delivery({**event("out-1", "sent"), **broken})


# -- queries for the pages -------------------------------------------------------


def test_count_by_queue_and_the_receiving_mailbox(store: TicketStore) -> None:
    store.apply(command(2, queue="SALES", mailbox="sales@example.com"))
    store.apply(command(3))
    assert store.count_by_queue() == {"SUPPORT": 2, "SALES": 1}
    assert store.ticket_mailbox("SALES-1") == "sales@example.com"
    assert store.ticket_mailbox("SUPPORT-1") == "support@example.com"
    assert store.ticket_mailbox("NOPE-1") is None


def test_applying_commands_is_unchanged_by_outgoing_mail(store: TicketStore) -> None:
    mail(store)
    assert store.apply(command(1)) == Applied("duplicate", "SUPPORT-1", None)
    # an incoming mail that reuses the outgoing Message-ID is a duplicate, not a new comment
    again = command(5, action="comment", classification="reply", message_id="deskmail.out-1@example.com")
    assert store.apply(again).outcome == "duplicate"
