"""Checks on values before they reach a column, shared by commands and replies.

Each raises ``InvalidCommand``; ``outgoing`` turns that into ``InvalidReply``
for an agent's comment.
"""

from __future__ import annotations

from typing import Any

from services.tickets.errors import InvalidCommand


def text(value: Any) -> str:
    """Free text without NUL characters, which PostgreSQL text cannot hold."""
    if not isinstance(value, str):
        raise InvalidCommand(f"expected a string, got {type(value).__name__}")
    return value.replace("\x00", "")


def optional_text(value: Any) -> str | None:
    return None if value is None else text(value)


def bounded(value: Any, field: str, limit: int, *, empty_ok: bool = False) -> str:
    """An identifier stored in a bounded column: a string, not too long, no NUL."""
    if not isinstance(value, str):
        raise InvalidCommand(f"{field} must be a string, got {type(value).__name__}")
    if not value and not empty_ok:
        raise InvalidCommand(f"{field} must not be empty")
    if len(value) > limit or "\x00" in value:
        raise InvalidCommand(f"{field} is longer than {limit} characters or holds NUL: {value[:80]!r}")
    return value


def optional_bounded(value: Any, field: str, limit: int) -> str | None:
    return None if value is None or value == "" else bounded(value, field, limit)


def check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise ValueError(f"limit and offset must be >= 0, got {limit}, {offset}")
