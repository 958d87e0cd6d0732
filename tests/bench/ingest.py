"""End-to-end ingest benchmark: N realistic emails in Dovecot -> N tickets and comments.

    .venv/bin/python tests/bench/ingest.py --n 2000 [--db postgres]

Prints emails/s end to end (from the fetcher's start to the last command applied),
the raw IMAP fetch rate of the same messages (the ceiling the fetcher can reach),
and peak memory (VmHWM) per process. Not part of CI's pass/fail.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.localbroker import LocalBroker  # noqa: E402
from services.tickets import TicketStore  # noqa: E402
from tests.harness import mails  # noqa: E402
from tests.harness.dovecot import DovecotServer  # noqa: E402
from tests.harness.stack import Stack  # noqa: E402


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raw_fetch_rate(dovecot: DovecotServer, login: str, n: int) -> float:
    client = dovecot.connect(login, "pw", security="imaps")
    client.select_folder("INBOX", readonly=True)
    uids = client.search("ALL")
    started = time.perf_counter()
    for i in range(0, len(uids), 200):
        client.fetch(uids[i:i + 200], ["BODY.PEEK[]"])
    elapsed = time.perf_counter() - started
    client.logout()
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--replies", type=float, default=0.1, help="share of mails that reply to an earlier one")
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="deskmail-bench-"))
    rng = random.Random(7)
    with LocalBroker() as broker, DovecotServer() as dovecot:
        address = "bench@example.com"
        dovecot.add_user(address, "pw")
        raws, mids = [], []
        replies = 0
        total_bytes = 0
        for i in range(args.n):
            parent = rng.choice(mids) if mids and rng.random() < args.replies else None
            raw, mid = mails.realistic(i, rng, f"c{i % 300}@customer.test", address, reply_to=parent)
            replies += parent is not None
            raws.append(raw)
            mids.append(mid)
            total_bytes += len(raw)
        dovecot.append_many(address, "pw", raws)
        sizes = sorted(len(r) for r in raws)
        print(f"corpus: {args.n} mails, {total_bytes / 1e6:.1f} MB, median {sizes[len(sizes) // 2] / 1024:.1f} KB, "
              f"max {sizes[-1] / 1024:.0f} KB, {replies} replies")
        print(f"raw IMAP fetch (BODY.PEEK[], batches of 200): {raw_fetch_rate(dovecot, address, args.n):,.0f} mails/s")

        pg = None
        if args.db == "postgres":
            from tests.harness.postgres import PostgresCluster

            pg = PostgresCluster()
            db_url = pg.start()
        else:
            db_url = f"sqlite:///{work / 'tickets.db'}"
        config = textwrap.dedent(f"""\
            kafka:
              partitions: {args.partitions}
              consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
            database: {{url: "{db_url}"}}
            data_dir: {work / 'data'}
            fetcher: {{batch_size: 200}}
            queues:
              - key: BENCH
                mailboxes:
                  - address: {address}
                    accept_external: true
                    ticket: {{type: question}}
                    imap: {{host: 127.0.0.1, port: {dovecot.imaps_port}, security: ssl, cafile: {dovecot.cafile},
                            password: {{env: BENCH_PW}}}}
            """)
        stack = Stack(config, work, broker.bootstrap, env={"BENCH_PW": "pw"})
        stack.create_topics()
        stack.start("ticketer", "router")
        store = TicketStore(db_url)
        started = time.perf_counter()
        stack.start("fetcher")

        def applied() -> float:
            return stack.metric("ticketer", "deskmail_ticketer_commands_applied_total")

        stages = {
            "fetcher": lambda: stack.metric("fetcher", "deskmail_fetcher_messages_total"),
            "router": lambda: stack.metric("router", "deskmail_router_commands_total"),
            "ticketer": applied,
        }
        finished: dict[str, float] = {}
        while len(finished) < len(stages):
            for name, count in stages.items():
                if name not in finished and count() >= args.n:
                    finished[name] = time.perf_counter() - started
            time.sleep(0.1)
            if time.perf_counter() - started > 1800:
                raise SystemExit(f"timed out; finished: {finished}")
        elapsed = finished["ticketer"]
        print("stage done after: " + ", ".join(f"{k} {v:.1f} s" for k, v in finished.items()))
        tickets = store.count_tickets()
        print(f"end to end: {args.n} mails in {elapsed:.1f} s = {args.n / elapsed:,.0f} mails/s "
              f"({tickets} tickets, {args.n - tickets} comments, db {args.db})")
        for name, proc in stack.procs.items():
            print(f"peak memory {name}: {peak_rss_mb(proc.pid):.0f} MB")
        if broker.pid:
            print(f"peak memory broker: {peak_rss_mb(broker.pid):.0f} MB")
        stack.stop()
        if pg is not None:
            pg.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
