"""Measure deskmail's Kafka adapters alone: CPU per 1,000 records produced and consumed.

Starts a local broker, then, in this one process:

* **fetcher-like** produce: InboundMail records of ``tests/bench/router.py``'s corpus
  (the raw mail inline, ~22 KB), one key (the mailbox), ``Producer.send_all`` per
  batch of ``--fetch-batch`` (the fetcher's ``batch_size``, 100);
* **router-like** produce: the TicketCommands the router makes of that corpus (a key
  per thread), sent one by one ``--gap-ms`` apart (the router's time per mail, 1 ms)
  and waited for once per batch of ``--poll-batch`` (the consume loop's
  ``max_poll_records``, 500), as ``ConsumeLoop`` does;
* **consume**: ``KafkaSource.poll`` over the fetcher-like topic until every record is read.

CPU is this process's (every thread: kafka-python's IO thread included, from
``getrusage``), without the encoding, which is done before each window. Best of
``--rounds``, each on fresh topics.

    .venv/bin/python tests/bench/produce.py [--n 4000] [--rounds 3]
        [--set batch_size=4194304 --set linger_ms=5 ...]   # override producer settings
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from services.common import kafka as kafka_module  # noqa: E402
from services.common.blobs import FolderBlobStore  # noqa: E402
from services.common.bus import Out  # noqa: E402
from services.common.config import parse_text  # noqa: E402
from services.common.kafka import Kafka  # noqa: E402
from services.localbroker import LocalBroker  # noqa: E402
from services.router.runner import RouterStep  # noqa: E402
from tests.bench.router import ADDRESS, corpus, records  # noqa: E402


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def override_producer(settings: dict[str, Any]) -> None:
    """Every KafkaProducer built from now on gets ``settings`` over deskmail's own."""
    original = kafka_module.KafkaProducer

    def build(**kwargs: Any) -> Any:
        return original(**{**kwargs, **settings})

    kafka_module.KafkaProducer = build  # type: ignore[assignment,misc]


def parse_value(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"none": None, "true": True, "false": False}.get(text.lower(), text)


def produce(kafka: Kafka, outs: Sequence[Out], batch: int, together: bool, gap: float = 0.0) -> float:
    """CPU-seconds to produce ``outs`` in batches, each waited for (send_all or send + wait);
    ``gap``: seconds slept after each send, as the router spends them processing the next record."""
    producer = kafka.producer()
    try:
        producer.send_all(outs[:1], "bench")  # metadata and connection before the window
        started = cpu()
        for i in range(1, len(outs), batch):
            chunk = outs[i:i + batch]
            if together:
                producer.send_all(chunk, "bench")
            else:
                pending = []
                for out in chunk:
                    pending.append((out, producer.send(out)))
                    if gap:
                        time.sleep(gap)
                producer.wait(pending, "bench")
        return cpu() - started
    finally:
        producer.close()


def consume(kafka: Kafka, topic: str, n: int) -> float:
    source = kafka.source(f"bench-{uuid.uuid4().hex[:8]}")
    try:
        source.subscribe([topic], lambda revoked: None)
        got = 0
        started = None
        deadline = time.monotonic() + 120
        while got < n and time.monotonic() < deadline:
            batches = source.poll(500)
            if batches and started is None:
                started = cpu()
            got += sum(len(records) for records in batches.values())
        if got < n:
            raise SystemExit(f"consumed {got} of {n} records")
        return cpu() - (started or cpu())
    finally:
        source.close()


def best(rounds: int, run: Callable[[int], float]) -> float:
    return min(run(i) for i in range(rounds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fetch-batch", type=int, default=100)
    parser.add_argument("--poll-batch", type=int, default=500)
    parser.add_argument("--gap-ms", type=float, default=1.0,
                        help="router-like: time between two sends (the router's processing of a mail)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a KafkaProducer setting over deskmail's (repeatable)")
    args = parser.parse_args()
    if args.set:
        override_producer({k: parse_value(v) for k, v in (item.split("=", 1) for item in args.set)})

    raws = corpus(args.n, 0.1)
    inbound = records(raws)
    with tempfile.TemporaryDirectory(prefix="deskmail-bench-produce-") as tmp, LocalBroker() as broker:
        config = parse_text(textwrap.dedent(f"""\
            data_dir: {tmp}
            kafka: {{bootstrap_servers: ["{broker.bootstrap}"]}}
            queues:
              - key: BENCH
                mailboxes:
                  - {{address: {ADDRESS}, accept_external: true, ingress: true, ticket: {{type: question}}}}
            """))
        step = RouterStep(config, FolderBlobStore(Path(tmp) / "blobs"))
        commands = [out for record in inbound for out in step.process(record)]
        kafka = Kafka(config)
        size_in = sum(len(r.value) for r in inbound) / len(inbound)
        size_cmd = sum(len(o.value) for o in commands) / len(commands)
        per = 1000 / (args.n - 1)

        def topic_of(kind: str, i: int) -> str:
            return f"bench.{kind}.{i}.{uuid.uuid4().hex[:6]}"

        def fetcher_like(i: int) -> float:
            topic = topic_of("inbound", i)
            outs = [Out(topic, ADDRESS.encode(), r.value) for r in inbound]
            return produce(kafka, outs, args.fetch_batch, together=True)

        def router_like(i: int) -> float:
            topic = topic_of("commands", i)
            outs = [Out(topic, o.key, o.value) for o in commands]
            return produce(kafka, outs, args.poll_batch, together=False, gap=args.gap_ms / 1000)

        def consumed(i: int) -> float:
            topic = topic_of("consume", i)
            produce(kafka, [Out(topic, ADDRESS.encode(), r.value) for r in inbound], args.fetch_batch, together=True)
            return consume(kafka, topic, args.n)

        print(f"{args.n} records: InboundMail {size_in / 1024:.1f} KB, TicketCommand {size_cmd / 1024:.1f} KB;"
              f" overrides {args.set or 'none'}")
        before = peak_mb()
        print(f"produce, fetcher-like (send_all per {args.fetch_batch}): "
              f"{best(args.rounds, fetcher_like) * per * 1000:6.1f} CPU-ms / 1,000")
        print(f"produce, router-like (send every {args.gap_ms:g} ms, wait per {args.poll_batch}): "
              f"{best(args.rounds, router_like) * per * 1000:6.1f} CPU-ms / 1,000")
        print(f"peak RSS while producing: {peak_mb():.0f} MB (corpus and commands loaded: {before:.0f} MB)")
        print(f"consume (KafkaSource.poll):                    "
              f"{best(args.rounds, consumed) * 1000 / args.n * 1000:6.1f} CPU-ms / 1,000")


if __name__ == "__main__":
    main()
