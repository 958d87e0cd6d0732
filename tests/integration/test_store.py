"""TicketStore against real databases: a SQLite file and a throwaway PostgreSQL."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any

import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, Table, func, inspect, select
from sqlalchemy.exc import OperationalError

from services.tickets import (
    Applied,
    AttachmentInfo,
    InvalidCommand,
    Participant,
    Recipient,
    Rejection,
    ThreadEntry,
    TicketDetail,
    TicketStore,
    TicketSummary,
)
from services.common.config import Secret
from services.common.mailrules import new_message_id
from services.tickets.migrations import alembic_config
from services.tickets.search import include_object, is_search_object
from services.tickets.tables import metadata
from tests.harness.postgres import PostgresCluster
from tests.harness.records import command

pytestmark = pytest.mark.integration

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
ANN = {"email": "ann@customer.org", "name": "Ann Customer", "member": False}
BOB = {"email": "bob@customer.org", "name": "Bob Customer", "member": False}
ALICE = {"email": "alice@example.com", "name": "Alice Agent", "member": True}
MALLORY = {"email": "mallory@elsewhere.test", "name": "Mallory", "member": False}
MESSAGE_ID_KEY = Secret("integration-test-message-id-key", "test")


def reply(n: int, **overrides: Any) -> dict[str, Any]:
    return command(n, action="comment", classification="reply", **overrides)


def agent_mail(store: TicketStore, key: str, to: str = "ann@customer.org", n: int = 1) -> str:
    """An agent's emailed reply on ``key``; its Message-ID as deskmail writes them."""
    message_id = new_message_id(f"out-{n}", "support@example.com", key=MESSAGE_ID_KEY, ticket=key)
    store.add_reply(
        key, author_email="alice@example.com", author_name="Alice Agent", text=f"Answer {n}",
        send_email=True, to=[Recipient(to, None)], outbound_id=f"out-{n}", message_id=message_id,
        build_outbound=lambda threading_: b"encoded OutboundMail", now=T0 + timedelta(hours=n),
    )
    return message_id


def row_counts(store: TicketStore) -> dict[str, int]:
    with store.engine.connect() as conn:
        return {
            table.name: conn.execute(select(func.count()).select_from(table)).scalar_one()
            for table in metadata.sorted_tables
        }


def numbers(store: TicketStore, queue: str) -> list[int]:
    return sorted(t.number for t in store.list_tickets(queue, limit=10_000))


def run_together(workers: list[Callable[[], Any]]) -> list[Any]:
    """Run the callables in threads released at the same instant; re-raise any error."""
    barrier = threading.Barrier(len(workers))

    def start(work: Callable[[], Any]) -> Any:
        barrier.wait()
        return work()

    with ThreadPoolExecutor(max_workers=len(workers)) as pool:
        futures = [pool.submit(start, work) for work in workers]
        return [f.result() for f in futures]


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as s:
        s.migrate()
        yield s


# -- schema ----------------------------------------------------------------


def test_migrated_schema_matches_tables(store: TicketStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={"compare_type": True, "compare_server_default": True, "include_object": include_object},
        )
        assert context.get_current_revision() == "0011"
        assert compare_metadata(context, metadata) == []
        # The comparison does see differences: one extra column is reported.
        changed = MetaData(naming_convention=metadata.naming_convention)
        for table in metadata.tables.values():
            table.to_metadata(changed)
        Table("tickets", changed, Column("extra", Integer), extend_existing=True)
        diff = compare_metadata(context, changed)
    assert [(d[0], d[2], d[3].name) for d in diff] == [("add_column", "tickets", "extra")]


def test_downgrade_to_base_removes_every_table(store: TicketStore) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    alembic_command.downgrade(alembic_config(url), "base")
    assert sorted(inspect(store.engine).get_table_names()) == ["alembic_version"]
    store.migrate()
    tables = [t for t in inspect(store.engine).get_table_names() if not is_search_object(t, "table")]
    assert sorted(tables) == sorted(["alembic_version", *metadata.tables])


def test_a_sqlite_file_in_a_missing_folder_is_created(tmp_path: Any) -> None:
    with TicketStore(f"sqlite:///{tmp_path}/data/deep/tickets.db") as store:
        store.migrate()
        assert store.apply(command(1)).outcome == "created"
    assert (tmp_path / "data" / "deep" / "tickets.db").exists()


