"""The IMAP client's own cost of fetching mail: deskmail's session as it is, and with
imaplib's debug output left at the level imapclient sets (5).

    .venv/bin/python tests/bench/imap_fetch.py [--count 2000] [--rounds 5] [--batch 100]

Starts a Dovecot (tests/harness), appends ``--count`` realistic mails (2-200 KB,
tests/harness/mails.realistic), then fetches them all with ``BODY.PEEK[]`` in
batches as the fetcher does, over the fetcher's own ``connect`` (IMAPS). Prints the
client process's CPU milliseconds per mail and the wall time, min/median/max over
the rounds. Not part of CI's pass/fail.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from services.common.config import parse_text  # noqa: E402
from services.fetcher import imap  # noqa: E402
from tests.harness import mails  # noqa: E402
from tests.harness.dovecot import DovecotServer  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fetch_all(config_imap: object, uids: list[int], batch: int, debug: int | None) -> tuple[float, float]:
    client = imap.connect(config_imap, 30.0)  # type: ignore[arg-type]
    if debug is not None:
        client._imap.debug = debug  # type: ignore[attr-defined]
    client.select_folder("INBOX", readonly=True)
    started_cpu, started = cpu(), time.perf_counter()
    for i in range(0, len(uids), batch):
        client.fetch(uids[i:i + batch], ["BODY.PEEK[]", "RFC822.SIZE", "INTERNALDATE"])
    used, wall = cpu() - started_cpu, time.perf_counter() - started
    client.logout()
    return used, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    with DovecotServer() as dovecot:
        dovecot.add_user("bench", "bench-pw")
        rng = random.Random(7)
        raws = [mails.realistic(i, rng, f"c{i % 300}@customer.test", "bench@example.com")[0]
                for i in range(args.count)]
        uids = [uid for uid in dovecot.append_many("bench", "bench-pw", raws) if uid is not None]
        os.environ["BENCH_IMAP_PW"] = "bench-pw"
        config = parse_text(
            "queues:\n  - key: B\n    mailboxes:\n      - address: bench@example.com\n"
            f"        imap: {{host: {dovecot.host}, port: {dovecot.imaps_port}, security: ssl, "
            f"cafile: {dovecot.cafile}, login: bench, password: {{env: BENCH_IMAP_PW}}}}\n")
        box = config.mailboxes[0].imap
        megabytes = sum(map(len, raws)) / 1e6
        print(f"{len(uids)} mails, {megabytes:.1f} MB, batches of {args.batch}, {args.rounds} rounds")
        for label, debug in (("deskmail's session (imaplib debug 0)", None), ("imaplib debug 5 (imapclient's)", 5)):
            runs = [fetch_all(box, uids, args.batch, debug) for _ in range(args.rounds)]
            per_mail = sorted(used * 1000 / len(uids) for used, _ in runs)
            walls = sorted(wall for _, wall in runs)
            print(f"{label}: CPU ms/mail min {per_mail[0]:.3f} median {statistics.median(per_mail):.3f} "
                  f"max {per_mail[-1]:.3f}; wall s min {walls[0]:.2f} median {statistics.median(walls):.2f} "
                  f"max {walls[-1]:.2f}; {len(uids) / statistics.median(walls):.0f} mails/s")


if __name__ == "__main__":
    main()
