"""The consume loop against the real broker: a dependency that stays down pauses the
partitions while the consumer keeps polling (it stays in its group), and every record
is processed exactly once after the dependency is back."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from kafka import KafkaProducer

from services.common.bus import ConsumeLoop, LoopSettings, Out, Partition, Record
from services.common.config import parse_text
from services.common.errors import Transient
from services.common.kafka import Kafka
from services.common.retry import Backoff


class FlakyDatabase:
    """A step whose dependency is down for the first ``down_for`` seconds."""

    def __init__(self, down_for: float):
        self.up_at = time.monotonic() + down_for
        self.applied: list[bytes] = []
        self.failures = 0

    def process(self, record: Record) -> Sequence[Out]:
        if time.monotonic() < self.up_at:
            self.failures += 1
            raise Transient("database unavailable")
        self.applied.append(record.value)
        return []


def test_a_long_outage_pauses_the_partitions_keeps_the_group_and_loses_nothing(broker, unique, tmp_path: Path):
    topics = {k: unique(f"loop-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    cfg = parse_text(textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("loop")}
          partitions: 2
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {json.dumps(topics)}
        data_dir: {tmp_path}
        """))
    kafka = Kafka(cfg, [broker.bootstrap])
    kafka.create_topics()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for n in range(20):
        producer.send(topics["commands"], key=b"k%d" % (n % 4), value=b"%d" % n).get(timeout=30)
    producer.close()

    step = FlakyDatabase(down_for=6.0)
    stop = threading.Event()
    revoked: list[set[Partition]] = []
    paused_seen: list[bool] = []
    settings = LoopSettings(poll_ms=200, transient_wait_seconds=1.0, retry=Backoff(0.2, 0.5),
                            pause=Backoff(1.0, 2.0))
    source = kafka.source(f"{cfg.kafka.group_prefix}-test")
    sink = kafka.producer()
    loop = ConsumeLoop(source, sink, step, "loop-test", [topics["commands"]], topics["deadletter"], stop, settings,
                       on_alive=lambda: paused_seen.append(loop.paused_until is not None))
    original = loop._revoked
    loop._revoked = lambda tps: (revoked.append(tps), original(tps))  # type: ignore[method-assign]
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while len(set(step.applied)) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # a duplicate would show up now
        revoked_while_running = list(revoked)
    finally:
        stop.set()
        thread.join(30)
        sink.close()
    assert sorted(set(step.applied), key=int) == [b"%d" % n for n in range(20)]
    assert len(step.applied) == 20  # each exactly once: nothing committed twice or skipped
    assert step.failures > 0 and any(paused_seen)  # it did pause ...
    assert sum(paused_seen) > 10  # ... and went on polling while paused
    assert not any(revoked_while_running)  # ... without losing its partitions to a rebalance

    # Everything was committed: a new consumer of the group finds nothing left to do.
    again = FlakyDatabase(down_for=0)
    stop2 = threading.Event()
    loop2 = ConsumeLoop(kafka.source(f"{cfg.kafka.group_prefix}-test"), kafka.producer(), again, "loop-test",
                        [topics["commands"]], topics["deadletter"], stop2, settings)
    threading.Timer(5.0, stop2.set).start()
    loop2.run()
    assert again.applied == []
