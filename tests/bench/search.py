"""Search benchmark: N generated tickets with 3N comments, then a mix of searches.

    .venv/bin/python tests/bench/search.py --tickets 200000 [--db postgres] [--keep PATH]

Tickets fall into 20 queues of falling size (the largest holds 28%, the
smallest 1.4%); texts are Zipf-distributed made-up words with some English,
Russian and stop words, and a few planted words of known frequency. The mix
searches words from the most common to rare ones, two-word queries and a miss,
each for all queues, the largest, the smallest and the three smallest, in a
shuffled order, through ``TicketStore.search`` (page of 50, snippets
included). Prints p50/p95/p99/max and the slowest searches.

``--keep PATH`` builds the SQLite file there, and a second run reuses it;
``--url`` runs on an existing database (e.g. a PostgreSQL server), loading it
first when it holds no tickets; otherwise PostgreSQL runs in a throwaway
cluster. Rows are written with plain INSERT or COPY, so the triggers and
generated columns of migration 0006 index them as in production. Not part of
CI's pass/fail.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sqlalchemy import text  # noqa: E402

from services.tickets import TicketStore  # noqa: E402
from tests.harness.postgres import PostgresCluster  # noqa: E402

QUEUES = [f"Q{i:02d}" for i in range(20)]
PLANTED = [("payment", 0.20), ("payments", 0.05), ("invoice", 0.05), ("password", 0.10), ("refund", 0.01),
           ("оплата", 0.02), ("оплаты", 0.01), ("zebra", 0.0001), ("кенгуру", 0.0001)]
RUSSIAN = ["заказ", "доставка", "счёт", "пароль", "ошибка", "сервер", "клиент", "договор", "возврат", "письмо"]
STOP = ["the", "and", "to", "is", "we", "please", "our", "for", "a", "of", "it", "this", "with", "you"]
T0 = "2025-03-01 09:00:00+00"


class Texts:
    def __init__(self, seed: int = 42) -> None:
        self.rng = random.Random(seed)
        syllables = ["ka", "lo", "mi", "ne", "tra", "sto", "vel", "qui", "der", "pan", "ros", "zu", "fen", "gal",
                     "hor", "bri", "cla", "mon", "tes", "vor"]
        words = ("".join(self.rng.choice(syllables) for _ in range(self.rng.randint(2, 4))) for _ in range(40_000))
        self.vocabulary = list(dict.fromkeys(words))[:20_000]
        self.cumulative = list(itertools.accumulate(1.0 / (i + 1) ** 1.05 for i in range(len(self.vocabulary))))

    def make(self, low: int, high: int) -> str:
        n = self.rng.randint(low, high)
        words = self.rng.choices(self.vocabulary, cum_weights=self.cumulative, k=n)
        for i in self.rng.sample(range(n), n // 4):
            words[i] = self.rng.choice(STOP) if self.rng.random() < 0.8 else self.rng.choice(RUSSIAN)
        for word, share in PLANTED:
            if self.rng.random() < share * min(1.0, high / 100):
                words[self.rng.randrange(n)] = word
        return " ".join(words)


def tickets(texts: Texts, n: int) -> Iterator[tuple[int, str, int, str, str]]:
    weights = [1.0 / (i + 1) for i in range(len(QUEUES))]
    numbers = collections.Counter[str]()
    for ticket_id in range(1, n + 1):
        queue = texts.rng.choices(QUEUES, weights=weights)[0]
        numbers[queue] += 1
        yield ticket_id, queue, numbers[queue], texts.make(4, 9), texts.make(30, 150)


def comments(texts: Texts, n: int) -> Iterator[tuple[int, int, str]]:
    for comment_id in range(1, 3 * n + 1):
        yield comment_id, texts.rng.randint(1, n), texts.make(15, 100)


# The counts the store keeps with every ticket it writes (search reads them).
_COUNTS = ("INSERT INTO ticket_counts (queue, status, assignee, n) "
           "SELECT queue, 'open', '', count(*) FROM tickets GROUP BY queue")


def load(store: TicketStore, n: int) -> None:
    texts = Texts()
    started = time.perf_counter()
    raw = store.engine.raw_connection()
    try:
        cur: Any = raw.cursor()  # the driver's own cursor: executemany of a generator, COPY
        if store.engine.dialect.name == "sqlite":
            cur.execute("BEGIN")  # the store's connections run without the driver's implicit transactions
            cur.executemany(
                "INSERT INTO tickets (id, key, queue, number, summary, description, components, author_email, "
                "author_member, status, created_at, updated_at, command_id) "
                "VALUES (?, ?, ?, ?, ?, ?, '[]', 'ann@customer.org', 0, 'open', ?, ?, ?)",
                ((i, f"{q}-{k}", q, k, s, d, T0, T0, f"cmd-{i}") for i, q, k, s, d in tickets(texts, n)))
            cur.executemany(
                "INSERT INTO comments (id, ticket_id, kind, author_email, body, created_at) "
                "VALUES (?, ?, 'mail_in', 'ann@customer.org', ?, ?)",
                ((i, t, b, T0) for i, t, b in comments(texts, n)))
            cur.execute(_COUNTS)
            cur.execute("INSERT INTO tickets_fts(tickets_fts) VALUES ('optimize')")
            cur.execute("INSERT INTO comments_fts(comments_fts) VALUES ('optimize')")
            cur.execute("COMMIT")
            cur.execute("ANALYZE")
        else:
            with cur.copy("COPY tickets (id, queue, number, summary, description, key, components, "
                          "author_email, author_member, status, created_at, updated_at, command_id) "
                          "FROM STDIN") as copy:
                for i, q, k, s, d in tickets(texts, n):
                    copy.write_row((i, q, k, s, d, f"{q}-{k}", "[]", "ann@customer.org", False, "open", T0, T0,
                                    f"cmd-{i}"))
            with cur.copy("COPY comments (id, ticket_id, kind, author_email, body, created_at) FROM STDIN") as copy:
                for i, t, b in comments(texts, n):
                    copy.write_row((i, t, "mail_in", "ann@customer.org", b, T0))
            cur.execute(_COUNTS)
            for table in ("tickets", "comments"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            raw.commit()
            driver: Any = raw.driver_connection
            driver.autocommit = True  # VACUUM runs outside a transaction
            cur.execute("VACUUM ANALYZE tickets")
            cur.execute("VACUUM ANALYZE comments")
            driver.autocommit = False
    finally:
        raw.close()
    print(f"loaded {n} tickets and {3 * n} comments in {time.perf_counter() - started:.0f} s", flush=True)


def queries() -> list[str]:
    vocabulary = Texts().vocabulary
    # The made-up words by falling frequency (the Zipf rank is the vocabulary order).
    ranked = [vocabulary[i] for i in (0, 10, 100, 1000, 5000)]
    return [*ranked, "payment", "password", "invoice", "refund", "оплата", "zebra", "кенгуру", "payment refund",
            "invoice password", f"{vocabulary[0]} {vocabulary[1]}", "xyzzy", "payments invoice оплата"]


def measure(store: TicketStore, repeats: int) -> None:
    sets = {"all": QUEUES, "largest": ["Q00"], "smallest": ["Q19"], "3 smallest": ["Q17", "Q18", "Q19"]}
    mix = [(q, name) for q in queries() for name in sets]
    for q, name in mix:  # warm the caches
        store.search(q, sets[name])
    runs = mix * repeats
    random.Random(1).shuffle(runs)
    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    hits: dict[tuple[str, str], int] = {}
    for q, name in runs:
        started = time.perf_counter()
        hits[(q, name)] = len(store.search(q, sets[name]))
        times[(q, name)].append((time.perf_counter() - started) * 1000)
    every = sorted(t for ts in times.values() for t in ts)

    def pct(p: float) -> float:
        return every[min(len(every) - 1, round(p / 100 * (len(every) - 1)))]

    print(f"{len(every)} searches: p50 {pct(50):.1f} ms, p95 {pct(95):.1f} ms, p99 {pct(99):.1f} ms, "
          f"max {every[-1]:.1f} ms")
    for worst, (q, name) in sorted(((max(ts), k) for k, ts in times.items()), reverse=True)[:10]:
        print(f"  {worst:7.1f} ms  {hits[(q, name)]:3d} hits  {q!r} in {name}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tickets", type=int, default=200_000)
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--keep", type=Path, help="SQLite: the file to build, or to reuse when it exists")
    parser.add_argument("--url", help="an existing database to use (loaded first when it has no tickets)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    cluster = None
    if args.url:
        url = args.url
    elif args.db == "sqlite":
        url = f"sqlite:///{args.keep or Path(tempfile.mkdtemp(prefix='deskmail-bench-')) / 'tickets.db'}"
    else:
        cluster = PostgresCluster()
        cluster.start()
        url = cluster.create_database("bench")
    try:
        with TicketStore(url) as store:
            store.migrate()
            if store.count_tickets() == 0:
                load(store, args.tickets)
            measure(store, args.repeats)
    finally:
        if cluster is not None:
            cluster.stop()


if __name__ == "__main__":
    main()
