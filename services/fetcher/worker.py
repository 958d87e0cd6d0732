"""One IMAP mailbox: fetch new mail, hand it to Kafka, mark it on the server.

``MailboxWorker.run`` is one reconnecting loop (the mjs/imapclient and mail_room
shape): connect and log in, then repeat { SELECT the folder, deliver every
unmarked message, IDLE (or sleep) until something arrives } until ``stop``. Any
connection, login or protocol failure ends the session: it is logged with its
reason (never the password), counted, and the worker reconnects after a backoff.

Delivery contract:

* A batch is marked on the server (keyword, ``\\Seen`` or moved) only after
  ``Producer.send_all`` returned, i.e. the broker acknowledged every record of
  it. If the broker does not (``Transient``), nothing is marked: the messages are
  found again by the next search and retried after a backoff. A crash between
  the ack and the mark re-delivers the batch with the same record ids
  (``imap:<mailbox>:<uidvalidity>:<uid>``); the ticketer absorbs the duplicate.
* Which messages are "new" is decided by the server's flags alone (the search
  below), never by a remembered UID, so a restart or a reconnect loses nothing.
* Messages are fetched with ``BODY.PEEK[]``, so fetching never sets ``\\Seen``. A
  record's ``received_at`` is read from the server's INTERNALDATE (when the mail arrived in the
  mailbox), so the mail-to-ticket time counts the wait for the fetcher too.
* Raw mail larger than ``inline_max_bytes`` goes to the blob store (claim check),
  so no message is ever too large for Kafka; batches are also cut by total bytes
  so memory stays bounded whatever the mail size. A message larger than
  ``STREAM_BYTES`` is fetched alone, in pieces (``BODY.PEEK[]<offset.length>``)
  written to the blob store as they come, so the fetcher never holds it whole.

Mark modes (``fetcher.mark.mode``: keyword, seen, move) are described in
``services.fetcher.marks``.

Leases (``services.fetcher.leases``): with several fetcher replicas a worker runs
only while its replica holds the mailbox. Its ``stop`` event is its own (set when
the mailbox is revoked, or the process stops), and its ``lease`` is checked before
every fetch and before every mark: when the replica cannot confirm its membership
in time, the session ends without marking (the mail stays for whoever holds the
mailbox next) and the worker waits, disconnected, until the lease is confirmed
again or it is stopped.

UIDVALIDITY: the worker remembers the last value it saw (in memory) and compares
on every SELECT. A change is logged and counted
(``deskmail_fetcher_uidvalidity_changes_total``) and the folder is scanned again,
which is what the next search does anyway, since "new" is defined by flags.
Usually the flags survive (server migration, index rebuild), so nothing is
re-read. When they do not, every message is delivered again under new ids
(the UIDVALIDITY is part of the id); the ticketer's uniqueness on the Message-ID
per queue turns those into no-ops instead of duplicate tickets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Literal

from services.common import metrics
from services.common.blobs import BlobStore
from services.common.bus import Out
from services.common.codec import codec
from services.common.config import FetcherSettings, Mailbox
from services.common.errors import Transient
from services.common.kafka import Producer
from services.common.retry import SYSTEM_CLOCK, Backoff, Clock, Retry
from services.common.runtime import Health
from services.fetcher import records
from services.fetcher.batches import MAX_BATCH_BYTES, SIZES_PER_FETCH, chunks, plan_batches, uid_range
from services.fetcher.leases import ALWAYS, Lease
from services.fetcher.imap import (
    SESSION_ERRORS,
    ClientFactory,
    MailboxError,
    MailClient,
    classify,
    connect,
    guarded,
    select,
)
from services.fetcher.marks import MarkMode, keywords_supported, mark_delivered, search_criteria

log = logging.getLogger("deskmail.fetcher")

STAGE = "fetcher"
SOURCE: Literal["imap"] = "imap"
# IDLE is checked in slices this long, so ``stop`` is noticed within about a second.
IDLE_SLICE_SECONDS = 1.0
# Messages larger than this are fetched in pieces of this size straight into the blob store.
STREAM_BYTES = 4 * 1024 * 1024
# How long a batch waits for the broker's acknowledgement (then Transient: left unmarked).
ACK_WAIT_SECONDS = 120.0
# Closing the session and noticing the stop inside an IDLE slice, beyond the batch itself.
STOP_SLACK_SECONDS = 10.0
# A worker whose lease is not valid looks again this often.
LEASE_WAIT_SECONDS = 0.25


def stop_seconds(settings: FetcherSettings) -> float:
    """The longest a worker takes to return once its stop is set: the batch in flight
    (fetch and mark, each up to the IMAP timeout, and the acknowledgement wait) and
    the logout. Shutdown and a revoked lease wait this long."""
    return 2 * settings.timeout_seconds + ACK_WAIT_SECONDS + STOP_SLACK_SECONDS


class LeaseLost(Exception):
    """The replica's lease is not confirmed: end the session before fetching or marking."""