def test_migrate_from_several_processes_at_once(db_url: str) -> None:
    stores = [TicketStore(db_url) for _ in range(3)]
    try:
        assert run_together([s.migrate for s in stores]) == [None, None, None]
        stores[0].migrate()  # a later start finds the schema current
        with stores[0].engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"include_object": include_object})
            assert context.get_current_revision() == "0011"
            assert compare_metadata(context, metadata) == []
    finally:
        for s in stores:
            s.close()


# -- create ----------------------------------------------------------------


def test_create_writes_ticket_participants_attachments(store: TicketStore) -> None:
    attachment = {
        "filename": "invoice.pdf",
        "content_type": "application/pdf",
        "size": 12345,
        "sha256": "ab" * 32,
        "blob_ref": "blobs/ab/abab",
    }
    cmd = command(
        1,
        subject="Invoice is wrong",
        text="Please fix the invoice.",
        html="<p>Please fix the invoice.</p>",
        participants=[BOB, {"email": "ANN@customer.org", "name": "Ann again", "member": False}],
        attachments=[attachment],
        # Offset +03:00: stored and returned as the same instant in UTC.
        received_at=datetime(2025, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=3))),
    )
    assert store.apply(cmd) == Applied("created", "SUPPORT-1", None)
    assert store.get_ticket("SUPPORT-1") == TicketDetail(
        key="SUPPORT-1",
        queue="SUPPORT",
        number=1,
        type="question",
        components=("billing", "web"),
        summary="Invoice is wrong",
        description="Please fix the invoice.",
        description_html="<p>Please fix the invoice.</p>",
        status="open",
        author_email="ann@customer.org",
        author_name="Ann Customer",
        author_member=False,
        created_at=datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc),
        updated_at=datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc),
        participants=(
            Participant("ann@customer.org", "Ann Customer", False, "author"),
            Participant("bob@customer.org", "Bob Customer", False, "participant"),
        ),
        thread=(),
        attachments=(
            AttachmentInfo("invoice.pdf", "application/pdf", 12345, "ab" * 32, "blobs/ab/abab", None),
        ),
        message_ids=("msg-1@customer.org",),
        awaiting_reply=True,  # a customer opened it: waiting for the first answer
    )
    assert row_counts(store) == {
        "queue_counters": 1,
        "tickets": 1,
        "comments": 0,
        "participants": 2,
        "attachments": 1,
        "messages": 1,
        "receipts": 1,
        "processed_commands": 1,
        "rejections": 0,
        "outbox": 0,
        "api_tokens": 0,
        "ticket_components": 2,
        "ticket_tags": 0,
        "ticket_counts": 1,
        "ticket_events": 0,
        "mail_arrivals": 1,  # the rate limits count the customer's mail
        "pending_replies": 0,
        "awaited_messages": 0,
    }


def test_blank_subject_becomes_no_subject(store: TicketStore) -> None:
    assert store.apply(command(1, subject="  ")) == Applied("created", "SUPPORT-1", None)
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and detail.summary == "(no subject)"


def test_keys_are_sequential_per_queue_and_independent_across_queues(store: TicketStore) -> None:
    queues = ["SUPPORT", "SALES", "SUPPORT", "SUPPORT", "SALES", "SUPPORT"]
    keys = [store.apply(command(n, queue=q)).ticket_key for n, q in enumerate(queues, start=1)]
    assert keys == ["SUPPORT-1", "SALES-1", "SUPPORT-2", "SUPPORT-3", "SALES-2", "SUPPORT-4"]
    assert numbers(store, "SUPPORT") == [1, 2, 3, 4]
    assert numbers(store, "SALES") == [1, 2]


# -- threading ---------------------------------------------------------------


