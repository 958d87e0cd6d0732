"""Wires the sender's pure core (compose) to Kafka, the blob store and SMTP.

The consume loop hands the step the records of a polled batch (up to
``SENDER.max_poll_records``) one by one. The step saw the batch first
(``services/sender/ahead.py``): its mails are composed and sent on worker threads,
up to ``sender.smtp_sessions`` at once per SMTP server over the pooled sessions,
while the loop is still at an earlier record, and ``process`` returns each
record's outcome once it is there. One OutboundMail gives one final
DeliveryEvent (``sent`` or ``failed``), plus a ``retrying`` event per failed
attempt. Events go to the events topic keyed by ticket key (the outbound id for a
test mail). The final event is the step's output: ConsumeLoop commits the batch's
offsets only after the broker acknowledged every event of it, and each SMTP 250
came before that. In the normal path nothing is sent twice: a mail starts only
once the earlier mails of its ticket in its partition are final, an outcome is
kept until the loop collects it (also across a rewind of its partition), and the
offsets are committed before the next batch is polled.

A temporary failure (4xx, connection refused, timeout) does not wait in place: the
step raises ``Later`` with the backoff delay and the ``retrying`` event. The loop
commits what came before in that partition, rewinds the partition to this mail and
pauses that partition alone until the delay has passed, while the other partitions
go on; the attempts are counted per record here, so the record comes back as
attempt 2, 3, ... until ``give_up_after_seconds`` is used up (then ``failed``). Mail
of the same ticket behind it waits with it, so the mails of one ticket (one
partition key) still go out in order; mail of other tickets behind it in the
partition may have gone out meanwhile (its outcome is kept, see ahead.py). While a
server is unreachable, the other mails for it wait the same delay without spending
a timeout each.

A stop (or a rebalance) while a mail waits leaves its record uncommitted; it is
tried again after the restart (or by the partition's new owner), from attempt 1.
What repeats then is the ``retrying`` events (same ids, so recording them is
idempotent) and, only if the last attempt broke off after DATA was sent, the mail
itself (the event's reply says "the server may have taken it"; the Message-ID is
the same, so mail programs and deskmail's own ingress can drop the copy). Apart
from that, only a crash (or a rebalance) re-sends mails: those sent and not
committed yet, at most the batch in flight plus, per partition waiting at a
retried mail, the mails sent ahead behind it (at-least-once delivery).

A mail that cannot be composed or encoded (a line break in a name, an id that
is not a msg-id, anything the email package refuses) gets a ``failed`` event
with the reason and is committed like any other: it never reaches SMTP, and it
never stops the process, which would only restart on the same record and hold
up every mail queued behind it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Hashable, Mapping, Sequence
from datetime import datetime, timezone
from email.errors import MessageError
from typing import Any, Literal

from services.common import metrics
from services.common.blobs import BlobMissing, BlobStore, blob_store
from services.common.bus import Out, Partition, Record
from services.common.codec import CodecError, codec
from services.common.compose import ComposeError, as_bytes, compose, envelope_address, needs_smtputf8, recipients
from services.common.config import Config, Mailbox
from services.common.errors import BadRecord, Later, Transient
from services.common.kafka import Producer
from services.common.mailrules import blocked_recipients
from services.common.retry import SYSTEM_CLOCK, Backoff, Clock, Retry
from services.common.runtime import Health
from services.common.smtp import SendResult, SmtpPool
from services.common.smtp_failures import PermanentFailure, SmtpFailure, TemporaryFailure
from services.common.stage import SENDER, StageContext, run_stage
from services.sender.ahead import Ahead, Lane

log = logging.getLogger("deskmail.sender")
STAGE = "sender"
# Batches of SENDER.max_poll_records; a mail waiting for a retry pauses only its partition.
SPEC = SENDER

Status = Literal["sent", "retrying", "failed"]

# What composing and encoding one mail raises when its content cannot be a mail:
# compose's own refusals, characters a header cannot encode (UnicodeError), and
# what the email package's header handling raises (ValueError, TypeError,
# MessageError; its defects are ValueErrors). Caught only around compose and
# as_bytes, so a bug in SMTP or Kafka handling still stops the process. A record
# that fails here gets a ``failed`` event and the next record is sent: one
# crafted mail never holds up the queue.
# Failures that say the server, not this mail, is the problem: the other mails for
# that server wait out the same delay without spending a timeout each.
_SERVER_DOWN = frozenset({"connect", "timeout", "disconnected", "tls", "dns"})

_COMPOSE_ERRORS = (ComposeError, UnicodeError, ValueError, TypeError, MessageError)


class SenderStep:
    """OutboundMail -> SMTP -> DeliveryEvent; see the module docstring.

    ``clock`` measures the retry window and sleeps between attempts (a
    ``FakeClock`` in tests). ``polled`` starts a batch's mails ahead; a record
    that was not polled through it is attempted in ``process`` itself. ``close``
    waits for the attempts under way.
    """

    def __init__(
        self,
        config: Config,
        producer: Producer,
        pool: SmtpPool,
        blobs: BlobStore,
        stop: threading.Event,
        health: Health,
        clock: Clock = SYSTEM_CLOCK,
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
        # Per record being retried (topic, partition, offset): its attempts.
        self.attempts: dict[tuple[str, int, int], Retry] = {}
        # Per SMTP server (host, port) that could not be reached: until when, and why.
        self.down: dict[tuple[str, int], tuple[float, SmtpFailure]] = {}
        sessions = self.settings.smtp_sessions
        servers = {(m.smtp.host, m.smtp.port, m.smtp.login) for m in config.mailboxes if m.smtp is not None}
        self.ahead = Ahead(self.attempt, self.lane, self._forget, sessions=sessions,
                           workers=sessions * (len(servers) + 1))  # + mail for no server: failed at once

    def process(self, record: Record) -> Sequence[Out]:
        return self.ahead.collect(record)

    def polled(self, batches: Mapping[Partition, Sequence[Record]]) -> None:
        for tp, records in batches.items():
            if records:  # attempts of records before the poll's first were final, or another owner's
                for at in [at for at in list(self.attempts) if at[:2] == tp and at[2] < records[0].offset]:
                    self.attempts.pop(at, None)
        self.ahead.polled(batches)

    def close(self) -> None:
        self.ahead.close()

    def lane(self, record: Record) -> Lane | None:
        """The record's ticket (its partition key) and SMTP server (host, port, login);
        None when it does not decode (the loop's own attempt dead-letters it)."""
        try:
            mail = self.outbound.decode(record.value)
        except CodecError:
            return None
        mailbox = self.config.mailbox(mail["mailbox"])
        smtp = mailbox.smtp if mailbox is not None else None
        server: Hashable = (smtp.host, smtp.port, smtp.login) if smtp is not None else None
        return (record.key or mail["id"], server)

    def attempt(self, record: Record) -> Sequence[Out]:
        """One attempt at ``record``: its final event, or ``Later`` (see the module
        docstring). Safe on several threads at once, for different records."""
        try:
            mail = self.outbound.decode(record.value)
        except CodecError as exc:
            raise BadRecord(str(exc)) from exc
        mailbox = self.config.mailbox(mail["mailbox"])
        if mailbox is None:
            return [self._final(record, mail, 1, None, f"mailbox {mail['mailbox']} is not configured")]
        if mailbox.smtp is None:
            return [self._final(record, mail, 1, None, f"mailbox {mailbox.address} has no outgoing mail (smtp:) settings")]
        try:
            rcpts = recipients(mail)
            if not rcpts:
                return [self._final(record, mail, 1, None, "the mail has no recipients")]
            blocked = blocked_recipients(self.config, mailbox, rcpts)
            if blocked:
                return [self._final(record, mail, 1, None, (
                    f"queue {mailbox.queue} does not allow sending mail outside the organization; "
                    f"not members: {', '.join(blocked)}"))]
            attachments = self._attachments(mail)
        except (ComposeError, BlobMissing) as exc:
            return [self._final(record, mail, 1, None, f"cannot compose the mail: {exc}")]
        try:
            message = compose(mail, attachments=attachments)
            envelope_from = envelope_address(mail["from_address"])
            data = as_bytes(message)
        except _COMPOSE_ERRORS as exc:
            # This mail's content cannot become a mail; the next one may.
            reason = str(exc) if isinstance(exc, ComposeError) else f"{type(exc).__name__}: {exc}"
            return [self._final(record, mail, 1, None, f"cannot compose the mail: {reason}")]
        return [self._send(record, mail, mailbox, envelope_from, rcpts, data, needs_smtputf8(message))]

    def _attachments(self, mail: dict[str, Any]) -> dict[str, bytes]:
        try:
            return {item["blob_ref"]: self.blobs.get(item["blob_ref"]) for item in mail["attachments"]}
        except BlobMissing:
            raise
        except OSError as exc:
            raise Transient(f"blob store unavailable: {exc}") from exc

    def _send(self, record: Record, mail: dict[str, Any], mailbox: Mailbox, envelope_from: str, rcpts: list[str],
              data: bytes, smtputf8: bool) -> Out:
        """One SMTP attempt. A temporary failure raises ``Later`` (this record's partition
        waits out the backoff while the others go on) until the window is used up."""
        assert mailbox.smtp is not None
        server = (mailbox.smtp.host, mailbox.smtp.port)
        attempts = self._attempts(record)
        down = self.down.get(server)
        now = self.clock.monotonic()
        if down is not None and down[0] > now and \
                attempts.elapsed() + (down[0] - now) + self.settings.timeout_seconds <= self.settings.give_up_after_seconds:
            # The server was unreachable a moment ago: do not spend a timeout per mail on it.
            raise Later(f"{mailbox.smtp.host}:{mailbox.smtp.port} is down: {down[1].reply}",
                        down[0] - self.clock.monotonic())
        started = self.clock.monotonic()
        try:
            result = self.pool.send(mailbox.smtp, envelope_from, rcpts, data, smtputf8=smtputf8)
        except SmtpFailure as failure:
            metrics.SENDER_SEND_SECONDS.observe(self.clock.monotonic() - started)
            metrics.SENDER_SMTP_ERRORS.labels(failure.kind).inc()
            attempt = attempts.attempts + 1
            if isinstance(failure, PermanentFailure):
                return self._final(record, mail, attempt, failure.code, failure.reply)
            assert isinstance(failure, TemporaryFailure)
            # Another attempt only if it can finish (one timeout) inside the window.
            delay = attempts.next_delay(margin=self.settings.timeout_seconds)
            if delay is None:
                return self._final(record, mail, attempt, failure.code,
                                   f"gave up after {attempt} attempt(s) in {attempts.elapsed():.0f}s: {failure.reply}")
            attempts.schedule()
            if failure.kind in _SERVER_DOWN:
                self.down[server] = (self.clock.monotonic() + delay, failure)
            raise Later(f"outbound mail {mail['id']} waits {delay:.1f}s for attempt {attempt + 1}", delay,
                        [self._retrying(mail, attempt, failure, delay)])
        metrics.SENDER_SEND_SECONDS.observe(self.clock.monotonic() - started)
        self.down.pop(server, None)
        return self._sent(record, mail, attempts.attempts + 1, result)

    def _attempts(self, record: Record) -> Retry:
        """The attempts so far at this record, kept until it is final (or forgotten)."""
        at = (record.topic, record.partition, record.offset)
        retry = self.attempts.get(at)
        if retry is None:
            retry = self.attempts[at] = Retry(self.backoff, clock=self.clock,
                                              budget=self.settings.give_up_after_seconds)
            retry.start()
        return retry

    def _retrying(self, mail: dict[str, Any], attempt: int, failure: SmtpFailure, delay: float) -> Out:
        log.warning(
            "retrying",
            extra={"stage": STAGE, "mailbox": mail["mailbox"], "ticket": mail["ticket"], "outcome": "retrying",
                   "reason": failure.kind, "error": failure.reply, "delay": round(delay, 2)},
        )
        metrics.SENDER_MAILS.labels("retrying").inc()
        return self._event(mail, attempt, "retrying", failure.code, failure.reply)

    def _sent(self, record: Record, mail: dict[str, Any], attempt: int, result: SendResult) -> Out:
        self._forget(record)
        metrics.SENDER_MAILS.labels("sent").inc()
        log.info(
            "sent",
            extra={"stage": STAGE, "mailbox": mail["mailbox"], "ticket": mail["ticket"], "outcome": "sent",
                   "count": attempt},
        )
        return self._event(mail, attempt, "sent", result.code, result.reply)

    def _final(self, record: Record, mail: dict[str, Any], attempt: int, code: int | None, reply: str) -> Out:
        self._forget(record)
        metrics.SENDER_MAILS.labels("failed").inc()
        log.warning(
            "failed",
            extra={"stage": STAGE, "mailbox": mail["mailbox"], "ticket": mail["ticket"], "outcome": "failed",
                   "error": reply},
        )
        return self._event(mail, attempt, "failed", code, reply)

    def _forget(self, record: Record) -> None:
        self.attempts.pop((record.topic, record.partition, record.offset), None)

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


def run_sender(config: Config, stop: threading.Event, health: Health, bootstrap: Sequence[str] | None = None) -> None:
    def build(ctx: StageContext) -> SenderStep:
        pool = SmtpPool(timeout=ctx.config.sender.timeout_seconds, sessions=ctx.config.sender.smtp_sessions)
        ctx.on_close(pool.close)
        step = SenderStep(ctx.config, ctx.producer, pool, blob_store(ctx.config), ctx.stop, ctx.health)
        ctx.on_close(step.close)  # before the pool: the attempts under way finish on their sessions
        ctx.on_poll(step.polled)
        return step

    run_stage(config, SPEC, build, stop, health, bootstrap)
