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
_postgres_in_two_steps), so neither walks the whole table.

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

import math
import re
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import TextClause

from services.tickets import workflow
from services.tickets.rows import build
from services.tickets.tables import comments, tickets
from services.tickets.views import MARK_END, MARK_START, SearchHit, SearchWhere, TicketSummary

MAX_QUERY_CHARS = 200
MAX_TERMS = 12
# Matches ranked per index and search: the cap that bounds a search's work.
# Two pages of 50; at 200, the slowest searches on 1,000,000 tickets took a
# quarter longer (tests/bench/search.py).
CANDIDATES = 100
# Agents whose queues hold at least this share of all tickets search the
# indexes unrestricted (see _scope).
UNRESTRICTED_SHARE = 0.5
# PostgreSQL: the tickets of a queue with at most this share of all tickets
# are searched on their own, walked newest first where a word is common (see
# _postgres_candidates).
SMALL_QUEUE_SHARE = 0.02
# More small queues than this share the large queues' branch: every branch is
# one more plan (a few ms each) and one more index lookup for a rare word.
SMALL_QUEUE_BRANCHES = 8
SNIPPET_TOKENS = 16
# Snippets read a text up to this long (PostgreSQL: its first characters);
# the engines spend about 20 (SQLite) to 300 (PostgreSQL) ms per million
# characters, and a page may show 50 hostile mails. Beyond it SQLite shows the
# text's first SNIPPET_PLAIN_CHARS characters, unmarked.
SNIPPET_TEXT_CHARS = 10_000
SNIPPET_PLAIN_CHARS = 200

# -- the search objects, for the schema comparison ----------------------------

_FTS_TABLES = ("tickets_fts", "comments_fts")
_FTS_SHADOW_SUFFIXES = ("_data", "_idx", "_docsize", "_config", "_content")
_SEARCH_TABLES = frozenset(
    [*_FTS_TABLES, *(t + s for t in _FTS_TABLES for s in _FTS_SHADOW_SUFFIXES), "comments_search"]
)
_SEARCH_COLUMNS = frozenset([("tickets", "search_vector"), ("comments", "search_vector")])
_SEARCH_INDEXES = frozenset(["ix_tickets_search_vector", "ix_comments_search_vector"])
# PostgreSQL: the queue's lexeme in every vector (migration 0006).
QUEUE_LEXEME_PREFIX = "§queue:"


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


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


def fts5_match(words: Sequence[str], columns: Sequence[str], queues: Sequence[str] = ()) -> str:
    """An FTS5 expression: every word a quoted string in ``columns``, AND-ed;
    with ``queues``, only rows whose queue column holds one of them."""
    expression = "{" + " ".join(columns) + "} : (" + " ".join(_quoted(w) for w in words) + ")"
    if queues:
        expression = "queue : (" + " OR ".join(_quoted(q) for q in queues) + ") AND " + expression
    return expression


def fts5_phrase(words: Sequence[str], columns: Sequence[str]) -> str:
    """An FTS5 expression: the words next to each other, in order, in ``columns``."""
    return "{" + " ".join(columns) + "} : " + " + ".join(_quoted(w) for w in words)


def queue_tsquery(queues: Sequence[str]) -> str:
    """tsquery text matching the vectors of rows in any of ``queues``."""
    return " | ".join(
        "'" + (QUEUE_LEXEME_PREFIX + q).replace("\\", "\\\\").replace("'", "''") + "'" for q in queues
    )


# -- search -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Match:
    ticket_id: int
    comment_id: int | None
    score: float  # higher is better
    column: SearchWhere | None = None  # a ticket match: the column that holds all the words, when known


@dataclass(frozen=True)
class _Scope:
    """How a search narrows the indexes to the agent's ``queues``, which hold
    ``share`` of all tickets: to ``restrict`` (the same queues), or not at all
    (None) from UNRESTRICTED_SHARE up. PostgreSQL walks each of the ``small``
    ones (SMALL_QUEUE_SHARE or less) on its own, for tickets. The queries
    check the queues exactly either way."""

    queues: list[str]
    restrict: list[str] | None
    share: float
    small: list[str]


