"""Sizes as people read them, one rule for the page, the CLI and the notes deskmail writes."""

from __future__ import annotations

__all__ = ["human_size"]


def human_size(n: int) -> str:
    """``512 B``, ``14 KB``, ``3.4 MB``, ``1.2 GB`` (binary multiples, as mail clients show them)."""
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.0f} KB"
    if n < 1024 ** 3:
        return f"{n / 1024 ** 2:.1f} MB".replace(".0 MB", " MB")
    return f"{n / 1024 ** 3:.1f} GB".replace(".0 GB", " GB")
