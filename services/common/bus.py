"""The consume loop every consuming stage runs, and the types it speaks.

``ConsumeLoop`` polls a batch, hands each record to the stage's ``Step`` in
order, sends what the step returns, waits for the broker's acknowledgement of
everything sent, and only then commits offset + 1 per partition. A step's
effect on a database is durable when ``process`` returns (it committed its
transaction), so the commit after the batch also comes after every DB commit.

What a step may raise decides what happens to the record:

* ``BadRecord``: dead-lettered with the cause's class and message, the batch goes
  on. More than the stage's ``DeadLetterLimit`` stops the stage
  (``DeadLetterFlood``) instead of draining the topic.
* ``Transient``: retried in place with backoff for at most
  ``LoopSettings.transient_wait_seconds``. If the dependency is still down, the
  loop commits what came before, rewinds every partition of the batch to its
  first unfinished record, pauses all assigned partitions and keeps polling (so
  the consumer stays in its group; max.poll.interval.ms is never missed), then
  resumes them after a growing backoff and tries again. A record the broker
  would not take or acknowledge is handled the same way (nothing unacknowledged
  is committed; the batch is processed again, idempotently).
* ``Later``: this record cannot be finished yet (the sender's mail waiting out a
  retry window). The loop produces the exception's ``outs``, commits what came
  before it in its partition, rewinds that partition to it and pauses that
  partition alone for the exception's delay; the other partitions go on, and the
  record is processed again when the delay has passed.
* ``Stopping`` (or a stop requested during a retry): commit what came before,
  leave this record uncommitted, return.
* anything else: propagates and stops the process; nothing of the batch is
  committed, so the next owner processes it again.

A step may also take a polled batch at once (``BatchStep.process_batch``: the
ticketer applies it in one database transaction). It answers each record with its
outputs or its ``BadRecord``, and its effects are durable when it returns. If it
raises ``Transient``, nothing of it took effect, and the loop processes that batch
again record by record as above, with the retries and pauses that path has.

The loop knows no Kafka client: it talks to a ``Source`` and a ``Sink``
(``services.common.kafka`` adapts kafka-python to both; tests use an in-memory
pair), so its contract is pinned by ``tests/unit/test_bus.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple, Protocol, runtime_checkable

from services.common import metrics
from services.common.codec import codec
from services.common.dlq import DeadLetterLimit, DeadLetterWindow
from services.common.errors import BadRecord, Later, Stopping, Transient
from services.common.retry import SYSTEM_CLOCK, Backoff, Clock, Retry

log = logging.getLogger("deskmail.bus")


class Partition(NamedTuple):
    topic: str
    partition: int


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record, whatever client read it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def tp(self) -> Partition:
        return Partition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class Out:
    """A record to produce: topic name, key and encoded value."""

    topic: str
    key: bytes
    value: bytes


class Step(Protocol):
    """One stage's processing of one consumed record. May raise BadRecord, Transient or Stopping."""

    def process(self, record: Record) -> Sequence[Out]: ...


@runtime_checkable
class BatchStep(Step, Protocol):
    """A step that takes a polled batch at once; see the module docstring."""

    def process_batch(self, records: Sequence[Record]) -> Sequence[Sequence[Out] | BadRecord]:
        """Each record's outputs, or the BadRecord it is dead-lettered with, in order;
        all effects durable on return. Raises Transient when none took effect."""
        ...


class Source(Protocol):
    """The consuming side of a broker, as the loop needs it."""

    def subscribe(self, topics: Sequence[str], on_revoked: Callable[[set[Partition]], None]) -> None: ...

    def poll(self, timeout_ms: int) -> Mapping[Partition, Sequence[Record]]: ...

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        """Commit the next offset to read per partition; returns once the broker stored it."""
        ...

    def assignment(self) -> set[Partition]: ...

    def member(self) -> bool:
        """True once the consumer is a member of its group's current generation, with
        or without partitions (a replica beyond the partition count is one, idle)."""
        ...

    def seek(self, tp: Partition, offset: int) -> None: ...

    def pause(self, partitions: set[Partition]) -> None: ...

    def resume(self, partitions: set[Partition]) -> None: ...

    def lag(self, tp: Partition) -> int | None:
        """Records behind the high watermark, or None when not known yet."""
        ...

    def close(self) -> None: ...