def _scope(conn: Connection, queues: list[str]) -> _Scope:
    # Restricting the index to queues that hold most tickets costs more (an OR
    # over their row lists) than it saves.
    per_queue: dict[str, int] = {}
    for (queue, _status, _assignee), n in workflow.counts(conn).items():
        per_queue[queue] = per_queue.get(queue, 0) + n
    total = sum(per_queue.values()) or 1
    share = sum(per_queue.get(q, 0) for q in queues) / total if per_queue else 1.0
    if share >= UNRESTRICTED_SHARE:
        return _Scope(queues, None, share, [])
    small = [q for q in queues if per_queue.get(q, 0) / total <= SMALL_QUEUE_SHARE]
    return _Scope(queues, queues, share, small if len(small) <= SMALL_QUEUE_BRANCHES else [])


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
            conn, lambda c: _sqlite_ticket_matches(c, words, scope),
            lambda c: _sqlite_comment_matches(c, words, scope), beside, lambda c: None)
    else:
        conn.execution_options(isolation_level="REPEATABLE READ")  # one snapshot for all the reads
        _postgres_settings(conn)
        scope = _scope(conn, wanted)
        snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one() if beside else ""
        ticket_matches, comment_matches = _side_by_side(
            conn, lambda c: _postgres_ticket_matches(c, " ".join(words), scope),
            lambda c: _postgres_comment_matches(c, " ".join(words), scope), beside,
            lambda c: _postgres_import(c, snapshot))
    best: dict[int, _Match] = {}
    for m in [*ticket_matches, *comment_matches]:  # ticket matches first: they win a tie with a comment
        if m.ticket_id not in best or m.score > best[m.ticket_id].score:
            best[m.ticket_id] = m
    page = sorted(best.values(), key=lambda m: (-m.score, -m.ticket_id))[offset:offset + limit]
    if not page:
        return []
    summaries = _summaries(conn, [m.ticket_id for m in page])
    snippets = (_sqlite_snippets(conn, words, page) if conn.dialect.name == "sqlite"
                else _postgres_snippets(conn, " ".join(words), page))
    return [
        SearchHit(ticket=summaries[m.ticket_id], snippet=snippets[m][1], where=snippets[m][0],
                  comment_id=m.comment_id, rank=m.score)
        for m in page
        if m.ticket_id in summaries and m in snippets  # SQLite, two connections: see the module's docstring
    ]


def _side_by_side(
    conn: Connection,
    first: Callable[[Connection], list[_Match]],
    second: Callable[[Connection], list[_Match]],
    beside: Beside | None,
    prepare: Callable[[Connection], None],
) -> tuple[list[_Match], list[_Match]]:
    """``first(conn)``, and ``second`` on a connection of ``beside`` readied by
    ``prepare``, at the same time; both on ``conn`` without ``beside``."""
    if beside is None:
        return first(conn), second(conn)

    def run() -> list[_Match]:
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


# -- snippets: matched terms between markers only the query knows -----------------


class _Marks:
    """Per-search start and end strings for the engine's snippet function.

    The database text may hold MARK_START and MARK_END itself; the engine
    marks with random strings instead, and ``plain`` drops the characters
    from the text before turning the random strings into them."""

    def __init__(self) -> None:
        nonce = secrets.token_hex(8)
        self.start = f"{MARK_START}{nonce}<"
        self.end = f">{nonce}{MARK_END}"
        self._split = re.compile(f"({re.escape(self.start)}|{re.escape(self.end)})")

    def plain(self, snippet: str | None) -> str:
        parts = []
        for part in self._split.split(snippet or ""):
            if part == self.start:
                parts.append(MARK_START)
            elif part == self.end:
                parts.append(MARK_END)
            else:
                parts.append(part.replace(MARK_START, "").replace(MARK_END, "").translate(_UNSHIELD))
        return "".join(parts)


def _ticket_snippet(column: SearchWhere | None, summary: str, description: str) -> tuple[SearchWhere, str]:
    # The column that holds all the words; else the description if it shows a
    # match, else the summary.
    if column == "description" or (column is None and MARK_START in description):
        return "description", description
    return "summary", summary


# -- SQLite: FTS5 -----------------------------------------------------------------

