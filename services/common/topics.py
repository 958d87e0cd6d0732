"""Every deskmail topic declared in one place: partitions, replication, durability, retention.

``declared(config)`` is the one list that ``deskmail topics create|describe|diff``
apply and check against a cluster. Pure: the Kafka adapter (``kafka.py``) reads
what a cluster has into ``ActualTopic``; ``differences`` compares.

Durability: with ``acks=all`` a record is acknowledged once every in-sync replica
has it, and ``min.insync.replicas`` is how few of them may remain before the
broker refuses writes instead of acknowledging them on one disk. The default is
2 where the replication factor is 3 or more (one broker may be lost with nothing
acknowledged lost), else 1 (a test or single-broker cluster).

The lease topic (``leases``) is the exception: its partitions are
``fetcher.lease_partitions`` (16), never ``kafka.partitions``, because a mailbox
belongs to the partition its address hashes to; its retention is an hour, since
nothing is written to it.

Retention: long enough to replay. The inbound mail a week by default (the IMAP
server has marked it; a replay by time needs the records), dead letters a month
(someone has to look at them first). ``max.message.bytes`` is
``kafka.max_message_bytes``: the largest record deskmail writes (mail above
``blobs.inline_max_bytes`` is claim-checked, but a command carries up to a
million characters of text and of HTML), which brokers' 1 MiB default refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from services.common.config import Config

__all__ = ["ActualTopic", "TopicSpec", "declared", "differences", "refusals", "DAY_MS", "PURPOSES"]

DAY_MS = 24 * 60 * 60 * 1000
PURPOSES = {
    "inbound": "raw mail from the fetcher and the ingress, keyed by mailbox",
    "commands": "the router's TicketCommands, keyed by thread",
    "outbound": "mail to send, from the API's outbox relay",
    "events": "the sender's delivery events",
    "deadletter": "records a stage could not process",
    "leases": "no records: the fetchers' consumer group, whose assignment says which replica polls which mailbox",
}


@dataclass(frozen=True)
class TopicSpec:
    key: str  # inbound | commands | outbound | events | deadletter | leases
    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)  # broker topic configs, as Kafka spells them

    @property
    def purpose(self) -> str:
        return PURPOSES.get(self.key, "")


@dataclass(frozen=True)
class ActualTopic:
    """A topic as a cluster describes it; ``configs`` empty when the broker reports none."""

    name: str
    partitions: int
    replication_factor: int
    configs: Mapping[str, str] = field(default_factory=dict)


def default_min_insync(replication_factor: int) -> int:
    return 2 if replication_factor >= 3 else 1


def declared(config: Config, partitions: int | None = None) -> tuple[TopicSpec, ...]:
    """The topics the config asks for, in a fixed order; ``partitions`` overrides
    ``kafka.partitions`` (tests, a one-off create), never the lease topic's
    ``fetcher.lease_partitions``."""
    k = config.kafka
    min_insync = k.min_insync_replicas or default_min_insync(k.replication_factor)
    out = []
    for key, name in config.topics.items():
        days = k.retention_days[key]
        count = config.fetcher.lease_partitions if key == "leases" else partitions or k.partitions
        out.append(TopicSpec(
            key=key, name=name, partitions=count, replication_factor=k.replication_factor,
            configs={
                "cleanup.policy": "delete",
                "retention.ms": str(-1 if days == 0 else int(days * DAY_MS)),
                "min.insync.replicas": str(min_insync),
                "max.message.bytes": str(k.max_message_bytes),
            },
        ))
    return tuple(out)


def differences(spec: TopicSpec, actual: ActualTopic | None) -> list[str]:
    """What the cluster's topic lacks against its declaration, one line each; [] when it matches.

    Fewer partitions than declared is a difference, more is not (partitions can
    only be added, and deskmail works with any number). The configs of a topic
    whose broker reports none (``ActualTopic.configs`` empty) are not compared:
    the caller says so.
    """
    if actual is None:
        return [f"{spec.name}: missing (declared: {spec.partitions} partitions, replication {spec.replication_factor})"]
    found = []
    if actual.partitions < spec.partitions:
        found.append(f"{spec.name}: {actual.partitions} partitions, declared {spec.partitions}")
    if actual.replication_factor != spec.replication_factor:
        found.append(f"{spec.name}: replication factor {actual.replication_factor}, declared "
                     f"{spec.replication_factor}")
    if not actual.configs:
        return found
    for name, value in spec.configs.items():
        have = actual.configs.get(name)
        if have != value:
            found.append(f"{spec.name}: {name} is {have if have is not None else 'unset'}, declared {value}")
    return found


def refusals(spec: TopicSpec, actual: ActualTopic | None) -> list[str]:
    """Why acknowledged records written to ``actual`` could be lost, one line each; []
    when nothing says so. A producing process refuses to start on any (see
    ``services/common/durability.py``).

    Lost means: a replication factor below the declared one, a ``min.insync.replicas``
    below the declared one (an acks=all write acknowledged by fewer disks), or
    ``unclean.leader.election.enable=true`` (an out-of-sync replica may become leader
    and drop what the others acknowledged). A missing topic is not refused here, and
    a broker that reports no configs (``configs`` empty) has only its replication
    compared. A ``min.insync.replicas`` the broker does not report counts as Kafka's
    default, 1.
    """
    if actual is None:
        return []
    found = []
    if actual.replication_factor < spec.replication_factor:
        found.append(f"{spec.name}: replication factor {actual.replication_factor}, declared "
                     f"{spec.replication_factor}")
    if not actual.configs:
        return found
    declared_insync = int(spec.configs.get("min.insync.replicas", "1"))
    have = actual.configs.get("min.insync.replicas", "1")
    if not have.isdigit() or int(have) < declared_insync:
        found.append(f"{spec.name}: min.insync.replicas is {have}, declared {declared_insync}")
    if actual.configs.get("unclean.leader.election.enable", "false").strip().lower() == "true":
        found.append(f"{spec.name}: unclean.leader.election.enable is true")
    return found
