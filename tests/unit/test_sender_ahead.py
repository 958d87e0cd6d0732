"""The sender's ahead scheduler with scripted attempts: what starts, in which order, and
what is kept across a rewind (services/sender/ahead.py)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from services.common.bus import Out, Partition, Record
from services.common.errors import BadRecord, Later
from services.sender.ahead import Ahead, Lane

TP = Partition("outbound", 0)


def rec(offset: int, key: str, partition: int = 0) -> Record:
    return Record("outbound", partition, offset, key.encode(), f"{key}@{offset}".encode())


class Script:
    """Attempts that block until released, recording what ran and how many at once."""

    def __init__(self, outcomes: dict[int, Callable[[], Sequence[Out]]] | None = None):
        self.outcomes = outcomes or {}
        self.started: list[int] = []
        self.release: dict[int, threading.Event] = {}
        self.running = 0
        self.most = 0
        self.forgotten: list[int] = []
        self.lock = threading.Lock()

    def gate(self, offset: int) -> threading.Event:
        return self.release.setdefault(offset, threading.Event())

    def attempt(self, record: Record) -> Sequence[Out]:
        with self.lock:
            self.started.append(record.offset)
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            assert self.gate(record.offset).wait(10), f"offset {record.offset} never released"
            outcome = self.outcomes.get(record.offset)
            if outcome is not None:
                return outcome()
            return [Out("events", record.key or b"", record.value)]
        finally:
            with self.lock:
                self.running -= 1

    def lane(self, record: Record) -> Lane | None:
        return ((record.key or b"").decode(), "smtp.example.com")

    def forget(self, record: Record) -> None:
        self.forgotten.append(record.offset)


def make(script: Script, sessions: int = 3) -> Ahead:
    return Ahead(script.attempt, script.lane, script.forget, sessions=sessions, workers=sessions)


def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.005)


def test_mails_of_different_tickets_go_out_at_once_up_to_the_sessions() -> None:
    script = Script()
    ahead = make(script, sessions=3)
    records = [rec(i, f"T-{i}") for i in range(6)]
    ahead.polled({TP: records})
    until(lambda: len(script.started) == 3, "three attempts under way")
    assert script.started == [0, 1, 2]
    for i in range(6):
        script.gate(i).set()
    assert [ahead.collect(r)[0].value for r in records] == [r.value for r in records]
    assert script.most == 3 and sorted(script.started) == list(range(6))
    ahead.close()


def test_a_tickets_next_mail_starts_only_after_the_one_before_is_final() -> None:
    script = Script()
    ahead = make(script)
    records = [rec(0, "T-1"), rec(1, "T-1"), rec(2, "T-2")]
    ahead.polled({TP: records})
    until(lambda: sorted(script.started) == [0, 2], "the first mail of each ticket")
    script.gate(2).set()
    time.sleep(0.05)
    assert 1 not in script.started  # T-1's second mail waits for its first
    script.gate(0).set()
    script.gate(1).set()
    for r in records:
        ahead.collect(r)
    assert script.started.index(1) > script.started.index(0)
    ahead.close()


def test_a_waiting_mail_stops_its_partition_and_what_went_out_behind_it_is_kept_not_sent_again() -> None:
    def later() -> Sequence[Out]:
        raise Later("451 try again later", 5.0, [Out("events", b"T-1", b"retrying")])

    script = Script({0: later})
    ahead = make(script, sessions=2)
    records = [rec(0, "T-1"), rec(1, "T-2"), rec(2, "T-3"), rec(3, "T-4")]
    ahead.polled({TP: records})
    until(lambda: script.started == [0, 1], "two under way")
    script.gate(1).set()  # T-2 goes out while T-1 is still on the wire
    until(lambda: 2 in script.started, "T-3 started in T-2's session")
    script.gate(0).set()  # T-1: 451
    with pytest.raises(Later) as waiting:
        ahead.collect(records[0])
    assert [o.value for o in waiting.value.outs] == [b"retrying"]
    time.sleep(0.05)
    assert 3 not in script.started  # nothing more starts in the partition once a mail waits
    script.gate(2).set()

    # The loop rewinds the partition to the waiting mail and polls it again later.
    script.outcomes.clear()
    script.release[0] = threading.Event()
    ahead.polled({TP: records})
    until(lambda: script.started.count(0) == 2, "the waiting mail tried again")
    for i in range(4):
        script.gate(i).set()
    assert [ahead.collect(r)[0].value for r in records] == [r.value for r in records]
    assert sorted(script.started) == [0, 0, 1, 2, 3]  # T-2 and T-3 were sent once
    ahead.close()


def test_an_unfinished_attempt_nobody_collected_is_forgotten_and_made_again() -> None:
    def later() -> Sequence[Out]:
        raise Later("451", 1.0)

    script = Script({0: later, 1: later})
    ahead = make(script, sessions=2)
    records = [rec(0, "T-1"), rec(1, "T-2")]
    for r in records:
        script.gate(r.offset).set()
    ahead.polled({TP: records})
    with pytest.raises(Later):
        ahead.collect(records[0])  # the loop stops the partition here: offset 1 is never collected
    # both attempts ended (offset 1's outcome stored), not merely started
    until(lambda: len(script.started) == 2
          and all(e.state == "done" for e in ahead._partitions[TP].entries.values()), "both attempts ended")
    script.outcomes.clear()
    ahead.polled({TP: records})
    assert script.forgotten == [1]
    assert [len(ahead.collect(r)) for r in records] == [1, 1]
    assert sorted(script.started) == [0, 0, 1, 1]
    ahead.close()


def test_a_bad_record_is_final_and_the_partition_goes_on() -> None:
    def bad() -> Sequence[Out]:
        raise BadRecord("not an OutboundMail")

    script = Script({0: bad})
    ahead = make(script, sessions=1)
    records = [rec(0, "T-1"), rec(1, "T-1")]
    for r in records:
        script.gate(r.offset).set()
    ahead.polled({TP: records})
    with pytest.raises(BadRecord):
        ahead.collect(records[0])
    assert len(ahead.collect(records[1])) == 1
    assert script.started == [0, 1]
    ahead.close()


def test_a_record_that_was_not_polled_or_not_started_is_attempted_by_collect_itself() -> None:
    script = Script()
    ahead = make(script, sessions=1)
    lone = rec(9, "T-9", partition=3)
    script.gate(9).set()
    assert len(ahead.collect(lone)) == 1
    # Server busy with offset 0: offset 1 is still queued when the loop gets to it.
    records = [rec(0, "T-1"), rec(1, "T-2")]
    ahead.polled({TP: records})
    until(lambda: script.started == [9, 0], "offset 0 under way")
    script.gate(0).set()
    script.gate(1).set()
    ahead.collect(records[0])
    ahead.collect(records[1])
    assert sorted(script.started) == [0, 1, 9]
    ahead.close()


def test_smtp_sessions_defaults_to_three_and_a_bad_value_names_its_line() -> None:
    from services.common.config import ConfigError, parse_text

    assert parse_text("organization:\n  name: x\n").sender.smtp_sessions == 3
    with pytest.raises(ConfigError) as info:
        parse_text("organization:\n  name: x\nsender:\n  timeout_seconds: 10\n  smtp_sessions: 0\n")
    [problem] = [str(p) for p in info.value.problems]
    assert problem.startswith("line 5: sender.smtp_sessions: Input should be greater than or equal to 1"), problem