class Sink(Protocol):
    """The producing side: ``send`` queues, ``wait`` returns once all are acknowledged."""

    def send(self, out: Out) -> Any:
        """Queue one record; raises Transient when the broker cannot take it."""
        ...

    def wait(self, pending: Sequence[tuple[Out, Any]], stage: str) -> None:
        """Block until every queued record is acknowledged; raises Transient otherwise."""
        ...


@dataclass(frozen=True)
class LoopSettings:
    poll_ms: int = 500
    transient_wait_seconds: float = 30.0  # kept well below max.poll.interval.ms (300 s by default)
    retry: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=30.0))
    pause: Backoff = field(default_factory=lambda: Backoff(initial=5.0, maximum=120.0))
    deadletter_limit: DeadLetterLimit = field(default_factory=DeadLetterLimit)


def dead_letter(deadletter_topic: str, stage: str, record: Record | None, key: bytes | None, value: bytes,
                error: BaseException) -> Out:
    """The dead-letter record for a value a stage could not process, naming the real cause."""
    error_class = error.error_class if isinstance(error, BadRecord) else type(error).__name__
    letter = {
        "stage": stage,
        "topic": record.topic if record else None,
        "partition": record.partition if record else -1,
        "offset": record.offset if record else -1,
        "key": key,
        "value": value,
        "error_class": error_class,
        "message": str(error)[:4000],
        "time": datetime.now(timezone.utc),
    }
    metrics.BUS_DEADLETTERS.labels(stage, error_class).inc()
    return Out(deadletter_topic, key or b"", codec("DeadLetter").encode(letter))


class _GiveUp(Exception):
    """Internal: a Transient outlasted the bounded wait; pause and come back."""


