"""PostgreSQL's side of a search: tsvector and GIN (see services/tickets/search.py)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, text
from sqlalchemy.engine import Connection
from sqlalchemy.sql.elements import TextClause

from services.tickets.search_parts import (
    CANDIDATES,
    SHIELD,
    SNIPPET_TEXT_CHARS,
    UNRESTRICTED_SHARE,
    Marks,
    Match,
    Scope,
    ticket_snippet,
)
from services.tickets.views import SearchWhere

# PostgreSQL: the queue's lexeme in every vector (migration 0006).
QUEUE_LEXEME_PREFIX = "§queue:"


def queue_tsquery(queues: Sequence[str]) -> str:
    """tsquery text matching the vectors of rows in any of ``queues``."""
    return " | ".join(
        "'" + (QUEUE_LEXEME_PREFIX + q).replace("\\", "\\\\").replace("'", "''") + "'" for q in queues
    )


_TSQUERY = "websearch_to_tsquery('russian'::regconfig, :query)"
# {D, C, B, A}: a comment's lexemes carry D, the summary A, the description B;
# normalization 1 divides by 1 + log(length).
_RANK = "ts_rank_cd('{{0.3, 0.2, 0.4, 1.0}}'::real[], {}.search_vector, " + _TSQUERY + ", 1)"
_NOT_EMPTY = f"numnode({_TSQUERY}) > 0"


def _candidates(table: str, restricted: bool, small: int, large: bool, older: bool = False) -> TextClause:
    """The newest matches of ``table``, ranked outside the subquery that
    finds them (ts_rank_cd runs for the capped rows only); the outer query
    checks the queue exactly. Only rows newer than ``:floor``, or with
    ``older`` only the rest (see in_two_steps).

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


def settings(conn: Connection) -> None:
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


def import_snapshot(conn: Connection, snapshot: str) -> None:
    # The first statement of the transaction; SET takes no parameters, and
    # the id comes from pg_export_snapshot() (hex digits and dashes).
    if not re.fullmatch(r"[0-9A-Fa-f-]+", snapshot):
        raise ValueError("not a snapshot id")
    conn.execution_options(isolation_level="REPEATABLE READ")
    conn.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot}'"))
    settings(conn)


def _params(query: str, scope: Scope) -> dict[str, Any]:
    # Unrestricted, the queue is checked after the cap: take enough of all
    # queues' newest matches to hold about CANDIDATES of the agent's.
    restricted = scope.restrict is not None
    cap = CANDIDATES if restricted else math.ceil(CANDIDATES / max(scope.share, UNRESTRICTED_SHARE))
    return {"query": query, "queues": scope.queues, "cap": cap}


# The newest rows walked first (see in_two_steps).
NEWEST_ROWS = 50_000
_MAX_ID = {table: text(f"SELECT coalesce(max(id), 0) FROM {table}") for table in ("tickets", "comments")}
_INDEX_SCANS = text("SELECT set_config('enable_indexscan', :on, true)")


def in_two_steps(conn: Connection, table: str, statements: tuple[TextClause, TextClause],
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


def ticket_matches(conn: Connection, query: str, scope: Scope) -> list[Match]:
    params = _params(query, scope)
    params.update((f"queue_{i}", queue) for i, queue in enumerate(scope.small))
    large = [q for q in scope.restrict or () if q not in scope.small]
    restricted, small = scope.restrict is not None, len(scope.small)
    statements = (_candidates("tickets", restricted, small, bool(large)),
                  _candidates("tickets", restricted, small, bool(large), older=True))
    rows = in_two_steps(conn, "tickets", statements, {**params, "lexemes": queue_tsquery(large)})
    return [Match(r.ticket_id, None, float(r.score)) for r in rows]


def comment_matches(conn: Connection, query: str, scope: Scope) -> list[Match]:
    restricted = scope.restrict is not None
    statements = (_candidates("comments", restricted, 0, True),
                  _candidates("comments", restricted, 0, True, older=True))
    params = {**_params(query, scope), "lexemes": queue_tsquery(scope.restrict or ())}
    rows = in_two_steps(conn, "comments", statements, params)
    return [Match(r.ticket_id, r.comment_id, float(r.score)) for r in rows]


def snippets(conn: Connection, query: str, page: list[Match]) -> dict[Match, tuple[SearchWhere, str]]:
    marks = Marks()
    options = (f'StartSel="{marks.start}", StopSel="{marks.end}", MaxWords=24, MinWords=8, '
               'MaxFragments=1, FragmentDelimiter=" … "')
    ticket_ids = [m.ticket_id for m in page if m.comment_id is None]
    comment_ids = [m.comment_id for m in page if m.comment_id is not None]
    by_ticket: dict[int, tuple[SearchWhere, str]] = {}
    if ticket_ids:
        params = {"query": query, "options": options, "ids": ticket_ids, "shield": SHIELD}
        for r in conn.execute(_POSTGRES_TICKET_SNIPPETS, params):
            by_ticket[r.id] = ticket_snippet("summary" if r.in_summary else None, marks.plain(r.summary),
                                              marks.plain(r.description))
    by_comment: dict[int, str] = {}
    if comment_ids:
        params = {"query": query, "options": options, "ids": comment_ids, "shield": SHIELD}
        for r in conn.execute(_POSTGRES_COMMENT_SNIPPETS, params):
            by_comment[r.id] = marks.plain(r.body)
    return {
        m: by_ticket[m.ticket_id] if m.comment_id is None else ("comment", by_comment[m.comment_id])
        for m in page
    }
