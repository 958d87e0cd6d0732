"""CPU and wall time per applied TicketCommand: the ticketer's SQL alone.

Applies N commands of ``tests/harness/command_stream.py`` (new tickets, replies,
participants, attachments, rules, rejections, automatic replies, duplicates; the
rate limits on) to a fresh, migrated database, twice: one transaction per command
(as the ticketer did), and one transaction per 200 commands with a SAVEPOINT per
command (as a batch transaction does). Commands are parsed before the clock starts.

    .venv/bin/python tests/bench/apply.py [--n 5000] [--db sqlite|postgres] [--repeat 3]
        [--prepare-threshold N|none]

``--prepare-threshold`` sets psycopg's (default 5: a statement is prepared on the
server from its 5th execution on a connection; ``none``: never prepared).

CPU is this process's (``time.process_time``); on PostgreSQL the server's CPU is
not in it, so the wall time is printed too. The server is a throwaway cluster
(tests/harness/postgres.py: fsync and synchronous_commit off).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import event  # noqa: E402

from services.tickets import TicketStore  # noqa: E402
from services.tickets import engine as db  # noqa: E402
from services.tickets.apply import apply_command  # noqa: E402
from services.tickets.commands import Command  # noqa: E402
from services.tickets.ratelimit import Limit, Limits  # noqa: E402
from tests.harness.command_stream import stream  # noqa: E402

LIMITS = Limits(per_sender=Limit(20, 10), per_ticket=Limit(50, 10))
BATCH = 200


@contextmanager
def databases(kind: str) -> Iterator[Callable[[str], str]]:
    """A factory of fresh database URLs on SQLite files or one throwaway cluster."""
    with tempfile.TemporaryDirectory(prefix="deskmail-bench-apply-") as folder:
        if kind == "sqlite":
            yield lambda name: f"sqlite:///{folder}/{name}.db"
            return
        from tests.harness.postgres import PostgresCluster

        with PostgresCluster() as cluster:
            yield cluster.create_database


def run(url: str, commands: list[Command], batch: int, prepare: str | None) -> tuple[float, float]:
    """(CPU seconds, wall seconds) to apply ``commands``, ``batch`` per transaction
    (1: no savepoints)."""
    with TicketStore(url) as store:
        engine = store.engine
        if prepare is not None:
            threshold = None if prepare == "none" else int(prepare)
            event.listen(engine, "connect", lambda dbapi_conn, _: setattr(dbapi_conn, "prepare_threshold", threshold))
        store.migrate()
        cpu, wall = time.process_time(), time.perf_counter()
        for start in range(0, len(commands), batch):
            with db.write(engine) as conn:
                for c in commands[start:start + batch]:
                    if batch == 1:
                        apply_command(conn, c, limits=LIMITS)
                    else:
                        with conn.begin_nested():
                            apply_command(conn, c, limits=LIMITS)
        return time.process_time() - cpu, time.perf_counter() - wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--prepare-threshold", default=None)
    args = parser.parse_args()
    commands = [Command.parse(cmd) for cmd in stream(args.n)]
    print(f"{args.n} commands on {args.db}, {args.repeat} runs each; median (min-max) per command")
    with databases(args.db) as fresh:
        for batch in (1, BATCH):
            cpu, wall = [], []
            for r in range(args.repeat):
                c, w = run(fresh(f"b{batch}_r{r}"), commands, batch, args.prepare_threshold)
                cpu.append(c * 1000 / args.n)
                wall.append(w * 1000 / args.n)
            label = "one transaction per command" if batch == 1 else f"one per {batch}, savepoint per command"
            print(f"{label:42} CPU {statistics.median(cpu):.3f} ms ({min(cpu):.3f}-{max(cpu):.3f}), "
                  f"wall {statistics.median(wall):.3f} ms ({min(wall):.3f}-{max(wall):.3f})")


if __name__ == "__main__":
    main()
