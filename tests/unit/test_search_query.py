"""The pure parts of ticket search: the words taken from a query, the FTS5 and
tsquery text built from them, the snippet markers, the schema filter."""

from __future__ import annotations

import pytest

from services.tickets import MARK_END, MARK_START
from services.tickets.search_parts import Marks as _Marks
from services.tickets.search import (
    MAX_QUERY_CHARS,
    MAX_TERMS,
    fts5_match,
    fts5_phrase,
    is_search_object,
    queue_tsquery,
    terms,
)


@pytest.mark.parametrize("query, words", [
    ("payment failed", ["payment", "failed"]),
    ('  "invoice  NEAR(a b) summary:x ', ['"invoice', "NEAR(a", "b)", "summary:x"]),
    ("- * ( ) \" : ^", []),
    ("in\x00voice\ttab\nline\x7f", ["in", "voice", "tab", "line"]),
    ("оплата счёт", ["оплата", "счёт"]),
    ("", []),
])
def test_terms_are_white_space_separated_words_with_a_letter_or_digit(query: str, words: list[str]) -> None:
    assert terms(query) == words


def test_terms_are_capped_in_length_and_number() -> None:
    assert terms("w " * 100) == ["w"] * MAX_TERMS
    assert terms("x" * 10_000) == ["x" * MAX_QUERY_CHARS]


def test_every_word_is_one_quoted_fts5_string() -> None:
    words = terms('say "hi" NEAR(a b) col:x -y')
    assert fts5_match(words, ("summary", "description")) == (
        '{summary description} : ("say" """hi""" "NEAR(a" "b)" "col:x" "-y")'
    )
    assert fts5_match(["a"], ("body",), ["SUPPORT", 'Q"X']) == 'queue : ("SUPPORT" OR "Q""X") AND {body} : ("a")'
    assert fts5_phrase(["payment", 'fa"iled'], ("summary",)) == '{summary} : "payment" + "fa""iled"'


def test_queue_lexemes_are_quoted_tsquery_text() -> None:
    assert queue_tsquery(["SUPPORT", "SALES"]) == "'§queue:SUPPORT' | '§queue:SALES'"
    assert queue_tsquery(["O'NE\\"]) == "'§queue:O''NE\\\\'"


def test_only_the_engines_marks_become_markers() -> None:
    marks = _Marks()
    raw = f"{MARK_START}fake{MARK_END} {marks.start}real{marks.end} tail{MARK_END}"
    assert marks.plain(raw) == f"fake {MARK_START}real{MARK_END} tail"
    assert marks.plain(None) == ""
    assert _Marks().start != marks.start  # a new secret per search


@pytest.mark.parametrize("name, type_, table, expected", [
    ("tickets_fts", "table", None, True),
    ("comments_fts_data", "table", None, True),
    ("tickets_fts_docsize", "table", None, True),
    ("comments_search", "table", None, True),
    ("tickets_fts_extra", "table", None, False),
    ("tickets", "table", None, False),
    ("search_vector", "column", "tickets", True),
    ("search_vector", "column", "rejections", False),
    ("summary", "column", "tickets", False),
    ("ix_comments_search_vector", "index", None, True),
    ("ix_tickets_created_at", "index", None, False),
    ("tickets_fts", "foreign_key_constraint", None, False),
])
def test_the_schema_filter_names_exactly_the_search_objects(name: str, type_: str, table: str | None,
                                                            expected: bool) -> None:
    assert is_search_object(name, type_, table) is expected