# ---------------------------------------------------------------- pure decisions


def message_id(address: str, uidvalidity: int, uid: int) -> str:
    return f"imap:{address}:{uidvalidity}:{uid}"


def inbound_record(
    address: str,
    uidvalidity: int,
    uid: int,
    raw: bytes,
    received_at: datetime,
    blobs: BlobStore,
    inline_max_bytes: int,
) -> dict[str, Any]:
    """The InboundMail record for one fetched message (see services.fetcher.records)."""
    return records.inbound_record(
        record_id=message_id(address, uidvalidity, uid), mailbox=address, source=SOURCE, raw=raw,
        received_at=received_at, blobs=blobs, inline_max_bytes=inline_max_bytes,
        uidvalidity=uidvalidity, uid=uid,
    )


def arrival(internaldate: Any, fetched_at: datetime) -> datetime:
    """When the mail arrived, timezone-aware in UTC: by the server's INTERNALDATE
    (RFC 3501: when it was delivered into the mailbox), which has whole seconds, the
    end of that second, and never after ``fetched_at``. So mail fetched at once keeps
    its order behind an agent's reply sent earlier in the same second (an instant
    auto-reply), and mail fetched late keeps its real age. ``fetched_at`` when the
    server gave no INTERNALDATE or one that cannot be read. imapclient hands it over
    as a naive local time (its ``normalise_times``), which ``astimezone`` reads as such."""
    if not isinstance(internaldate, datetime):
        return fetched_at
    try:
        arrived = internaldate.astimezone(timezone.utc).replace(microsecond=999_999)
    except (OverflowError, OSError, ValueError):
        return fetched_at
    return min(arrived, fetched_at)


def announces_new_mail(responses: Sequence[tuple[Any, ...]]) -> bool:
    """Whether IDLE responses say messages arrived (``* n EXISTS`` / ``* n RECENT``)."""
    return any(len(r) >= 2 and r[1] in (b"EXISTS", b"RECENT") for r in responses)


def announces_bye(responses: Sequence[tuple[Any, ...]]) -> bool:
    return any(r and r[0] == b"BYE" for r in responses)


# ---------------------------------------------------------------- the loop


