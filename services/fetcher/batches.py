"""How the fetcher cuts the messages of one search into batches of bounded count and size."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

# Upper bound of raw bytes held in memory for one batch; one larger message is a batch alone.
MAX_BATCH_BYTES = 64 * 1024 * 1024
# UIDs per FETCH of RFC822.SIZE (sizes plan the batches; one command line stays well under 64 KiB).
SIZES_PER_FETCH = 1000


def plan_batches(sizes: Iterable[tuple[int, int]], batch_size: int, max_bytes: int,
                 alone_above: int | None = None) -> list[list[int]]:
    """Cut ``(uid, size)`` pairs, in order, into batches of at most ``batch_size``
    messages and ``max_bytes`` bytes (a single larger message is a batch alone, and
    so is every message larger than ``alone_above``)."""
    batches: list[list[int]] = []
    current: list[int] = []
    current_bytes = 0
    for uid, size in sizes:
        if alone_above is not None and size > alone_above:
            if current:
                batches.append(current)
            batches.append([uid])
            current, current_bytes = [], 0
            continue
        if current and (len(current) >= batch_size or current_bytes + size > max_bytes):
            batches.append(current)
            current, current_bytes = [], 0
        current.append(uid)
        current_bytes += size
    if current:
        batches.append(current)
    return batches


def chunks(items: Sequence[int], size: int) -> Iterable[Sequence[int]]:
    """``items`` in slices of at most ``size``, in order."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def uid_range(uids: Sequence[int]) -> str:
    """``"7"`` or ``"7:42"``: the UIDs of a batch as they appear in logs."""
    return str(uids[0]) if len(uids) == 1 else f"{uids[0]}:{uids[-1]}"
