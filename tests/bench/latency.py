"""Mail-to-ticket latency under steady load: mail APPENDed at a fixed rate, fetched over IMAP IDLE.

    .venv/bin/python tests/bench/latency.py [--rate 100] [--seconds 60] [--repeat 3] [--db sqlite|postgres]
        [--partitions 4] [--replies 0.1]

Each run has a fresh broker, Dovecot, database and blob folder, and the real fetcher
(IDLE on), router and ticketer. Once they run and one mail has gone through (so every
client is connected), a separate process APPENDs ``rate x seconds`` realistic mails
(tests/harness/mails.py) at a steady rate over one IMAP connection, each at its
scheduled time (a late one is sent at once, and the largest delay is printed). The run
ends when the ticketer has applied them all.

Two measures of the same mails:

- **histogram**: ``deskmail_mail_to_ticket_seconds`` scraped from the ticketer's
  /metrics before and after (the difference), its quantiles interpolated inside the
  buckets as Prometheus' histogram_quantile does; the bucket bounds around each answer
  are printed. Its clock starts at the end of the INTERNALDATE's second, or at the fetch
  if that came first (services/fetcher/worker.py ``arrival``), so it leaves out up to a
  second of the wait before the fetch.
- **exact**: from the moment the APPEND was answered (the mail is in the mailbox then)
  to ``applied_at`` of the command's row in ``processed_commands`` (written in the
  transaction that creates the ticket or comment), for every mail, sorted.

Not part of CI's pass/fail.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import sys
import time
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import sqlalchemy  # noqa: E402

from services.tickets.tables import processed_commands  # noqa: E402
from tests.bench import procstat  # noqa: E402
from tests.bench import ingest  # noqa: E402
from tests.bench.ingest import ADDRESS, fast_folder, machine_busy_seconds, make_corpus, ready, server_pids  # noqa: E402
from tests.harness.dovecot import DovecotServer  # noqa: E402
from tests.harness.stack import Stack, wait_for  # noqa: E402

HISTOGRAM = "deskmail_mail_to_ticket_seconds"
QUANTILES = (0.5, 0.95, 0.99)
STAGES = ("fetcher", "router", "ticketer")
DRAIN_TIMEOUT = 120.0  # after the last APPEND, for the pipeline to catch up; then the run is reported as it is


@dataclass
class Appended:
    uid: int
    scheduled: float  # time.time() it was due
    answered: float  # time.time() the APPEND's OK came back


@dataclass
class Run:
    histogram: dict[float, float]  # le -> cumulative count over the measured window
    exact: list[float]  # seconds, sorted
    appended: list[Appended]
    send_seconds: float
    machine_busy: float  # cores busy on the whole machine, on average over the window
    load: tuple[float, float, float]
    cpu: dict[str, float]  # CPU-seconds per 1,000 mails over the window, by process

    def late(self) -> float:
        """The largest delay of an APPEND behind its schedule (when it was answered)."""
        return max(a.answered - a.scheduled for a in self.appended)

    def rate(self) -> float:
        return len(self.appended) / self.send_seconds


# ---------------------------------------------------------------- quantiles


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' histogram_quantile over cumulative ``buckets`` (le -> count, +Inf
    included): linear inside the bucket that holds the rank, from 0 for the first;
    the highest finite bound when the rank falls in +Inf."""
    bounds = sorted(buckets)
    total = buckets[math.inf]
    if total == 0:
        return math.nan
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = buckets[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def bucket_around(q: float, buckets: dict[float, float]) -> tuple[float, float]:
    """The (lower, upper] bounds of the bucket that holds quantile ``q``."""
    rank = q * buckets[math.inf]
    lower = 0.0
    for upper in sorted(buckets):
        if buckets[upper] >= rank:
            return lower, upper
        lower = upper
    return lower, math.inf


def exact_quantile(q: float, values: list[float]) -> float:
    """The nearest-rank quantile of sorted ``values``."""
    return values[max(0, math.ceil(q * len(values)) - 1)]


def scrape(stack: Stack) -> dict[float, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['ticketer']}/metrics", timeout=5) as r:
        text = r.read().decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if line.startswith(HISTOGRAM + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = math.inf if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


# ---------------------------------------------------------------- the load


def append_steadily(host: str, port: int, raws: list[bytes], rate: float, start: float, out: Connection) -> None:
    """In a process of its own: APPEND ``raws`` at ``rate`` per second from ``start``
    (time.time()); sends back [Appended]."""
    from imapclient import IMAPClient

    client = IMAPClient(host, port=port, ssl=False, timeout=30)
    client.login(ADDRESS, "pw")
    done: list[Appended] = []
    try:
        for i, raw in enumerate(raws):
            due = start + i / rate
            wait = due - time.time()
            if wait > 0:
                time.sleep(wait)
            answer = client.append("INBOX", raw)
            answered = time.time()
            uids = DovecotServer._appenduids(answer)
            done.append(Appended(uids[0] if uids else -1, due, answered))
    finally:
        client.logout()
    out.send(done)
    out.close()


# ---------------------------------------------------------------- one run


def config_text(args: argparse.Namespace, db_url: str, work: Path, blobs: Path, dovecot: DovecotServer) -> str:
    # fetcher settings are the defaults (IDLE on, batches of up to 100): the point is what a user gets
    return ingest.config_text(args, db_url, work, blobs, dovecot, fetcher="")


def applied_times(db_url: str) -> dict[int, datetime]:
    """uid -> applied_at of every mail of the bench mailbox the ticketer applied."""
    engine = sqlalchemy.create_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sqlalchemy.select(processed_commands.c.command_id, processed_commands.c.applied_at)
                                .where(processed_commands.c.command_id.like(f"imap:{ADDRESS}:%"))).all()
    finally:
        engine.dispose()
    return {int(command_id.rsplit(":", 1)[1]): applied_at for command_id, applied_at in rows}


def one_run(index: int, args: argparse.Namespace, raws: list[bytes], pg: object | None) -> Run:
    with ingest.fresh_bench(f"latency_{index}", args, pg, config_text) as bench:
        try:
            return measure(bench.stack, bench.dovecot, raws, args.rate, bench.db_url,
                           server_pids(bench.broker, bench.dovecot, pg))
        finally:
            bench.stack.stop()


def applied(stack: Stack) -> float:
    return stack.metric("ticketer", "deskmail_ticketer_commands_applied_total")


def measure(stack: Stack, dovecot: DovecotServer, raws: list[bytes], rate: float, db_url: str,
            servers: dict[str, int]) -> Run:
    stack.start("ticketer", "router")
    stack.launch("fetcher")
    wait_for(lambda: ready(stack.ports["fetcher"]), 120, f"the fetcher to be ready\n{stack.log('fetcher')[-3000:]}")
    wait_for(lambda: stack.metric("fetcher", "deskmail_fetcher_mailbox_up", mailbox=ADDRESS) == 1, 60,
             "the fetcher to hold the mailbox")
    # one mail first, so every client is connected and every consumer assigned before the clock runs
    dovecot.append(ADDRESS, "pw", raws[0])
    wait_for(lambda: applied(stack) >= 1, 60, "the first mail's ticket")
    time.sleep(1.0)  # the fetcher is back in IDLE
    baseline = scrape(stack)
    load = os.getloadavg()
    busy_before = machine_busy_seconds()
    pids = {**{name: stack.procs[name].pid for name in STAGES}, **servers}

    def cpu_now() -> dict[str, float]:
        return {name: procstat.cpu_seconds(pid) if name in (*STAGES, "broker") else procstat.tree_cpu_seconds(pid)
                for name, pid in pids.items()}

    cpu_before = cpu_now()
    receiving, sending = multiprocessing.Pipe(duplex=False)
    start = time.time() + 0.5
    appender = multiprocessing.Process(
        target=append_steadily, args=(dovecot.host, dovecot.imap_port, raws[1:], rate, start, sending))
    appender.start()
    appended: list[Appended] = receiving.recv()
    appender.join()
    send_seconds = max(a.answered for a in appended) - start
    target = 1 + len(appended)
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while applied(stack) < target and time.monotonic() < deadline:
        time.sleep(0.1)
    seconds = time.time() - start
    busy = (machine_busy_seconds() - busy_before) / seconds
    cpu_after = cpu_now()
    after = scrape(stack)
    histogram = {le: after[le] - baseline.get(le, 0.0) for le in after}
    times = applied_times(db_url)
    exact = sorted(times[a.uid].timestamp() - a.answered for a in appended if a.uid in times)
    cpu = {name: (cpu_after[name] - cpu_before[name]) * 1000 / len(appended) for name in pids}
    return Run(histogram, exact, appended, send_seconds, busy, load, cpu)


# ---------------------------------------------------------------- report


def bounds(b: tuple[float, float]) -> str:
    return f"({b[0]:g}, {b[1]:g}]"


def print_run(index: int, run: Run) -> None:
    count = run.histogram[math.inf]
    hist = ", ".join(f"p{q * 100:g} {histogram_quantile(q, run.histogram):.3f} s in "
                     f"{bounds(bucket_around(q, run.histogram))}" for q in QUANTILES)
    exact = ", ".join(f"p{q * 100:g} {exact_quantile(q, run.exact):.3f} s" for q in QUANTILES)
    print(f"run {index}: {len(run.appended):,} mails APPENDed at {run.rate():.1f}/s "
          f"(latest {run.late() * 1000:.0f} ms behind schedule); machine {run.machine_busy:.2f} cores busy, "
          f"load average before {run.load[0]:.2f}")
    print(f"  histogram ({count:.0f} observed): {hist}")
    print(f"  exact, APPEND answered to applied_at ({len(run.exact)}): {exact}, max {run.exact[-1]:.3f} s")
    print("  CPU-s per 1,000 mails: " + ", ".join(f"{k} {v:.2f}" for k, v in run.cpu.items())
          + f"; total {sum(run.cpu.values()):.2f}")
    if len(run.exact) < len(run.appended):
        print(f"  did not keep up: {len(run.appended) - len(run.exact)} mails not applied {DRAIN_TIMEOUT:.0f} s "
              "after the last APPEND (left out above, so every quantile is a lower bound)")


def spread(values: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in (min(values), statistics.median(values), max(values)))


def print_summary(runs: list[Run]) -> None:
    print(f"\nmin / median / max over {len(runs)} runs (seconds):")
    print("| quantile | histogram | exact |")
    print("|---|---|---|")
    for q in QUANTILES:
        print(f"| p{q * 100:g} | {spread([histogram_quantile(q, r.histogram) for r in runs])} "
              f"| {spread([exact_quantile(q, r.exact) for r in runs])} |")
    print(f"| mails not applied in time | {' / '.join(str(len(r.appended) - len(r.exact)) for r in runs)} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="mails per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long mail is APPENDed")
    parser.add_argument("--replies", type=float, default=0.1, help="share of mails that reply to an earlier one")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3, help="runs, each on a fresh broker, Dovecot and database")
    args = parser.parse_args()

    n = int(args.rate * args.seconds)
    corpus = make_corpus(n + 1, args.replies)
    print(corpus.describe())
    print(f"{args.rate:g} mails/s for {args.seconds:g} s; Dovecot's mail on {fast_folder()}; database: {args.db}")
    pg = None
    if args.db == "postgres":
        from tests.harness.postgres import PostgresCluster

        pg = PostgresCluster()
        pg.start()
    runs: list[Run] = []
    try:
        for index in range(1, args.repeat + 1):
            runs.append(one_run(index, args, corpus.raws, pg))
            print_run(index, runs[-1])
    finally:
        if pg is not None:
            pg.stop()
    print_summary(runs)


if __name__ == "__main__":
    main()