# ORDER BY rowid DESC LIMIT is walked by FTS5 from the newest match and stops
# at the cap, which counts the agent's rows only: the join checks the queue
# exactly (the index matches a queue's tokens, which another queue's name may
# hold too: SUPPORT, SUPPORT_EU).
_SQLITE_TICKETS = text(
    "SELECT f.rowid AS ticket_id FROM tickets_fts f JOIN tickets t ON t.id = f.rowid "
    "WHERE tickets_fts MATCH :match AND t.queue IN :queues ORDER BY f.rowid DESC LIMIT :cap"
).bindparams(bindparam("queues", expanding=True))
_SQLITE_COMMENTS = text(
    "SELECT c.ticket_id, f.rowid AS comment_id "
    "FROM comments_fts f JOIN comments c ON c.id = f.rowid JOIN tickets t ON t.id = c.ticket_id "
    "WHERE comments_fts MATCH :match AND t.queue IN :queues ORDER BY f.rowid DESC LIMIT :cap"
).bindparams(bindparam("queues", expanding=True))
# Which candidates match a narrower expression (words in one column, or as a
# phrase): one pass over their range of rowids. "+rowid" keeps the IN list a
# filter: as a constraint FTS5 would run the whole query again for each value.
_SQLITE_AMONG = {
    table: text(
        f"SELECT rowid FROM {table} WHERE {table} MATCH :match AND rowid BETWEEN :low AND :high AND +rowid IN :ids"
    ).bindparams(bindparam("ids", expanding=True))
    for table in _FTS_TABLES
}
# Scores (higher is better) by where all the words are; doubled for a phrase.
_SUMMARY, _DESCRIPTION, _COMMENT, _SPREAD = 1.0, 0.4, 0.3, 0.2
# The page's rows, as _SQLITE_AMONG finds them; snippet() runs for them only,
# and not on a text longer than SNIPPET_TEXT_CHARS (it reads all of it).
_SNIPPET = ("CASE WHEN length({column}) <= :longest THEN snippet({table}, {n}, :start, :end, '…', :tokens) "
            "ELSE substr({column}, 1, :plain) END")
_SQLITE_TICKET_SNIPPETS = text(
    f"SELECT rowid AS id, {_SNIPPET.format(table='tickets_fts', column='summary', n=1)} AS summary, "
    f"{_SNIPPET.format(table='tickets_fts', column='description', n=2)} AS description FROM tickets_fts "
    "WHERE tickets_fts MATCH :match AND rowid BETWEEN :low AND :high AND +rowid IN :ids"
).bindparams(bindparam("ids", expanding=True))
_SQLITE_COMMENT_SNIPPETS = text(
    f"SELECT rowid AS id, {_SNIPPET.format(table='comments_fts', column='body', n=1)} AS body FROM comments_fts "
    "WHERE comments_fts MATCH :match AND rowid BETWEEN :low AND :high AND +rowid IN :ids"
).bindparams(bindparam("ids", expanding=True))


def _sqlite_among(conn: Connection, table: str, expression: str, ids: Sequence[int]) -> set[int]:
    if not ids:
        return set()
    found = conn.execute(_SQLITE_AMONG[table], {"match": expression, "ids": ids, "low": min(ids), "high": max(ids)})
    return set(found.scalars())


def _sqlite_phrase(conn: Connection, words: list[str], table: str, columns: tuple[str, ...],
                   ids: Sequence[int]) -> set[int]:
    if len(words) == 1:  # one word is its own phrase
        return set(ids)
    return _sqlite_among(conn, table, fts5_phrase(words, columns), ids)


def _sqlite_ticket_matches(conn: Connection, words: list[str], scope: _Scope) -> list[_Match]:
    found = conn.execute(_SQLITE_TICKETS, {
        "match": fts5_match(words, ("summary", "description"), scope.restrict or ()), "queues": scope.queues,
        "cap": CANDIDATES,
    }).scalars().all()
    summary = _sqlite_among(conn, "tickets_fts", fts5_match(words, ("summary",)), found)
    description = _sqlite_among(conn, "tickets_fts", fts5_match(words, ("description",)), found)
    summary_phrase = _sqlite_phrase(conn, words, "tickets_fts", ("summary",), list(summary))
    description_phrase = _sqlite_phrase(conn, words, "tickets_fts", ("description",), list(description))

    def score(ticket_id: int) -> float:
        if ticket_id in summary:
            return _SUMMARY * (2 if ticket_id in summary_phrase else 1)
        if ticket_id in description:
            return _DESCRIPTION * (2 if ticket_id in description_phrase else 1)
        return _SPREAD

    def column(ticket_id: int) -> SearchWhere | None:
        return "summary" if ticket_id in summary else "description" if ticket_id in description else None

    return [_Match(t, None, score(t), column(t)) for t in found]


