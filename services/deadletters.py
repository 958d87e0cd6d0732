"""Inspect and replay the dead-letter topic.

Every stage writes what it cannot process to ``deskmail.deadletter`` with the reason
and the original bytes. After fixing the cause (a config change, a new release),
``replay`` puts the original records back on the topic they came from; every effect
downstream is idempotent, so replaying a record that meanwhile went through changes
nothing. Replaying does not remove dead letters (Kafka topics are append-only); pick
what to replay with the filters.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from kafka import KafkaConsumer
from kafka.structs import TopicPartition

from services.common.bus import Out
from services.common.codec import CodecError, codec
from services.common.kafka import Kafka, Producer


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    stage: str
    topic: str | None
    source_partition: int
    source_offset: int
    key: bytes | None
    value: bytes
    error_class: str
    message: str
    time: datetime

    def summary(self) -> dict[str, Any]:
        """What `deskmail deadletters list --json` prints: everything but the bytes."""
        return {
            "partition": self.partition, "offset": self.offset, "stage": self.stage, "topic": self.topic,
            "source_partition": self.source_partition, "source_offset": self.source_offset,
            "key": self.key.decode(errors="replace") if self.key else None, "size": len(self.value),
            "error_class": self.error_class, "message": self.message, "time": self.time.isoformat(),
        }


def read(kafka: Kafka, idle_seconds: float = 2.0, timeout: float = 60.0) -> list[DeadLetter]:
    """Every record on the dead-letter topic, oldest first per partition.

    Reads without a consumer group (nothing is committed) until every partition is at
    its high watermark, or nothing arrived for ``idle_seconds``.
    """
    topic = kafka.config.topics["deadletter"]
    consumer: KafkaConsumer = kafka.reader()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        assigned = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(assigned)
        consumer.seek_to_beginning(*assigned)
        decoder = codec("DeadLetter")
        found: list[DeadLetter] = []
        deadline = time.monotonic() + timeout
        last_record = time.monotonic()
        while time.monotonic() < deadline and assigned:
            batches = consumer.poll(timeout_ms=300)
            for tp, records in batches.items():
                for record in records:
                    found.append(_decode(decoder, record.partition, record.offset, record.value))
                    last_record = time.monotonic()
            caught_up = all(
                (high := consumer.highwater(tp)) is not None and consumer.position(tp) >= high for tp in assigned
            )
            if caught_up or time.monotonic() - last_record > idle_seconds:
                break
        return found
    finally:
        consumer.close(autocommit=False)


def read_one(kafka: Kafka, partition: int, offset: int, timeout: float = 15.0) -> DeadLetter | None:
    """The dead letter at ``partition``/``offset`` of the dead-letter topic, or None
    when the topic has no such record (never written, or gone with the topic's
    retention). Reads without a consumer group; nothing is committed."""
    topic = kafka.config.topics["deadletter"]
    consumer: KafkaConsumer = kafka.reader()
    try:
        if partition not in (consumer.partitions_for_topic(topic) or set()) or offset < 0:
            return None
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in consumer.poll(timeout_ms=300).get(tp, []):
                if record.offset == offset:
                    return _decode(codec("DeadLetter"), record.partition, record.offset, record.value)
                if record.offset > offset:  # reset past it: the record is gone
                    return None
            high = consumer.highwater(tp)
            if high is not None and high <= offset:
                return None
        return None
    finally:
        consumer.close(autocommit=False)


def _decode(decoder: Any, partition: int, offset: int, value: bytes) -> DeadLetter:
    try:
        d = decoder.decode(value)
    except CodecError as exc:  # keep going: show it rather than hide the rest
        d = {"stage": "?", "topic": None, "partition": -1, "offset": -1, "key": None, "value": value,
             "error_class": "CodecError", "message": f"unreadable dead letter: {exc}",
             "time": datetime.fromtimestamp(0).astimezone()}
    return DeadLetter(partition, offset, d["stage"], d["topic"], d["partition"], d["offset"], d["key"],
                      d["value"], d["error_class"], d["message"], d["time"])


def select(letters: Iterable[DeadLetter], stage: str | None = None, error_class: str | None = None,
           topic: str | None = None) -> list[DeadLetter]:
    return [d for d in letters
            if (stage is None or d.stage == stage)
            and (error_class is None or d.error_class == error_class)
            and (topic is None or d.topic == topic)]


def replay(producer: Producer, letters: Iterable[DeadLetter]) -> int:
    """Put each dead letter's original record back on its source topic; returns how many.

    Records without a source topic (nothing to go back to) are skipped. Blocks until the
    broker acknowledged them all (raises Transient otherwise).
    """
    outs = [Out(d.topic, d.key or b"", d.value) for d in letters if d.topic]
    producer.send_all(outs, stage="replay")
    return len(outs)