def test_reply_by_in_reply_to_adds_comment(store: TicketStore) -> None:
    store.apply(command(1, participants=[BOB]))
    applied = store.apply(
        reply(
            2,
            author=ALICE,
            participants=[{"email": "BOB@customer.org", "name": None, "member": False}, ANN],
            text="Thanks, looking into it.",
            html="<p>Thanks</p>",
            in_reply_to="msg-1@customer.org",
            attachments=[
                {"filename": "log.txt", "content_type": "text/plain", "size": 3,
                 "sha256": "cd" * 32, "blob_ref": None}
            ],
        )
    )
    assert applied.outcome == "commented" and applied.ticket_key == "SUPPORT-1"
    assert applied.comment_id is not None
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None
    assert detail.thread == (
        ThreadEntry(
            id=applied.comment_id,
            kind="mail_in",
            author_email="alice@example.com",
            author_name="Alice Agent",
            body="Thanks, looking into it.",
            html="<p>Thanks</p>",
            message_id="msg-2@customer.org",
            created_at=T0 + timedelta(minutes=2),
            author_verified=False,
        ),
    )
    assert detail.participants == (
        Participant("ann@customer.org", "Ann Customer", False, "author"),
        Participant("bob@customer.org", "Bob Customer", False, "participant"),
        Participant("alice@example.com", "Alice Agent", True, "participant"),
    )
    assert detail.attachments == (
        AttachmentInfo("log.txt", "text/plain", 3, "cd" * 32, None, applied.comment_id),
    )
    assert detail.message_ids == ("msg-1@customer.org", "msg-2@customer.org")
    assert detail.updated_at == T0 + timedelta(minutes=2)
    assert detail.created_at == T0 + timedelta(minutes=1)
    assert store.count_tickets() == 1


def test_reply_by_references_takes_the_newest_known(store: TicketStore) -> None:
    store.apply(command(1))
    store.apply(command(2))
    oldest_first = ["msg-1@customer.org", "msg-2@customer.org", "unknown@x"]
    a = store.apply(reply(3, in_reply_to="unknown@y", references=oldest_first))
    b = store.apply(reply(4, references=["msg-2@customer.org", "msg-1@customer.org"]))
    assert (a.outcome, a.ticket_key) == ("commented", "SUPPORT-2")
    assert (b.outcome, b.ticket_key) == ("commented", "SUPPORT-1")
    # A reply to a reply threads through the comment's own Message-ID.
    c = store.apply(reply(5, in_reply_to="msg-3@customer.org"))
    assert (c.outcome, c.ticket_key) == ("commented", "SUPPORT-2")
    assert store.count_tickets() == 2


def test_threading_never_crosses_queues(store: TicketStore) -> None:
    store.apply(command(1, queue="SALES", mailbox="sales@example.com"))
    store.apply(command(2))
    # In-Reply-To is known only in SALES, an older Reference in SUPPORT: SUPPORT's.
    a = store.apply(reply(3, in_reply_to="msg-1@customer.org", references=["msg-2@customer.org"]))
    assert (a.outcome, a.ticket_key) == ("commented", "SUPPORT-1")
    # Known only in another queue: a new ticket in the queue the mail came to,
    # not a comment in SALES (this test used to pin that it went there).
    b = store.apply(reply(4, author=MALLORY, in_reply_to="msg-1@customer.org", references=["msg-1@customer.org"]))
    assert b == Applied("created", "SUPPORT-2", None)
    sales = store.get_ticket("SALES-1")
    assert sales is not None and sales.thread == ()
    assert [p.email for p in sales.participants] == ["ann@customer.org"]
    assert store.count_tickets() == 3


def test_reply_by_ticket_key_in_subject(store: TicketStore) -> None:
    store.apply(command(1))
    store.apply(command(2, queue="SALES"))
    hinted = store.apply(reply(3, in_reply_to="lost@x", ticket_key_hint="SUPPORT-1"))
    assert (hinted.outcome, hinted.ticket_key) == ("commented", "SUPPORT-1")
    # The key must exist, and in the command's queue; otherwise a new ticket.
    missing = store.apply(reply(4, ticket_key_hint="SUPPORT-99"))
    assert missing == Applied("created", "SUPPORT-2", None)
    other_queue = store.apply(reply(5, ticket_key_hint="SALES-1"))
    assert other_queue == Applied("created", "SUPPORT-3", None)


# -- who may write into a ticket (docs/security.md) ---------------------------


