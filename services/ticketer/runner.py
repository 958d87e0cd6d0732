"""Wires the ticket store to its two input topics: one DB transaction per
polled batch, a savepoint per record, offsets committed after the transaction
(a batch that cannot commit is applied again record by record, a transaction
each).

- commands (TicketCommand from the router): ``TicketStore.apply`` (a bounce of
  mail deskmail sent also marks that outgoing comment ``bounced``);
- events (DeliveryEvent from the sender): ``TicketStore.record_delivery``, which
  sets the delivery status of the outgoing comment (idempotent; a final status,
  bounced among them, is never overwritten; events for unknown outbound ids
  change nothing).

Mail on a closed ticket follows its queue's ``closed_reply`` (a linked follow-up
ticket, or the ticket reopened). It starts only on the schema of its release
(``services.tickets.gate``: it waits for `deskmail db migrate`). Beside the loop, ``AutoClose`` closes resolved
tickets after their queue's ``auto_close_days``, and ``SuspendedRetention``
deletes suspended mail after ``suspended.retention_days``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

from sqlalchemy.exc import DBAPIError, OperationalError

from services.common import metrics
from services.common.blobs import BlobMissing, BlobStore, blob_store
from services.common.bus import Out, Record
from services.common.codec import CodecError, codec
from services.common.config import Config
from services.common.errors import BadRecord, Transient
from services.common.runtime import Health
from services.common.stage import TICKETER, StageContext, run_stage
from services.tickets import InvalidCommand, InvalidDeliveryEvent, TicketStore, VersionConflict
from services.tickets import pending
from services.tickets.apply import ClosedReply
from services.tickets.views import Applied
from services.common.suspended import released_of
from services.tickets.commands import command_key
from services.tickets.gate import await_schema
from services.ticketer.rebuild import rebuilt_mail
from services.tickets.ratelimit import NONE as NO_LIMITS
from services.tickets.ratelimit import Limit, Limits

log = logging.getLogger("deskmail.ticketer")
STAGE = "ticketer"
SPEC = TICKETER
AUTO_CLOSE_INTERVAL = 300.0  # seconds between rounds; a day's deadline is met within five minutes
ARRIVALS_KEPT = timedelta(days=1)  # longer than any rate limit's window (at most a day)
AUTO_CLOSE_BATCH = 500  # tickets per transaction (TicketStore.auto_close's limit)
RETENTION_INTERVAL = 3600.0  # seconds between rounds of suspended mail retention (counted in days)
RETENTION_BATCH = 500  # rejections per transaction
DUE_INTERVAL = 1.0  # seconds between rounds of held replies whose wait is over
# While the ticketer works through mail older than a reply's wait (a backlog, a replay,
# mail that sat in a mailbox), the mail a held reply awaits may be in that backlog:
# held replies then wait up to this many times ``reply_wait_seconds``.
BEHIND_WAIT_FACTOR = 30
BEHIND_GRACE = 2.0  # seconds after the last such mail that the ticketer still counts as behind


class TicketerStep:
    """Dispatches each record by its topic; see the module docstring. A polled batch
    is one transaction (``process_batch``), each record in a savepoint of its own."""

    def __init__(self, store: TicketStore, commands_topic: str, events_topic: str,
                 closed_reply: Mapping[str, ClosedReply] | None = None, limits: Limits = NO_LIMITS,
                 blobs: BlobStore | None = None, reply_wait_seconds: float = 0.0):
        self.store = store
        # A reply to mail not known yet is held back this long (services/tickets/pending.py).
        self.reply_wait = timedelta(seconds=reply_wait_seconds)
        # The consume loop and the due replies' thread; re-entered by a batch's commands.
        self._applying = threading.RLock()
        self._committed: list[Callable[[], None]] | None = None  # in a batch: what to report once it commits
        self._behind_at = float("-inf")  # monotonic time of the last mail older than the reply wait
        self.blobs = blobs  # None: rate-limited mail is listed without its original
        self.closed_reply = dict(closed_reply or {})
        self.limits = limits
        self.commands_topic = commands_topic
        self.events_topic = events_topic
        self.commands = codec("TicketCommand")
        self.events = codec("DeliveryEvent")

    def process(self, record: Record) -> Sequence[Out]:
        self._dispatch(record, self.store)
        return []

    def process_batch(self, records: Sequence[Record]) -> list[Sequence[Out] | BadRecord]:
        """The records in one transaction: each one's BadRecord, or no outputs. Raises
        Transient, with nothing of the batch committed (the loop then goes record by record)."""
        results: list[Sequence[Out] | BadRecord] = []
        committed: list[Callable[[], None]] = []
        with self._applying:
            self._committed = committed
            try:
                with _transient_db_errors(), self.store.batch() as batch:
                    for record in records:
                        try:
                            self._dispatch(record, batch)
                        except BadRecord as exc:
                            results.append(exc)
                        else:
                            results.append(())
            finally:
                self._committed = None
        for report in committed:
            report()
        return results

    def _dispatch(self, record: Record, writer: Writer) -> None:
        if record.topic == self.commands_topic:
            self._apply(record, writer)
        elif record.topic == self.events_topic:
            self._record_delivery(record, writer)
        else:
            raise BadRecord(f"the ticketer does not consume topic {record.topic}", error_class="UnexpectedTopic")

    def _apply(self, record: Record, writer: Writer) -> None:
        try:
            command = self.commands.decode(record.value)
        except CodecError as exc:
            raise BadRecord(str(exc)) from exc
        hold = None
        if self.reply_wait:
            now = datetime.now(timezone.utc)
            hold = pending.Hold(bytes(record.value), now + self.reply_wait)
            received = command.get("received_at")
            if isinstance(received, datetime) and now - received > self.reply_wait:
                self._behind_at = time.monotonic()
        try:
            self.apply_command(command, hold, writer)
        except InvalidCommand as exc:
            raise BadRecord(f"{command.get('id')}: {exc}") from exc

    def apply_due(self, now: datetime | None = None) -> int:
        """Apply the held replies whose wait is over; how many. While the ticketer is
        behind (``behind``), a wait lasts ``BEHIND_WAIT_FACTOR`` times longer: the outcome
        of a thread should not depend on how far behind the ticketer was. Raises Transient."""
        now = now or datetime.now(timezone.utc)
        if self.behind():
            now -= self.reply_wait * (BEHIND_WAIT_FACTOR - 1)
        with _transient_db_errors():
            due = self.store.due_replies(now)
        for payload in due:
            try:
                self.apply_command(self.commands.decode(payload), None)
            except (CodecError, InvalidCommand) as exc:  # was applied as valid once; a schema removed since?
                log.error("held reply cannot be applied", extra={"stage": STAGE, "error": str(exc)})
        return len(due)

    def behind(self) -> bool:
        """True while the ticketer applies mail received longer ago than the reply wait
        (within the last ``BEHIND_GRACE`` seconds)."""
        return time.monotonic() - self._behind_at < BEHIND_GRACE

    def apply_command(self, command: Mapping[str, Any], hold: pending.Hold | None,
                      writer: Writer | None = None) -> None:
        """Apply one command (``hold``: a reply to unknown mail may wait), then the held
        replies its mail released, in order; with ``writer``, on a batch's transaction.
        Raises Transient, InvalidCommand."""
        queue: list[tuple[Mapping[str, Any], pending.Hold | None]] = [(command, hold)]
        while queue:
            current, current_hold = queue.pop(0)
            with self._applying:
                applied = self._apply_one(current, current_hold, writer or self.store)
            queue.extend((self.commands.decode(payload), None) for payload in applied.released)

    def _apply_one(self, command: Mapping[str, Any], hold: pending.Hold | None, writer: Writer) -> Any:
        started = time.perf_counter()
        with _transient_db_errors():
            applied = writer.apply(
                command, closed_reply=self.closed_reply.get(command.get("queue") or "", "follow_up"),
                limits=self.limits, hold=hold)
        seconds = time.perf_counter() - started
        self._once_committed(lambda: _report(command, applied, seconds))
        if applied.reason is not None:  # a flood set aside here: its original is kept with it
            self._keep_original(command, applied.reason, writer)
        elif applied.outcome == "duplicate" and self._may_lack_original(command, writer):
            # A restart between the rejection's commit and its original: finish it now.
            self._keep_original(command, "set aside by the ticketer", writer)
        return applied

    def _once_committed(self, report: Callable[[], None]) -> None:
        """Metrics and logs of an effect: now, or after the batch's commit."""
        if self._committed is None:
            report()
        else:
            self._committed.append(report)

    def _may_lack_original(self, command: Mapping[str, Any], writer: Writer) -> bool:
        if self.blobs is None or command.get("raw_ref") or command["author"].get("member"):
            return False
        with _transient_db_errors():
            return writer.lacks_original(command_key(command["id"]))

    def _keep_original(self, command: Mapping[str, Any], why: str, writer: Writer) -> None:
        """Rebuild the mail of a command the ticketer set aside and name it as the
        rejection's original, so an admin can open and release it. Raises Transient."""
        if self.blobs is None or command.get("raw_ref"):
            return
        contents: dict[str, bytes | None] = {}
        try:
            for item in command.get("attachments") or ():
                ref = item.get("blob_ref")
                if ref and ref not in contents:
                    try:
                        contents[ref] = self.blobs.get(ref)
                    except BlobMissing:
                        contents[ref] = None
            ref = self.blobs.put(rebuilt_mail(command, contents, why.split(":", 1)[0]), durable=True)
        except OSError as exc:
            raise Transient(f"blob store unavailable: {exc}") from exc
        with _transient_db_errors():
            writer.keep_original(command_key(command["id"]), ref)

    def _record_delivery(self, record: Record, writer: Writer) -> None:
        try:
            event = self.events.decode(record.value)
        except CodecError as exc:
            raise BadRecord(str(exc)) from exc
        try:
            with _transient_db_errors():
                changed = writer.record_delivery(event)
        except InvalidDeliveryEvent as exc:
            raise BadRecord(f"{event.get('id')}: {exc}") from exc
        log.debug(
            "delivery recorded" if changed else "delivery event ignored",
            extra={"stage": STAGE, "ticket": event.get("ticket"), "outcome": event["status"]},
        )


