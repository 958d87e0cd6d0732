"""Full-text search over tickets' summaries, descriptions and comments, with the
database's own engine (the objects of migration 0006, outside ``tables.metadata``).

- SQLite: external-content FTS5 tables ``tickets_fts`` (queue, summary,
  description) and ``comments_fts`` (queue, body), tokenizer ``porter
  unicode61 remove_diacritics 2``: English words are stemmed ("payments"
  finds "payment"), other scripts are tokenised and folded but not stemmed (a
  Cyrillic word finds only itself).
- PostgreSQL: the ``russian`` text search configuration. On PostgreSQL 15 it
  sends ``asciiword`` (and the ASCII parts of hyphenated words) to
  ``english_stem`` and ``word`` (non-ASCII letters) to ``russian_stem``:
  ``to_tsvector('russian', 'payments оплаты')`` is ``'payment':1 'оплат':2``.
  So one configuration stems both languages, and English and Russian stop
  words are dropped. Words with accented Latin letters are ``word`` tokens:
  not stemmed, not folded.

The query text comes from anybody's browser:

- at most MAX_QUERY_CHARS characters and MAX_TERMS words are used; a query
  without a letter or digit gives [] without touching the database, so does
  an empty list of queues;
- SQLite: every word is one quoted FTS5 string (inner quotes doubled), the
  words implicitly AND-ed, so FTS5 syntax (``"``, ``*``, ``NEAR``, ``-``,
  ``:``, ``(``, column filters) is inert; PostgreSQL: ``websearch_to_tsquery``,
  which never fails on any input (quotes make phrases, ``or`` and ``-`` work
  as on a web search engine; a query of stop words only finds nothing).

Bounded work: ranking every row that holds a common word costs in proportion
to their number, so each index (tickets, comments) yields only its newest
CANDIDATES matches in the agent's queues (by id: the order rows were
stored), and only those are ranked. For a word in fewer rows than that the
ranking is complete; for a more common word older matches are not found (add
words to narrow the search), and paging ends after about CANDIDATES tickets.
How the queues narrow the search depends on their share of all tickets
(from the counts the store keeps): at UNRESTRICTED_SHARE or more, the indexes
are read for all queues and other queues' rows skipped; below, the indexes
give only the agent's queues' rows (FTS5 indexes the queue; PostgreSQL walks
or looks up each queue's tickets, and finds comments by their queue's
lexeme). The queue is checked exactly either way; the counts steer the cost
only. Not bounded by the cap: several words that are each fairly common but
rarely together, where the engine has to intersect their rows to find the
few shared ones: FTS5 merges the words' row lists; PostgreSQL reads the
newest NEWEST_ROWS rows first and the rest by the GIN index alone (see
search_postgres.in_two_steps), so neither walks the whole table.

Ranking, best first, ties newest first, one hit per ticket (its best match):

- PostgreSQL: ``ts_rank_cd`` (cover density: matched words close together
  count more) with the summary weighted 1.0, the description 0.4, a comment
  0.3, divided by 1 + log(length).
- SQLite: not bm25, whose inverse document frequency reads every row that
  holds each word (45 ms for a word in most of 600,000 comments): the very
  cost the cap avoids. Instead a match scores by where all the words are,
  doubled where they stand together in the query's order: the summary 1.0,
  the description 0.4, a comment 0.3; words only spread over summary and
  description 0.2. Each is one more FTS5 query over the candidates' range of
  rows, and costs no more for a common word.

Two indexes, two connections: with a ``Beside`` (the store gives one for a
database file or server), the comments' candidates are found on a second
pooled connection at the same time as the tickets', so a search takes about
the slower of the two instead of their sum. On PostgreSQL the second
connection imports the first one's snapshot (``SET TRANSACTION SNAPSHOT``):
both read the same committed state. SQLite has no such import; a ticket or
comment committed between the two reads may be found by one and not seen by
the other, and is left out of that search.

Snippets are computed for the returned page only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.engine import Connection

from services.tickets import search_postgres, search_sqlite, workflow
from services.tickets.rows import build
from services.tickets.search_parts import (
    SMALL_QUEUE_BRANCHES,
    SMALL_QUEUE_SHARE,
    UNRESTRICTED_SHARE,
    Match,
    Scope,
)
from services.tickets.search_postgres import queue_tsquery
from services.tickets.search_sqlite import FTS_TABLES, fts5_match, fts5_phrase
from services.tickets.tables import comments, tickets
from services.tickets.views import SearchHit, TicketSummary

__all__ = ["Beside", "fts5_match", "fts5_phrase", "include_object", "is_search_object", "queue_tsquery", "search",
           "terms"]

MAX_QUERY_CHARS = 200
MAX_TERMS = 12
# -- the search objects, for the schema comparison ----------------------------

_FTS_SHADOW_SUFFIXES = ("_data", "_idx", "_docsize", "_config", "_content")
_SEARCH_TABLES = frozenset(
    [*FTS_TABLES, *(t + s for t in FTS_TABLES for s in _FTS_SHADOW_SUFFIXES), "comments_search"]
)
_SEARCH_COLUMNS = frozenset([("tickets", "search_vector"), ("comments", "search_vector")])
_SEARCH_INDEXES = frozenset(["ix_tickets_search_vector", "ix_comments_search_vector"])


def is_search_object(name: str | None, type_: str, table: str | None = None) -> bool:
    """True for exactly the objects migration 0006 creates: the FTS5 tables,
    their shadow tables and the view (``type_`` "table"), PostgreSQL's
    ``search_vector`` columns (``type_`` "column", with their ``table``) and
    their GIN indexes (``type_`` "index")."""
    if type_ == "table":
        return name in _SEARCH_TABLES
    if type_ == "column":
        return (table, name) in _SEARCH_COLUMNS
    if type_ == "index":
        return name in _SEARCH_INDEXES
    return False


def include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    """Alembic's ``include_object`` hook: compare everything but the search objects."""
    table = getattr(getattr(obj, "table", None), "name", None)
    return not is_search_object(name, type_, table)


