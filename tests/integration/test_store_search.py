"""Full-text search in the TicketStore (migration 0006), on SQLite FTS5 and PostgreSQL tsvector."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import event, inspect, text

from services.tickets import MARK_END, MARK_START, Recipient, SearchHit, TicketChange, TicketStore, search_postgres
from services.tickets.migrations import alembic_config
from services.tickets.search import include_object, is_search_object
from services.tickets.tables import metadata
from tests.harness.records import command

pytestmark = pytest.mark.integration


def reply(n: int, **overrides: Any) -> dict[str, Any]:
    return command(n, action="comment", classification="reply", **overrides)


def marked(word: str) -> str:
    return f"{MARK_START}{word}{MARK_END}"


def keys(hits: list[SearchHit]) -> list[str]:
    return [h.ticket.key for h in hits]


def sqlite(store: TicketStore) -> bool:
    return store.engine.dialect.name == "sqlite"


def assert_index_intact(store: TicketStore) -> None:
    """SQLite: FTS5 compares its index with the content tables (the triggers kept it right)."""
    if sqlite(store):
        with store.engine.begin() as conn:
            for table in ("tickets_fts", "comments_fts"):
                conn.execute(text(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 1)"))


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as s:
        s.migrate()
        yield s


# -- what is found, and where -------------------------------------------------


def test_a_word_in_the_summary_the_description_or_a_comment_finds_its_ticket(store: TicketStore) -> None:
    store.apply(command(1, subject="Invoice never arrived", text="Hello, nothing came."))
    store.apply(command(2, subject="A question", text="The courier lost our parcel yesterday."))
    store.apply(command(3, subject="Another one", text="Plain text."))
    comment = store.apply(reply(4, in_reply_to="msg-3@customer.org", text="Now the refrigerator is broken too."))

    (hit,) = store.search("invoice", ["SUPPORT"])
    (listed,) = [t for t in store.list_tickets() if t.key == "SUPPORT-1"]
    assert (hit.ticket, hit.where, hit.comment_id) == (listed, "summary", None)
    assert marked("Invoice") in hit.snippet and hit.rank > 0

    (hit,) = store.search("parcel", ["SUPPORT"])
    assert (hit.ticket.key, hit.where, hit.comment_id) == ("SUPPORT-2", "description", None)
    assert marked("parcel") in hit.snippet and "courier" in hit.snippet

    (hit,) = store.search("refrigerator", ["SUPPORT"])
    assert (hit.ticket.key, hit.where, hit.comment_id) == ("SUPPORT-3", "comment", comment.comment_id)
    assert marked("refrigerator") in hit.snippet and hit.ticket.comment_count == 1

    assert store.search("nowhere", ["SUPPORT"]) == []
    assert_index_intact(store)


def test_an_agents_note_added_later_is_found(store: TicketStore) -> None:
    store.apply(command(1))
    assert store.search("escalate", ["SUPPORT"]) == []
    note = store.add_reply("SUPPORT-1", author_email="alice@example.com", author_name="Alice", send_email=False,
                           internal=True, text="Escalate to the second line, please.")
    (hit,) = store.search("escalate", ["SUPPORT"])
    assert (hit.where, hit.comment_id, hit.ticket.comment_count) == ("comment", note.entry.id, 1)
    assert hit.snippet.startswith(marked("Escalate"))


def test_stemming_english_everywhere_russian_on_postgresql(store: TicketStore) -> None:
    store.apply(command(1, subject="Payment failed", text="Оплата не прошла"))
    assert keys(store.search("payments", ["SUPPORT"])) == ["SUPPORT-1"]
    assert keys(store.search("оплата", ["SUPPORT"])) == ["SUPPORT-1"]
    (hit,) = store.search("ОПЛАТА", ["SUPPORT"])
    assert hit.where == "description" and marked("Оплата") in hit.snippet
    # FTS5's porter stems English only: a Cyrillic word finds just itself there.
    assert keys(store.search("оплаты", ["SUPPORT"])) == ([] if sqlite(store) else ["SUPPORT-1"])


def test_the_summary_ranks_above_a_comment(store: TicketStore) -> None:
    store.apply(command(1, subject="Zeppelin tickets", text="When is the next flight?"))
    store.apply(command(2, subject="Travel", text="Tell me more."))
    store.apply(reply(3, in_reply_to="msg-2@customer.org", text="I saw a zeppelin over the city."))
    hits = store.search("zeppelin", ["SUPPORT"])
    assert [(h.ticket.key, h.where) for h in hits] == [("SUPPORT-1", "summary"), ("SUPPORT-2", "comment")]
    assert hits[0].rank > hits[1].rank


def test_words_standing_together_rank_above_words_apart(store: TicketStore) -> None:
    store.apply(command(1, subject="Question", text="Why has my card failed? The payment went through."))
    store.apply(command(2, subject="Question", text="Why has my card payment failed? It went through."))
    assert keys(store.search("payment failed", ["SUPPORT"])) == ["SUPPORT-2", "SUPPORT-1"]


def test_a_query_of_stop_words_finds_nothing_on_postgresql(store: TicketStore) -> None:
    # PostgreSQL drops English and Russian stop words; FTS5 has none.
    store.apply(command(1, subject="The printer and the scanner", text="x"))
    assert keys(store.search("the and", ["SUPPORT"])) == (["SUPPORT-1"] if sqlite(store) else [])


def test_one_hit_per_ticket_with_its_best_match(store: TicketStore) -> None:
    store.apply(command(1, subject="Printer jammed", text="The printer shows error 5."))
    store.apply(reply(2, in_reply_to="msg-1@customer.org", text="The printer is still jammed."))
    (hit,) = store.search("printer", ["SUPPORT"])
    assert (hit.ticket.key, hit.where) == ("SUPPORT-1", "summary")


def test_paging_with_limit_and_offset(store: TicketStore) -> None:
    for n in range(1, 8):
        store.apply(command(n, subject=f"Lantern number {n}", text="lantern " * n))
    every = keys(store.search("lantern", ["SUPPORT"]))
    assert sorted(every) == sorted(f"SUPPORT-{n}" for n in range(1, 8))
    pages = [keys(store.search("lantern", ["SUPPORT"], limit=3, offset=offset)) for offset in (0, 3, 6, 9)]
    assert pages[0] + pages[1] + pages[2] == every and pages[3] == []
    assert store.search("lantern", ["SUPPORT"], limit=0) == []
    with pytest.raises(ValueError):
        store.search("lantern", ["SUPPORT"], limit=-1)


# -- queues ----------------------------------------------------------------------


def test_only_the_given_queues_are_searched(store: TicketStore) -> None:
    store.apply(command(1, subject="Harbour crane", text="x"))
    store.apply(command(2, queue="SALES", mailbox="sales@example.com", subject="Harbour deal", text="x"))
    # Its name holds SUPPORT's tokens: the index narrows by tokens, the store checks the name.
    store.apply(command(3, queue="SUPPORT_EU", mailbox="eu@example.com", subject="Harbour fees", text="x"))
    store.apply(reply(4, queue="SALES", mailbox="sales@example.com", in_reply_to="msg-2@customer.org",
                      text="harbour again"))
    store.apply(reply(5, queue="SUPPORT_EU", mailbox="eu@example.com", in_reply_to="msg-3@customer.org",
                      text="harbour again"))

    # A third of the tickets: the indexes are searched for the queue's rows only.
    assert keys(store.search("harbour", ["SUPPORT"])) == ["SUPPORT-1"]
    assert keys(store.search("harbour", ["SALES"])) == ["SALES-1"]
    # Two thirds: all queues' newest matches, then only the queues' own.
    assert sorted(keys(store.search("harbour", ["SALES", "SUPPORT_EU", "SALES"]))) == ["SALES-1", "SUPPORT_EU-1"]
    assert keys(store.search("again", ["SUPPORT"])) == []
    assert store.search("harbour", []) == []
    assert store.search("harbour", ["NOPE"]) == []


@pytest.mark.parametrize("newest_rows", [search_postgres.NEWEST_ROWS, 3], ids=["newest-rows-only", "older-rows-too"])
def test_small_medium_and_large_queues_are_searched_alike(
        store: TicketStore, newest_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # TINY holds 1 ticket of 74 (PostgreSQL walks it on its own), MID 5 (found by
    # its lexeme), BIG 60 (most tickets: the indexes are read for all queues);
    # nine small queues at once are too many to walk each. PostgreSQL reads
    # the newest rows first and the older ones by the index only when the
    # newest hold too few matches: with a window of 3 rows, nearly every
    # match is an older one.
    monkeypatch.setattr(search_postgres, "NEWEST_ROWS", newest_rows)
    for n in range(1, 61):
        store.apply(command(n, queue="BIG", mailbox="big@example.com", subject=f"Walrus {n}", text="x"))
    for n in range(61, 66):
        store.apply(command(n, queue="MID", mailbox="mid@example.com", subject="Walrus", text="x"))
    store.apply(command(66, queue="TINY", mailbox="tiny@example.com", subject="Walrus", text="x"))
    store.apply(reply(67, queue="TINY", mailbox="tiny@example.com", in_reply_to="msg-66@customer.org", text="narwhal"))
    store.apply(reply(68, queue="MID", mailbox="mid@example.com", in_reply_to="msg-61@customer.org", text="narwhal"))
    store.apply(reply(69, queue="BIG", mailbox="big@example.com", in_reply_to="msg-1@customer.org", text="narwhal"))
    smalls = [f"S{n}" for n in range(8)]
    for n, queue in enumerate(smalls, start=70):
        store.apply(command(n, queue=queue, mailbox=f"{queue.lower()}@example.com", subject="Walrus", text="x"))

    assert keys(store.search("walrus", ["TINY"])) == ["TINY-1"]
    assert keys(store.search("narwhal", ["TINY"])) == ["TINY-1"]
    assert sorted(keys(store.search("walrus", ["TINY", "MID"]))) == [f"MID-{n}" for n in range(1, 6)] + ["TINY-1"]
    assert sorted(keys(store.search("narwhal", ["MID", "TINY"]))) == ["MID-1", "TINY-1"]
    assert sorted(keys(store.search("narwhal", ["BIG"]))) == ["BIG-1"]
    assert len(store.search("walrus", ["BIG"], limit=100)) == 60
    assert len(store.search("walrus", ["BIG", "MID", "TINY"], limit=100)) == 66
    assert sorted(keys(store.search("walrus", ["TINY", *smalls]))) == sorted(["TINY-1", *(f"{q}-1" for q in smalls)])
    assert keys(store.search("narwhal", ["TINY", *smalls])) == ["TINY-1"]


def test_a_ticket_moved_to_another_queue_is_searched_there(store: TicketStore) -> None:
    # deskmail does not move tickets today; the index must follow if anything does.
    store.apply(command(1, subject="Lighthouse", text="x"))
    store.apply(reply(2, in_reply_to="msg-1@customer.org", text="beacon"))
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE tickets SET queue = 'SALES' WHERE key = 'SUPPORT-1'"))
    assert store.search("lighthouse", ["SUPPORT"]) == [] and store.search("beacon", ["SUPPORT"]) == []
    assert len(store.search("lighthouse", ["SALES"])) == 1 and len(store.search("beacon", ["SALES"])) == 1
    assert_index_intact(store)


def test_status_changes_and_deliveries_keep_the_index_right(store: TicketStore) -> None:
    store.apply(command(1, subject="Heating broken", text="x"))
    store.change_ticket("SUPPORT-1", TicketChange(status="in_progress", assignee="alice@example.com"),
                        actor="alice@example.com", expected_version=None)
    store.add_reply("SUPPORT-1", author_email="alice@example.com", author_name=None, text="The engineer is on the way.",
                    send_email=True, to=[Recipient("ann@customer.org")], outbound_id="out-1",
                    message_id="deskmail.out-1@example.com", build_outbound=lambda threading_: b"mail")
    assert store.record_delivery({
        "id": "out-1:1:sent", "outbound_id": "out-1", "ticket": "SUPPORT-1", "comment_id": 1, "status": "sent",
        "attempt": 1, "smtp_code": 250, "smtp_reply": "2.0.0 Ok", "message_id": "deskmail.out-1@example.com",
        "time": datetime(2025, 3, 2, 10, 0, tzinfo=timezone.utc)})
    (hit,) = store.search("heating", ["SUPPORT"])
    assert hit.ticket.status == "in_progress" and hit.ticket.assignee == "alice@example.com"
    assert [h.where for h in store.search("engineer", ["SUPPORT"])] == ["comment"]
    assert_index_intact(store)


# -- hostile and odd input -------------------------------------------------------

HOSTILE = [
    '"', '""', "*", "-", ":", "(", ")", "((", "NEAR(a b)", "NEAR", "summary:x", "{summary}: invoice", "a OR",
    "OR", "AND NOT", "^invoice", "invoice*", '"invoice', "invoice)", "(invoice", "in\x00voice", "\x00",
    "'; DROP TABLE tickets; --", "\\", "\u0000\u001f\u007f", MARK_START + MARK_END, "x" * 10_000,
    "invoice " * 2_000, "колонка:значение", "!@#$%^&*()_+", "   ",
]


@pytest.mark.parametrize("query", HOSTILE, ids=[repr(q[:20]) for q in HOSTILE])
def test_hostile_queries_never_raise(store: TicketStore, query: str) -> None:
    store.apply(command(1, subject="Invoice missing", text="Please send the invoice again."))
    hits = store.search(query, ["SUPPORT"])
    assert keys(hits) in ([], ["SUPPORT-1"])
    assert store.count_tickets() == 1


@pytest.mark.parametrize("query", ['"invoice"', "invoice*", "(invoice", "invoice)", "^invoice", "invoice\x00",
                                   "INVOICE", "invoice " * 2_000, "invoice " * 12 + "unknown"])
def test_punctuation_around_a_word_still_finds_it(store: TicketStore, query: str) -> None:
    store.apply(command(1, subject="Invoice missing", text="Please send the invoice again."))
    assert keys(store.search(query, ["SUPPORT"])) == ["SUPPORT-1"]


def test_a_query_without_words_does_not_reach_the_database(store: TicketStore) -> None:
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    for query in ("", "   ", '"', "*", "-()", "\x00"):
        assert store.search(query, ["SUPPORT"]) == []
    assert store.search("invoice", []) == []
    assert statements == []


def test_marker_characters_in_the_text_are_not_taken_for_matches(store: TicketStore) -> None:
    fake = f"{MARK_START}forged{MARK_END}"
    store.apply(command(1, subject=f"Receipt {fake}", text=f"{fake} receipt {MARK_END}"))
    (hit,) = store.search("receipt", ["SUPPORT"])
    assert hit.snippet.count(MARK_START) == hit.snippet.count(MARK_END) == 1
    assert marked("Receipt") in hit.snippet and "forged" in hit.snippet


def test_a_snippet_keeps_angle_brackets_and_ampersands_as_the_mail_wrote_them(store: TicketStore) -> None:
    # PostgreSQL's ts_headline would take "<...>" for an HTML tag and drop it.
    store.apply(command(1, text="Write to <john@example.com> & say a < b, not <b>flibbertigibbet</b>."))
    [hit] = store.search("flibbertigibbet", ["SUPPORT"])
    assert "<john@example.com> & say a < b, not <b>" + marked("flibbertigibbet") in hit.snippet, hit.snippet


def test_a_huge_mail_is_stored_and_searchable(store: TicketStore) -> None:
    # A tsvector holds at most 1 MB: PostgreSQL indexes the first 100,000 characters.
    body = "needle " + " ".join(f"w{i:x}" for i in range(150_000))  # about a million characters
    assert len(body) > 900_000
    assert store.apply(command(1, text=body)).outcome == "created"
    (hit,) = store.search("needle", ["SUPPORT"])
    assert hit.where == "description" and len(hit.snippet) < 1_000
    # Snippets read at most the first 10,000 characters: FTS5 reads all, so it shows the start unmarked.
    assert hit.snippet.startswith("needle w0 w1" if sqlite(store) else marked("needle"))


# -- the migration ---------------------------------------------------------------


def search_objects(store: TicketStore) -> list[str]:
    with store.engine.connect() as conn:
        if sqlite(store):
            rows = conn.execute(text(
                "SELECT name FROM sqlite_master WHERE name LIKE '%fts%' OR name = 'comments_search'"))
        else:
            rows = conn.execute(text(
                "SELECT table_name || '.' || column_name FROM information_schema.columns "
                "WHERE column_name = 'search_vector' UNION ALL "
                "SELECT indexname FROM pg_indexes WHERE indexname LIKE '%search_vector%'"))
        return sorted(rows.scalars())


def test_upgrade_indexes_existing_tickets_and_downgrade_removes_the_search(db_url: str) -> None:
    config = alembic_config(db_url)
    with TicketStore(db_url) as s:
        # Rows written by this code, then the schema taken back to before the
        # search (later revisions' columns go too): 0006 must index them.
        s.migrate()
        s.apply(command(1, subject="Telescope broken", text="The lens is cracked."))
        s.apply(reply(2, in_reply_to="msg-1@customer.org", text="A new mirror is needed."))
    alembic_command.downgrade(config, "0005")
    with TicketStore(db_url) as s:
        assert search_objects(s) == []
        s.migrate()
        assert len(search_objects(s)) >= 4
        assert [h.where for h in s.search("telescope", ["SUPPORT"])] == ["summary"]
        assert [h.where for h in s.search("mirror", ["SUPPORT"])] == ["comment"]
        assert_index_intact(s)
    alembic_command.downgrade(config, "0005")
    with TicketStore(db_url) as s, s.engine.begin() as conn:
        assert search_objects(s) == []
        conn.execute(text(  # no trigger left behind to fail or index it (the store's code needs head)
            "INSERT INTO tickets (key, queue, number, summary, description, components, author_email, "
            "author_member, author_verified, status, created_at, updated_at, command_id, version, awaiting_reply) "
            "VALUES ('SUPPORT-2', 'SUPPORT', 2, 'Microscope', 'x', '[]', 'a@customer.org', false, false, 'open', "
            "'2025-03-01 09:00:00', '2025-03-01 09:00:00', 'cmd-3', 1, false)"))
    with TicketStore(db_url) as s:
        s.migrate()
        assert keys(s.search("microscope", ["SUPPORT"])) == ["SUPPORT-2"]


def test_the_schema_filter_hides_exactly_the_search_objects(store: TicketStore) -> None:
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        assert compare_metadata(context, metadata) == []
        unfiltered = compare_metadata(MigrationContext.configure(conn), metadata)
    # Without the filter the comparison sees the search objects (they are not in the tables).
    assert unfiltered
    assert all(is_search_object(*_diff_name(d)) for d in _flat(unfiltered)), unfiltered
    with store.engine.begin() as conn:
        conn.execute(text("CREATE TABLE tickets_fts_extra (id INTEGER PRIMARY KEY)"))
        conn.execute(text("CREATE INDEX ix_tickets_search_vector_extra ON tickets (summary)"))
    with store.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include_object})
        diff = compare_metadata(context, metadata)
    assert sorted((d[0], _diff_name(d)[0]) for d in _flat(diff)) == [
        ("remove_index", "ix_tickets_search_vector_extra"), ("remove_table", "tickets_fts_extra"),
    ]
    tables = set(inspect(store.engine).get_table_names())
    assert {t for t in tables if not is_search_object(t, "table")} == {"alembic_version", *metadata.tables,
                                                                      "tickets_fts_extra"}


def _flat(diff: list[Any]) -> list[tuple[Any, ...]]:
    # Column changes come as lists of tuples; additions and removals as tuples.
    return [d for item in diff for d in (item if isinstance(item, list) else [item])]


def _diff_name(d: tuple[Any, ...]) -> tuple[str, str, str | None]:
    kind = d[0]
    if kind.endswith("_table"):
        return d[1].name, "table", None
    if kind.endswith("_index"):
        return d[1].name, "index", None
    if kind.endswith("_column"):
        return d[3].name, "column", d[2]
    raise AssertionError(f"unexpected difference {d!r}")