def _sqlite_comment_matches(conn: Connection, words: list[str], scope: _Scope) -> list[_Match]:
    found = conn.execute(_SQLITE_COMMENTS, {
        "match": fts5_match(words, ("body",), scope.restrict or ()), "queues": scope.queues, "cap": CANDIDATES,
    }).all()
    phrase = _sqlite_phrase(conn, words, "comments_fts", ("body",), [r.comment_id for r in found])
    return [_Match(r.ticket_id, r.comment_id, _COMMENT * (2 if r.comment_id in phrase else 1)) for r in found]


def _sqlite_snippets(conn: Connection, words: list[str], page: list[_Match]) -> dict[_Match, tuple[SearchWhere, str]]:
    marks = _Marks()
    params = {"start": marks.start, "end": marks.end, "tokens": SNIPPET_TOKENS, "longest": SNIPPET_TEXT_CHARS,
              "plain": SNIPPET_PLAIN_CHARS}

    def snippets(statement: Any, columns: tuple[str, ...], ids: list[int]) -> dict[int, Any]:
        if not ids:
            return {}
        rows = conn.execute(statement, {**params, "match": fts5_match(words, columns), "ids": ids,
                                        "low": min(ids), "high": max(ids)})
        return {r.id: r for r in rows}

    by_ticket = snippets(_SQLITE_TICKET_SNIPPETS, ("summary", "description"),
                         [m.ticket_id for m in page if m.comment_id is None])
    by_comment = snippets(_SQLITE_COMMENT_SNIPPETS, ("body",),
                          [m.comment_id for m in page if m.comment_id is not None])
    out: dict[_Match, tuple[SearchWhere, str]] = {}
    for m in page:
        if m.comment_id is None:
            row = by_ticket[m.ticket_id]
            out[m] = _ticket_snippet(m.column, marks.plain(row.summary), marks.plain(row.description))
        else:
            out[m] = ("comment", marks.plain(by_comment[m.comment_id].body))
    return out


# -- PostgreSQL: tsvector and GIN -------------------------------------------------

_TSQUERY = "websearch_to_tsquery('russian'::regconfig, :query)"
# {D, C, B, A}: a comment's lexemes carry D, the summary A, the description B;
# normalization 1 divides by 1 + log(length).
_RANK = "ts_rank_cd('{{0.3, 0.2, 0.4, 1.0}}'::real[], {}.search_vector, " + _TSQUERY + ", 1)"
_NOT_EMPTY = f"numnode({_TSQUERY}) > 0"


def _postgres_candidates(table: str, restricted: bool, small: int, large: bool, older: bool = False) -> TextClause:
    """The newest matches of ``table``, ranked outside the subquery that
    finds them (ts_rank_cd runs for the capped rows only); the outer query
    checks the queue exactly. Only rows newer than ``:floor``, or with
    ``older`` only the rest (see _postgres_in_two_steps).

    Unrestricted: the newest matches of all queues. Restricted, the queues'
    lexemes (a row's queue, migration 0006) are ANDed into the tsquery, so GIN
    finds only their rows; except that for tickets each of ``small`` queues
    (``queue_0``, ...) has a branch of its own, where PostgreSQL walks the
    queue's tickets newest first (``number`` grows with the id within a queue)
    while a word is common, or ANDs the GIN and queue indexes for a rarer
    one; ``large`` says whether any other queues remain for the lexemes. A
    queue's condition and its lexeme never meet in one branch: the planner
    would multiply their selectivities as if independent, and the plan for
    the resulting underestimate read a whole large queue. (Comments have no
    queue column: a walk through a small queue's tickets paid for a rarer
    word with a GIN scan of all its comments, once per queue.) ``numnode``: a
    query of stop words is empty (and empty && lexemes would be every row of
    the queues): it finds nothing.
    """
    if table == "comments":
        small, large = 0, True
    ids = "id <= :floor" if older else "id > :floor"
    branches = []
    if not restricted or large:
        tsquery = f"({_TSQUERY} && CAST(:lexemes AS tsquery))" if restricted else _TSQUERY
        branches.append(f"SELECT id FROM {table} WHERE search_vector @@ {tsquery} AND {_NOT_EMPTY} AND {ids} "
                        "ORDER BY id DESC LIMIT :cap")
    branches += [
        f"SELECT id FROM tickets WHERE queue = :queue_{i} AND search_vector @@ {_TSQUERY} AND {_NOT_EMPTY} "
        f"AND {ids} ORDER BY number DESC LIMIT :cap"
        for i in range(small)
    ]
    if len(branches) == 1:
        newest = branches[0]
    else:
        newest = "SELECT id FROM (" + " UNION ALL ".join(f"({b})" for b in branches) + ") n ORDER BY id DESC LIMIT :cap"
    # Every capped row comes back, with whether it is in the agent's queues:
    # how many the subquery found decides the second step.
    if table == "tickets":
        sql = (f"SELECT t.id AS ticket_id, {_RANK.format('t')} AS score, t.queue IN :queues AS wanted "
               f"FROM ({newest}) h JOIN tickets t ON t.id = h.id")
    else:
        sql = (f"SELECT c.ticket_id, c.id AS comment_id, {_RANK.format('c')} AS score, t.queue IN :queues AS wanted "
               f"FROM ({newest}) h JOIN comments c ON c.id = h.id JOIN tickets t ON t.id = c.ticket_id")
    return text(sql).bindparams(bindparam("queues", expanding=True))