def test_a_stranger_naming_a_ticket_key_opens_a_new_ticket(store: TicketStore) -> None:
    store.apply(command(1, participants=[BOB]))
    before = store.get_ticket("SUPPORT-1")
    injected = reply(2, author=MALLORY, subject="Re: [SUPPORT-1] Subject 1", ticket_key_hint="SUPPORT-1",
                     participants=[{"email": "eve@elsewhere.test", "name": None, "member": False}])
    assert store.apply(injected) == Applied("created", "SUPPORT-2", None)
    assert store.get_ticket("SUPPORT-1") == before  # no comment, no participant, not touched
    own = store.get_ticket("SUPPORT-2")
    assert own is not None and own.summary == "Re: [SUPPORT-1] Subject 1"
    assert [(p.email, p.role) for p in own.participants] == [
        ("mallory@elsewhere.test", "author"), ("eve@elsewhere.test", "participant")]
    # A forged In-Reply-To that names no mail of the queue changes nothing either.
    guessed = reply(3, author=MALLORY, ticket_key_hint="SUPPORT-1", in_reply_to="deskmail.out-1@example.com")
    assert store.apply(guessed) == Applied("created", "SUPPORT-3", None)
    assert store.get_ticket("SUPPORT-1") == before


def test_the_customers_own_reply_with_only_the_key_threads(store: TicketStore) -> None:
    store.apply(command(1))
    # the router hands over the address as written; participants are stored lower-cased
    ann = {**ANN, "email": "Ann@Customer.ORG"}
    applied = store.apply(reply(2, author=ann, subject="Re: [SUPPORT-1] Subject 1", ticket_key_hint="SUPPORT-1"))
    assert (applied.outcome, applied.ticket_key) == ("commented", "SUPPORT-1")


def test_participants_and_members_with_only_the_key_thread(store: TicketStore) -> None:
    store.apply(command(1, participants=[BOB]))
    agent_mail(store, "SUPPORT-1", to="carol@customer.org")  # Carol becomes a participant
    carol = {"email": "carol@customer.org", "name": "Carol", "member": False}
    for n, author in ((2, BOB), (3, carol), (4, ALICE)):
        applied = store.apply(reply(n, author=author, ticket_key_hint="SUPPORT-1"))
        assert (applied.outcome, applied.ticket_key) == ("commented", "SUPPORT-1"), author
    assert store.count_tickets() == 1


def test_a_known_message_id_of_the_queue_threads_whoever_writes(store: TicketStore) -> None:
    # Naming a Message-ID of the ticket's mail shows its writer saw that mail
    # (an outsider copied on it, say): that is a real participant.
    store.apply(command(1))
    sent = agent_mail(store, "SUPPORT-1")
    for n, message_id in ((2, "msg-1@customer.org"), (3, sent)):
        applied = store.apply(reply(n, author=MALLORY, in_reply_to=message_id))
        assert (applied.outcome, applied.ticket_key) == ("commented", "SUPPORT-1")


def test_comment_without_thread_falls_back_to_create(store: TicketStore) -> None:
    applied = store.apply(reply(1, in_reply_to="nobody@x", references=["nobody-else@x"]))
    assert applied == Applied("created", "SUPPORT-1", None)
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None
    assert (detail.summary, detail.description, detail.thread) == ("Subject 1", "Body 1", ())


# -- idempotency -------------------------------------------------------------


def test_duplicate_command_id_changes_nothing(store: TicketStore) -> None:
    assert store.apply(command(1)) == Applied("created", "SUPPORT-1", None)
    commented = store.apply(reply(2, in_reply_to="msg-1@customer.org"))
    before = row_counts(store)
    assert store.apply(command(1)) == Applied("duplicate", "SUPPORT-1", None)
    assert store.apply(reply(2, in_reply_to="msg-1@customer.org")) == Applied(
        "duplicate", "SUPPORT-1", commented.comment_id
    )
    assert row_counts(store) == before


def test_duplicate_imap_uid_changes_nothing(store: TicketStore) -> None:
    store.apply(command(1))
    before = row_counts(store)
    # Same mailbox, UIDVALIDITY and UID under a new command id and Message-ID.
    again = command(2, source_uidvalidity=7, source_uid=1)
    assert store.apply(again) == Applied("duplicate", "SUPPORT-1", None)
    assert row_counts(store) == before
    # UID 0 (mail from the SMTP ingress) is no receipt: both mails become tickets.
    assert store.apply(command(3, source_uidvalidity=0, source_uid=0)).ticket_key == "SUPPORT-2"
    assert store.apply(command(4, source_uidvalidity=0, source_uid=0)).ticket_key == "SUPPORT-3"


