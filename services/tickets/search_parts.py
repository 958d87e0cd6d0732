"""What the two engines' searches share (services/tickets/search.py runs them):
the cap, the snippet sizes, a match, the scope of a search, and the markers
of a snippet's matched words."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from services.tickets.views import MARK_END, MARK_START, SearchWhere

# Matches ranked per index and search: the cap that bounds a search's work.
# Two pages of 50; at 200, the slowest searches on 1,000,000 tickets took a
# quarter longer (tests/bench/search.py).
CANDIDATES = 100
# Agents whose queues hold at least this share of all tickets search the
# indexes unrestricted (see search._scope).
UNRESTRICTED_SHARE = 0.5
# PostgreSQL: the tickets of a queue with at most this share of all tickets
# are searched on their own, walked newest first where a word is common (see
# search_postgres._candidates).
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

# ts_headline parses its text like a document: anything between < and > is an
# HTML tag to it and is dropped from the snippet, and so are entities. Mail text
# is plain text ("<john@example.com>", "a < b"), so those three characters are
# swapped for private-use ones on the way in and back on the way out.
SHIELDED = "<>&"
SHIELD = "\ue002\ue003\ue004"
UNSHIELD = str.maketrans(SHIELD, SHIELDED)


@dataclass(frozen=True)
class Match:
    ticket_id: int
    comment_id: int | None
    score: float  # higher is better
    column: SearchWhere | None = None  # a ticket match: the column that holds all the words, when known


@dataclass(frozen=True)
class Scope:
    """How a search narrows the indexes to the agent's ``queues``, which hold
    ``share`` of all tickets: to ``restrict`` (the same queues), or not at all
    (None) from UNRESTRICTED_SHARE up. PostgreSQL walks each of the ``small``
    ones (SMALL_QUEUE_SHARE or less) on its own, for tickets. The queries
    check the queues exactly either way."""

    queues: list[str]
    restrict: list[str] | None
    share: float
    small: list[str]


class Marks:
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
                parts.append(part.replace(MARK_START, "").replace(MARK_END, "").translate(UNSHIELD))
        return "".join(parts)


def ticket_snippet(column: SearchWhere | None, summary: str, description: str) -> tuple[SearchWhere, str]:
    # The column that holds all the words; else the description if it shows a
    # match, else the summary.
    if column == "description" or (column is None and MARK_START in description):
        return "description", description
    return "summary", summary
