"""A producing process checks, at start, that the topics it writes keep what it writes.

acks=all (fixed in ``kafka.py``) makes an acknowledgement mean "every in-sync
replica has it"; that is worth what the topic's replication factor and
``min.insync.replicas`` are, and nothing when an out-of-sync replica may become
leader (``unclean.leader.election.enable``). ``check_writes`` describes the topics
a process writes and raises ``UnsafeTopics`` (exit code 2: refused to start) on
any of ``topics.refusals``. It runs once, before the process produces anything.

A broker that reports no topic configs (the local broker, Tansu) has its
replication compared and its configs not: the process says so in one log line
and runs. A topic that does not exist yet is not refused here (`deskmail topics
create` or the Strimzi topic operator makes it). A broker that cannot be reached
is ``Unavailable`` (exit code 3): the supervisor starts the process again later.

The stages write their ``StageSpec.outputs`` and the dead-letter topic; the
fetcher (and the ingress) and the api write what ``FETCHER_WRITES`` and
``API_WRITES`` say. The Strimzi users (``strimzi.py``) get Write on exactly these.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence

from services.common import topics
from services.common.config import Config
from services.common.errors import Unavailable, UnsafeTopics

log = logging.getLogger("deskmail.durability")

Describe = Callable[[Sequence[str]], Mapping[str, topics.ActualTopic]]

# Keys of ``config.topics`` the processes that are not stages produce to.
FETCHER_WRITES = ("inbound",)  # the IMAP workers and the SMTP/LMTP ingress
API_WRITES = ("outbound", "inbound")  # the outbox relay; a release of suspended mail


def check_writes(config: Config, describe: Describe, keys: Sequence[str], stage: str) -> None:
    """Refuse to start (``UnsafeTopics``) when a topic of ``keys`` could lose records.

    ``describe`` is ``Kafka.describe_topics``; its broker errors become ``Unavailable``.
    """
    specs = [spec for spec in topics.declared(config) if spec.key in keys]
    try:
        actual = describe([spec.name for spec in specs])
    except Exception as exc:  # kafka-python's errors stay in kafka.py's world: any failure to describe
        raise Unavailable(f"cannot check the topics this process writes: {exc}") from exc
    found = [line for spec in specs for line in topics.refusals(spec, actual.get(spec.name))]
    if found:
        raise UnsafeTopics("a topic this process writes could lose acknowledged records: " + "; ".join(found))
    unreported = [spec.name for spec in specs if spec.name in actual and not actual[spec.name].configs]
    if unreported:
        log.warning("the broker reports no topic configs: replication checked, min.insync.replicas and "
                    "unclean leader election not", extra={"stage": stage, "topic": ",".join(unreported)})
    else:
        log.info("the topics this process writes keep acknowledged records",
                 extra={"stage": stage, "topic": ",".join(spec.name for spec in specs if spec.name in actual)})