class MailboxWorker:
    """The reconnecting fetch loop of one mailbox; run it in its own thread.

    ``run`` returns only when ``stop`` is set (after finishing the batch in
    flight: produced, acknowledged and marked, or left unmarked). Errors of this
    mailbox never leave ``run``, except programming errors, which do. Nothing is
    fetched or marked while ``lease`` is not valid.
    """

    def __init__(
        self,
        mailbox: Mailbox,
        settings: FetcherSettings,
        producer: Producer,
        topic: str,
        blobs: BlobStore,
        stop: threading.Event,
        health: Health,
        client_factory: ClientFactory = connect,
        *,
        inline_max_bytes: int = 512 * 1024,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        stream_bytes: int | None = None,  # None: STREAM_BYTES
        clock: Clock = SYSTEM_CLOCK,
        lease: Lease = ALWAYS,
    ):
        if mailbox.imap is None:
            raise ValueError(f"mailbox {mailbox.address} has no IMAP settings")
        self.mailbox = mailbox
        self.imap = mailbox.imap
        self.address = mailbox.address
        self.settings = settings
        self.producer = producer
        self.topic = topic
        self.blobs = blobs
        self.stop = stop
        self.lease = lease
        self.health = health
        self.client_factory = client_factory
        self.inline_max_bytes = inline_max_bytes
        self.max_batch_bytes = max_batch_bytes
        self.stream_bytes = STREAM_BYTES if stream_bytes is None else stream_bytes
        backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds)
        # Two sequences: a failing server and a failing broker back off independently.
        self.session_retry = Retry(backoff, clock=clock, heartbeat=health.tick)
        self.broker_retry = Retry(backoff, clock=clock, heartbeat=health.tick)
        self.uidvalidity: int | None = None
        self._warned_keywords = False
        self._where = f"{self.imap.host}:{self.imap.port}"

    # ------------------------------------------------------------ lifecycle

    def run(self) -> None:
        metrics.FETCHER_UP.labels(self.address).set(0)
        while not self.stop.is_set():
            if not self.lease.valid():
                self.stop.wait(LEASE_WAIT_SECONDS)
                continue
            try:
                self._session()
            except SESSION_ERRORS as exc:
                self._session_failed(classify(exc, self._where))
            except LeaseLost:
                metrics.FETCHER_UP.labels(self.address).set(0)
                log.warning("lease not confirmed, mailbox paused", extra={"mailbox": self.address, "stage": STAGE})

    def _check_lease(self) -> None:
        if not self.lease.valid():
            raise LeaseLost(self.address)

    def _session_failed(self, error: MailboxError) -> None:
        metrics.FETCHER_UP.labels(self.address).set(0)
        metrics.FETCHER_ERRORS.labels(self.address, error.reason).inc()
        delay = self.session_retry.delay()
        log.warning(
            "mailbox session failed",
            extra={"mailbox": self.address, "reason": error.reason, "error": error.message, "delay": round(delay, 2)},
        )
        self.session_retry.sleep(self.stop, delay=delay)

    def _session(self) -> None:
        client = guarded(self.client_factory(self.imap, self.settings.timeout_seconds))
        clean = False
        try:
            log.info("mailbox connected", extra={"mailbox": self.address, "address": self._where})
            self._prepare(client)
            while not self.stop.is_set():
                try:
                    self._cycle(client)
                except Transient as exc:
                    self._broker_failed(exc)
                    continue
                if not self.stop.is_set():
                    self._wait_for_mail(client)
            clean = True
        except LeaseLost:
            clean = True  # the session is sound; only the lease is not confirmed
            raise
        finally:
            self._close(client, clean)

    def _broker_failed(self, exc: Transient) -> None:
        """Nothing of the batch was marked; pause, then the next search finds it again."""
        metrics.BUS_RETRIES.labels(STAGE).inc()
        delay = self.broker_retry.delay()
        log.warning(
            "delivery failed, mail left unmarked",
            extra={"mailbox": self.address, "stage": STAGE, "topic": self.topic, "error": str(exc),
                   "delay": round(delay, 2)},
        )
        self.broker_retry.sleep(self.stop, delay=delay)

    def _close(self, client: MailClient, clean: bool) -> None:
        try:
            if clean:
                client.logout()
            else:
                client.shutdown()
        except Exception:  # the session is over either way; closing is best effort
            try:
                client.shutdown()
            except Exception:
                pass

    # ------------------------------------------------------------ one pass

    def _prepare(self, client: MailClient) -> None:
        mark = self.settings.mark
        if mark.mode == "move":
            if mark.folder == self.imap.folder:
                raise MailboxError("select", f"mark.folder {mark.folder!r} is the folder being fetched")
            if not client.folder_exists(mark.folder):
                client.create_folder(mark.folder)
                log.info("created folder for processed mail", extra={"mailbox": self.address})

    def _cycle(self, client: MailClient) -> None:
        """SELECT, then deliver and mark every message not yet delivered, in UID order.
        Raises LeaseLost before a fetch or a mark the lease no longer covers."""
        self._check_lease()
        info = select(client, self.imap.folder)
        metrics.FETCHER_UP.labels(self.address).set(1)
        uidvalidity = self._note_uidvalidity(info)
        mode = self._effective_mode(info)
        uids = sorted(int(uid) for uid in client.search(search_criteria(mode, self.settings.mark.keyword)))
        for chunk in chunks(uids, max(SIZES_PER_FETCH, self.settings.batch_size)):
            sizes = client.fetch(chunk, ["RFC822.SIZE"])
            pairs = [(uid, int(sizes[uid].get(b"RFC822.SIZE", 0))) for uid in chunk if uid in sizes]
            large = {uid for uid, size in pairs if size > self.stream_bytes}
            for batch in plan_batches(pairs, self.settings.batch_size, self.max_batch_bytes, self.stream_bytes):
                if batch[0] in large:  # a batch alone
                    self._deliver_streamed(client, uidvalidity, batch[0], mode)
                else:
                    self._deliver(client, uidvalidity, batch, mode)
                if self.stop.is_set():
                    return  # the batch in flight is done; the rest stays unmarked for next time
        self.session_retry.reset()
        metrics.FETCHER_LAST_SUCCESS.labels(self.address).set(time.time())
        self.health.tick()

    def _note_uidvalidity(self, info: Mapping[bytes, Any]) -> int:
        try:
            value = int(info[b"UIDVALIDITY"])
        except (KeyError, TypeError, ValueError):
            raise MailboxError("protocol", f"SELECT of {self.imap.folder!r} returned no UIDVALIDITY") from None
        if self.uidvalidity is not None and value != self.uidvalidity:
            metrics.FETCHER_UIDVALIDITY_CHANGES.labels(self.address).inc()
            log.warning(
                "UIDVALIDITY changed, rescanning the folder",
                extra={"mailbox": self.address, "uidvalidity": value, "error": f"was {self.uidvalidity}"},
            )
        self.uidvalidity = value
        return value

    def _effective_mode(self, info: Mapping[bytes, Any]) -> MarkMode:
        mark = self.settings.mark
        if mark.mode == "keyword" and not keywords_supported(info, mark.keyword):
            if not self._warned_keywords:
                log.warning(
                    "folder cannot keep keywords; marking delivered mail \\Seen instead",
                    extra={"mailbox": self.address, "reason": "keywords"},
                )
                self._warned_keywords = True
            return "seen"
        return mark.mode

    def _deliver(self, client: MailClient, uidvalidity: int, uids: Sequence[int], mode: MarkMode) -> None:
        """Fetch, produce, wait for the acks, and only then mark. Raises Transient before marking."""
        self._check_lease()
        fetched = client.fetch(uids, ["BODY.PEEK[]", "RFC822.SIZE", "INTERNALDATE"])
        fetched_at = datetime.now(timezone.utc)
        encode = codec("InboundMail").encode
        key = self.address.encode()
        outs: list[Out] = []
        delivered: list[int] = []
        size = 0
        for uid in uids:
            raw = fetched.get(uid, {}).get(b"BODY[]")
            if raw is None:  # expunged between SEARCH and FETCH: nothing to deliver or mark
                log.info("message vanished before fetch", extra={"mailbox": self.address, "uid": str(uid)})
                continue
            raw = bytes(raw)
            received_at = arrival(fetched[uid].get(b"INTERNALDATE"), fetched_at)
            record = inbound_record(self.address, uidvalidity, uid, raw, received_at, self.blobs,
                                    self.inline_max_bytes)
            outs.append(Out(self.topic, key, encode(record)))
            delivered.append(uid)
            size += len(raw)
        if not outs:
            return
        self.producer.send_all(outs, STAGE, timeout=ACK_WAIT_SECONDS)
        self.broker_retry.reset()
        self._mark(client, delivered, mode)
        metrics.FETCHER_MESSAGES.labels(self.address, SOURCE).inc(len(delivered))
        metrics.FETCHER_BYTES.labels(self.address).inc(size)
        log.info(
            "delivered",
            extra={"mailbox": self.address, "uidvalidity": uidvalidity,
                   "uid": uid_range(delivered), "count": len(delivered)},
        )
        self.health.tick()

    def _deliver_streamed(self, client: MailClient, uidvalidity: int, uid: int, mode: MarkMode) -> None:
        """Fetch one large message in pieces into the blob store, produce its
        reference, and mark it after the ack. Raises Transient before marking."""
        self._check_lease()
        dated = client.fetch([uid], ["INTERNALDATE"]).get(uid, {})
        received_at = arrival(dated.get(b"INTERNALDATE"), datetime.now(timezone.utc))
        try:
            writer = self.blobs.writer()
        except OSError as exc:
            raise Transient(f"blob store cannot take {message_id(self.address, uidvalidity, uid)}: {exc}") from exc
        try:
            while True:
                item = f"BODY.PEEK[]<{writer.size}.{self.stream_bytes}>"
                found = client.fetch([uid], [item]).get(uid, {})
                piece = next((v for k, v in found.items() if k.startswith(b"BODY[]")), None)
                if piece is None and writer.size == 0:  # expunged between SEARCH and FETCH
                    log.info("message vanished before fetch", extra={"mailbox": self.address, "uid": str(uid)})
                    writer.abort()
                    return
                if piece:
                    writer.write(bytes(piece))
                if not piece or len(piece) < self.stream_bytes:
                    break
            ref = writer.commit(durable=True)  # the record will name it: it must outlive a crash
        except OSError as exc:
            writer.abort()
            raise Transient(f"blob store cannot take {message_id(self.address, uidvalidity, uid)}: {exc}") from exc
        except BaseException:
            writer.abort()  # a session error: the next session fetches the message again
            raise
        size, sha256 = writer.size, writer.sha256
        record = records.inbound_record(
            record_id=message_id(self.address, uidvalidity, uid), mailbox=self.address, source=SOURCE, raw=b"",
            received_at=received_at, blobs=self.blobs, inline_max_bytes=self.inline_max_bytes,
            uidvalidity=uidvalidity, uid=uid, blob_ref=ref, size=size, sha256=sha256,
        )
        self.producer.send_all([Out(self.topic, self.address.encode(), codec("InboundMail").encode(record))], STAGE,
                               timeout=ACK_WAIT_SECONDS)
        self.broker_retry.reset()
        self._mark(client, [uid], mode)
        metrics.FETCHER_MESSAGES.labels(self.address, SOURCE).inc()
        metrics.FETCHER_BYTES.labels(self.address).inc(size)
        log.info("delivered", extra={"mailbox": self.address, "uidvalidity": uidvalidity, "uid": str(uid),
                                     "count": 1})
        self.health.tick()

    def _mark(self, client: MailClient, uids: Sequence[int], mode: MarkMode) -> None:
        """Mark delivered mail, unless the lease ended while it was produced: then it stays
        unmarked, and whoever holds the mailbox next delivers it again (absorbed downstream)."""
        self._check_lease()
        mark_delivered(client, uids, mode, self.settings.mark)

    # ------------------------------------------------------------ waiting

    def _wait_for_mail(self, client: MailClient) -> None:
        if self.settings.idle and client.has_capability("IDLE"):
            self._idle(client)
        else:
            deadline = time.monotonic() + self.settings.poll_interval_seconds
            while self.lease.valid() and not self.stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self.stop.wait(min(IDLE_SLICE_SECONDS, remaining))

    def _idle(self, client: MailClient) -> None:
        """IDLE until new mail, ``stop``, the lease's end, or ``idle_seconds`` (then the caller
        rescans and re-IDLEs).

        Checked in one-second slices. A slice that wakes early with nothing parsed
        usually means the server closed the socket; ``idle_done`` then fails and
        the session reconnects (or, if all is well, the caller just rescans).
        """
        client.idle()
        deadline = time.monotonic() + self.settings.idle_seconds
        while not self.stop.is_set() and self.lease.valid():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            timeout = min(IDLE_SLICE_SECONDS, remaining)
            started = time.monotonic()
            responses = client.idle_check(timeout=timeout)
            self.health.tick()
            if announces_bye(responses):
                raise MailboxError("connect", f"the server ended the session during IDLE ({self._where})")
            if responses:  # any answer, keep-alives included, shows the session is alive
                metrics.FETCHER_LAST_SUCCESS.labels(self.address).set(time.time())
            if announces_new_mail(responses):
                break
            if not responses and time.monotonic() - started < timeout / 2:
                break
        client.idle_done()
