"""The topic declarations: durability and retention defaults, and how a cluster's topic is compared."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, parse_text
from services.common.topics import DAY_MS, ActualTopic, declared, differences


def test_replication_3_asks_for_two_in_sync_replicas_and_a_week_of_inbound_mail() -> None:
    specs = {s.key: s for s in declared(parse_text("kafka: {replication_factor: 3, partitions: 6}"))}
    assert set(specs) == {"inbound", "commands", "outbound", "events", "deadletter", "leases"}
    inbound = specs["inbound"]
    assert (inbound.name, inbound.partitions, inbound.replication_factor) == ("deskmail.mail.inbound", 6, 3)
    assert dict(inbound.configs) == {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS),
                                     "min.insync.replicas": "2", "max.message.bytes": str(8 * 1024 * 1024)}
    assert specs["deadletter"].configs["retention.ms"] == str(30 * DAY_MS)


def test_the_lease_topic_has_its_own_partition_count_and_an_hour_of_retention() -> None:
    specs = {s.key: s for s in declared(parse_text("kafka: {partitions: 6}\nfetcher: {lease_partitions: 32}"), 2)}
    leases = specs["leases"]
    assert (leases.name, leases.partitions) == ("deskmail.fetcher.leases", 32)  # --partitions leaves it alone
    assert leases.configs["retention.ms"] == str(DAY_MS // 24)
    assert specs["inbound"].partitions == 2
    assert {s.key: s.partitions for s in declared(parse_text("{}"))}["leases"] == 16


def test_one_broker_needs_one_in_sync_replica_and_the_config_can_say_more() -> None:
    assert declared(parse_text("{}"))[0].configs["min.insync.replicas"] == "1"
    text = "kafka: {replication_factor: 5, min_insync_replicas: 3, max_message_bytes: 2097152}"
    spec = declared(parse_text(text))[0]
    assert (spec.configs["min.insync.replicas"], spec.configs["max.message.bytes"]) == ("3", "2097152")


@pytest.mark.parametrize("text, message", [
    ("kafka:\n  replication_factor: 2\n  min_insync_replicas: 3\n", "line 1: kafka: Value error, min_insync"),
    ("kafka:\n  retention_days: {inbox: 3}\n", "line 2: kafka.retention_days: unknown topic inbox"),
    ("kafka:\n  retention_days: {inbound: -1}\n", "line 2: kafka.retention_days: retention_days.inbound must be 0"),
])
def test_settings_that_cannot_work_name_their_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_text(text)
    assert message.replace("Value error, ", "") in str(err.value)


SPEC = declared(parse_text("kafka: {replication_factor: 3, partitions: 4}"))[0]


def test_a_matching_topic_has_no_differences_and_more_partitions_are_fine() -> None:
    assert differences(SPEC, ActualTopic(SPEC.name, 4, 3, dict(SPEC.configs))) == []
    assert differences(SPEC, ActualTopic(SPEC.name, 12, 3, {**SPEC.configs, "segment.ms": "1000"})) == []


def test_every_difference_is_one_line() -> None:
    actual = ActualTopic(SPEC.name, 2, 1, {**SPEC.configs, "min.insync.replicas": "1", "retention.ms": "3600000"})
    actual.configs.pop("max.message.bytes")  # type: ignore[attr-defined]
    assert differences(SPEC, actual) == [
        "deskmail.mail.inbound: 2 partitions, declared 4",
        "deskmail.mail.inbound: replication factor 1, declared 3",
        f"deskmail.mail.inbound: retention.ms is 3600000, declared {7 * DAY_MS}",
        "deskmail.mail.inbound: min.insync.replicas is 1, declared 2",
        "deskmail.mail.inbound: max.message.bytes is unset, declared 8388608",
    ]
    assert differences(SPEC, None) == ["deskmail.mail.inbound: missing (declared: 4 partitions, replication 3)"]


def test_configs_a_broker_does_not_report_are_not_compared() -> None:
    assert differences(SPEC, ActualTopic(SPEC.name, 4, 3, {})) == []
