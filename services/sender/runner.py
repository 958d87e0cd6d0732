"""Wires the sender's pure core (compose) to Kafka, the blob store and SMTP.

One OutboundMail in, one final DeliveryEvent out (``sent`` or ``failed``), plus a
``retrying`` event per failed attempt, produced at once so the ticket page shows
it while the sender waits. Events go to the events topic keyed by ticket key (the
outbound id for a test mail). The final event is the step's output: ConsumeLoop
commits the offset only after the broker acknowledged it, and the SMTP server's
250 came before that. In the normal path nothing is sent twice: the next record
is taken only after this one's offset is committed.

A stop requested while waiting between attempts is the one planned window for a
duplicate: the step gives the record up uncommitted (it raises ``Transient``;
ConsumeLoop, seeing the stop, commits only what came before), and the mail is
tried again after the restart, from attempt 1. What repeats then is the
``retrying`` events (same ids, so recording them is idempotent) and, only if the
last attempt broke off after DATA was sent, the mail itself (the event's reply
says "the server may have taken it"; the Message-ID is the same, so mail programs
and deskmail's own ingress can drop the copy). Apart from that, only a crash
between the server's 250 and the commit re-sends a mail (at-least-once delivery).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any, Literal

from kafka.consumer.fetcher import ConsumerRecord

from services.common import metrics
from services.common.blobs import BlobMissing, BlobStore, FolderBlobStore
from services.common.bus import ConsumeLoop, Kafka, Out, Producer
from services.common.codec import CodecError, codec
from services.common.config import Config, Mailbox
from services.common.errors import BadRecord, Transient
from services.common.retry import Backoff
from services.common.runtime import Health
from services.sender.compose import ComposeError, as_bytes, compose, envelope_address, needs_smtputf8, recipients
from services.sender.failures import PermanentFailure, SmtpFailure, TemporaryFailure
from services.sender.smtp import SendResult, SmtpPool

log = logging.getLogger("deskmail.sender")
STAGE = "sender"

Status = Literal["sent", "retrying", "failed"]


def blocked_recipients(config: Config, mailbox: Mailbox, emails: Sequence[str]) -> list[str]:
    """Recipients the queue may not mail: every non-member when ``allow_outbound_mail`` is off."""
    queue = config.queue(mailbox.queue)
    if queue is not None and queue.allow_outbound_mail:
        return []
    return [email for email in emails if config.member(email) is None]


class SenderStep:
    """OutboundMail -> SMTP -> DeliveryEvent; see the module docstring.

    ``wait(seconds)`` sleeps between attempts and returns True when the process
    is stopping; ``clock`` is monotonic seconds (both replaceable in tests).
    """

    def __init__(
        self,
        config: Config,
        producer: Producer,
        pool: SmtpPool,
        blobs: BlobStore,
        stop: threading.Event,
        health: Health,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.producer = producer
        self.pool = pool
        self.blobs = blobs
        self.stop = stop
        self.health = health
        self.clock = clock
        self.settings = config.sender
        self.backoff = Backoff(self.settings.retry_initial_seconds, self.settings.retry_max_seconds)
        self.outbound = codec("OutboundMail")
        self.events = codec("DeliveryEvent")
        self.topic = config.topics["events"]

    def process(self, record: ConsumerRecord) -> Sequence[Out]:
        try:
            mail = self.outbound.decode(record.value)
        except CodecError as exc:
            raise BadRecord(str(exc)) from exc
        mailbox = self.config.mailbox(mail["mailbox"])
        if mailbox is None:
            return [self._final(mail, 1, None, f"mailbox {mail['mailbox']} is not configured")]
        if mailbox.smtp is None:
            return [self._final(mail, 1, None, f"mailbox {mailbox.address} has no outgoing mail (smtp:) settings")]
        try:
            rcpts = recipients(mail)
            if not rcpts:
                return [self._final(mail, 1, None, "the mail has no recipients")]
            blocked = blocked_recipients(self.config, mailbox, rcpts)
            if blocked:
                return [self._final(mail, 1, None, (
                    f"queue {mailbox.queue} does not allow sending mail outside the organization; "
                    f"not members: {', '.join(blocked)}"))]
            message = compose(mail, attachments=self._attachments(mail))
            envelope_from = envelope_address(mail["from_address"])
        except (ComposeError, BlobMissing) as exc:
            return [self._final(mail, 1, None, f"cannot compose the mail: {exc}")]
        data = as_bytes(message)
        return [self._send(mail, mailbox, envelope_from, rcpts, data, needs_smtputf8(message))]

    def _attachments(self, mail: dict[str, Any]) -> dict[str, bytes]:
        try:
            return {item["blob_ref"]: self.blobs.get(item["blob_ref"]) for item in mail["attachments"]}
        except BlobMissing:
            raise
        except OSError as exc:
            raise Transient(f"blob store unavailable: {exc}") from exc

    def _send(self, mail: dict[str, Any], mailbox: Mailbox, envelope_from: str, rcpts: list[str],
              data: bytes, smtputf8: bool) -> Out:
        assert mailbox.smtp is not None
        first = self.clock()
        attempt = 1
        while True:
            started = self.clock()
            try:
                result = self.pool.send(mailbox.smtp, envelope_from, rcpts, data, smtputf8=smtputf8)
            except SmtpFailure as failure:
                metrics.SENDER_SEND_SECONDS.observe(self.clock() - started)
                metrics.SENDER_SMTP_ERRORS.labels(failure.kind).inc()
                if isinstance(failure, PermanentFailure):
                    return self._final(mail, attempt, failure.code, failure.reply)
                assert isinstance(failure, TemporaryFailure)
                delay = self.backoff.delay(attempt - 1)
                waited = self.clock() - first
                # Another attempt only if it can finish (one timeout) inside the window,
                # which is kept below the consumer's max poll interval.
                if waited + delay + self.settings.timeout_seconds > self.settings.give_up_after_seconds:
                    return self._final(mail, attempt, failure.code,
                                       f"gave up after {attempt} attempt(s) in {waited:.0f}s: {failure.reply}")
                self._retrying(mail, attempt, failure, delay)
                if self._wait(delay):
                    raise Transient(f"stopping while outbound mail {mail['id']} waits for a retry; "
                                    "it stays uncommitted and is sent after the restart")
                attempt += 1
                continue
            metrics.SENDER_SEND_SECONDS.observe(self.clock() - started)
            return self._sent(mail, attempt, result)

    def _retrying(self, mail: dict[str, Any], attempt: int, failure: SmtpFailure, delay: float) -> None:
        log.warning(
            "retrying",
            extra={"stage": STAGE, "mailbox": mail["mailbox"], "ticket": mail["ticket"], "outcome": "retrying",
                   "reason": failure.kind, "error": failure.reply, "delay": round(delay, 2)},
        )
        metrics.SENDER_MAILS.labels("retrying").inc()
        self.producer.send_all([self._event(mail, attempt, "retrying", failure.code, failure.reply)], STAGE)

    def _wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` while telling the health check we are alive; True if stopping."""
        deadline = self.clock() + seconds
        while True:
            self.health.tick()
            left = deadline - self.clock()
            if left <= 0:
                return self.stop.is_set()
            if self.stop.wait(min(left, 1.0)):
                return True

    def _sent(self, mail: dict[str, Any], attempt: int, result: SendResult) -> Out:
        metrics.SENDER_MAILS.labels("sent").inc()
        log.info(
            "sent",
            extra={"stage": STAGE, "mailbox": mail["mailbox"], "ticket": mail["ticket"], "outcome": "sent",
                   "count": attempt},
        )
        return self._event(mail, attempt, "sent", result.code, result.reply)

    def _final(self, mail: dict[str, Any], attempt: int, code: int | None, reply: str) -> Out:
        metrics.SENDER_MAILS.labels("failed").inc()
        log.warning(
            "failed",
            extra={"stage": STAGE, "mailbox": mail["mailbox"], "ticket": mail["ticket"], "outcome": "failed",
                   "error": reply},
        )
        return self._event(mail, attempt, "failed", code, reply)

    def _event(self, mail: dict[str, Any], attempt: int, status: Status, code: int | None, reply: str) -> Out:
        event = {
            "id": f"{mail['id']}:{attempt}:{status}",
            "outbound_id": mail["id"],
            "ticket": mail["ticket"],
            "comment_id": mail["comment_id"],
            "status": status,
            "attempt": attempt,
            "smtp_code": code,
            "smtp_reply": reply[:4000],
            "message_id": mail["message_id"],
            "time": datetime.now(timezone.utc),
        }
        key = (mail["ticket"] or mail["id"]).encode()
        return Out(self.topic, key, self.events.encode(event))


def _one_record_per_poll(config: Config) -> Config:
    """The sender's consumer takes one record per poll.

    A mail may block for the whole retry window (``give_up_after_seconds``, kept
    below the consumer's max poll interval); with a batch of several such mails
    the consumer would miss its poll deadline, leave the group, and the mails sent
    since the last commit would be sent again by the next owner of the partition.
    """
    consumer = config.kafka.consumer.model_copy(update={"max_poll_records": 1})
    return dataclasses.replace(config, kafka=config.kafka.model_copy(update={"consumer": consumer}))


def run_sender(config: Config, stop: threading.Event, health: Health, bootstrap: Sequence[str] | None = None) -> None:
    kafka = Kafka(_one_record_per_poll(config), bootstrap)
    producer = kafka.producer()
    pool = SmtpPool(timeout=config.sender.timeout_seconds)
    step = SenderStep(config, producer, pool, FolderBlobStore(config.blob_path), stop, health)
    loop = ConsumeLoop(
        kafka, producer, step, STAGE, group=f"{config.kafka.group_prefix}-sender", topics=[config.topics["outbound"]],
        stop=stop, on_alive=health.tick, on_ready=health.set_ready,
    )
    try:
        loop.run()
    finally:
        pool.close()
        producer.close()
