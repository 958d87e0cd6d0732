"""A producing process refuses topics that can lose acknowledged records: the decision
on ``ActualTopic`` values, and the start check around it (a fake ``describe``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import pytest

from services.common.config import parse_text
from services.common.durability import API_WRITES, FETCHER_WRITES, check_writes
from services.common.errors import Unavailable, UnsafeTopics
from services.common.topics import ActualTopic, declared, refusals

CONFIG = parse_text("kafka: {replication_factor: 3, partitions: 6}")
INBOUND = {s.key: s for s in declared(CONFIG)}["inbound"]
SAFE = {"min.insync.replicas": "2", "unclean.leader.election.enable": "false", "retention.ms": "1"}


def actual(replicas: int = 3, **configs: str) -> ActualTopic:
    return ActualTopic(INBOUND.name, 6, replicas, {k.replace("_", "."): v for k, v in configs.items()})


@pytest.mark.parametrize("topic, expected", [
    (actual(**{"min_insync_replicas": "2", "unclean_leader_election_enable": "false"}), []),
    (actual(**{"min_insync_replicas": "3"}), []),  # more than declared is safer
    (actual(replicas=2, min_insync_replicas="2"), ["deskmail.mail.inbound: replication factor 2, declared 3"]),
    (actual(min_insync_replicas="1"), ["deskmail.mail.inbound: min.insync.replicas is 1, declared 2"]),
    (actual(retention_ms="1"), ["deskmail.mail.inbound: min.insync.replicas is 1, declared 2"]),  # Kafka's default
    (actual(min_insync_replicas="2", unclean_leader_election_enable="true"),
     ["deskmail.mail.inbound: unclean.leader.election.enable is true"]),
    (actual(replicas=1), ["deskmail.mail.inbound: replication factor 1, declared 3"]),  # no configs: RF only
    (actual(), []),  # a broker that reports no configs (Tansu)
    (None, []),  # not there yet: `topics create` or the topic operator makes it
], ids=["safe", "more-insync", "replication", "insync", "insync-unset", "unclean", "no-configs-rf", "no-configs",
        "missing"])
def test_what_is_refused(topic: ActualTopic | None, expected: list[str]) -> None:
    assert refusals(INBOUND, topic) == expected


def test_fewer_partitions_or_other_retention_are_differences_not_refusals() -> None:
    topic = ActualTopic(INBOUND.name, 1, 3, {**SAFE, "retention.ms": "5"})
    assert refusals(INBOUND, topic) == []


class Cluster:
    def __init__(self, topics: Mapping[str, ActualTopic] | Exception):
        self.topics = topics
        self.asked: list[list[str]] = []

    def describe(self, names: Sequence[str]) -> Mapping[str, ActualTopic]:
        self.asked.append(list(names))
        if isinstance(self.topics, Exception):
            raise self.topics
        return {n: t for n, t in self.topics.items() if n in names}


def every_topic(replicas: int = 3, **configs: str) -> dict[str, ActualTopic]:
    return {s.name: ActualTopic(s.name, s.partitions, replicas, configs) for s in declared(CONFIG)}


def test_the_start_check_asks_for_the_written_topics_only_and_refuses_in_one_line() -> None:
    cluster = Cluster({**every_topic(**SAFE), CONFIG.topics["outbound"]: ActualTopic(
        CONFIG.topics["outbound"], 6, 3, {**SAFE, "unclean.leader.election.enable": "true"})})
    check_writes(CONFIG, cluster.describe, FETCHER_WRITES, "fetcher")
    assert cluster.asked == [[CONFIG.topics["inbound"]]]
    with pytest.raises(UnsafeTopics) as refused:
        check_writes(CONFIG, cluster.describe, API_WRITES, "api")
    assert str(refused.value) == ("a topic this process writes could lose acknowledged records: "
                                  "deskmail.mail.outbound: unclean.leader.election.enable is true")
    assert "\n" not in str(refused.value)


def test_a_broker_without_configs_is_not_refused_and_the_log_says_so(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "deskmail.durability")
    check_writes(CONFIG, Cluster(every_topic()).describe, ("commands", "deadletter"), "router")
    [line] = caplog.records
    assert line.levelname == "WARNING" and "reports no topic configs" in line.getMessage()
    assert line.topic == "deskmail.ticket.commands,deskmail.deadletter"  # type: ignore[attr-defined]


def test_a_broker_that_cannot_be_described_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        check_writes(CONFIG, Cluster(OSError("no brokers")).describe, FETCHER_WRITES, "fetcher")


def test_the_producer_is_idempotent_unless_the_config_says_otherwise() -> None:
    assert parse_text("{}").kafka.producer.idempotence is True
    assert parse_text("kafka: {producer: {idempotence: false}}").kafka.producer.idempotence is False