class Writer(Protocol):
    """Where the step writes: the store (a transaction per call) or a batch (one for all)."""

    def apply(self, cmd: Mapping[str, Any], *, closed_reply: ClosedReply = ..., limits: Limits = ...,
              hold: pending.Hold | None = ...) -> Applied: ...

    def record_delivery(self, event: Mapping[str, Any]) -> bool: ...

    def keep_original(self, command_id: str, raw_ref: str) -> bool: ...

    def lacks_original(self, command_id: str) -> bool: ...


def _report(command: Mapping[str, Any], applied: Applied, seconds: float) -> None:
    """The metrics and log lines of one committed command."""
    metrics.TICKETER_APPLY_SECONDS.observe(seconds)
    metrics.TICKETER_APPLIED.labels(applied.outcome).inc()
    _observe_latency(command, applied.outcome)
    if applied.bounce is not None:
        metrics.TICKETER_BOUNCES.labels(applied.bounce).inc()
        if applied.bounce == "bounced":
            log.info("outgoing mail bounced", extra={"stage": STAGE, "command": command["id"],
                                                     "queue": command["queue"], "ticket": applied.ticket_key})
    if applied.reason is not None:  # a flood set aside here: counted and said, every one
        metrics.TICKETER_RATE_LIMITED.labels("ticket" if " mails on " in applied.reason else "sender").inc()
        log.warning("rate limited", extra={"stage": STAGE, "command": command["id"], "queue": command["queue"],
                                           "reason": applied.reason})
    log.debug(
        "applied",
        extra={"stage": STAGE, "command": command["id"], "outcome": applied.outcome,
               "ticket": applied.ticket_key, "queue": command["queue"]},
    )


