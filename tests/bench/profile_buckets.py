"""Where a stage's CPU goes: profile samples grouped into buckets by library.

Two sources: a py-spy ``raw`` (collapsed stacks) file, whose samples are of threads
that were running, so they are CPU time of every thread; or a cProfile file, which
sees only the main thread (the router's and the ticketer's consume loop, not
kafka-python's IO thread, not the fetcher's mailbox workers).

A sample belongs to the bucket of the frame nearest its leaf that lies in a known
library: ``json.dumps`` called by the log formatter is logging, ``bytes.join``
called by fastavro is fastavro. deskmail's own seams count with the library they
wrap (services/common/codec.py with fastavro, services/common/kafka.py with
kafka-python, the /metrics HTTP server with prometheus_client). What matches
nothing is ``other``.
"""

from __future__ import annotations

import pstats
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

# (bucket, patterns searched in a frame's file path or, for C functions, its name)
BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("imports (startup)", ("<frozen importlib._bootstrap",)),
    ("fastavro", ("/fastavro/", "fastavro.", "services/common/codec.py")),
    ("kafka-python", ("/kafka/", "crc32c", "services/common/kafka.py")),
    ("mail parsing", ("services/router/mailparse", "/email/", "/charset_normalizer/")),
    ("SQL", ("services/tickets/driver.py", "/sqlalchemy/", "/sqlite3/", "sqlite3.", "/psycopg", "psycopg", "/alembic/")),
    ("IMAP", ("/imapclient/", "/imaplib.py", "/ssl.py", "_ssl.", "services/fetcher/imap.py")),
    ("logging", ("/logging/",)),
    ("prometheus_client", ("/prometheus_client/", "/socketserver.py", "/http/server.py")),
    ("blob store", ("services/common/blobs",)),
)
OTHER = "other"
# A thread blocked in one of these is waiting, not using a CPU. py-spy leaves idle threads
# out, but on a busy machine a thread that was woken and waits for a core looks running.
WAITING = "waiting (blocked threads)"
_WAITS = re.compile(r"^(\S+\.select \(.*selectors\.py|(Condition|Event|Semaphore)\.(wait|acquire) \(.*threading\.py"
                    r"|_wait_for_tstate_lock |sleep |.*\.accept \(.*socket\.py|IMAPClient\._poll_socket )")
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def bucket_of(location: str) -> str | None:
    for name, patterns in BUCKETS:
        if any(p in location for p in patterns):
            return name
    return None


def _kafka_side(frames: list[str]) -> str:
    """kafka-python's produce or consume side, by the client the stack went through."""
    joined = ";".join(frames)
    if "/kafka/producer/" in joined:
        return "kafka-python produce"
    if "/kafka/consumer/" in joined or "/kafka/coordinator/" in joined:
        return "kafka-python consume"
    return "kafka-python network (shared IO)"


def classify(frames: list[str]) -> str:
    """``frames`` root first, as py-spy writes them; returns the sample's bucket."""
    if _WAITS.match(frames[-1]):
        return WAITING
    if any("<frozen importlib._bootstrap" in f for f in frames):
        return "imports (startup)"
    for frame in reversed(frames):
        name = bucket_of(frame)
        if name == "kafka-python":
            return _kafka_side(frames)
        if name is not None:
            return name
    return OTHER


