"""CPU time and peak memory of processes, read from /proc (Linux only).

CPU-seconds are ``utime + stime`` of ``/proc/<pid>/stat``: every thread of the
process, user and kernel time. A server that forks (Dovecot, PostgreSQL) is read as
a tree: the root, its live descendants, and what its reaped children used (the
root's ``cutime + cstime``).
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """The fields after the command name (``comm`` may hold spaces and parentheses)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process, all its threads; 0 once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # fields[0] is state (field 3 of stat(5)); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / TICK


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def descendants(pid: int) -> list[int]:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU of ``pid``, its live descendants and its reaped children.

    A child that was alive at one reading and reaped before the next counts its
    whole life at the second reading, so a delta over a window can include a little
    of such a child's time from before the window."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    reaped = (int(fields[13]) + int(fields[14])) / TICK
    return cpu_seconds(pid) + reaped + sum(cpu_seconds(child) for child in descendants(pid))


def peak_rss_mb(pid: int) -> float:
    """VmHWM (the resident set's high-water mark) in MiB; 0 once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_peak_rss_mb(pid: int) -> float:
    """The largest VmHWM among ``pid`` and its live descendants."""
    return max([peak_rss_mb(pid), *(peak_rss_mb(child) for child in descendants(pid))])