def _observe_latency(command: Mapping[str, Any], outcome: str) -> None:
    """Mail to its committed ticket or comment: new effects only (a duplicate or a
    replay was observed the first time), and not a release (its arrival is old news)."""
    received = command.get("received_at")
    if outcome not in ("created", "commented") or not isinstance(received, datetime):
        return
    if released_of(str(command.get("id") or "")) is not None:
        return
    seconds = (datetime.now(timezone.utc) - received).total_seconds()
    metrics.MAIL_TO_TICKET_SECONDS.labels(command.get("mailbox") or "").observe(max(0.0, seconds))


@contextmanager
def _transient_db_errors() -> Iterator[None]:
    """Database outages become Transient (retried); other database errors stop the process."""
    try:
        yield
    except OperationalError as exc:
        raise Transient(f"database unavailable: {exc.orig!r}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Transient(f"database connection lost: {exc.orig!r}") from exc
        raise


class DueReplies:
    """Applies held-back replies whose wait is over, every ``interval`` seconds, in a
    thread of the ticketer (services/tickets/pending.py). Several ticketers may run
    it: a reply applied twice is a duplicate by its command id. A database outage is
    logged and waits for the next round."""

    def __init__(self, step: TicketerStep, stop: threading.Event, interval: float = DUE_INTERVAL):
        self.step = step
        self.stop = stop
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="due-replies", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            try:
                self.step.apply_due()
            except Transient as exc:
                log.warning("held replies postponed", extra={"stage": STAGE, "error": str(exc)})


class AutoClose:
    """Closes resolved tickets after their queue's ``auto_close_days``, every
    ``interval`` seconds, in a thread of the ticketer. Several ticketers may run it
    at once: a ticket is closed once (the version check makes a second closer's
    transaction fail, and it tries again next round); a database outage is logged
    and waits for the next round."""

    def __init__(self, store: TicketStore, config: Config, stop: threading.Event, interval: float = AUTO_CLOSE_INTERVAL):
        self.store = store
        self.queues = [(q.key, q.auto_close_days) for q in config.queues if q.auto_close_days > 0]
        self.stop = stop
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="auto-close", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def run_once(self, now: datetime | None = None) -> int:
        try:  # the rate limits' arrivals that no window reaches any more
            self.store.prune_arrivals((now or datetime.now(timezone.utc)) - ARRIVALS_KEPT)
        except DBAPIError as exc:
            log.warning("pruning arrivals postponed", extra={"stage": STAGE, "error": type(exc).__name__})
        closed = 0
        for queue, days in self.queues:
            while not self.stop.is_set():
                try:
                    keys = self.store.auto_close(queue, days, now=now)
                except (VersionConflict, DBAPIError) as exc:
                    log.warning("auto-close postponed", extra={"stage": STAGE, "queue": queue,
                                                              "error": type(exc).__name__})
                    break
                metrics.TICKETER_AUTO_CLOSED.labels(queue).inc(len(keys))
                closed += len(keys)
                for key in keys:
                    log.info("ticket closed automatically", extra={"stage": STAGE, "ticket": key, "queue": queue})
                if len(keys) < AUTO_CLOSE_BATCH:
                    break
        return closed

    def _run(self) -> None:
        while not self.stop.wait(self.interval):
            self.run_once()


class SuspendedRetention:
    """Deletes suspended mail received more than ``suspended.retention_days`` ago,
    every ``interval`` seconds, in a thread of the ticketer (0 days: never), and
    then each raw mail no remaining rejection refers to.

    The rows go first, in batches of one transaction each, and a blob only after
    its rows are gone: a crash in between leaves an unused blob, never a row
    without its mail. Several ticketers may run it at once (a row is deleted
    once; deleting a blob twice is a no-op). A database or blob store outage is
    logged and waits for the next round.

    A blob is content-addressed, so the same bytes rejected again while the old
    rows expire (a replay of the inbound topic after ``retention_days``) may lose
    their blob in that instant; the claim-checked mail of the fetcher is one
    such blob, and the inbound topic usually keeps its records for a shorter time.
    """

    def __init__(self, store: TicketStore, blobs: BlobStore, days: int, stop: threading.Event,
                 interval: float = RETENTION_INTERVAL):
        self.store = store
        self.blobs = blobs
        self.days = days
        self.stop = stop
        self.interval = interval
        self.thread = threading.Thread(target=self._run, name="suspended-retention", daemon=True)

    def start(self) -> None:
        if self.days > 0:
            self.thread.start()

    def run_once(self, now: datetime | None = None) -> int:
        """One round; returns how many rejections were deleted."""
        before = (now or datetime.now(timezone.utc)) - timedelta(days=self.days)
        deleted = 0
        while not self.stop.is_set():
            try:
                expired = self.store.expire_suspended(before, limit=RETENTION_BATCH)
            except DBAPIError as exc:
                log.warning("suspended mail retention postponed", extra={"stage": STAGE, "error": type(exc).__name__})
                break
            metrics.SUSPENDED_EXPIRED.inc(expired.deleted)
            deleted += expired.deleted
            for ref in expired.unreferenced:
                try:
                    self.blobs.delete(ref)
                except (OSError, BlobMissing) as exc:  # left behind, unused: nothing refers to it
                    log.warning("raw mail of expired suspended mail not deleted",
                                extra={"stage": STAGE, "blob": ref[:80], "error": str(exc)})
            if expired.deleted < RETENTION_BATCH:
                break
        if deleted:
            log.info("suspended mail expired", extra={"stage": STAGE, "count": deleted})
        return deleted

    def _run(self) -> None:
        self.run_once()  # at start too: a ticketer restarted daily would otherwise never get to it
        while not self.stop.wait(self.interval):
            self.run_once()


def run_ticketer(config: Config, stop: threading.Event, health: Health, bootstrap: Sequence[str] | None = None) -> None:
    store = TicketStore(config.database_url)
    try:
        current = await_schema(store, stop, health, STAGE)  # the migration is `deskmail db migrate`'s
    except BaseException:
        store.close()
        raise
    if not current:  # stopped while waiting
        store.close()
        return
    closed_reply: dict[str, ClosedReply] = {
        q.key: "reopen" if q.closed_reply == "reopen" else "follow_up" for q in config.queues}
    blobs = blob_store(config)
    AutoClose(store, config, stop).start()
    SuspendedRetention(store, blobs, config.suspended.retention_days, stop).start()
    rates = config.rate_limits
    limits = Limits(Limit(rates.per_sender.mails, rates.per_sender.minutes),
                    Limit(rates.per_ticket.mails, rates.per_ticket.minutes))

    def build(ctx: StageContext) -> TicketerStep:
        ctx.on_close(store.close)
        step = TicketerStep(store, ctx.config.topics["commands"], ctx.config.topics["events"], closed_reply, limits,
                            blobs, reply_wait_seconds=config.ticketer.reply_wait_seconds)
        DueReplies(step, stop).start()
        return step

    run_stage(config, SPEC, build, stop, health, bootstrap)