# ts_headline parses its text like a document: anything between < and > is an
# HTML tag to it and is dropped from the snippet, and so are entities. Mail text
# is plain text ("<john@example.com>", "a < b"), so those three characters are
# swapped for private-use ones on the way in and back on the way out.
_SHIELDED = "<>&"
_SHIELD = "\ue002\ue003\ue004"
_UNSHIELD = str.maketrans(_SHIELD, _SHIELDED)
_HEADLINE = "ts_headline('russian'::regconfig, translate({}, '<>&', :shield), " + _TSQUERY + ", :options)"
# The description's headline only where the summary does not hold all the words.
_POSTGRES_TICKET_SNIPPETS = text(
    f"SELECT id, in_summary, {_HEADLINE.format(f'left(summary, {SNIPPET_TEXT_CHARS})')} AS summary, "
    f"CASE WHEN in_summary THEN '' ELSE {_HEADLINE.format(f'left(description, {SNIPPET_TEXT_CHARS})')} END "
    "AS description "
    f"FROM (SELECT id, summary, description, to_tsvector('russian'::regconfig, left(summary, 10000)) @@ {_TSQUERY} "
    "AS in_summary FROM tickets WHERE id IN :ids) t"
).bindparams(bindparam("ids", expanding=True))
_POSTGRES_COMMENT_SNIPPETS = text(
    f"SELECT id, {_HEADLINE.format(f'left(body, {SNIPPET_TEXT_CHARS})')} AS body FROM comments WHERE id IN :ids"
).bindparams(bindparam("ids", expanding=True))


def _postgres_settings(conn: Connection) -> None:
    # The best plan depends on how common the words are (walk the newest rows
    # for a common word, the GIN index for a rare one): the generic plan of a
    # prepared statement (psycopg prepares a statement run five times) took
    # seconds for one or the other. Compiling with JIT costs more than these
    # queries take. The GIN path fetches its matches from all over the table:
    # priced as reads from disk (the default 4), it loses to walking tens of
    # thousands of the newest rows, which on memory or SSD costs ten times more.
    conn.execute(text(
        "SELECT set_config('plan_cache_mode', 'force_custom_plan', true), set_config('jit', 'off', true), "
        "set_config('random_page_cost', '1.1', true)"))


def _postgres_import(conn: Connection, snapshot: str) -> None:
    # The first statement of the transaction; SET takes no parameters, and
    # the id comes from pg_export_snapshot() (hex digits and dashes).
    if not re.fullmatch(r"[0-9A-Fa-f-]+", snapshot):
        raise ValueError("not a snapshot id")
    conn.execution_options(isolation_level="REPEATABLE READ")
    conn.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
    _postgres_settings(conn)


def _postgres_params(query: str, scope: _Scope) -> dict[str, Any]:
    # Unrestricted, the queue is checked after the cap: take enough of all
    # queues' newest matches to hold about CANDIDATES of the agent's.
    restricted = scope.restrict is not None
    cap = CANDIDATES if restricted else math.ceil(CANDIDATES / max(scope.share, UNRESTRICTED_SHARE))
    return {"query": query, "queues": scope.queues, "cap": cap}


