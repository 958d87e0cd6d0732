"""The one module that imports kafka-python: client settings, the adapters that
give the consume loop its ``Source`` and ``Sink`` (see ``bus.py``), the fetcher its
lease group (``LeaseConsumer``, see ``services/fetcher/leases.py``), the ingress its
readiness check (``BrokerProbe``), and a consumer group's offsets as `deskmail replay`
reads and moves them (``GroupOffsets``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

# Before any client exists: bounds kafka-python's blocking calls (dpkp/kafka-python#3121).
from services.common import kafka_patch  # noqa: F401, I001
# ... and keeps a group join that ended between two polls.
from services.common import kafka_join_patch  # noqa: F401, I001

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.partitioner import DefaultPartitioner, Partitioner
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic, OffsetSpec
from kafka.errors import (FencedInstanceIdError, FencedMemberEpochError, IllegalGenerationError, KafkaError,
                          NoError, RebalanceInProgressError, StaleMemberEpochError, TopicAlreadyExistsError,
                          UnknownMemberIdError)
from kafka.structs import OffsetAndMetadata, TopicPartition

from services.common import metrics, partitioning, replay, topics
from services.common.bus import Out, Partition, Record
from services.common.config import Config
from services.common.errors import Transient

# The producer's batch (per partition) and how long a record may wait to fill one: see Kafka.producer.
BATCH_BYTES = 1024 * 1024
LINGER_MS = 250
# What one fetch may bring, per partition and in all. A record larger than either
# still comes, alone (the broker returns the first batch whatever its size; Kafka
# since 0.10.1, KIP-74), so kafka.max_message_bytes need not fit: sized to it, each
# of four partitions could bring 8 MiB into memory ahead of the consume loop, and a
# router behind on a backlog held ~45 MB more (tests/bench/ingest.py).
PARTITION_FETCH_BYTES = 1024 * 1024
FETCH_BYTES = 4 * 1024 * 1024


class KeyPartitioner(Partitioner):
    """kafka-python's default partitioning (murmur2 of the key over all partitions, a
    random available one without a key) with the faster hash of
    ``services/common/partitioning.py``: the same partition for every key."""

    def __init__(self) -> None:
        self.hashes = partitioning.KeyHashes()
        self.unkeyed = DefaultPartitioner()

    def partition(self, topic: str, key: Any, serialized_key: bytes | None, value: Any,
                  serialized_value: bytes | None, cluster: Any) -> int:
        if serialized_key is None:
            return int(self.unkeyed.partition(topic, key, serialized_key, value, serialized_value, cluster))
        found = cluster.partitions_for_topic(topic)
        if not found:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        return int(sorted(found)[self.hashes(bytes(serialized_key)) % len(found)])


class Kafka:
    """Builds kafka-python clients from the config; the only place they are made."""

    def __init__(self, config: Config, bootstrap: Sequence[str] | None = None):
        self.config = config
        self.bootstrap = list(bootstrap or config.kafka.bootstrap_servers)
        if not self.bootstrap:
            raise ValueError("kafka.bootstrap_servers is empty (deskmail up starts a local broker)")

    def _common(self) -> dict[str, Any]:
        k = self.config.kafka
        settings: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "client_id": k.client_id,
            "security_protocol": k.security_protocol,
        }
        if k.ssl_cafile:
            settings["ssl_cafile"] = k.ssl_cafile
        if k.sasl_mechanism:
            settings["sasl_mechanism"] = k.sasl_mechanism
            settings["sasl_plain_username"] = k.sasl_username
            settings["sasl_plain_password"] = (
                self.config.kafka_password.reveal() if self.config.kafka_password else None
            )
        return settings

    def producer(self) -> "Producer":
        """The acks=all producer every process writes with; idempotent unless
        ``kafka.producer.idempotence`` is false (a warning says so)."""
        idempotence = self.config.kafka.producer.idempotence
        if not idempotence:
            _warn_once("kafka.producer.idempotence is false: a retried send may be written twice and, "
                       "with an unclean leader change, records may be reordered (the records' ids still "
                       "make every effect idempotent)")
        max_bytes = self.config.kafka.max_message_bytes
        client = KafkaProducer(
            **self._common(),
            acks="all",  # fixed: an acknowledgement means every in-sync replica has the record
            # Measured (tests/bench/produce.py; docs/benchmarks.md, "Router and fetcher per
            # record"): kafka-python's cost is per request more than per record, so records go
            # in as few batches as possible. Every caller flushes when it waits for its acks
            # (send_all, the consume loop's wait), which sends at once whatever lingers; the
            # linger only keeps the router's records, sent ~1 ms apart while it processes a
            # polled batch, together until then: 0.56 CPU-ms per command at 5 ms, 0.12 at
            # 250 ms. It bounds how long a record may wait for that flush.
            linger_ms=LINGER_MS,
            # A 22 KB mail costs ~0.17 CPU-ms to produce in 256 KiB batches, ~0.08 in 1 MiB
            # ones and ~0.05 in 4 MiB; with the 250 ms linger the pipeline's CPU is the same at
            # 1 and 4 MiB, and 4 MiB held ~35 MB more in the router (156 MB against 120 at its
            # peak). A batch is one request: never more than the broker takes
            # (kafka.max_message_bytes).
            batch_size=min(BATCH_BYTES, max_bytes),
            partitioner=KeyPartitioner(),  # kafka-python's partitions, a faster hash
            # Broker-side deduplication of retries. Off only for a broker that forgets
            # producer ids when it restarts (the local in-memory broker): an idempotent
            # producer then fails every later send with UnknownProducerIdError.
            enable_idempotence=idempotence,
            max_in_flight_requests_per_connection=1,  # keeps per-partition order across retries
            max_request_size=max_bytes,
            delivery_timeout_ms=120_000,
            request_timeout_ms=30_000,
            max_block_ms=60_000,
        )
        return Producer(client)

    def source(self, group: str, max_poll_records: int | None = None) -> KafkaSource:
        """A group consumer for the consume loop (which subscribes it), auto-commit off."""
        c = self.config.kafka.consumer
        consumer = KafkaConsumer(
            **self._common(),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=c.session_timeout_ms,
            heartbeat_interval_ms=c.heartbeat_interval_ms,
            max_poll_records=max_poll_records or c.max_poll_records,
            fetch_max_bytes=FETCH_BYTES,
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
            # How long the broker may hold a fetch that found nothing (500 ms by default).
            # Kafka answers as soon as a record arrives, but a broker that does not (the
            # local one) delivers a record up to that long after it was written, at every
            # hop: measured there, p50 125 ms with 500, 21 ms with 100. An idle consumer
            # then fetches 10 times a second: 2% of a core, and 1.4% of the broker's.
            fetch_max_wait_ms=100,
        )
        return KafkaSource(consumer)

    def lease_consumer(
        self, group: str, topic: str, session_timeout_ms: int, heartbeat_interval_ms: int, max_poll_interval_ms: int,
    ) -> "LeaseConsumer":
        """A member of the fetchers' lease group on ``topic`` (which carries no records).

        ``max_poll_interval_ms`` is also the rebalance timeout: the longest the group waits
        for this member to give up its partitions (services/fetcher/leases.py sets it above
        the time a revoked worker may take to stop). The topic is never created by
        subscribing to it: `deskmail topics create` declares its partition count.
        """
        consumer = KafkaConsumer(
            **self._common(),
            group_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            allow_auto_create_topics=False,
            session_timeout_ms=session_timeout_ms,
            heartbeat_interval_ms=heartbeat_interval_ms,
            max_poll_interval_ms=max_poll_interval_ms,
            max_poll_records=1,
        )
        return LeaseConsumer(consumer, topic)

    def probe(self) -> "BrokerProbe":
        """A client in no group that asks the broker for fresh metadata (``BrokerProbe.reachable``)."""
        return BrokerProbe(KafkaConsumer(**self._common(), group_id=None, enable_auto_commit=False))

    def reader(self) -> KafkaConsumer:
        """A consumer in no group, for reading a topic from the start (nothing is committed)."""
        return KafkaConsumer(
            **self._common(),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=FETCH_BYTES,
            max_partition_fetch_bytes=PARTITION_FETCH_BYTES,
        )

    def create_topics(self, partitions: int | None = None) -> list[str]:
        """Create every declared topic that does not exist yet, with its configs
        (services/common/topics.py); returns the names created. Existing topics
        are left as they are: `deskmail topics diff` shows how they differ."""
        admin = KafkaAdminClient(**self._common())
        try:
            existing = set(admin.list_topics())
            created = []
            for spec in topics.declared(self.config, partitions):
                if spec.name in existing:
                    continue
                try:
                    admin.create_topics([NewTopic(name=spec.name, num_partitions=spec.partitions,
                                                  replication_factor=spec.replication_factor,
                                                  topic_configs=dict(spec.configs))])
                    created.append(spec.name)
                except TopicAlreadyExistsError:
                    pass
            return created
        finally:
            admin.close()

    def describe_topics(self, names: Sequence[str]) -> dict[str, topics.ActualTopic]:
        """The named topics as the cluster has them (absent: not there)."""
        admin = KafkaAdminClient(**self._common())
        try:
            present = set(admin.list_topics()) & set(names)
            if not present:
                return {}
            found: dict[str, topics.ActualTopic] = {}
            configs = _topic_configs(admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, name) for name in sorted(present)]))
            for item in admin.describe_topics(sorted(present)):
                if item.get("error_code", 0):
                    continue
                parts = item.get("partitions") or []
                replicas = min((len(p.get("replica_nodes") or ()) for p in parts), default=0)
                found[item["name"]] = topics.ActualTopic(item["name"], len(parts), replicas,
                                                         configs.get(item["name"], {}))
            return found
        finally:
            admin.close()

    def group_lag(self, group: str, topics_: Sequence[str]) -> dict[tuple[str, int], int]:
        """Per (topic, partition): the records ``group`` has not committed, read from
        the broker (committed offset against the log end; a partition the group never
        committed counts from its earliest record). A missing topic is left out."""
        admin = KafkaAdminClient(**self._common())
        try:
            present = set(admin.list_topics()) & set(topics_)
            if not present:
                return {}
            tps = [TopicPartition(item["name"], p["partition_index"])
                   for item in admin.describe_topics(sorted(present)) if not item.get("error_code", 0)
                   for p in item.get("partitions") or ()]
            if not tps:
                return {}
            answer = admin.list_group_offsets(group)
            committed = answer.get(group, answer) if isinstance(answer, Mapping) else {}
            latest = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
            earliest = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in tps})
        finally:
            admin.close()
        lag: dict[tuple[str, int], int] = {}
        for tp in tps:
            end = _offset_of_any(latest.get(tp))
            done = committed.get(tp)
            start = done.offset if done is not None and done.offset >= 0 else _offset_of_any(earliest.get(tp))
            if end is not None and start is not None:
                lag[(tp.topic, tp.partition)] = max(0, end - start)
        return lag

    def group_offsets(self, group: str) -> "GroupOffsets":
        """The offsets of consumer group ``group`` (`deskmail replay`); close it after use."""
        return GroupOffsets(self, group)


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        logging.getLogger("deskmail.kafka").warning(message)


def _offset_of_any(value: Any) -> int | None:
    offset = getattr(value, "offset", None)
    return offset if isinstance(offset, int) and offset >= 0 else None


def _topic_configs(result: Any) -> dict[str, dict[str, str]]:
    """``describe_configs``'s answer as {topic: {config: value}}, whatever shape the
    client version gives it (kafka-python 3: {"topic": {name: {config: value or
    {"value": ...}}}}); a broker that reports nothing gives {}."""
    by_topic = result.get("topic", {}) if isinstance(result, Mapping) else {}
    out: dict[str, dict[str, str]] = {}
    for name, entries in by_topic.items():
        values: dict[str, str] = {}
        for key, value in (entries or {}).items():
            if isinstance(value, Mapping):
                value = value.get("value")
            if value is not None:
                values[str(key)] = str(value)
        out[str(name)] = values
    return out


class Producer:
    """acks=all producer; ``send_all`` returns only when the broker acknowledged everything."""

    def __init__(self, client: KafkaProducer):
        self.client = client

    def send(self, out: Out) -> Any:
        """Queue one record; raises Transient when the broker cannot take it (no metadata in time)."""
        try:
            return self.client.send(out.topic, key=out.key, value=out.value)
        except KafkaError as exc:
            raise Transient(f"broker did not take a record for {out.topic}: {exc}") from exc

    def send_all(self, outs: Sequence[Out], stage: str, timeout: float = 120.0) -> None:
        """Send and wait for every ack. Raises Transient when the broker did not take them."""
        futures = [(out, self.send(out)) for out in outs]
        self.wait(futures, stage, timeout)

    def wait(self, futures: Sequence[tuple[Out, Any]], stage: str, timeout: float = 120.0) -> None:
        """One flush for the whole batch, then each record's outcome. Raises Transient
        when the broker did not acknowledge one of them."""
        if not futures:
            return
        try:
            self.client.flush(timeout=timeout)
        except KafkaError as exc:
            raise Transient(f"broker did not acknowledge records in {timeout}s: {exc}") from exc
        produced: dict[str, int] = {}  # counted per batch: no label lookup per record
        try:
            for out, future in futures:
                try:
                    if not future.is_done:  # flush returned: only a batch split and sent again
                        future.get(timeout=timeout)
                    if future.exception is not None:
                        raise future.exception
                except KafkaError as exc:
                    raise Transient(f"broker did not acknowledge a record on {out.topic}: {exc}") from exc
                produced[out.topic] = produced.get(out.topic, 0) + 1
        finally:
            for topic, count in produced.items():
                metrics.BUS_PRODUCED.labels(stage, topic).inc(count)

    def close(self, timeout: float = 10.0) -> None:
        self.client.close(timeout=timeout)


class KafkaSource:
    """A group consumer as the consume loop's ``Source``: kafka-python types stay here."""

    def __init__(self, consumer: KafkaConsumer):
        self.consumer = consumer

    def subscribe(self, topics: Sequence[str], on_revoked: Callable[[set[Partition]], None]) -> None:
        self.consumer.subscribe(list(topics), listener=_Listener(on_revoked))

    def poll(self, timeout_ms: int) -> dict[Partition, list[Record]]:
        batches = self.consumer.poll(timeout_ms=timeout_ms)
        return {
            Partition(tp.topic, tp.partition): [
                Record(r.topic, r.partition, r.offset, r.key, r.value or b"",
                       tuple((k, v or b"") for k, v in r.headers) if r.headers else ())
                for r in records
            ]
            for tp, records in batches.items()
        }

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        self.consumer.commit({TopicPartition(*tp): OffsetAndMetadata(offset, None, -1)
                              for tp, offset in offsets.items()})

    def assignment(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self.consumer.assignment()}

    def member(self) -> bool:
        # A stable generation: joined and synced, whatever was assigned (possibly nothing).
        # kafka-python keeps the group state on its coordinator, with no public accessor.
        coordinator = getattr(self.consumer, "_coordinator", None)
        return coordinator is not None and coordinator.generation_if_stable() is not None

    def seek(self, tp: Partition, offset: int) -> None:
        self.consumer.seek(TopicPartition(*tp), offset)

    def pause(self, partitions: set[Partition]) -> None:
        if partitions:
            self.consumer.pause(*(TopicPartition(*tp) for tp in partitions))

    def resume(self, partitions: set[Partition]) -> None:
        if partitions:
            self.consumer.resume(*(TopicPartition(*tp) for tp in partitions))

    def lag(self, tp: Partition) -> int | None:
        # highwater() comes with each fetch response (end_offsets() is wrong on some
        # brokers, see docs/architecture.md); position() may need a round trip.
        partition = TopicPartition(*tp)
        high = self.consumer.highwater(partition)
        if high is None:
            return None
        try:
            position = self.consumer.position(partition, timeout_ms=100)
        except KafkaError:
            return None
        return None if position is None else high - position

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class BrokerProbe:
    """Whether the broker answers now: a metadata request per call, never a cached answer."""

    def __init__(self, consumer: KafkaConsumer):
        self.consumer = consumer

    def reachable(self, topic: str) -> bool:
        """True when the broker answered and knows ``topic``. Blocks (kafka_patch bounds
        the wait at 65 s); never raises for a broker that is down."""
        try:
            return topic in self.consumer.topics()
        except KafkaError:
            return False

    def close(self) -> None:
        self.consumer.close(autocommit=False)


