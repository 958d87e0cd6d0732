"""The fetcher process: the IMAP mailboxes this replica holds a lease on, one
``MailboxWorker`` thread each, one shared producer. (The SMTP/LMTP ingress is a
process of its own: services.fetcher.ingress_runner.)

Any number of replicas may run: they share the mailboxes through the lease group
(``services.fetcher.leases``; ``keeper.py`` starts and stops the workers as
partitions are assigned and revoked). A replica holding no partition is ready and
idle.

Mailboxes are isolated: each worker handles its own connection, login and
protocol errors and reconnects on its own. A worker that dies of anything else
(a bug) stops the whole process after the others finished their batch in
flight, so the supervisor restarts it; unmarked mail is fetched again then.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence

from services.common import durability
from services.common.blobs import blob_store
from services.common.config import Config
from services.common.errors import Transient, Unavailable
from services.common.kafka import Kafka
from services.common.runtime import Health
from services.fetcher.keeper import LeaseKeeper
from services.fetcher.leases import LeaseBook, LeaseDeadline, LeaseTiming, MailboxLease
from services.fetcher.pool import WorkerPool
from services.fetcher.records import inline_max_bytes
from services.fetcher.worker import MailboxWorker, stop_seconds

log = logging.getLogger("deskmail.fetcher")

# How long a fetcher waits at start for the lease topic to exist (`deskmail topics create`).
LEASE_TOPIC_WAIT_SECONDS = 60.0


def replica_id() -> str:
    """This process among the fetcher replicas, in its log lines: host name (the pod's) and pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_fetcher(
    config: Config,
    stop: threading.Event,
    health: Health,
    bootstrap: str | Sequence[str] | None = None,
) -> None:
    """Hold mailbox leases and run their workers until ``stop`` is set; then drain and return.

    Ready once the lease keeper started, with or without mailboxes;
    ticks ``health`` every second. On ``stop`` each worker finishes its batch in
    flight (produced, acknowledged and marked, or left unmarked) before the replica
    leaves the lease group and the producer is closed. Raises ``RuntimeError`` if a
    worker or the lease keeper died of an unexpected error (after stopping the
    others), ``Unavailable`` if the lease topic does not exist, ``UnsafeTopics``
    before anything starts if the inbound topic could lose records.
    """
    servers = [bootstrap] if isinstance(bootstrap, str) else bootstrap
    kafka = Kafka(config, servers)
    durability.check_writes(config, kafka.describe_topics, durability.FETCHER_WRITES, "fetcher")
    producer = kafka.producer()
    blobs = blob_store(config)
    inline_max = inline_max_bytes(config)
    mailboxes = {m.address: m for m in config.mailboxes if m.imap is not None}
    timing = lease_timing(config)
    deadline = LeaseDeadline(timing.validity_seconds)

    def build(address: str, stop_worker: threading.Event, lease: MailboxLease) -> MailboxWorker:
        return MailboxWorker(mailboxes[address], config.fetcher, producer, config.topics["inbound"], blobs,
                             stop_worker, health, inline_max_bytes=inline_max, lease=lease)

    pool = WorkerPool(build, deadline)
    keeper: LeaseKeeper | None = None
    try:
        if mailboxes:
            keeper = start_keeper(config, kafka, pool, deadline, timing)
        health.set_ready(True)
        log.info("fetcher running", extra={"stage": "fetcher", "count": len(mailboxes), "replica": replica_id()})
        while True:
            health.tick()
            if pool.crashed or (keeper is not None and keeper.failure) or stop.wait(1.0):
                break
    finally:
        health.set_ready(False)
        until = time.monotonic() + stop_seconds(config.fetcher)
        if keeper is not None:
            keeper.stop()
            keeper.close(until)  # logs each worker that did not stop in time
        producer.close()
        log.info("fetcher stopped", extra={"stage": "fetcher"})
    if pool.crashed:
        address, error = pool.crashed[0]
        raise RuntimeError(f"mailbox worker {address} crashed: {type(error).__name__}: {error}") from error
    if keeper is not None and keeper.failure is not None:
        error = keeper.failure
        raise RuntimeError(f"the lease keeper failed: {type(error).__name__}: {error}") from error


def lease_timing(config: Config) -> LeaseTiming:
    """The lease group's timeouts (the loader resolved ``fetcher.lease`` from
    ``kafka.consumer`` where unset) and how long a revoked worker may take to stop."""
    lease, consumer = config.fetcher.lease, config.kafka.consumer
    return LeaseTiming(lease.session_timeout_ms or consumer.session_timeout_ms,
                       lease.heartbeat_interval_ms or consumer.heartbeat_interval_ms, stop_seconds(config.fetcher))


def start_keeper(config: Config, kafka: Kafka, pool: WorkerPool, deadline: LeaseDeadline,
                 timing: LeaseTiming) -> LeaseKeeper:
    """Join the lease group ``<group_prefix>-fetcher`` in a thread of its own.

    Raises Unavailable when the lease topic does not exist within a minute. Its
    partition count is read once: mailboxes map onto the partitions the topic has
    (``fetcher.lease_partitions`` only says how many ``topics create`` makes).
    """
    topic = config.topics["leases"]
    group = f"{config.kafka.group_prefix}-fetcher"
    consumer = kafka.lease_consumer(group, topic, timing.session_timeout_ms, timing.heartbeat_interval_ms,
                                    timing.max_poll_interval_ms)
    try:
        try:
            partitions = consumer.partition_count(LEASE_TOPIC_WAIT_SECONDS)
        except Transient as exc:
            raise Unavailable(str(exc)) from exc
        if partitions is None:
            raise Unavailable(f"the lease topic {topic} does not exist: run `deskmail topics create`")
        if partitions != config.fetcher.lease_partitions:
            log.warning("the lease topic has another partition count than fetcher.lease_partitions; its own is used",
                        extra={"stage": "fetcher", "topic": topic, "count": partitions})
        book = LeaseBook([m.address for m in config.mailboxes if m.imap is not None], partitions)
        keeper = LeaseKeeper(consumer, book, pool, deadline, timing, replica_id(), group)
        keeper.start()
    except BaseException:
        consumer.close()
        raise
    return keeper