def test_duplicate_message_id_after_uidvalidity_change(store: TicketStore) -> None:
    store.apply(command(1))
    commented = store.apply(reply(2, in_reply_to="msg-1@customer.org"))
    before = row_counts(store)
    # The mailbox was rebuilt: new UIDVALIDITY and UIDs, new command ids, same mails.
    refetched_create = command(10, message_id="msg-1@customer.org", source_uidvalidity=8, source_uid=1)
    refetched_reply = reply(
        11, message_id="msg-2@customer.org", in_reply_to="msg-1@customer.org",
        source_uidvalidity=8, source_uid=2,
    )
    assert store.apply(refetched_create) == Applied("duplicate", "SUPPORT-1", None)
    assert store.apply(refetched_reply) == Applied("duplicate", "SUPPORT-1", commented.comment_id)
    assert row_counts(store) == before
    # The same mail sent to another queue's address is a ticket there.
    other = command(12, queue="SALES", mailbox="sales@example.com", message_id="msg-1@customer.org")
    assert store.apply(other) == Applied("created", "SALES-1", None)


def test_reject_is_recorded_once(store: TicketStore) -> None:
    rejected = command(
        1, action="reject", queue=None, author=BOB, reason="sender is not a member"
    )
    assert store.apply(rejected) == Applied("rejected", None, None)
    assert store.apply(rejected) == Applied("duplicate", None, None)
    assert store.list_rejections() == [
        Rejection(
            command_id="cmd-1",
            mailbox="support@example.com",
            queue=None,
            classification="new",
            author_email="bob@customer.org",
            subject="Subject 1",
            message_id="msg-1@customer.org",
            reason="sender is not a member",
            received_at=T0 + timedelta(minutes=1),
            recorded_at=store.list_rejections()[0].recorded_at,
        )
    ]
    assert store.list_rejections()[0].recorded_at.tzinfo == timezone.utc
    assert store.list_rejections(mailbox="other@example.com") == []
    counts = row_counts(store)
    assert counts["rejections"] == 1 and counts["tickets"] == 0 and counts["receipts"] == 0
    # Replayed after a rule fix, the same command becomes a ticket; a later
    # reject of it is a duplicate of that ticket.
    assert store.apply(command(1)) == Applied("created", "SUPPORT-1", None)
    assert store.apply(rejected) == Applied("duplicate", "SUPPORT-1", None)
    assert row_counts(store)["rejections"] == 1


# -- concurrency -------------------------------------------------------------


def test_concurrent_creates_get_gap_free_numbers(db_url: str, store: TicketStore) -> None:
    threads, per_thread = 4, 50
    stores = [TicketStore(db_url) for _ in range(threads)]

    def create_many(t: int) -> list[Applied]:
        return [stores[t].apply(command(t * 1000 + i + 1)) for i in range(per_thread)]

    try:
        results = run_together([partial(create_many, t) for t in range(threads)])
    finally:
        for s in stores:
            s.close()
    applied = [a for batch in results for a in batch]
    assert {a.outcome for a in applied} == {"created"}
    assert sorted(int(str(a.ticket_key).split("-")[1]) for a in applied) == list(range(1, 201))
    assert numbers(store, "SUPPORT") == list(range(1, 201))
    assert store.count_tickets("SUPPORT") == 200
    # Each thread saw its own tickets in increasing order.
    for batch in results:
        mine = [int(str(a.ticket_key).split("-")[1]) for a in batch]
        assert mine == sorted(mine)


def test_concurrent_duplicate_apply_creates_one_ticket(db_url: str, store: TicketStore) -> None:
    rounds = 20
    first, second = TicketStore(db_url), TicketStore(db_url)
    try:
        for n in range(1, rounds + 1):
            cmd = command(n)
            outcomes = run_together([lambda: first.apply(cmd), lambda: second.apply(cmd)])
            assert sorted(a.outcome for a in outcomes) == ["created", "duplicate"]
            assert {a.ticket_key for a in outcomes} == {f"SUPPORT-{n}"}
    finally:
        first.close()
        second.close()
    assert numbers(store, "SUPPORT") == list(range(1, rounds + 1))
    # The loser's rolled-back counter left no gap.
    assert store.apply(command(100)) == Applied("created", "SUPPORT-21", None)