class ConsumeLoop:
    """Consume-process-produce with offsets committed only after the effect is durable."""

    def __init__(
        self,
        source: Source,
        sink: Sink,
        step: Step,
        stage: str,
        topics: Sequence[str],
        deadletter_topic: str,
        stop: threading.Event,
        settings: LoopSettings = LoopSettings(),
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_alive: Callable[[], None] = lambda: None,
        on_ready: Callable[[bool, str | None], None] = lambda ready, reason: None,
    ):
        self.source = source
        self.sink = sink
        self.step = step
        self.stage = stage
        self.topics = list(topics)
        self.deadletter_topic = deadletter_topic
        self.stop = stop
        self.settings = settings
        self.clock = clock
        self.on_alive = on_alive
        self.on_ready = on_ready
        self.deadletters = DeadLetterWindow(settings.deadletter_limit, stage)
        self.pauses = Retry(settings.pause, clock=clock)
        self.paused_until: float | None = None
        self.waiting: dict[Partition, float] = {}  # partitions paused by Later, until when
        self._lag_reported: set[Partition] = set()

    def run(self) -> None:
        self.source.subscribe(self.topics, on_revoked=self._revoked)
        log.info("consuming", extra={"stage": self.stage, "topic": ",".join(self.topics)})
        try:
            while not self.stop.is_set():
                self.on_alive()
                self._pause_or_resume()
                batches = self.source.poll(self.settings.poll_ms)
                self.on_ready(*self._readiness())
                if batches:
                    started = self.clock.monotonic()
                    self._handle(batches)
                    metrics.BUS_BATCH_SECONDS.labels(self.stage).observe(self.clock.monotonic() - started)
                self._report_lag()
        finally:
            self.source.close()

    def _readiness(self) -> tuple[bool, str | None]:
        """Ready means able to work: a member of the group (holding partitions or not:
        a replica beyond the partition count is ready and idle) and not paused for a
        dependency that is down."""
        if not self.source.member():
            return False, "not a member of its consumer group yet (broker unreachable or rebalancing)"
        if self.paused_until is not None:
            return False, "paused: a dependency is unavailable"
        return True, None

    # ------------------------------------------------------------ one batch

    def _handle(self, batches: Mapping[Partition, Sequence[Record]]) -> None:
        if isinstance(self.step, BatchStep) and self._handle_batch(self.step, batches):
            return
        pending: list[tuple[Out, Any]] = []
        done: dict[Partition, int] = {}
        try:
            for tp, records in batches.items():
                for record in records:
                    try:
                        outs = self._process_one(record)
                    except Later as later:
                        # Only this partition waits; what came before it in the batch is committed.
                        pending.extend((out, self.sink.send(out)) for out in later.outs)
                        self._wait(tp, record, later)
                        break
                    pending.extend((out, self.sink.send(out)) for out in outs)
                    done[tp] = record.offset + 1
                    metrics.BUS_RECORDS.labels(self.stage, record.topic).inc()
        except Stopping:
            self._commit(pending, done, batches)
            self.stop.set()
            return
        except (_GiveUp, Transient):  # a dependency stayed down, or the broker would not take a record
            if self._commit(pending, done, batches):
                self._pause(batches, done)
            return
        except BaseException:
            # Stop the process, but what is durable stays committed: the records
            # before this one must not be processed again by the next owner.
            self._commit(pending, done, batches)
            raise
        if self._commit(pending, done, batches):
            self.pauses.reset()

    def _handle_batch(self, step: BatchStep, batches: Mapping[Partition, Sequence[Record]]) -> bool:
        """The batch through ``step.process_batch``; False when it raised Transient
        (nothing took effect: the caller processes the batch record by record)."""
        records = [record for part in batches.values() for record in part]
        try:
            results = step.process_batch(records)
        except Transient as exc:
            metrics.BUS_BATCH_FALLBACKS.labels(self.stage).inc()
            log.info("batch processed record by record", extra={"stage": self.stage, "count": len(records),
                                                                 "error": str(exc)})
            return False
        pending: list[tuple[Out, Any]] = []
        done: dict[Partition, int] = {}
        try:
            for record, result in zip(records, results, strict=True):
                if isinstance(result, BadRecord):
                    outs: Sequence[Out] = [self._dead_lettered(record, result)]
                else:
                    self.deadletters.check(dead=False)
                    outs = result
                pending.extend((out, self.sink.send(out)) for out in outs)
                done[record.tp] = record.offset + 1
                metrics.BUS_RECORDS.labels(self.stage, record.topic).inc()
        except (Transient, _GiveUp):  # the broker would not take a record
            if self._commit(pending, done, batches):
                self._pause(batches, done)
            return True
        except BaseException:
            self._commit(pending, done, batches)
            raise
        if self._commit(pending, done, batches):
            self.pauses.reset()
        return True

    def _wait(self, tp: Partition, record: Record, later: Later) -> None:
        """Rewind ``tp`` to ``record`` and pause it alone for ``later.delay`` seconds."""
        self.source.seek(tp, record.offset)
        self.source.pause({tp})
        self.waiting[tp] = self.clock.monotonic() + max(0.0, later.delay)
        metrics.BUS_WAITING.labels(self.stage).set(len(self.waiting))
        log.info("partition waiting", extra={"stage": self.stage, "topic": tp.topic, "partition": tp.partition,
                                             "offset": record.offset, "delay": round(later.delay, 2),
                                             "reason": str(later)})

    def _commit(self, pending: Sequence[tuple[Out, Any]], done: dict[Partition, int],
                batches: Mapping[Partition, Sequence[Record]]) -> bool:
        """Wait for the acks, then commit ``done``. If the broker did not ack, commit
        nothing, rewind the whole batch and pause: returns False."""
        try:
            self.sink.wait(pending, self.stage)
        except Transient as exc:
            log.warning("produced records not acknowledged; batch will be processed again",
                        extra={"stage": self.stage, "error": str(exc)})
            self._pause(batches, {})
            return False
        if done:
            self.source.commit(done)
        return True

    def _process_one(self, record: Record) -> Sequence[Out]:
        retry = Retry(self.settings.retry, clock=self.clock, budget=self.settings.transient_wait_seconds,
                      heartbeat=self.on_alive)
        while True:
            try:
                outs = self.step.process(record)
            except BadRecord as exc:
                return [self._dead_lettered(record, exc)]
            except Transient as exc:
                metrics.BUS_RETRIES.labels(self.stage).inc()
                delay = retry.next_delay()
                log.warning(
                    "retrying" if delay is not None else "still failing; pausing",
                    extra={"stage": self.stage, "topic": record.topic, "partition": record.partition,
                           "offset": record.offset, "error": str(exc),
                           "delay": round(delay, 2) if delay is not None else None},
                )
                if delay is None:
                    raise _GiveUp() from exc
                if retry.sleep(self.stop, delay=delay) == "stopped":
                    raise Stopping() from exc
                continue
            self.deadletters.check(dead=False)
            return outs

    def _dead_lettered(self, record: Record, exc: BadRecord) -> Out:
        """The dead letter of ``record``; raises DeadLetterFlood past the stage's limit."""
        self.deadletters.check(dead=True)
        log.warning(
            "dead-lettered",
            extra={"stage": self.stage, "topic": record.topic, "partition": record.partition,
                   "offset": record.offset, "reason": exc.error_class, "error": str(exc)},
        )
        return dead_letter(self.deadletter_topic, self.stage, record, record.key, record.value, exc)

    # ------------------------------------------------------------ pausing

    def _pause(self, batches: Mapping[Partition, Sequence[Record]], done: Mapping[Partition, int]) -> None:
        """Rewind each partition of the batch to its first unfinished record, pause all."""
        for tp, records in batches.items():
            if records:
                self.source.seek(tp, done.get(tp, records[0].offset))
        delay = self.pauses.schedule()
        self.paused_until = self.clock.monotonic() + delay
        assigned = self.source.assignment()
        self.source.pause(assigned)
        metrics.BUS_PAUSED.labels(self.stage).set(1)
        log.warning("partitions paused", extra={"stage": self.stage, "count": len(assigned),
                                                "delay": round(delay, 2)})

    def _pause_or_resume(self) -> None:
        self._resume_waiting()
        if self.paused_until is None:
            return
        assigned = self.source.assignment()
        if self.clock.monotonic() < self.paused_until:
            self.source.pause(assigned)  # partitions assigned meanwhile start paused too
            return
        self.paused_until = None
        self.source.resume(assigned - set(self.waiting))
        metrics.BUS_PAUSED.labels(self.stage).set(0)
        log.info("partitions resumed", extra={"stage": self.stage, "count": len(assigned)})

    def _resume_waiting(self) -> None:
        """Resume each waiting partition whose delay has passed (unless all are paused);
        forget those no longer assigned (their next owner reads the record again)."""
        if not self.waiting:
            return
        assigned = self.source.assignment()
        now = self.clock.monotonic()
        due = {tp for tp, until in self.waiting.items() if until <= now or tp not in assigned}
        for tp in due:
            del self.waiting[tp]
        if self.paused_until is None:
            self.source.resume(due & assigned)
        metrics.BUS_WAITING.labels(self.stage).set(len(self.waiting))

    # ------------------------------------------------------------ lag

    def _revoked(self, partitions: set[Partition]) -> None:
        for tp in partitions & set(self.waiting):
            del self.waiting[tp]
        for tp in partitions & self._lag_reported:
            metrics.BUS_LAG.remove(self.stage, tp.topic, str(tp.partition))
        self._lag_reported -= partitions

    def _report_lag(self) -> None:
        assigned = self.source.assignment()
        self._revoked(self._lag_reported - assigned)
        for tp in assigned:
            lag = self.source.lag(tp)
            if lag is not None:
                metrics.BUS_LAG.labels(self.stage, tp.topic, str(tp.partition)).set(max(0, lag))
                self._lag_reported.add(tp)
