"""The reply corpus (tests/corpus/replies): every mail parsed and split as the
router does, and its new text and quoted part checked against what the
client's format holds (see tests/corpus/README.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.router.mailparse import parse
from services.router.replysplit import split

CORPUS = Path(__file__).resolve().parents[1] / "corpus" / "replies"
PAIRS = sorted(CORPUS.glob("*.eml"))


def expected(path: Path) -> dict[str, Any]:
    return json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))


def test_the_corpus_is_there() -> None:
    assert len(PAIRS) >= 50
    assert {expected(p)["language"] for p in PAIRS} == {"en", "ru"}


@pytest.mark.parametrize("path", PAIRS, ids=[p.stem for p in PAIRS])
def test_a_reply_keeps_its_new_text(path: Path) -> None:
    want = expected(path)
    mail = parse(path.read_bytes())
    assert mail.in_reply_to or mail.references, "every corpus mail is a reply"
    at = split(mail.text)
    text, quoted = (mail.text, None) if at is None else (mail.text[:at].rstrip(), mail.text[at:])
    for phrase in want["text_contains"]:
        assert phrase in text, f"lost from the new text: {phrase!r}"
    for phrase in want["text_excludes"]:
        assert phrase not in text, f"left in the new text: {phrase!r}"
    if want["quoted"] is None:
        assert quoted is None, f"split although it must stay whole, at: {mail.text[at:at + 60]!r}"
    else:
        assert quoted is not None, "nothing was split off"
        for phrase in want["quoted"]["contains"]:
            assert phrase in quoted, f"missing from quoted: {phrase!r}"
