"""The ingress process (`deskmail run ingress`): the SMTP/LMTP listeners for the
``ingress: true`` mailboxes, one producer, the blob store.

Stateless: any number of replicas may run side by side, each on its own pod (or
port), and none knows of the others; the MTA spreads its connections over them and
retries elsewhere what one answered with a 4xx. It holds nothing that outlives a
transaction: a 250 is said only after the broker acknowledged the mail.

Ready while every listener accepts and the broker answered a metadata request for
the inbound topic within the last ``PROBE_FRESH_SECONDS``, so a replica cut off from
the broker leaves the Service (its transactions would only get 451). On ``stop`` it
is unready at once and drains (services.fetcher.ingress.IngressServer.stop): the
listeners close, transactions in flight finish, everything is over within
``ingress.drain_seconds`` plus the goodbye's few seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from services.common import durability
from services.common.blobs import BlobStore, blob_store
from services.common.config import Config
from services.common.kafka import BrokerProbe, Kafka, Producer
from services.common.runtime import Health
from services.fetcher.ingress import IngressServer, build_ingress
from services.fetcher.records import inline_max_bytes

log = logging.getLogger("deskmail.ingress")

STAGE = "ingress"
# How often the broker is asked whether it answers, and how old an answer may be for readiness.
PROBE_SECONDS = 5.0
PROBE_FRESH_SECONDS = 30.0


class NothingToServe(Exception):
    """No mailbox has ``ingress: true``: the process has nothing to listen for."""


def run_ingress(
    config: Config,
    stop: threading.Event,
    health: Health,
    bootstrap: str | Sequence[str] | None = None,
) -> None:
    """Serve SMTP/LMTP until ``stop`` is set; then drain and return.

    Ticks ``health`` every second. Raises ``NothingToServe`` when no mailbox has
    ``ingress: true``, ``UnsafeTopics`` before listening if the inbound topic could
    lose records, ``RuntimeError`` when a listener cannot be bound.
    """
    if not any(m.ingress for m in config.mailboxes):
        raise NothingToServe("no mailbox has `ingress: true`: the ingress has nothing to listen for")
    servers = [bootstrap] if isinstance(bootstrap, str) else bootstrap
    kafka = Kafka(config, servers)
    durability.check_writes(config, kafka.describe_topics, durability.FETCHER_WRITES, STAGE)
    producer = kafka.producer()
    probe = kafka.probe()
    watch = BrokerWatch(probe, config.topics["inbound"])
    server: IngressServer | None = None
    try:
        server = start_ingress(config, producer, blob_store(config))
        watch.start()
        log.info("ingress running", extra={"stage": STAGE, "count": len(server.addresses)})
        while not stop.wait(1.0):
            health.tick()
            reason = None if server.listening else "not listening"
            reason = reason or (None if watch.fresh() else "the broker did not answer in the last "
                                f"{PROBE_FRESH_SECONDS:.0f} s")
            health.set_ready(reason is None, reason)
    finally:
        health.set_ready(False, "stopping")
        if server is not None:
            server.stop()  # the drain: bounded by ingress.drain_seconds
        watch.stop()
        producer.close()
        probe.close()
        log.info("ingress stopped", extra={"stage": STAGE})


def start_ingress(config: Config, producer: Producer, blobs: BlobStore) -> IngressServer:
    """Build and start the ingress of the config's ``ingress: true`` mailboxes.

    It listens on ``ingress.listen`` (and ``ingress.lmtp_listen``), writes InboundMail
    records with source ``smtp`` through ``producer`` and ``blobs``, and answers 250
    only after the broker acknowledged. Raises ``NothingToServe`` without such
    mailboxes and ``RuntimeError`` when a port cannot be bound.
    """
    ingress = build_ingress(config, producer, blobs, inline_max_bytes(config))
    if ingress is None:
        raise NothingToServe("no mailbox has `ingress: true`: the ingress has nothing to listen for")
    try:
        ingress.start()
    except OSError as exc:
        where = ", ".join(f"{item.host}:{item.port} ({item.protocol})" for item in ingress.listeners)
        raise RuntimeError(f"the ingress cannot listen on {where}: {exc.strerror or exc}") from exc
    return ingress


class BrokerWatch:
    """Asks the broker every ``PROBE_SECONDS``, in a thread of its own (a probe may block
    for a minute), and remembers when it last answered."""

    def __init__(self, probe: BrokerProbe, topic: str):
        self.probe = probe
        self.topic = topic
        self._answered: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="broker-watch", daemon=True)
        self._warned = False

    def start(self) -> None:
        self._thread.start()

    def fresh(self) -> bool:
        answered = self._answered
        return answered is not None and time.monotonic() - answered < PROBE_FRESH_SECONDS

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.probe.reachable(self.topic):
                self._answered = time.monotonic()
                self._warned = False
            elif not self._warned:
                self._warned = True
                log.warning("the broker does not answer, or has no inbound topic",
                            extra={"stage": STAGE, "topic": self.topic})
            self._stop.wait(PROBE_SECONDS)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=PROBE_SECONDS)