# -- queries -----------------------------------------------------------------


def test_list_get_count(store: TicketStore) -> None:
    store.apply(command(1))
    store.apply(command(2, queue="SALES", ticket_type="task", components=[]))
    store.apply(command(3, author=BOB))
    store.apply(reply(4, in_reply_to="msg-1@customer.org"))
    store.apply(reply(5, in_reply_to="msg-4@customer.org"))
    store.apply(command(6, subject="Newest"))

    summaries = store.list_tickets()
    assert [(t.key, t.comment_count) for t in summaries] == [
        ("SUPPORT-3", 0),
        ("SUPPORT-2", 0),
        ("SALES-1", 0),
        ("SUPPORT-1", 2),
    ]
    assert summaries[0] == TicketSummary(
        key="SUPPORT-3",
        queue="SUPPORT",
        number=3,
        type="question",
        components=("billing", "web"),
        summary="Newest",
        status="open",
        author_email="ann@customer.org",
        author_name="Ann Customer",
        created_at=T0 + timedelta(minutes=6),
        updated_at=T0 + timedelta(minutes=6),
        comment_count=0,
        awaiting_reply=True,
    )
    assert summaries[2].type == "task" and summaries[2].components == ()
    assert summaries[3].updated_at == T0 + timedelta(minutes=5)
    assert [t.key for t in store.list_tickets("SUPPORT", limit=2, offset=1)] == [
        "SUPPORT-2",
        "SUPPORT-1",
    ]
    assert store.list_tickets("NOPE") == []
    assert (store.count_tickets(), store.count_tickets("SUPPORT"), store.count_tickets("NOPE")) == (
        4,
        3,
        0,
    )
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None
    assert [e.message_id for e in detail.thread] == ["msg-4@customer.org", "msg-5@customer.org"]
    assert store.get_ticket("SUPPORT-99") is None


# -- errors ------------------------------------------------------------------


def test_malformed_command_is_invalid(store: TicketStore) -> None:
    with pytest.raises(InvalidCommand, match="needs a queue"):
        store.apply(command(1, queue=None))
    with pytest.raises(InvalidCommand, match="timezone-aware"):
        store.apply(command(2, received_at=datetime(2025, 3, 1, 9, 0)))
    with pytest.raises(InvalidCommand, match="unknown action"):
        store.apply(command(3, action="delete"))
    with pytest.raises(InvalidCommand, match="message_id is longer than 998"):
        store.apply(command(4, message_id="m" * 999 + "@x"))
    with pytest.raises(InvalidCommand, match="KeyError"):
        store.apply({k: v for k, v in command(5).items() if k != "subject"})
    with pytest.raises(InvalidCommand, match="size"):
        store.apply(command(6, attachments=[{"filename": "a", "content_type": "text/plain",
                                              "sha256": "ab", "blob_ref": None}]))
    assert row_counts(store) == {table.name: 0 for table in metadata.sorted_tables}


def test_ids_longer_than_the_column_are_stored_as_a_stable_digest(store: TicketStore) -> None:
    long_id = "smtp:" + "a" * 240 + "@example.com:" + "f" * 64  # an address may be 254 characters
    first = store.apply(command(1, id=long_id))
    again = store.apply(command(1, id=long_id))
    assert (first.outcome, again.outcome, again.ticket_key) == ("created", "duplicate", first.ticket_key)


def test_nul_characters_are_dropped_from_text(store: TicketStore) -> None:
    # PostgreSQL text cannot hold NUL; both backends store the same cleaned text.
    applied = store.apply(command(1, subject="Bro\x00ken", text="a\x00b", html="<p>\x00</p>"))
    assert applied == Applied("created", "SUPPORT-1", None)
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None
    assert (detail.summary, detail.description, detail.description_html) == ("Broken", "ab", "<p></p>")


def test_locked_sqlite_database_raises_operational_error(tmp_path: Any) -> None:
    path = tmp_path / "tickets.db"
    with TicketStore(f"sqlite:///{path}", sqlite_busy_timeout_s=0.2) as store:
        store.migrate()
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            with pytest.raises(OperationalError, match="database is locked"):
                store.apply(command(1))
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.apply(command(1)) == Applied("created", "SUPPORT-1", None)


