"""Consumer lag read from the broker by the api's LagWatch: it shows the lag of a
stage with no consumer running at all, and of one that never committed."""

from __future__ import annotations

import json
import textwrap
from typing import Any, Callable

from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata, TopicPartition
from prometheus_client import REGISTRY

from services.api.lag import LagWatch
from services.common.config import parse_text
from services.common.kafka import Kafka


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_lag_of_stopped_and_never_started_stages(broker: Any, unique: Callable[[str], str]) -> None:
    topics = {k: unique(f"lag-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    config = parse_text(textwrap.dedent(f"""\
        kafka:
          bootstrap_servers: ["{broker.bootstrap}"]
          group_prefix: {unique("lag")}
          partitions: 2
          topics: {json.dumps(topics)}
        """))
    kafka = Kafka(config)
    kafka.create_topics()
    producer = KafkaProducer(bootstrap_servers=[broker.bootstrap])
    try:
        # One record per request: the local broker's log end is only exact per batch.
        for partition, count in ((0, 7), (1, 3)):
            for _ in range(count):
                producer.send(topics["inbound"], b"mail", partition=partition).get(10)
        for _ in range(4):
            producer.send(topics["commands"], b"command", partition=1).get(10)
    finally:
        producer.close()
    # The router read partition 0 up to offset 5 and stopped; the ticketer never ran.
    committer = KafkaConsumer(bootstrap_servers=[broker.bootstrap], group_id=f"{config.kafka.group_prefix}-router",
                              enable_auto_commit=False)
    try:
        committer.assign([TopicPartition(topics["inbound"], 0)])
        committer.commit({TopicPartition(topics["inbound"], 0): OffsetAndMetadata(5, None, -1)})
    finally:
        committer.close()

    watch = LagWatch(config, kafka.group_lag)
    assert watch.measure() is True
    lag = "deskmail_consumer_group_lag_records"
    assert _value(lag, stage="router", topic=topics["inbound"], partition="0") == 2
    assert _value(lag, stage="router", topic=topics["inbound"], partition="1") == 3
    assert _value(lag, stage="ticketer", topic=topics["commands"], partition="1") == 4
    assert _value(lag, stage="ticketer", topic=topics["events"], partition="0") == 0
    assert _value(lag, stage="sender", topic=topics["outbound"], partition="0") == 0
    measured = _value("deskmail_consumer_group_lag_measured_timestamp_seconds")
    assert measured is not None and measured > 0


def test_an_unreachable_broker_keeps_the_last_measurement_and_says_so(unique: Callable[[str], str]) -> None:
    config = parse_text('kafka: {bootstrap_servers: ["127.0.0.1:1"]}')
    before = _value("deskmail_consumer_group_lag_measured_timestamp_seconds")

    def down(group: str, topics: Any) -> dict[tuple[str, int], int]:
        raise ConnectionError("broker down")

    assert LagWatch(config, down).measure() is False
    assert _value("deskmail_consumer_group_lag_measured_timestamp_seconds") == before