class LeaseConsumer:
    """The fetcher's lease group member: partition numbers in, partition numbers out.

    Rebalance callbacks run on kafka-python's IO thread, inside the ``poll`` of the
    thread that polls. The revocation callback must not block that thread (it also
    sends the heartbeats), so it only starts stopping the workers and returns a probe;
    the listener awaits the probe in short sleeps of the client's own event loop, and
    the member rejoins (letting the partitions move) only once the probe says done.
    """

    PROBE_SECONDS = 0.05

    def __init__(self, consumer: KafkaConsumer, topic: str):
        self.consumer = consumer
        self.topic = topic

    def partition_count(self, wait_seconds: float) -> int | None:
        """The lease topic's partition count, waiting up to ``wait_seconds`` for it to
        exist; None when it does not. Raises Transient when the broker did not answer."""
        deadline = time.monotonic() + wait_seconds
        while True:
            failure: KafkaError | None = None
            try:
                found = self.consumer.partitions_for_topic(self.topic)
            except KafkaError as exc:
                found, failure = set(), exc
            if found:
                return len(found)
            if time.monotonic() >= deadline:
                if failure is not None:
                    raise Transient(f"the broker did not describe {self.topic}: {failure}") from failure
                return None
            time.sleep(1.0)

    def subscribe(
        self,
        on_assigned: Callable[[set[int]], None],
        on_revoked: Callable[[set[int], bool], Callable[[], bool]],
    ) -> None:
        """``on_revoked(partitions, lost)`` starts giving them up and returns a probe that
        answers True once they are given up; ``lost`` when the member was already expelled."""
        # kafka-python offers no public awaitable sleep for its event loop; its selector's is
        # the one the coordinator itself awaits (kafka-python is pinned, see kafka_patch).
        sleep = self.consumer._net.sleep
        self.consumer.subscribe([self.topic], listener=_LeaseListener(self.topic, on_assigned, on_revoked, sleep,
                                                                      self.PROBE_SECONDS))

    def poll(self, timeout_ms: int) -> None:
        """Drive the membership (joins, rebalance callbacks); records are never expected.
        Raises Transient when the client reports a broker failure."""
        try:
            self.consumer.poll(timeout_ms=timeout_ms)
        except KafkaError as exc:
            raise Transient(f"the lease group could not be polled: {exc}") from exc

    def confirm(self, timeout_ms: int) -> bool:
        """Whether the broker accepts this member as the owner of its partitions now.

        An offset commit carries the member id and generation, and the group coordinator
        accepts it only from a member of the current generation (Kafka's also counts it
        as the member's heartbeat), so a successful one confirms the membership as of the
        moment it was sent. False on any failure (rebalancing, expelled, unreachable).
        The offsets are 0: the topic has no records, only the membership matters.
        """
        assigned = self.consumer.assignment()
        if not assigned:
            return False
        try:
            self.consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in assigned}, timeout_ms=timeout_ms)
        except KafkaError:
            return False
        return True

    def close(self, timeout_ms: int = 10_000) -> None:
        """Leave the group (its revocation callback runs first), so the partitions move now."""
        self.consumer.close(autocommit=False, timeout_ms=timeout_ms)