class Breakdown:
    """Samples (or seconds) per bucket and per leaf function within each bucket."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.buckets: Counter[str] = Counter()
        self.functions: dict[str, Counter[str]] = {}

    def add(self, bucket: str, function: str, amount: float) -> None:
        self.buckets[bucket] += amount  # type: ignore[assignment]
        self.functions.setdefault(bucket, Counter())[function] += amount  # type: ignore[assignment]

    def report(self, cpu_seconds: float | None = None, mails: int | None = None, top: int = 5) -> list[str]:
        """Each bucket's share of the CPU (blocked threads left out) and its top leaf
        functions; with the stage's measured ``cpu_seconds`` and the ``mails`` of the
        window, also CPU-milliseconds per 1,000 mails (the share of the measured CPU)."""
        total = sum(v for k, v in self.buckets.items() if k != WAITING) or 1
        scale = cpu_seconds * 1e6 / mails / total if cpu_seconds is not None and mails else None
        head = f"{'bucket':<34} {'share':>6} {self.unit:>9}" + ("  CPU-ms per 1,000 mails" if scale else "")
        lines = [head]
        names = sorted((b for b in self.buckets if b != WAITING), key=lambda b: -self.buckets[b])
        for name in names:
            amount = self.buckets[name]
            per_k = f"  {amount * scale:8.0f}" if scale else ""
            lines.append(f"{name:<34} {100 * amount / total:5.1f}% {amount:9,.1f}{per_k}")
            for function, part in self.functions[name].most_common(top):
                lines.append(f"    {100 * part / total:5.1f}%  {function}")
        if WAITING in self.buckets:
            lines.append(f"({WAITING}: {self.buckets[WAITING]:,.0f} {self.unit} more, not counted)")
        return lines


def _short(frame: str) -> str:
    match = _FRAME.match(frame)
    if match is None:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3.", "/services/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3.":
                path = path.split("/", 1)[-1]
            elif marker == "/services/":
                path = "services/" + path
            break
    return f"{match['func']} ({path}:{match['line']})" if match["line"] else f"{match['func']} ({path})"


def from_pyspy(path: Path) -> Breakdown:
    """A py-spy ``--format raw`` file: ``frame;frame;...;leaf COUNT`` per line."""
    result = Breakdown("samples")
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        result.add(classify(frames), _short(frames[-1]), int(count))
    return result


# cProfile's names of the C functions a thread blocks in
_C_WAITS = ("<method 'acquire' of '_thread.lock' objects>", "<built-in method time.sleep>",
            "<method 'poll' of 'select.epoll' objects>", "<method 'poll' of 'select.poll' objects>",
            "<built-in method select.select>")


def _location(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    return name if filename == "~" else f"{filename}:{line}"


def from_cprofile(path: Path) -> Breakdown:
    """A cProfile file, by each function's own time. A C function (file ``~``) that
    is in no bucket by its name takes its callers' buckets, in proportion to the
    time it spent under each."""
    stats = pstats.Stats(str(path))
    table = stats.stats  # type: ignore[attr-defined]
    result = Breakdown("seconds")
    for func, (_, _, tottime, _, callers) in table.items():
        label = _short(f"{func[2]} ({func[0]}:{func[1]})") if func[0] != "~" else func[2]
        if func[2] in _C_WAITS:
            result.add(WAITING, label, tottime)
            continue
        own = bucket_of(_location(func))
        if own is not None or func[0] != "~" or not callers:
            name = own or OTHER
            result.add(_kafka_file_side(func[0]) if name == "kafka-python" else name, label, tottime)
            continue
        spent = sum(edge[2] for edge in callers.values()) or 1.0
        for caller, edge in callers.items():
            name = bucket_of(_location(caller)) or OTHER
            name = _kafka_file_side(caller[0]) if name == "kafka-python" else name
            result.add(name, label, tottime * edge[2] / spent)
    return result


def _kafka_file_side(filename: str) -> str:
    if "/kafka/producer/" in filename:
        return "kafka-python produce"
    if "/kafka/consumer/" in filename or "/kafka/coordinator/" in filename:
        return "kafka-python consume"
    return "kafka-python network (shared IO)"


def print_report(lines: Iterable[str]) -> None:
    for line in lines:
        print(line)


def main() -> None:
    """Print the breakdown of a saved profile again (py-spy raw, or cProfile with --cprofile)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("file", type=Path)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--cpu", type=float, default=None, help="the stage's measured CPU-seconds")
    parser.add_argument("--mails", type=int, default=None, help="mails in the window")
    parser.add_argument("--top", type=int, default=5)
    args = parser.parse_args()
    breakdown = from_cprofile(args.file) if args.cprofile else from_pyspy(args.file)
    print_report(breakdown.report(args.cpu, args.mails, args.top))


if __name__ == "__main__":
    main()