@pytest.mark.postgres
def test_lost_postgres_connection_raises_operational_error() -> None:
    cluster = PostgresCluster()
    url = cluster.start()
    try:
        with TicketStore(url) as store:
            store.migrate()
            assert store.apply(command(1)) == Applied("created", "SUPPORT-1", None)
            cluster.stop()
            with pytest.raises(OperationalError):
                store.apply(command(2))
    finally:
        cluster.stop()


# -- replies from people who may not open tickets ----------------------------


def test_reply_only_threads_onto_mail_deskmail_sent(store: TicketStore) -> None:
    store.apply(command(1))
    sent = agent_mail(store, "SUPPORT-1")
    answer = reply(2, in_reply_to=sent, references=["msg-1@customer.org", sent],
                   reply_only=True, reason="external_not_accepted: not a member")
    applied = store.apply(answer)
    assert (applied.outcome, applied.ticket_key) == ("commented", "SUPPORT-1")


def test_reply_only_does_not_thread_onto_mail_deskmail_received(store: TicketStore) -> None:
    # Alice (a member) opened the ticket on a members-only address, copying Mallory.
    # Mallory's answer to Alice's own mail is not an answer to deskmail's (this
    # test used to pin that it threaded).
    store.apply(command(1, author=ALICE, participants=[MALLORY]))
    store.apply(reply(2, author=ALICE, in_reply_to="msg-1@customer.org"))
    answer = reply(3, author=MALLORY, in_reply_to="msg-2@customer.org", references=["msg-1@customer.org"],
                   reply_only=True, reason="external_not_accepted: not a member")
    assert store.apply(answer) == Applied("rejected", None, None)
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and [e.message_id for e in detail.thread] == ["msg-2@customer.org"]


def test_reply_only_does_not_thread_onto_another_queues_mail(store: TicketStore) -> None:
    store.apply(command(1, queue="SALES", mailbox="sales@example.com"))
    sent = agent_mail(store, "SALES-1")
    answer = reply(2, in_reply_to=sent, reply_only=True, reason="external_not_accepted: not a member")
    assert store.apply(answer) == Applied("rejected", None, None)
    sales = store.get_ticket("SALES-1")
    assert sales is not None and [e.kind for e in sales.thread] == ["mail_out"]


def test_reply_only_without_a_known_thread_is_rejected_once(store: TicketStore) -> None:
    stray = command(3, action="comment", classification="reply", in_reply_to="unknown@elsewhere.test",
                    reply_only=True, reason="external_not_accepted: not a member")
    assert store.apply(stray) == Applied("rejected", None, None)
    assert store.apply(stray) == Applied("duplicate", None, None)  # a replay changes nothing
    assert store.count_tickets() == 0
    assert [r.reason for r in store.list_rejections()] == ["external_not_accepted: not a member"]


def test_reply_only_does_not_trust_a_ticket_key_in_the_subject(store: TicketStore) -> None:
    store.apply(command(1))
    guess = command(4, action="comment", classification="reply", in_reply_to="unknown@elsewhere.test",
                    ticket_key_hint="SUPPORT-1", subject="Re: [SUPPORT-1] hi", reply_only=True)
    assert store.apply(guess).outcome == "rejected"
    assert store.get_ticket("SUPPORT-1").thread == ()


# -- author verified -----------------------------------------------------------


def test_the_author_s_proof_is_stored_on_the_ticket_and_each_incoming_mail(store: TicketStore) -> None:
    proven = {**ALICE, "verified": True}
    store.apply(command(1, author=proven))
    store.apply(reply(2, author=ALICE, in_reply_to="msg-1@customer.org"))  # a v2 record: no field
    store.apply(reply(3, author=proven, in_reply_to="msg-1@customer.org"))
    agent_mail(store, "SUPPORT-1")
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and detail.author_verified is True
    assert [(e.kind, e.author_verified) for e in detail.thread] == [
        ("mail_in", False), ("mail_in", True), ("mail_out", None)]


def test_an_unproven_author_opens_a_not_verified_ticket(store: TicketStore) -> None:
    store.apply(command(1, author={**ALICE, "verified": False}))
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None and (detail.author_member, detail.author_verified) == (True, False)