class _LeaseListener(AsyncConsumerRebalanceListener):
    """Waits for the workers of revoked partitions in the client's event loop (see LeaseConsumer)."""

    def __init__(
        self,
        topic: str,
        on_assigned: Callable[[set[int]], None],
        on_revoked: Callable[[set[int], bool], Callable[[], bool]],
        sleep: Callable[[float], Any],
        probe_seconds: float,
    ):
        self.topic = topic
        self.on_assigned = on_assigned
        self.on_revoked = on_revoked
        self.sleep = sleep
        self.probe_seconds = probe_seconds

    def _ours(self, partitions: Iterable[TopicPartition]) -> set[int]:
        return {tp.partition for tp in partitions if tp.topic == self.topic}

    async def _give_up(self, partitions: Iterable[TopicPartition], lost: bool) -> None:
        done = self.on_revoked(self._ours(partitions), lost)
        while not done():
            await self.sleep(self.probe_seconds)

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._give_up(revoked, lost=False)

    async def on_partitions_lost(self, lost: Iterable[TopicPartition]) -> None:
        await self._give_up(lost, lost=True)

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        self.on_assigned(self._ours(assigned))


class _SlowLeaseListenerNotice(logging.Filter):
    """kafka-python warns about a rebalance listener that takes over a second and suggests
    an asynchronous one. The lease listener is one, and waits for the workers on purpose
    (heartbeats go on meanwhile): that warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (str(record.msg).startswith("Rebalance listener") and bool(record.args)
                    and isinstance(record.args, tuple) and record.args[0] == _LeaseListener.__name__)


logging.getLogger("kafka.coordinator.consumer").addFilter(_SlowLeaseListenerNotice())


class _Listener(ConsumerRebalanceListener):
    def __init__(self, on_revoked: Callable[[set[Partition]], None]):
        self.on_revoked = on_revoked

    def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        self.on_revoked({Partition(tp.topic, tp.partition) for tp in revoked})

    def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        pass


# The answers to an offset commit from outside the group that mean "this group has
# members": its offsets move only while it is empty (or dead). Classic groups answer
# UNKNOWN_MEMBER_ID (Kafka and Tansu), ILLEGAL_GENERATION or REBALANCE_IN_PROGRESS;
# KIP-848 consumer groups a member-epoch error.
_GROUP_BUSY = (UnknownMemberIdError, RebalanceInProgressError, IllegalGenerationError, FencedInstanceIdError,
               StaleMemberEpochError, FencedMemberEpochError)


class GroupOffsets:
    """One consumer group's offsets on its input topics, for `deskmail replay`:
    read (``states``), checked (``members``), moved (``move``) and watched
    (``committed``). kafka-python types stay here; partitions are ``Partition``."""

    def __init__(self, kafka: Kafka, group: str):
        self.group = group
        common = kafka._common()
        self.admin = KafkaAdminClient(**common)
        # No group: this consumer only asks for offsets and reads high watermarks.
        self.consumer = KafkaConsumer(**common, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100)

    def close(self) -> None:
        self.consumer.close(autocommit=False)
        self.admin.close()

    def partitions(self, names: Sequence[str]) -> list[Partition]:
        """Every partition of the named topics, in that order; ValueError names a topic
        that does not exist."""
        described = {item["name"]: item for item in self.admin.describe_topics(list(names))}
        found = []
        for name in names:
            item = described.get(name)
            if item is None or item.get("error_code", 0) or not item.get("partitions"):
                raise ValueError(f"topic {name} does not exist")
            found += sorted(Partition(name, p["partition_index"]) for p in item["partitions"])
        return found

    def states(self, partitions: Sequence[Partition], at_ms: int | None = None,
               timeout: float = 30.0) -> list[replay.PartitionState]:
        """Committed offset, beginning, highwater and (with ``at_ms``) the first offset
        at or after that time of each partition. Raises Transient when the broker
        gives no high watermark within ``timeout``."""
        tps = [TopicPartition(*tp) for tp in partitions]
        committed = self.committed(partitions)
        beginning = self.consumer.beginning_offsets(tps)
        highwater = self._highwaters(tps, timeout)
        at_time: dict[TopicPartition, int | None] = {}
        if at_ms is not None:
            for tp, found in self.consumer.offsets_for_times({tp: at_ms for tp in tps}).items():
                # No record at or after the time is None on Kafka; Tansu answers offset 0 with
                # timestamp -1 instead (taken as-is, that would replay the whole partition).
                # An answer older than the time asked for is no answer either.
                at_time[tp] = None if found is None or found.timestamp < at_ms else int(found.offset)
        return [replay.PartitionState(tp.topic, tp.partition, committed[(tp.topic, tp.partition)], int(beginning[tp]),
                                      highwater[tp], at_time.get(tp)) for tp in tps]

    def _highwaters(self, tps: list[TopicPartition], timeout: float) -> dict[TopicPartition, int]:
        # The high watermark comes with every fetch response. end_offsets() is not it on
        # every broker (Tansu answers the last batch's base offset + 1), so fetch from
        # there and read highwater(); whatever records come back are dropped.
        self.consumer.assign(tps)
        for tp, end in self.consumer.end_offsets(tps).items():
            self.consumer.seek(tp, int(end))
        deadline = time.monotonic() + timeout
        while any(self.consumer.highwater(tp) is None for tp in tps):
            if time.monotonic() > deadline:
                missing = [f"{tp.topic}[{tp.partition}]" for tp in tps if self.consumer.highwater(tp) is None]
                raise Transient(f"no high watermark for {', '.join(missing)} in {timeout:.0f}s")
            self.consumer.poll(timeout_ms=200, max_records=1)
        return {tp: int(self.consumer.highwater(tp)) for tp in tps}

    def committed(self, partitions: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int | None]:
        """The group's committed offset per (topic, partition) (None: never committed)."""
        answer = self.admin.list_group_offsets({self.group: [TopicPartition(*tp) for tp in partitions]})
        found = answer.get(self.group, {})
        offsets: dict[tuple[str, int], int | None] = {}
        for tp in partitions:
            value = found.get(TopicPartition(*tp))
            offsets[tp] = None if value is None or value.offset < 0 else int(value.offset)
        return offsets

    def members(self) -> int | None:
        """How many members the group has, or None when the broker cannot say.

        Tansu's DescribeGroups answer cannot be read by kafka-python ("15 is not a valid
        ACLOperation": a ValueError while parsing it); there the broker's refusal to
        commit for a group with members (``move``) is the only check, and it is the
        authoritative one everywhere: this is the early, friendlier answer on Kafka.
        """
        try:
            described = self.admin.describe_groups([self.group])
        except ValueError:
            return None
        group = described.get(self.group) or {}
        if group.get("error"):
            return None
        return len(group.get("members") or ())

    def move(self, offsets: Mapping[tuple[str, int], int]) -> None:
        """Commit ``offsets`` for the group. Raises ``replay.GroupActive`` when the group
        has members (the broker refuses then, for every partition alike) and
        ``replay.OffsetsNotMoved`` for any other refusal."""
        if not offsets:
            return
        result = self.admin.alter_group_offsets(
            self.group, {TopicPartition(*tp): OffsetAndMetadata(offset, "", None) for tp, offset in offsets.items()})
        errors = {tp: error for tp, error in result.items() if error is not NoError}
        if any(issubclass(error, _GROUP_BUSY) for error in errors.values()):
            raise replay.GroupActive(self.members())
        if errors:
            named = ", ".join(f"{tp.topic}[{tp.partition}]: {error.__name__}" for tp, error in sorted(errors.items()))
            raise replay.OffsetsNotMoved(f"the broker refused to move the offsets of {self.group} ({named})")
