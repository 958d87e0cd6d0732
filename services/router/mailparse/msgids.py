"""Message-IDs as the router reads them from Message-ID, In-Reply-To and References.

Every id deskmail keeps may be written back into the References of a reply, so
only ids it can write back are kept. The rule:

- An id is what stands in angle brackets; in a header without any, each bare
  token with an ``@`` (old mailers write ``Message-ID: 1234@host``).
- A line fold inside the brackets is a broken mailer's fold and is removed:
  ``<broken\\r\\n -fold@example.com>`` is ``broken-fold@example.com``.
- What is left must be a msg-id by ``mailrules.is_msg_id``: 1-980 printable
  ASCII characters, no ``<`` or ``>``. Raw UTF-8 (``<пример@example.org>``),
  a space or tab inside the brackets on one line, a control character, or
  more than 980 characters: not a msg-id.
- In-Reply-To and References: what is not a msg-id is dropped (and noted in
  the defects). In-Reply-To is the first id left; References keep their order,
  each id once, at most ``mailrules.MAX_REFERENCES`` of them (the first and the
  last ones, ``mailrules.trim_references``).
- Message-ID: the header's first id. When that is not a msg-id the mail counts
  as having none (``message_id`` None, noted), and the router gives it
  ``mailrules.synthetic_message_id`` of its bytes as it does every mail
  without a Message-ID, so threading and dedupe stay stable when the same
  bytes arrive again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from services.common.mailrules import MAX_REFERENCES, is_msg_id, trim_references
from services.router.mailparse.decoding import clean, unique

__all__ = ["ThreadIds", "candidates", "content_id", "thread_ids"]

_IN_BRACKETS = re.compile(r"<([^<>]*)>")
_FOLD = re.compile(r"\r?\n[ \t]*")


@dataclass(frozen=True, slots=True)
class ThreadIds:
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    defects: tuple[str, ...]


def candidates(value: str) -> list[str]:
    """The ids a header names, in order, folds inside brackets removed; not yet checked.

    ``value`` is the header as stored, still folded (line ends kept), with raw
    8-bit bytes decoded.
    """
    found = [_FOLD.sub("", inner) for inner in _IN_BRACKETS.findall(value)]
    found = [inner for inner in found if inner]
    if found:
        return found
    return [token.strip("<>,;") for token in value.split() if "@" in token]


def thread_ids(message_id: str, in_reply_to: str, references: str) -> ThreadIds:
    """The three threading headers (as ``candidates`` takes them) by the module's rule."""
    defects: list[str] = []
    own = candidates(message_id)
    mine: str | None = own[0] if own else None
    if mine is not None and not is_msg_id(mine):
        defects.append(f"the Message-ID {_shown(mine)} is not a msg-id; the mail counts as having none")
        mine = None
    parents = _kept("In-Reply-To", candidates(in_reply_to), defects)
    refs = unique(_kept("References", candidates(references), defects))
    if len(refs) > MAX_REFERENCES:
        defects.append(f"References names {len(refs)} ids; kept the first and the last {MAX_REFERENCES - 1}")
        refs = trim_references(refs)
    return ThreadIds(mine, parents[0] if parents else None, tuple(refs), tuple(defects))


def content_id(value: str) -> str | None:
    """A part's Content-ID without brackets, whitespace and control characters.

    Only the HTML body refers to it (``cid:``); it is never written into a header.
    """
    for found in candidates(value):
        cleaned = "".join(clean(found).split())
        if cleaned:
            return cleaned
    return None


def _kept(header: str, ids: list[str], defects: list[str]) -> list[str]:
    kept = [found for found in ids if is_msg_id(found)]
    if len(kept) < len(ids):
        dropped = [found for found in ids if not is_msg_id(found)]
        defects.append(f"dropped {len(dropped)} id(s) from {header} that are not msg-ids, e.g. {_shown(dropped[0])}")
    return kept


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 80 else repr(value[:80]) + "…"
