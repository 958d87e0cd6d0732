"""services.common.kafka_join_patch against the real broker: a member that is outside
``poll`` when its JoinGroup + SyncGroup ends keeps that join.

The member polls for 50 ms and then does other work for 500 ms, so a join (about a
second on the local broker with these session settings) nearly always ends between two
polls. Unpatched, kafka-python 3.0.12 throws such a join away and sends a fresh
JoinGroup on the next poll, again and again; patched, the first join is the only one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from services.common import kafka_join_patch
from tests.harness.broker import FAST_CONSUMER


class Joins(logging.Handler):
    """Counts the JoinGroup responses that made this process's consumers members."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.groups: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Successfully joined group ") and isinstance(record.args, tuple):
            self.groups.append(str(record.args[0]))


@pytest.fixture
def joins() -> Any:
    handler = Joins()
    coordinator_log = logging.getLogger("kafka.coordinator")
    level = coordinator_log.level
    coordinator_log.setLevel(logging.INFO)
    coordinator_log.addHandler(handler)
    try:
        yield handler
    finally:
        coordinator_log.removeHandler(handler)
        coordinator_log.setLevel(level)


def test_a_join_that_ends_between_polls_is_kept(broker: Any, unique: Callable[[str], str], joins: Joins) -> None:
    assert kafka_join_patch.apply() is True
    topic, group = unique("join-topic"), unique("join-group")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 3, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for partition in range(3):
        producer.send(topic, value=b"x", partition=partition).get(timeout=30)
    producer.close()

    member = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=group,
                           **FAST_CONSUMER)  # type: ignore[arg-type]
    records = 0
    try:
        deadline = time.monotonic() + 60
        while not member.assignment() and time.monotonic() < deadline:
            records += sum(len(batch) for batch in member.poll(timeout_ms=50).values())
            time.sleep(0.5)  # the member's own work, outside poll
        assert {tp.partition for tp in member.assignment()} == {0, 1, 2}
        assert joins.groups.count(group) == 1, joins.groups
        # the kept join is a working membership: the member reads from all partitions
        deadline = time.monotonic() + 30
        while records < 3 and time.monotonic() < deadline:
            records += sum(len(batch) for batch in member.poll(timeout_ms=500).values())
        assert records == 3
    finally:
        member.close(autocommit=False)
