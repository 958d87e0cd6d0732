"""SQLite's side of a search: FTS5 (see services/tickets/search.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection

from services.tickets.search_parts import (
    CANDIDATES,
    SNIPPET_PLAIN_CHARS,
    SNIPPET_TEXT_CHARS,
    SNIPPET_TOKENS,
    Marks,
    Match,
    Scope,
    ticket_snippet,
)
from services.tickets.views import SearchWhere

FTS_TABLES = ("tickets_fts", "comments_fts")


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
    for table in FTS_TABLES
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


def _among(conn: Connection, table: str, expression: str, ids: Sequence[int]) -> set[int]:
    if not ids:
        return set()
    found = conn.execute(_SQLITE_AMONG[table], {"match": expression, "ids": ids, "low": min(ids), "high": max(ids)})
    return set(found.scalars())


def _phrase(conn: Connection, words: list[str], table: str, columns: tuple[str, ...],
                   ids: Sequence[int]) -> set[int]:
    if len(words) == 1:  # one word is its own phrase
        return set(ids)
    return _among(conn, table, fts5_phrase(words, columns), ids)


def ticket_matches(conn: Connection, words: list[str], scope: Scope) -> list[Match]:
    found = conn.execute(_SQLITE_TICKETS, {
        "match": fts5_match(words, ("summary", "description"), scope.restrict or ()), "queues": scope.queues,
        "cap": CANDIDATES,
    }).scalars().all()
    summary = _among(conn, "tickets_fts", fts5_match(words, ("summary",)), found)
    description = _among(conn, "tickets_fts", fts5_match(words, ("description",)), found)
    summary_phrase = _phrase(conn, words, "tickets_fts", ("summary",), list(summary))
    description_phrase = _phrase(conn, words, "tickets_fts", ("description",), list(description))

    def score(ticket_id: int) -> float:
        if ticket_id in summary:
            return _SUMMARY * (2 if ticket_id in summary_phrase else 1)
        if ticket_id in description:
            return _DESCRIPTION * (2 if ticket_id in description_phrase else 1)
        return _SPREAD

    def column(ticket_id: int) -> SearchWhere | None:
        return "summary" if ticket_id in summary else "description" if ticket_id in description else None

    return [Match(t, None, score(t), column(t)) for t in found]


def comment_matches(conn: Connection, words: list[str], scope: Scope) -> list[Match]:
    found = conn.execute(_SQLITE_COMMENTS, {
        "match": fts5_match(words, ("body",), scope.restrict or ()), "queues": scope.queues, "cap": CANDIDATES,
    }).all()
    phrase = _phrase(conn, words, "comments_fts", ("body",), [r.comment_id for r in found])
    return [Match(r.ticket_id, r.comment_id, _COMMENT * (2 if r.comment_id in phrase else 1)) for r in found]


def snippets(conn: Connection, words: list[str], page: list[Match]) -> dict[Match, tuple[SearchWhere, str]]:
    marks = Marks()
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
    out: dict[Match, tuple[SearchWhere, str]] = {}
    for m in page:
        if m.comment_id is None:
            row = by_ticket[m.ticket_id]
            out[m] = ticket_snippet(m.column, marks.plain(row.summary), marks.plain(row.description))
        else:
            out[m] = ("comment", marks.plain(by_comment[m.comment_id].body))
    return out