# The newest rows walked first (see _postgres_in_two_steps).
NEWEST_ROWS = 50_000
_MAX_ID = {table: text(f"SELECT coalesce(max(id), 0) FROM {table}") for table in ("tickets", "comments")}
_INDEX_SCANS = text("SELECT set_config('enable_indexscan', :on, true)")


def _postgres_in_two_steps(conn: Connection, table: str, statements: tuple[TextClause, TextClause],
                           params: dict[str, Any]) -> list[Any]:
    """The newest matches in two steps, so that neither way of finding them
    can run away. Walking rows newest first stops at the cap, which is quick
    for a common word but reads the whole table for words that are each
    common and rarely together (the planner takes their shares as
    independent); the GIN index costs in proportion to the matches, which is
    quick for those but slow for a common word. So: the newest NEWEST_ROWS
    rows first, as the planner likes (a walk, or the index for a rare word),
    and only when they hold fewer than the cap, the older rows by the index
    alone (index scans off: no walk), where few matches are left to fetch."""
    floor = int(conn.execute(_MAX_ID[table]).scalar_one()) - NEWEST_ROWS
    newer, older = statements
    rows = list(conn.execute(newer, {**params, "floor": floor}))
    if len(rows) < params["cap"] and floor > 0:
        conn.execute(_INDEX_SCANS, {"on": "off"})
        try:
            rows += conn.execute(older, {**params, "floor": floor, "cap": params["cap"] - len(rows)})
        finally:
            conn.execute(_INDEX_SCANS, {"on": "on"})
    return [r for r in rows if r.wanted]


def _postgres_ticket_matches(conn: Connection, query: str, scope: _Scope) -> list[_Match]:
    params = _postgres_params(query, scope)
    params.update((f"queue_{i}", queue) for i, queue in enumerate(scope.small))
    large = [q for q in scope.restrict or () if q not in scope.small]
    restricted, small = scope.restrict is not None, len(scope.small)
    statements = (_postgres_candidates("tickets", restricted, small, bool(large)),
                  _postgres_candidates("tickets", restricted, small, bool(large), older=True))
    rows = _postgres_in_two_steps(conn, "tickets", statements, {**params, "lexemes": queue_tsquery(large)})
    return [_Match(r.ticket_id, None, float(r.score)) for r in rows]


def _postgres_comment_matches(conn: Connection, query: str, scope: _Scope) -> list[_Match]:
    restricted = scope.restrict is not None
    statements = (_postgres_candidates("comments", restricted, 0, True),
                  _postgres_candidates("comments", restricted, 0, True, older=True))
    params = {**_postgres_params(query, scope), "lexemes": queue_tsquery(scope.restrict or ())}
    rows = _postgres_in_two_steps(conn, "comments", statements, params)
    return [_Match(r.ticket_id, r.comment_id, float(r.score)) for r in rows]


def _postgres_snippets(conn: Connection, query: str, page: list[_Match]) -> dict[_Match, tuple[SearchWhere, str]]:
    marks = _Marks()
    options = (f'StartSel="{marks.start}", StopSel="{marks.end}", MaxWords=24, MinWords=8, '
               'MaxFragments=1, FragmentDelimiter=" … "')
    ticket_ids = [m.ticket_id for m in page if m.comment_id is None]
    comment_ids = [m.comment_id for m in page if m.comment_id is not None]
    by_ticket: dict[int, tuple[SearchWhere, str]] = {}
    if ticket_ids:
        params = {"query": query, "options": options, "ids": ticket_ids, "shield": _SHIELD}
        for r in conn.execute(_POSTGRES_TICKET_SNIPPETS, params):
            by_ticket[r.id] = _ticket_snippet("summary" if r.in_summary else None, marks.plain(r.summary),
                                              marks.plain(r.description))
    by_comment: dict[int, str] = {}
    if comment_ids:
        params = {"query": query, "options": options, "ids": comment_ids, "shield": _SHIELD}
        for r in conn.execute(_POSTGRES_COMMENT_SNIPPETS, params):
            by_comment[r.id] = marks.plain(r.body)
    return {
        m: by_ticket[m.ticket_id] if m.comment_id is None else ("comment", by_comment[m.comment_id])
        for m in page
    }
