"""Outbound benchmark: N agent comments (OutboundMail records) sent by a real sender process.

    .venv/bin/python tests/bench/outbound.py --n 1000

The records are on the outbound topic before the sender starts; the clock runs from
the sender's readiness to the last message accepted by the SMTP server (aiosmtpd
with STARTTLS and AUTH, keeping mail in memory). ``--sessions N`` sets
``sender.smtp_sessions``. Prints mails/s end to end and the sender's CPU-seconds per
1,000 mails over that window (the figure to compare on a shared machine), checks
that every mail arrived once and that N 'sent' DeliveryEvents were produced, and
prints the rate of the same SMTP path without Kafka (SmtpPool alone) as the
ceiling. Not part of CI's pass/fail.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import textwrap
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kafka import KafkaConsumer  # noqa: E402

from services.common.bus import Out  # noqa: E402
from services.common.codec import codec  # noqa: E402
from services.common.compose import as_bytes, compose, recipients  # noqa: E402
from services.common.config import Secret  # noqa: E402
from services.common.kafka import Kafka  # noqa: E402
from services.common.mailrules import new_message_id, subject_for  # noqa: E402
from services.common.smtp import SmtpPool  # noqa: E402
from services.localbroker import LocalBroker  # noqa: E402
from tests.harness.smtp import SmtpServer  # noqa: E402
from tests.harness.stack import Stack, wait_for  # noqa: E402

ADDRESS = "support@example.com"
KEY = Secret("bench-message-id-key", "bench")
WORDS = ("счёт", "invoice", "доставка", "order", "refund", "возврат", "please", "спасибо", "account", "пароль")


def comment(i: int, rng: random.Random) -> dict[str, Any]:
    out_id = f"bench-{uuid.uuid4().hex[:10]}-{i}"
    text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(rng.randint(3, 40)))
    return {
        "id": out_id, "kind": "reply", "ticket": f"SUPPORT-{i + 1}", "comment_id": i + 1, "queue": "SUPPORT",
        "mailbox": ADDRESS, "from_address": ADDRESS, "alias": rng.choice(["Example support", "Служба поддержки"]),
        "signature": "--\nExample Inc. customer support", "to": [{"email": f"c{i % 300}@customer.test", "name": None}],
        "cc": [], "subject": subject_for(f"SUPPORT-{i + 1}", f"Re: {rng.choice(WORDS)} {i}"), "text": text,
        "html": None if i % 3 else f"<p>{text}</p>", "message_id": new_message_id(out_id, ADDRESS, key=KEY, ticket=f"SUPPORT-{i + 1}"),
        "in_reply_to": f"q{i}@customer.test", "references": [f"q{i}@customer.test"], "attachments": [],
        "created_at": datetime.now(timezone.utc),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--sessions", type=int, default=None, help="sender.smtp_sessions (default: its default)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="deskmail-bench-out-"))
    rng = random.Random(7)
    password = uuid.uuid4().hex
    with LocalBroker() as broker, SmtpServer({"support": password}) as smtp:
        tag = uuid.uuid4().hex[:8]
        config = textwrap.dedent(f"""\
            kafka:
              group_prefix: bench-{tag}
              partitions: {args.partitions}
              consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
              topics: {{outbound: bench-outbound-{tag}, events: bench-events-{tag}}}
            data_dir: {work / "data"}
            sender: {{timeout_seconds: 10{f", smtp_sessions: {args.sessions}" if args.sessions else ""}}}
            queues:
              - key: SUPPORT
                allow_outbound_mail: true
                mailboxes:
                  - address: {ADDRESS}
                    ingress: true
                    smtp: {{host: 127.0.0.1, port: {smtp.port}, security: starttls, login: support,
                            password: {{env: BENCH_SMTP_PW}}, cafile: {smtp.cafile}}}
                    signatures: [{{alias: Example support}}]
            """)
        stack = Stack(config, work, broker.bootstrap, env={"BENCH_SMTP_PW": password})
        stack.create_topics()
        mails = [comment(i, rng) for i in range(args.n)]
        encoder = codec("OutboundMail")
        producer = Kafka(stack.config, [broker.bootstrap]).producer()
        started = time.perf_counter()
        producer.send_all([Out(stack.config.topics["outbound"], m["ticket"].encode(), encoder.encode(m))
                           for m in mails], "bench")
        producer.close()
        print(f"produced {args.n} OutboundMail records in {time.perf_counter() - started:.2f}s")

        try:
            stack.start("sender")
            ready = time.perf_counter()
            cpu_at_ready = cpu_seconds(stack.procs["sender"].pid)
            wait_for(lambda: len(smtp.received()) >= args.n, 600, f"{args.n} mails at the SMTP server", 0.05)
            elapsed = time.perf_counter() - ready
            cpu = cpu_seconds(stack.procs["sender"].pid) - cpu_at_ready
        finally:
            codes = stack.stop()
        received = smtp.received()
        ids = {m["message_id"].encode() for m in mails}
        delivered = [next(i for i in ids if i in r.data) for r in received if any(i in r.data for i in ids)]
        sent = count_sent(broker.bootstrap, stack.config.topics["events"], args.n)
        print(f"sender (one process, {args.partitions} partitions, STARTTLS+AUTH, {smtp.sessions} SMTP session(s)): "
              f"{args.n} mails in {elapsed:.2f}s = {args.n / elapsed:,.0f} mails/s, "
              f"{cpu * 1000 / args.n:.2f} CPU-s per 1,000 mails")
        print(f"checks: {len(received)} received, {len(set(delivered))} distinct, {sent} 'sent' events, "
              f"exit codes {codes}")

        pool = SmtpPool(timeout=10)
        smtp_settings = stack.config.mailbox(ADDRESS).smtp  # type: ignore[union-attr]
        assert smtp_settings is not None
        datas = [(recipients(m), as_bytes(compose(m))) for m in mails]
        started = time.perf_counter()
        for rcpts, data in datas:
            pool.send(smtp_settings, ADDRESS, rcpts, data)
        ceiling = time.perf_counter() - started
        pool.close()
        print(f"ceiling, SmtpPool alone (same server, no Kafka): {args.n / ceiling:,.0f} mails/s")
        started = time.perf_counter()
        for m in mails:
            as_bytes(compose(m))
        print(f"compose alone: {args.n / (time.perf_counter() - started):,.0f} mails/s")
    os.system(f"rm -rf {work}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def count_sent(bootstrap: str, topic: str, n: int) -> int:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"bench-{uuid.uuid4().hex}",
                             session_timeout_ms=2000, heartbeat_interval_ms=500, auto_offset_reset="earliest",
                             enable_auto_commit=False)
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while len(statuses) < n and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            for record in batch:
                event = codec("DeliveryEvent").decode(record.value)
                statuses[event["outbound_id"]] = event["status"]
    consumer.close()
    return sum(1 for status in statuses.values() if status == "sent")


if __name__ == "__main__":
    main()