# -- the query text -------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def terms(query: str) -> list[str]:
    """The query's words (split on white space) that hold a letter or digit,
    from its first MAX_QUERY_CHARS characters, at most MAX_TERMS of them."""
    words = _CONTROL.sub(" ", query[:MAX_QUERY_CHARS]).split()
    return [w for w in words if any(ch.isalnum() for ch in w)][:MAX_TERMS]


def _scope(conn: Connection, queues: list[str]) -> Scope:
    # Restricting the index to queues that hold most tickets costs more (an OR
    # over their row lists) than it saves.
    per_queue: dict[str, int] = {}
    for (queue, _status, _assignee), n in workflow.counts(conn).items():
        per_queue[queue] = per_queue.get(queue, 0) + n
    total = sum(per_queue.values()) or 1
    share = sum(per_queue.get(q, 0) for q in queues) / total if per_queue else 1.0
    if share >= UNRESTRICTED_SHARE:
        return Scope(queues, None, share, [])
    small = [q for q in queues if per_queue.get(q, 0) / total <= SMALL_QUEUE_SHARE]
    return Scope(queues, queues, share, small if len(small) <= SMALL_QUEUE_BRANCHES else [])


@dataclass(frozen=True)
class Beside:
    """Where a search runs its second index's query: ``executor`` runs it on
    a connection from ``connect``, while the first runs on the caller's."""

    executor: Executor
    connect: Callable[[], AbstractContextManager[Connection]]


def search(conn: Connection, query: str, queues: Sequence[str], limit: int, offset: int,
           beside: Beside | None = None) -> list[SearchHit]:
    """The tickets in ``queues`` whose text or comments match ``query``, best
    first (ties: newest first), one hit per ticket; ``limit`` and ``offset``
    page them. Call on a fresh connection: on PostgreSQL it sets the
    transaction's isolation and planner options. With ``beside``, the
    comments index is read on a second connection at the same time."""
    words = terms(query)
    wanted = list(dict.fromkeys(queues))
    if not words or not wanted or limit == 0:
        return []
    if conn.dialect.name == "sqlite":
        scope = _scope(conn, wanted)
        ticket_matches, comment_matches = _side_by_side(
            conn, lambda c: search_sqlite.ticket_matches(c, words, scope),
            lambda c: search_sqlite.comment_matches(c, words, scope), beside, lambda c: None)
    else:
        conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot for all the reads
        search_postgres.settings(conn)
        scope = _scope(conn, wanted)
        snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one() if beside else ""
        ticket_matches, comment_matches = _side_by_side(
            conn, lambda c: search_postgres.ticket_matches(c, " ".join(words), scope),
            lambda c: search_postgres.comment_matches(c, " ".join(words), scope), beside,
            lambda c: search_postgres.import_snapshot(c, snapshot))
    best: dict[int, Match] = {}
    for m in [*ticket_matches, *comment_matches]:  # ticket matches first: they win a tie with a comment
        if m.ticket_id not in best or m.score > best[m.ticket_id].score:
            best[m.ticket_id] = m
    page = sorted(best.values(), key=lambda m: (-m.score, -m.ticket_id))[offset:offset + limit]
    if not page:
        return []
    summaries = _summaries(conn, [m.ticket_id for m in page])
    snippets = (search_sqlite.snippets(conn, words, page) if conn.dialect.name == "sqlite"
                else search_postgres.snippets(conn, " ".join(words), page))
    return [
        SearchHit(ticket=summaries[m.ticket_id], snippet=snippets[m][1], where=snippets[m][0],
                  comment_id=m.comment_id, rank=m.score)
        for m in page
        if m.ticket_id in summaries and m in snippets  # SQLite, two connections: see the module's docstring
    ]


def _side_by_side(
    conn: Connection,
    first: Callable[[Connection], list[Match]],
    second: Callable[[Connection], list[Match]],
    beside: Beside | None,
    prepare: Callable[[Connection], None],
) -> tuple[list[Match], list[Match]]:
    """``first(conn)``, and ``second`` on a connection of ``beside`` readied by
    ``prepare``, at the same time; both on ``conn`` without ``beside``."""
    if beside is None:
        return first(conn), second(conn)

    def run() -> list[Match]:
        with beside.connect() as other:
            prepare(other)
            return second(other)

    future = beside.executor.submit(run)
    try:
        found = first(conn)
    finally:
        others = future.result()  # waited for even when ``first`` failed: its connection goes back to the pool
    return found, others


def _summaries(conn: Connection, ids: list[int]) -> dict[int, TicketSummary]:
    comment_count = (
        select(func.count()).where(comments.c.ticket_id == tickets.c.id).scalar_subquery().label("comment_count")
    )
    rows = conn.execute(select(tickets, comment_count).where(tickets.c.id.in_(ids))).all()
    return {
        r.id: build(TicketSummary, r, components=tuple(r.components), comment_count=int(r.comment_count))
        for r in rows
    }
