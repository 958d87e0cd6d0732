"""Records larger than what one fetch may bring (services/common/kafka.py:
PARTITION_FETCH_BYTES, FETCH_BYTES) still reach deskmail's consumers, alone and in
order, up to kafka.max_message_bytes: the fetch sizes bound memory, not records."""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.common import kafka as kafka_module
from services.common.config import parse_text
from services.common.kafka import Kafka

# Around and far above both limits, small ones between them, on two partitions.
SIZES = {0: [100, 7_900_000, 200, 3 * 1024 * 1024, 300], 1: [5 * 1024 * 1024, 10]}


def test_a_record_larger_than_a_fetch_comes_alone_and_in_order(broker: Any, unique: Callable[[str], str],
                                                               tmp_path: Path) -> None:
    assert max(max(s) for s in SIZES.values()) > kafka_module.FETCH_BYTES > kafka_module.PARTITION_FETCH_BYTES
    topics = {k: unique(f"fetch-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    cfg = parse_text(textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("fetch")}
          partitions: 2
          max_message_bytes: {8 * 1024 * 1024}
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {json.dumps(topics)}
        data_dir: {tmp_path}
        """))
    kafka = Kafka(cfg, [broker.bootstrap])
    kafka.create_topics()
    sent = {p: [bytes([65 + i]) * n for i, n in enumerate(sizes)] for p, sizes in SIZES.items()}
    producer = kafka.producer()
    try:
        for partition, values in sent.items():
            for value in values:
                producer.client.send(topics["commands"], value=value, partition=partition).get(timeout=60)
    finally:
        producer.close()

    source = kafka.source(f"{cfg.kafka.group_prefix}-test")
    got: dict[int, list[bytes]] = {0: [], 1: []}
    try:
        source.subscribe([topics["commands"]], on_revoked=lambda _: None)
        deadline = time.monotonic() + 60
        while sum(map(len, got.values())) < 7 and time.monotonic() < deadline:
            for partition, records in source.poll(500).items():
                got[partition.partition].extend(r.value for r in records)
    finally:
        source.close()
    assert got == sent

    reader = kafka.reader()
    try:
        from kafka import TopicPartition

        tp = TopicPartition(topics["commands"], 0)
        reader.assign([tp])
        read: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(read) < 5 and time.monotonic() < deadline:
            for records in reader.poll(500).values():
                read.extend(r.value for r in records)
    finally:
        reader.close()
    assert read == sent[0]
