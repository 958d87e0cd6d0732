"""The fetcher process: one ``MailboxWorker`` thread per IMAP mailbox, the SMTP/LMTP
ingress for own-domain addresses, one shared producer.

Mailboxes are isolated: each worker handles its own connection, login and
protocol errors and reconnects on its own. A worker that dies of anything else
(a bug) stops the whole process after the others finished their batch in
flight, so the supervisor restarts it; unmarked mail is fetched again then.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from services.common.blobs import BlobStore, blob_store
from services.common.config import Config
from services.common.kafka import Kafka, Producer
from services.common.runtime import Health
from services.fetcher.ingress import build_ingress
from services.fetcher.worker import MailboxWorker

log = logging.getLogger("deskmail.fetcher")

# Room left in a Kafka record for the InboundMail fields around the raw bytes.
RECORD_OVERHEAD_BYTES = 64 * 1024
# How long shutdown waits for workers beyond their IMAP timeout (a send_all may wait for acks).
SHUTDOWN_GRACE_SECONDS = 130.0


def run_fetcher(
    config: Config,
    stop: threading.Event,
    health: Health,
    bootstrap: str | Sequence[str] | None = None,
) -> None:
    """Run every IMAP mailbox worker until ``stop`` is set, then drain and return.

    Ready once all workers started; ticks ``health`` every second. On ``stop``
    each worker finishes its batch in flight (produced, acknowledged and marked,
    or left unmarked) before the producer is closed. Raises ``RuntimeError`` if
    a worker died of an unexpected error (after stopping the others).
    """
    servers = [bootstrap] if isinstance(bootstrap, str) else bootstrap
    producer = Kafka(config, servers).producer()
    blobs = blob_store(config)
    halt = threading.Event()  # our own signal to the workers: stop requested, or a worker crashed
    crashed: list[tuple[str, BaseException]] = []
    inline_max = inline_max_bytes(config)
    workers = [
        MailboxWorker(mailbox, config.fetcher, producer, config.topics["inbound"], blobs, halt, health,
                      inline_max_bytes=inline_max)
        for mailbox in config.mailboxes
        if mailbox.imap is not None
    ]
    threads: list[threading.Thread] = []
    stop_ingress: Callable[[], None] | None = None
    try:
        for worker in workers:
            thread = threading.Thread(target=_guarded, args=(worker, crashed), name=f"fetcher:{worker.address}",
                                      daemon=True)
            thread.start()
            threads.append(thread)
        stop_ingress = start_ingress(config, producer, blobs, halt)
        health.set_ready(True)
        log.info("fetcher running", extra={"stage": "fetcher", "count": len(workers)})
        while True:
            health.tick()
            if crashed or stop.wait(1.0):
                break
    finally:
        health.set_ready(False)
        halt.set()
        if stop_ingress is not None:
            stop_ingress()
        deadline = time.monotonic() + config.fetcher.timeout_seconds + SHUTDOWN_GRACE_SECONDS
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                log.warning("mailbox worker did not stop in time", extra={"stage": "fetcher", "mailbox": thread.name})
        producer.close()
        log.info("fetcher stopped", extra={"stage": "fetcher"})
    if crashed:
        address, error = crashed[0]
        raise RuntimeError(f"mailbox worker {address} crashed: {type(error).__name__}: {error}") from error


def start_ingress(
    config: Config,
    producer: Producer,
    blobs: BlobStore,
    stop: threading.Event,
) -> Callable[[], None] | None:
    """Start the SMTP/LMTP ingress for the ``ingress: true`` mailboxes, if there are any.

    It listens on ``ingress.listen`` (and ``ingress.lmtp_listen``), writes
    InboundMail records with source ``smtp`` through the same producer and blob
    store, and answers 250 only after the broker acknowledged. Returns the
    function that stops it (``stop`` is not watched: the runner calls that
    function on shutdown). Raises ``RuntimeError`` when a port cannot be bound.
    """
    ingress = build_ingress(config, producer, blobs, inline_max_bytes(config))
    if ingress is None:
        return None
    try:
        ingress.start()
    except OSError as exc:
        where = ", ".join(f"{item.host}:{item.port} ({item.protocol})" for item in ingress.listeners)
        raise RuntimeError(f"the ingress cannot listen on {where}: {exc.strerror or exc}") from exc
    return ingress.stop


def inline_max_bytes(config: Config) -> int:
    """Raw mail up to this size travels inside the record; larger goes to the blob store."""
    return max(0, min(config.blobs.inline_max_bytes, config.kafka.max_message_bytes - RECORD_OVERHEAD_BYTES))


def _guarded(worker: MailboxWorker, crashed: list[tuple[str, BaseException]]) -> None:
    try:
        worker.run()
    except BaseException as exc:  # recorded for the main loop, which stops the process
        log.exception("mailbox worker crashed", extra={"stage": "fetcher", "mailbox": worker.address})
        crashed.append((worker.address, exc))
