"""The consume loop's contract, pinned with an in-memory broker and a fake clock.

No broker, no threads, no sleeping: every test runs ``ConsumeLoop.run`` until a
condition holds and then reads what the broker saw, in order.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import pytest
from prometheus_client import REGISTRY

from services.common.bus import ConsumeLoop, LoopSettings, Out, Partition, Record
from services.common.codec import codec
from services.common.dlq import DeadLetterLimit, DeadLetterWindow
from services.common.errors import BadRecord, DeadLetterFlood, Later, Stopping, Transient
from services.common.retry import Backoff, FakeClock
from tests.harness.memory_bus import MemoryBroker, MemorySink, MemorySource

IN, OUT, DLQ = "in", "out", "dlq"
SETTINGS = LoopSettings(
    poll_ms=100,
    transient_wait_seconds=10.0,
    retry=Backoff(initial=1.0, maximum=4.0, jitter=False),
    pause=Backoff(initial=5.0, maximum=20.0, jitter=False),
    deadletter_limit=DeadLetterLimit(percent=100, of_last=10),
)


class MalformedMail(Exception):
    pass


class Echo:
    """Produces one record per input; ``fail(offset)`` decides what a record raises."""

    def __init__(self, broker: MemoryBroker, fail: Callable[[Record], BaseException | None] = lambda r: None):
        self.broker = broker
        self.fail = fail
        self.seen: list[int] = []

    def process(self, record: Record) -> Sequence[Out]:
        self.seen.append(record.offset)
        error = self.fail(record)
        if error is not None:
            raise error
        self.broker.events.append(("effect", record.offset))
        return [Out(OUT, record.key or b"", b"out:" + record.value)]


class Harness:
    def __init__(self, n: int = 0, partitions: int = 1, settings: LoopSettings = SETTINGS, max_records: int = 100,
                 stage: str = "test"):
        self.stage = stage
        self.broker = MemoryBroker(partitions=partitions)
        for i in range(n):
            self.broker.append(IN, b"%d" % i, b"k", partition=i % partitions)
        self.clock = FakeClock()
        self.stop = threading.Event()
        self.source = MemorySource(self.broker, max_records=max_records, clock=self.clock)
        self.sink = MemorySink(self.broker)
        self.settings = settings

        self.readiness: list[tuple[bool, str | None]] = []

    def run(self, step: Echo, until: Callable[[], bool], max_iterations: int = 1000) -> None:
        iterations = 0

        def alive() -> None:
            nonlocal iterations
            iterations += 1
            if until() or iterations > max_iterations:
                self.stop.set()

        loop = ConsumeLoop(self.source, self.sink, step, self.stage, [IN], DLQ, self.stop, self.settings,
                           clock=self.clock, on_alive=alive,
                           on_ready=lambda ready, reason: self.readiness.append((ready, reason)))
        self.loop = loop
        loop.run()
        assert iterations <= max_iterations, "the loop never reached the condition"

    def committed(self, partition: int = 0) -> int | None:
        return self.broker.committed.get(Partition(IN, partition))

    def values(self, topic: str) -> list[bytes]:
        return [r.value for r in self.broker.log(topic)]


def test_offset_plus_one_is_committed_only_after_the_produced_records_are_acked() -> None:
    h = Harness(n=5, max_records=2)
    h.run(Echo(h.broker), until=lambda: h.committed() == 5)
    assert h.values(OUT) == [b"out:%d" % i for i in range(5)]
    commits = [e for e in h.broker.events if e[0] == "commit"]
    assert [c[3] for c in commits] == [2, 4, 5]  # one commit per polled batch
    for commit in commits:
        acked_before = sum(1 for e in h.broker.events[:h.broker.events.index(commit)] if e[0] == "ack")
        assert acked_before >= commit[3]  # every record up to the committed offset was acked first


def test_a_step_effect_is_durable_before_its_offset_is_committed() -> None:
    h = Harness(n=3)
    h.run(Echo(h.broker), until=lambda: h.committed() == 3)
    kinds = [e[0] for e in h.broker.events]
    assert kinds.index("commit") > max(i for i, k in enumerate(kinds) if k == "effect")


def test_a_bad_record_is_dead_lettered_with_its_cause_and_the_batch_goes_on() -> None:
    h = Harness(n=5)

    def fail(record: Record) -> BaseException | None:
        if record.offset == 2:
            try:
                raise MalformedMail("no header block")
            except MalformedMail as exc:
                bad = BadRecord(f"mail 2: {exc}")
                bad.__cause__ = exc
                return bad
        return None

    h.run(Echo(h.broker, fail), until=lambda: h.committed() == 5)
    assert h.values(OUT) == [b"out:0", b"out:1", b"out:3", b"out:4"]
    [letter] = [codec("DeadLetter").decode(v) for v in h.values(DLQ)]
    assert (letter["stage"], letter["topic"], letter["partition"], letter["offset"]) == ("test", IN, 0, 2)
    assert letter["value"] == b"2" and letter["key"] == b"k"
    assert letter["error_class"] == "MalformedMail"  # the cause, not the BadRecord wrapper
    assert letter["message"] == "mail 2: no header block"
    assert REGISTRY.get_sample_value("deskmail_bus_deadletters_total",
                                     {"stage": "test", "error_class": "MalformedMail"}) >= 1


@pytest.mark.parametrize("error, expected", [
    (BadRecord("x", error_class="MissingPayload"), "MissingPayload"),
    (BadRecord("x"), "BadRecord"),
])
def test_the_error_class_is_the_given_one_or_the_wrapper_without_a_cause(error: BadRecord, expected: str) -> None:
    assert error.error_class == expected


def test_a_transient_failure_commits_nothing() -> None:
    h = Harness(n=1)
    step = Echo(h.broker, fail=lambda r: Transient("database unavailable"))
    h.run(step, until=lambda: h.clock.now > 1000 + 60)
    assert h.committed() is None
    assert h.values(OUT) == [] and h.values(DLQ) == []
    assert len(step.seen) > 1  # retried, never given up


def test_a_transient_that_outlasts_the_bounded_wait_pauses_the_partitions_and_keeps_polling() -> None:
    h = Harness(n=3, partitions=2)  # partition 0: offsets 0, 1; partition 1: offset 0
    down_until = 1000 + 40.0
    step = Echo(h.broker, fail=lambda r: Transient("db down")
                if (r.partition, r.offset) == (0, 1) and h.clock.now < down_until else None)
    paused: list[tuple[int, frozenset[Partition]]] = []

    def until() -> bool:
        if h.source.paused:
            paused.append((h.source.polls, frozenset(h.source.paused)))
        return h.committed(0) == 2 and h.committed(1) == 1

    h.run(step, until)
    assert h.values(OUT).count(b"out:0") == 1  # partition 0's first record: committed before the pause
    assert h.values(OUT).count(b"out:1") == 1 and h.values(OUT).count(b"out:2") == 1
    assert h.broker.committed == {Partition(IN, 0): 2, Partition(IN, 1): 1}
    # While paused, every assigned partition was paused and the loop went on polling.
    assert {tps for _, tps in paused} == {frozenset({Partition(IN, 0), Partition(IN, 1)})}
    assert len({polls for polls, _ in paused}) > 10
    # Each wait in place stayed inside the bounded wait (then the loop paused instead):
    # three rounds of 1 + 2 + 4 s (in slices of at most 1 s, so the liveness probe
    # is fed) before the database came back at +40 s.
    assert sum(h.clock.waits) == 3 * (1 + 2 + 4) and max(h.clock.waits) <= 1.0
    assert not h.source.paused


def test_a_stop_during_a_retry_commits_only_what_came_before() -> None:
    h = Harness(n=3)
    step = Echo(h.broker, fail=lambda r: Transient("smtp down") if r.offset == 1 else None)
    h.clock.on_wait = lambda seconds: h.stop.set()
    h.run(step, until=lambda: False)
    assert h.committed() == 1
    assert h.values(OUT) == [b"out:0"]
    assert step.seen == [0, 1]  # record 2 was never started


def test_stopping_raised_by_a_step_leaves_its_record_uncommitted() -> None:
    h = Harness(n=3)
    step = Echo(h.broker, fail=lambda r: Stopping("stopping mid-retry") if r.offset == 1 else None)
    h.run(step, until=lambda: False)
    assert h.committed() == 1 and h.stop.is_set()


def test_an_unacknowledged_batch_is_not_committed_and_is_processed_again() -> None:
    h = Harness(n=2)
    h.sink.fail_waits = 1
    step = Echo(h.broker)
    h.run(step, until=lambda: h.committed() == 2)
    assert step.seen == [0, 1, 0, 1]  # rewound and processed again after the pause
    assert h.values(OUT) == [b"out:0", b"out:1"]  # the first attempt reached nothing


def test_a_record_the_broker_would_not_take_is_processed_again_after_a_pause() -> None:
    h = Harness(n=3)
    step = Echo(h.broker)
    h.sink.fail_sends = 1  # the first record's output
    h.run(step, until=lambda: h.committed() == 3)
    assert step.seen == [0, 0, 1, 2]
    assert h.values(OUT) == [b"out:0", b"out:1", b"out:2"]


def test_a_programming_error_stops_the_loop_after_committing_what_is_durable() -> None:
    h = Harness(n=4)
    step = Echo(h.broker, fail=lambda r: TypeError("bug") if r.offset == 2 else None)
    with pytest.raises(TypeError):
        h.run(step, until=lambda: False)
    assert h.committed() == 2 and h.source.closed


def test_too_many_dead_letters_stop_the_stage_instead_of_draining_the_topic() -> None:
    settings = LoopSettings(poll_ms=100, deadletter_limit=DeadLetterLimit(percent=50, of_last=10))
    h = Harness(n=40, settings=settings)
    step = Echo(h.broker, fail=lambda r: BadRecord("unreadable"))
    with pytest.raises(DeadLetterFlood, match="more than 50% of its last 10 records"):
        h.run(step, until=lambda: False)
    assert len(h.values(DLQ)) == 5 and h.committed() == 5  # the sixth was neither dead-lettered nor committed


def test_the_dead_letter_window_slides() -> None:
    window = DeadLetterWindow(DeadLetterLimit(percent=20, of_last=5), "test")
    for dead in [True, False, False, False, False, True, False, False, False, False]:
        window.check(dead)  # one in every five: at the limit, never over
    window.check(True)
    with pytest.raises(DeadLetterFlood):
        window.check(True)


def test_the_lag_series_of_a_revoked_partition_is_removed() -> None:
    h = Harness(n=3, partitions=2, stage="lag-test")
    labels = {"stage": "lag-test", "topic": IN, "partition": "1"}
    seen: list[float | None] = []

    def until() -> bool:
        value = REGISTRY.get_sample_value("deskmail_bus_consumer_lag_records", labels)
        seen.append(value)
        if value is not None and Partition(IN, 1) in h.source.assignment():
            h.source.revoke({Partition(IN, 1)})
            return False
        return len(seen) > 3 and Partition(IN, 1) not in h.source.assignment()

    h.run(Echo(h.broker), until)
    assert 0.0 in seen  # the series was there while the partition was assigned
    assert REGISTRY.get_sample_value("deskmail_bus_consumer_lag_records", labels) is None


def test_consume_settings_come_from_the_config_with_a_per_stage_override() -> None:
    from services.common.config import parse_text
    from services.common.stage import loop_settings

    cfg = parse_text(
        "consume:\n"
        "  transient_wait_seconds: 12\n"
        "  deadletter_limit: {percent: 20, of_last: 50}\n"
        "  stages:\n"
        "    ticketer: {deadletter_limit: {percent: 5, of_last: 1000}}\n"
    )
    router, ticketer = loop_settings(cfg, "router"), loop_settings(cfg, "ticketer")
    assert router.transient_wait_seconds == ticketer.transient_wait_seconds == 12
    assert router.deadletter_limit == DeadLetterLimit(percent=20, of_last=50)
    assert ticketer.deadletter_limit == DeadLetterLimit(percent=5, of_last=1000)
    defaults = loop_settings(parse_text(""), "sender")
    assert defaults.deadletter_limit == DeadLetterLimit(percent=50, of_last=100)


# ---------------------------------------------------------------- readiness


def test_a_member_without_partitions_is_ready_and_idle() -> None:
    """More replicas than partitions: the ones without a partition can work and wait for one."""
    h = Harness(partitions=0)  # the group has given this member nothing
    h.run(Echo(h.broker), until=lambda: h.source.polls >= 3)
    assert h.source.assignment() == set() and not h.broker.committed
    assert h.readiness and all(ready for ready, _ in h.readiness)


def test_not_ready_until_a_member_of_the_group() -> None:
    h = Harness(n=1)
    h.source.joined = False

    def until() -> bool:
        if h.source.polls >= 2:
            h.source.joined = True
        return h.committed() == 1 and h.source.polls >= 3

    h.run(Echo(h.broker), until)
    assert h.readiness[0] == (False, "not a member of its consumer group yet (broker unreachable or rebalancing)")
    assert h.readiness[-1] == (True, None)


def test_not_ready_while_paused_for_a_dependency_and_ready_again_after() -> None:
    h = Harness(n=1)
    down_until = 1000 + 40.0
    step = Echo(h.broker, fail=lambda r: Transient("db down") if h.clock.now < down_until else None)
    h.run(step, until=lambda: h.committed() == 1 and h.source.polls > 1 and h.readiness[-1][0])
    assert (False, "paused: a dependency is unavailable") in h.readiness
    assert h.readiness[-1] == (True, None)


def test_later_pauses_only_its_partition_commits_what_came_before_and_comes_back_after_the_delay() -> None:
    h = Harness(n=8, partitions=2)  # partition 0: offsets 0-3 (values 0, 2, 4, 6); partition 1: the odd ones
    waits = {1: 2}  # partition 0's offset 1 raises Later twice

    def fail(record: Record) -> BaseException | None:
        if record.partition == 0 and record.offset == 1 and waits[1] > 0:
            waits[1] -= 1
            return Later("not yet", 7.0, [Out(OUT, b"k", b"waiting:%d" % record.offset)])
        return None

    step = Echo(h.broker, fail)
    started = h.clock.now
    h.run(step, until=lambda: h.committed(0) == 4)
    commits = [e[2:] for e in h.broker.events if e[0] == "commit"]
    assert commits[:2] == [(0, 1), (1, 4)]  # the record before the waiting one; partition 1 went on meanwhile
    assert commits[-1] == (0, 4)
    assert h.clock.now - started >= 14.0  # both waits passed before the record came again
    assert step.seen.count(1) == 3 + 1 and step.seen.count(0) == 1 + 1  # (both partitions) only the waiting one again
    assert h.values(OUT).count(b"waiting:1") == 2
    assert sorted(v for v in h.values(OUT) if v.startswith(b"out:")) == [b"out:%d" % i for i in range(8)]
    assert metric("deskmail_bus_waiting_partitions", stage="test") == 0


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Batched(Echo):
    """A batch step: ``process_batch`` answers each record at once, or raises
    Transient for a whole batch while ``batch_down()`` (nothing of it took effect)."""

    def __init__(self, broker: MemoryBroker, fail: Callable[[Record], BaseException | None] = lambda r: None,
                 batch_down: Callable[[], bool] = lambda: False):
        super().__init__(broker, fail)
        self.batch_down = batch_down
        self.batches: list[list[int]] = []

    def process_batch(self, records: Sequence[Record]) -> list[Sequence[Out] | BadRecord]:
        self.batches.append([r.offset for r in records])
        if self.batch_down():
            raise Transient("database unavailable")
        results: list[Sequence[Out] | BadRecord] = []
        for record in records:
            try:
                results.append(self.process(record))
            except BadRecord as exc:
                results.append(exc)
        return results


def test_a_batch_step_gets_each_polled_batch_at_once_and_its_offsets_follow_the_acks() -> None:
    h = Harness(n=5, max_records=2)
    step = Batched(h.broker)
    h.run(step, until=lambda: h.committed() == 5)
    assert step.batches == [[0, 1], [2, 3], [4]]
    assert h.values(OUT) == [b"out:%d" % i for i in range(5)]
    assert [c[3] for c in h.broker.events if c[0] == "commit"] == [2, 4, 5]


def test_a_bad_record_of_a_batch_is_dead_lettered_alone() -> None:
    h = Harness(n=4)
    step = Batched(h.broker, fail=lambda r: BadRecord("bad mail", error_class="BadMail") if r.offset == 1 else None)
    h.run(step, until=lambda: h.committed() == 4)
    assert h.values(OUT) == [b"out:0", b"out:2", b"out:3"]
    [letter] = [codec("DeadLetter").decode(v) for v in h.values(DLQ)]
    assert (letter["offset"], letter["error_class"]) == (1, "BadMail")
    assert step.batches == [[0, 1, 2, 3]]


def test_a_batch_that_fails_transiently_is_processed_record_by_record() -> None:
    h = Harness(n=3)
    before = REGISTRY.get_sample_value("deskmail_bus_batch_fallbacks_total", {"stage": "batch-fallback"}) or 0
    h.stage = "batch-fallback"
    step = Batched(h.broker, batch_down=lambda: True)
    h.run(step, until=lambda: h.committed() == 3)
    assert step.batches == [[0, 1, 2]]
    assert step.seen == [0, 1, 2]  # then one by one, through process()
    assert h.values(OUT) == [b"out:0", b"out:1", b"out:2"]
    assert REGISTRY.get_sample_value("deskmail_bus_batch_fallbacks_total", {"stage": "batch-fallback"}) == before + 1


def test_a_dead_letter_flood_in_a_batch_commits_what_came_before_and_stops() -> None:
    settings = LoopSettings(poll_ms=100, deadletter_limit=DeadLetterLimit(percent=50, of_last=2))
    h = Harness(n=4, settings=settings)
    step = Batched(h.broker, fail=lambda r: BadRecord("bad") if r.offset >= 1 else None)
    with pytest.raises(DeadLetterFlood):
        h.run(step, until=lambda: False)
    assert h.committed() is not None and h.committed() < 4
    assert h.values(OUT) == [b"out:0"]
