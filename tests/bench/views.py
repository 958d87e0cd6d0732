"""Latency of the agent's reads and writes on a big tickets database.

Loads TICKETS tickets with COMMENTS_PER_TICKET comments each (default 1,000,000
and 3) into a fresh SQLite file and a fresh PostgreSQL cluster, through the
real migrations (indexes, counts and search included), then times, SAMPLES
times each, what an agent's page asks the store for:

- every queue view filter (first page of 50 plus its count), a deep page
  reached by cursor, and a view over all four queues;
- a search (words drawn from the corpus's vocabulary);
- a ticket page (``get_ticket`` of a random ticket);
- a status change (``change_ticket`` with the version check).

The mix is realistic for a help desk with history: 80% of tickets closed, a
few thousand open or waiting, 20 agents, 30% of tickets unassigned, Russian
and English text. Rows are bulk-loaded (COPY on PostgreSQL) rather than
applied mail by mail, which would take hours; ``ANALYZE`` runs after the load,
as autovacuum would.

    .venv/bin/python tests/bench/views.py [--tickets 1000000] [--comments-per-ticket 3]
        [--engine sqlite|postgresql|both] [--samples 200] [--keep DIR] [--url URL]

``--keep DIR`` builds the SQLite file there, or reuses the one already there;
``--url`` uses an existing database (PostgreSQL or SQLite), loaded first when
it holds no tickets, so one load serves several runs and ``tests/bench/search.py``.

Prints one table per engine: p50 and p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import text  # noqa: E402

from services.tickets import TicketChange, TicketStore, VersionConflict, View  # noqa: E402

QUEUES = {"SUPPORT": 0.6, "SALES": 0.25, "BILLING": 0.1, "OPS": 0.05}
STATUSES = {"closed": 0.80, "resolved": 0.05, "waiting": 0.05, "in_progress": 0.04, "open": 0.06}
TYPES = ("question", "incident", "task")
COMPONENTS = ("web", "billing", "mobile", "api", "shipping", "accounts")
AGENTS = tuple(f"agent{i}@example.com" for i in range(20))
EN = ("printer stopped working after the update every job waits in the queue please check the driver "
      "settings access shared drive new colleague invoice attached shows different amount contract review "
      "laptop battery drains fast payment failed refund order delivery late password reset vpn").split()
RU = ("принтер перестал работать после обновления задания висят очереди проверьте настройки драйвера доступ "
      "общему диску нового сотрудника счёт вложении отличается суммы договоре оплата оплаты возврат заказ "
      "доставка пароль").split()
T0 = datetime(2024, 1, 1, tzinfo=timezone.utc)


def pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def sentence(rng: random.Random, words: int) -> str:
    vocab = RU if rng.random() < 0.4 else EN
    return " ".join(rng.choice(vocab) for _ in range(words))


def generate(n_tickets: int, per_ticket: int, seed: int = 7) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    rng = random.Random(seed)
    numbers = dict.fromkeys(QUEUES, 0)
    for i in range(n_tickets):
        queue = pick(rng, QUEUES)
        numbers[queue] += 1
        created = T0 + timedelta(seconds=i * 30)  # about a year of tickets per million
        status = pick(rng, STATUSES)
        updated = created + timedelta(hours=rng.randint(0, 200))
        ticket = {
            "id": i + 1, "key": f"{queue}-{numbers[queue]}", "queue": queue, "number": numbers[queue],
            "summary": sentence(rng, 5), "description": sentence(rng, 20), "type": rng.choice(TYPES),
            "components": [rng.choice(COMPONENTS)], "author_email": f"customer{rng.randint(1, 200_000)}@customer.test",
            "author_member": False, "status": status,
            "assignee": None if rng.random() < 0.3 else rng.choice(AGENTS),
            "awaiting_reply": status in ("open", "in_progress") and rng.random() < 0.7,
            "created_at": created, "updated_at": updated, "command_id": f"bench-{i}",
            "resolved_at": updated if status in ("resolved", "closed") else None,
        }
        comments = [
            {"ticket_id": i + 1, "kind": "mail_in" if c % 2 == 0 else "mail_out",
             "author_email": ticket["author_email"] if c % 2 == 0 else rng.choice(AGENTS),
             "body": sentence(rng, 14), "created_at": created + timedelta(minutes=10 * (c + 1))}
            for c in range(per_ticket)
        ]
        yield ticket, comments


TICKET_COLUMNS = ("id", "key", "queue", "number", "summary", "description", "type", "components", "author_email",
                  "author_member", "status", "assignee", "awaiting_reply", "created_at", "updated_at", "command_id",
                  "resolved_at")
COMMENT_COLUMNS = ("ticket_id", "kind", "author_email", "body", "created_at")


def load(store: TicketStore, n_tickets: int, per_ticket: int) -> float:
    started = time.perf_counter()
    raw = store.engine.raw_connection()
    try:
        cursor = raw.cursor()
        postgres = store.engine.dialect.name == "postgresql"
        tickets_buf: list[tuple[Any, ...]] = []
        comments_buf: list[tuple[Any, ...]] = []
        components: list[tuple[int, str]] = []

        def flush() -> None:
            if postgres:
                _copy(cursor, "tickets", TICKET_COLUMNS, tickets_buf)
                _copy(cursor, "comments", COMMENT_COLUMNS, comments_buf)
                _copy(cursor, "ticket_components", ("ticket_id", "component"), components)
            else:
                cursor.executemany(f"INSERT INTO tickets ({', '.join(TICKET_COLUMNS)}) VALUES "
                                   f"({', '.join('?' * len(TICKET_COLUMNS))})", tickets_buf)
                cursor.executemany(f"INSERT INTO comments ({', '.join(COMMENT_COLUMNS)}) VALUES "
                                   f"({', '.join('?' * len(COMMENT_COLUMNS))})", comments_buf)
                cursor.executemany("INSERT INTO ticket_components (ticket_id, component) VALUES (?, ?)", components)
            raw.commit()
            tickets_buf.clear(), comments_buf.clear(), components.clear()

        for ticket, comments in generate(n_tickets, per_ticket):
            row = dict(ticket)
            row["components"] = json.dumps(row["components"])
            if not postgres:
                for column in ("created_at", "updated_at", "resolved_at"):
                    if row[column] is not None:
                        row[column] = row[column].strftime("%Y-%m-%d %H:%M:%S.%f")
            tickets_buf.append(tuple(row[c] for c in TICKET_COLUMNS))
            components.extend((ticket["id"], c) for c in ticket["components"])
            for c in comments:
                value = c["created_at"] if postgres else c["created_at"].strftime("%Y-%m-%d %H:%M:%S.%f")
                comments_buf.append((c["ticket_id"], c["kind"], c["author_email"], c["body"], value))
            if len(tickets_buf) >= 20_000:
                flush()
                print(f"\r  loaded {ticket['id']:,} tickets", end="", file=sys.stderr, flush=True)
        flush()
        print(file=sys.stderr)
    finally:
        raw.close()
    with store.engine.begin() as conn:
        conn.execute(text("INSERT INTO ticket_counts (queue, status, assignee, n) SELECT queue, status, "
                          "coalesce(assignee, ''), count(*) FROM tickets GROUP BY queue, status, coalesce(assignee, '')"))
        conn.execute(text("INSERT INTO queue_counters (queue, last_number) SELECT queue, max(number) FROM tickets "
                         "GROUP BY queue"))
        if store.engine.dialect.name == "postgresql":
            conn.execute(text("SELECT setval(pg_get_serial_sequence('tickets', 'id'), (SELECT max(id) FROM tickets))"))
    with store.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("ANALYZE"))
    return time.perf_counter() - started


def _copy(cursor: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def measure(fn: Callable[[], Any], samples: int) -> tuple[float, float]:
    fn()  # warm the statement cache and the pages
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(len(times) * 0.99))]


def run(store: TicketStore, n_tickets: int, samples: int) -> list[tuple[str, float, float]]:
    rng = random.Random(11)
    me = AGENTS[3]
    views = {
        "queue, all statuses": View(("SUPPORT",)),
        "status open": View(("SUPPORT",), status=("open",)),
        "status waiting": View(("SUPPORT",), status=("waiting",)),
        "open + in progress": View(("SUPPORT",), status=("open", "in_progress")),
        "assignee me": View(("SUPPORT",), assignee=me),
        "mine, open": View(("SUPPORT",), status=("open",), assignee=me),
        "unassigned": View(("SUPPORT",), assignee=""),
        "unassigned, open": View(("SUPPORT",), status=("open",), assignee=""),
        "type incident": View(("SUPPORT",), type="incident"),
        "component mobile": View(("SUPPORT",), component="mobile"),
        "customer replied, not answered": View(("SUPPORT",), awaiting_reply=True),
        "sort created, oldest first": View(("SUPPORT",), sort="created", order="asc"),
        "all four queues": View(tuple(QUEUES)),
        "all four queues, open": View(tuple(QUEUES), status=("open",)),
    }
    results = []
    for name, view in views.items():
        results.append((f"view: {name}", *measure(lambda v=view: (store.list_view(v), store.count_view(v)), samples)))
    deep = View(("SUPPORT",))
    cursor = None
    for _ in range(20):
        cursor = store.list_view(deep, cursor=cursor).next_cursor
    results.append(("view: page 21 by cursor", *measure(lambda: store.list_view(deep, cursor=cursor), samples)))
    words = [w for w in (*EN, *RU) if len(w) > 4]
    results.append(("search: one word", *measure(
        lambda: store.search(rng.choice(words), tuple(QUEUES)), samples)))
    results.append(("search: two words", *measure(
        lambda: store.search(f"{rng.choice(words)} {rng.choice(words)}", tuple(QUEUES)), samples)))
    results.append(("search: word in another form (оплаты)", *measure(
        lambda: store.search("оплаты", ("SUPPORT",)), samples)))
    keys = [f"SUPPORT-{rng.randint(1, int(n_tickets * 0.55))}" for _ in range(samples + 1)]
    results.append(("ticket page", *measure(lambda: store.get_ticket(keys[rng.randrange(len(keys))]), samples)))

    def change() -> None:
        key = keys[rng.randrange(len(keys))]
        detail = store.get_ticket(key)
        assert detail is not None
        try:
            store.change_ticket(key, TicketChange(status=rng.choice(("open", "waiting", "in_progress"))),
                                actor=me, expected_version=detail.version)
        except VersionConflict:  # not expected: one writer
            raise
    results.append(("status change (read + write)", *measure(change, samples)))
    return results


def report(engine: str, load_seconds: float, results: list[tuple[str, float, float]]) -> None:
    loaded = f"loaded in {load_seconds:.0f} s" if load_seconds else "loaded before"
    print(f"\n{engine}: {loaded}\n")
    print("| operation | p50 ms | p99 ms |\n|---|---:|---:|")
    for name, p50, p99 in results:
        print(f"| {name} | {p50:.1f} | {p99:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tickets", type=int, default=1_000_000)
    parser.add_argument("--comments-per-ticket", type=int, default=3)
    parser.add_argument("--engine", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--keep", type=Path, default=None,
                        help="folder for the SQLite file, reused when it is there (default: a temporary one)")
    parser.add_argument("--url", help="an existing database to use instead (loaded first when it has no tickets)")
    parser.add_argument("--load-only", action="store_true", help="load the database, time nothing")
    args = parser.parse_args()
    if args.url:
        bench(args.url, args)
        return
    if args.engine in ("sqlite", "both"):
        folder = args.keep or Path(tempfile.mkdtemp(prefix="deskmail-views-"))
        bench(f"sqlite:///{folder / 'tickets.db'}", args)
    if args.engine in ("postgresql", "both"):
        from tests.harness.postgres import PostgresCluster

        cluster = PostgresCluster()
        cluster.start()
        try:
            bench(cluster.create_database("views"), args)
        finally:
            cluster.stop()


def bench(url: str, args: argparse.Namespace) -> None:
    with TicketStore(url) as store:
        store.migrate()
        existing = store.count_tickets()
        seconds = load(store, args.tickets, args.comments_per_ticket) if existing == 0 else 0.0
        n_tickets = existing or args.tickets
        if args.load_only:
            print(f"{n_tickets:,} tickets in {url} ({seconds:.0f} s)")
            return
        name = "PostgreSQL" if store.engine.dialect.name == "postgresql" else "SQLite"
        report(name, seconds, run(store, n_tickets, args.samples))


if __name__ == "__main__":
    main()
