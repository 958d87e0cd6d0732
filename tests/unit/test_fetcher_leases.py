"""Mailbox leases: the mailbox -> partition mapping, the bookkeeping of assignments and
revocations, the split-brain deadline, and the keeper that turns them into running
workers, against a fake lease group and fake workers (the real group is exercised
in tests/e2e/test_fetcher_failover.py)."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from services.common.errors import Transient
from services.common.retry import FakeClock
from services.fetcher.keeper import LeaseKeeper
from services.fetcher.leases import LeaseBook, LeaseDeadline, LeaseTiming, MailboxLease, lease_partition
from services.fetcher.pool import WorkerPool

# ---------------------------------------------------------------- the mapping


def test_a_mailbox_maps_to_sha256_of_its_address_modulo_the_partitions() -> None:
    digest = hashlib.sha256(b"support@example.com").digest()
    assert lease_partition("support@example.com", 16) == int.from_bytes(digest, "big") % 16
    # pinned: a release that changed the mapping would move every mailbox during a rollout
    assert [lease_partition(f"box{n}@example.com", 16) for n in range(8)] == [
        int.from_bytes(hashlib.sha256(f"box{n}@example.com".encode()).digest(), "big") % 16 for n in range(8)]
    assert lease_partition("Support@Example.COM", 16) == lease_partition("support@example.com", 16)
    assert lease_partition("support@example.com", 1) == 0
    with pytest.raises(ValueError):
        lease_partition("support@example.com", 0)


def test_the_mapping_spreads_mailboxes_over_the_partitions() -> None:
    counts = Counter(lease_partition(f"mailbox-{n}@example.com", 16) for n in range(1600))
    assert set(counts) == set(range(16))
    assert min(counts.values()) > 60 and max(counts.values()) < 140  # 100 expected each


# ---------------------------------------------------------------- the bookkeeping


def addresses_on(partition: int, count: int, partitions: int = 16, prefix: str = "m") -> list[str]:
    found = []
    n = 0
    while len(found) < count:
        address = f"{prefix}{n}@example.com"
        if lease_partition(address, partitions) == partition:
            found.append(address)
        n += 1
    return found


def test_assign_and_revoke_say_which_workers_to_start_and_stop() -> None:
    on_3, on_5, on_9 = addresses_on(3, 2), addresses_on(5, 1), addresses_on(9, 1)
    book = LeaseBook(on_3 + on_5 + on_9, 16)
    assert book.assign({3, 4, 5}) == {on_3[0]: 3, on_3[1]: 3, on_5[0]: 5}  # 4 holds no mailbox
    assert book.assign({3, 9}) == {on_9[0]: 9}  # 3 is held already: nothing to start twice
    assert book.held_partitions == {3, 4, 5, 9}
    assert book.revoke({5, 12}) == {on_5[0]: 5}  # 12 was never held
    assert dict(book.held) == {on_3[0]: 3, on_3[1]: 3, on_9[0]: 9}
    assert book.revoke_all() == {on_3[0]: 3, on_3[1]: 3, on_9[0]: 9}
    assert book.held_partitions == frozenset() and dict(book.held) == {}


def test_a_partition_beyond_the_topic_at_start_is_refused() -> None:
    book = LeaseBook(["a@example.com"], 4)
    with pytest.raises(ValueError, match="partition count changed"):
        book.assign({1, 7})
    assert book.held_partitions == frozenset()


# ---------------------------------------------------------------- the deadline and its timing


def test_the_deadline_holds_for_its_validity_after_the_confirmation_was_sent() -> None:
    clock = FakeClock()
    deadline = LeaseDeadline(1.5, clock.monotonic)
    assert not deadline.valid()  # nothing confirmed yet
    sent = clock.now
    clock.advance(0.4)  # the answer took 0.4 s: the lease counts from the request
    deadline.renew(sent)
    clock.advance(1.0)
    assert deadline.valid() and deadline.remaining() == pytest.approx(0.1)
    deadline.renew(sent - 5)  # a late, older confirmation never shortens it
    assert deadline.remaining() == pytest.approx(0.1)
    clock.advance(0.1)
    assert not deadline.valid()
    deadline.renew(clock.now)
    deadline.end()
    assert not deadline.valid()


def test_a_mailbox_lease_ends_with_the_deadline_or_when_revoked() -> None:
    clock = FakeClock()
    deadline = LeaseDeadline(2.0, clock.monotonic)
    deadline.renew(clock.now)
    lease = MailboxLease(deadline)
    assert lease.valid()
    lease.revoke()
    assert not lease.valid() and deadline.valid()
    other = MailboxLease(deadline)
    clock.advance(2.0)
    assert not other.valid()


def test_timing_follows_from_the_session_timeout_and_the_stop_bound() -> None:
    timing = LeaseTiming(10_000, 3_000, stop_seconds=190.0)
    assert timing.validity_seconds == 7.0  # one heartbeat interval before the broker can expire us
    assert timing.confirm_every_seconds == 1.5
    assert timing.poll_timeout_ms == 1000
    assert timing.max_poll_interval_ms == 220_000  # the rebalance timeout outlasts a revocation
    fast = LeaseTiming(2_000, 500, stop_seconds=30.0)
    assert (fast.validity_seconds, fast.confirm_every_seconds, fast.poll_timeout_ms) == (1.5, 0.25, 250)
    with pytest.raises(ValueError):
        LeaseTiming(3_000, 3_000, stop_seconds=10.0)


# ---------------------------------------------------------------- the keeper, with fakes


class FakeGroup:
    """The lease group: the test plays the coordinator through the captured callbacks.

    Each poll advances the fake clock by its timeout unless ``ticking`` is off;
    ``confirming`` decides what ``confirm`` answers (the broker accepting the
    membership or not)."""

    def __init__(self, clock: FakeClock):
        self.clock = clock
        self.ticking = True
        self.confirming = True
        self.confirms = 0
        self.closed_after: list[str] = []
        self.polls = 0
        self.fail_polls = 0
        self.on_assigned: Callable[[set[int]], None] = lambda p: None
        self.on_revoked: Callable[[set[int], bool], Callable[[], bool]] = lambda p, lost: lambda: True
        self.closed = False
        self.running_at_close: set[str] | None = None
        self.pool: WorkerPool | None = None

    def subscribe(self, on_assigned: Callable[[set[int]], None],
                  on_revoked: Callable[[set[int], bool], Callable[[], bool]]) -> None:
        self.on_assigned, self.on_revoked = on_assigned, on_revoked

    def poll(self, timeout_ms: int) -> None:
        self.polls += 1
        time.sleep(0.002)
        if self.ticking:
            self.clock.advance(timeout_ms / 1000)
        if self.fail_polls:
            self.fail_polls -= 1
            raise Transient("coordinator not available")

    def confirm(self, timeout_ms: int) -> bool:
        self.confirms += 1
        return self.confirming

    def close(self) -> None:
        self.closed = True
        self.running_at_close = self.pool.running() if self.pool else None


class FakeWorker:
    """Runs until stopped, then finishes its "batch in flight" once ``finish`` is set."""

    def __init__(self, address: str, stop: threading.Event, lease: MailboxLease, finish: threading.Event):
        self.address = address
        self.stop = stop
        self.lease = lease
        self.finish = finish
        self.returned_at: float | None = None

    def run(self) -> None:
        self.stop.wait()
        self.finish.wait()
        self.returned_at = time.time()


class Replica:
    """One fetcher replica's keeper, pool and deadline, with fake workers; started."""

    def __init__(self, addresses: list[str], timing: LeaseTiming | None = None, ticking: bool = True):
        self.clock = FakeClock()
        self.timing = timing or LeaseTiming(2_000, 500, stop_seconds=30.0)
        self.deadline = LeaseDeadline(self.timing.validity_seconds, self.clock.monotonic)
        self.finish = threading.Event()
        self.finish.set()  # workers stop at once unless a test holds them
        self.workers: dict[str, FakeWorker] = {}

        def build(address: str, stop: threading.Event, lease: MailboxLease) -> FakeWorker:
            self.workers[address] = FakeWorker(address, stop, lease, self.finish)
            return self.workers[address]

        self.pool = WorkerPool(build, self.deadline)
        self.group = FakeGroup(self.clock)
        self.group.pool = self.pool
        self.group.ticking = ticking
        self.keeper = LeaseKeeper(self.group, LeaseBook(addresses, 16), self.pool, self.deadline, self.timing,
                                  "host-a:1", "deskmail-fetcher", clock=self.clock.monotonic)
        self.keeper.start()

    def close(self) -> None:
        self.finish.set()
        self.keeper.stop()
        self.keeper.close(time.monotonic() + 5)


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == text]


def gauge() -> float:
    return REGISTRY.get_sample_value("deskmail_fetcher_leased_mailboxes") or 0.0


def changes(change: str) -> float:
    return REGISTRY.get_sample_value("deskmail_fetcher_lease_changes_total", {"change": change}) or 0.0


def test_assignment_starts_workers_and_revocation_is_done_only_once_they_returned(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "deskmail.fetcher")
    on_2, on_7 = addresses_on(2, 2, prefix="k"), addresses_on(7, 1, prefix="k")
    replica = Replica(on_2 + on_7, ticking=False)
    acquired_before = changes("acquired")
    try:
        replica.group.on_assigned({2, 7, 11})
        assert replica.pool.running() == set(on_2 + on_7)
        assert replica.deadline.valid()  # the assignment itself confirms the membership
        assert gauge() == 3 and changes("acquired") - acquired_before == 3
        acquired = messages(caplog, "mailbox acquired")
        assert {(r.mailbox, r.partition, r.replica) for r in acquired} == {  # type: ignore[attr-defined]
            (on_2[0], 2, "host-a:1"), (on_2[1], 2, "host-a:1"), (on_7[0], 7, "host-a:1")}

        replica.finish.clear()  # the workers of partition 2 have a batch in flight
        done = replica.group.on_revoked({2}, False)
        assert not done() and not done()  # the member must not rejoin yet
        assert replica.workers[on_2[0]].stop.is_set() and not replica.workers[on_7[0]].stop.is_set()
        assert messages(caplog, "mailbox released") == []
        replica.finish.set()
        wait_until(lambda: not replica.pool.running() & set(on_2), "the revoked workers to return")
        wait_until(done, "the revocation to be done")
        released = messages(caplog, "mailbox released")
        assert sorted(r.mailbox for r in released) == sorted(on_2)  # type: ignore[attr-defined]
        for record in released:  # logged after the worker returned, never before
            assert record.created >= replica.workers[record.mailbox].returned_at  # type: ignore[attr-defined,operator]
        assert {r.reason for r in released} == {"revoked"}  # type: ignore[attr-defined]
        assert replica.pool.running() == set(on_7) and gauge() == 1

        assert replica.group.on_revoked({2}, False)()  # revoking what is not held is done at once
    finally:
        replica.close()
    assert replica.group.closed and replica.group.running_at_close == set()  # left the group after the workers
    assert [r.reason for r in messages(caplog, "mailbox released")][-1] == "shutdown"  # type: ignore[attr-defined]
    assert gauge() == 0


def test_a_worker_that_does_not_stop_in_time_loses_its_lease_and_the_partition_moves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    box = addresses_on(4, 1, prefix="s")
    replica = Replica(box, ticking=False)
    replica.group.on_assigned({4})
    replica.finish.clear()  # stuck in its batch
    try:
        done = replica.group.on_revoked({4}, False)
        assert not done()
        replica.clock.advance(replica.timing.stop_seconds)
        assert done()
        assert not replica.workers[box[0]].lease.valid(), "a stuck worker may still mark mail"
        assert messages(caplog, "mailbox worker did not stop in time; its lease is revoked")
    finally:
        replica.close()


def test_a_revocation_during_shutdown_still_waits_for_the_workers_it_gives_up() -> None:
    box = addresses_on(5, 1, prefix="d")
    replica = Replica(box, ticking=False)
    replica.group.on_assigned({5})
    replica.finish.clear()
    try:
        replica.keeper.stop()  # SIGTERM: every worker's stop is set, nobody waited for yet
        done = replica.group.on_revoked({5}, False)  # a rebalance in the last poll
        assert not done(), "the partition would move while its worker still runs"
        replica.finish.set()
        wait_until(done, "the revocation to be done")
    finally:
        replica.close()


def test_lost_partitions_end_the_lease_at_once() -> None:
    box = addresses_on(6, 1, prefix="l")
    replica = Replica(box, ticking=False)
    replica.group.on_assigned({6})
    lease = replica.workers[box[0]].lease
    assert lease.valid()
    replica.finish.clear()
    try:
        done = replica.group.on_revoked({6}, True)
        assert not lease.valid(), "expelled: the batch in flight must not be marked"
        replica.finish.set()
        wait_until(done, "the lost partition to be given up")
    finally:
        replica.close()


def test_split_brain_guard_the_lease_ends_when_the_membership_is_not_confirmed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A replica cut off from the broker stops polling its mailboxes on its own, before the
    broker may expire it (session timeout), and resumes once the broker confirms it again."""
    caplog.set_level(logging.INFO, "deskmail.fetcher")
    box = addresses_on(1, 1, prefix="b")
    replica = Replica(box)
    try:
        replica.group.on_assigned({1})
        lease = replica.workers[box[0]].lease
        wait_until(lambda: replica.group.confirms >= 5, "confirmations")
        assert lease.valid()

        replica.group.confirming = False  # broker unreachable, or the member expelled
        cut_at = replica.clock.now
        wait_until(lambda: not lease.valid(), "the lease to end")
        # it ended one validity (session timeout less a heartbeat interval) after the last
        # confirmation sent, which was at most one poll before the cut
        ended_at = replica.clock.now + replica.deadline.remaining()
        step = replica.timing.poll_timeout_ms / 1000
        assert cut_at + replica.timing.validity_seconds - 2 * step <= ended_at
        assert ended_at <= cut_at + replica.timing.validity_seconds + step
        wait_until(lambda: messages(caplog, "lease not confirmed in time: this replica's mailboxes are paused"),
                   "the warning")
        assert replica.pool.running() == set(box)  # paused, not released: the group has not revoked it

        replica.group.confirming = True
        wait_until(lease.valid, "the lease to be confirmed again")
        wait_until(lambda: messages(caplog, "lease confirmed again"), "the log line")
    finally:
        replica.close()


def test_poll_failures_do_not_renew_the_lease_and_are_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    box = addresses_on(8, 1, prefix="p")
    replica = Replica(box)
    try:
        replica.group.on_assigned({8})
        replica.group.confirming = False
        replica.group.fail_polls = 10
        wait_until(lambda: replica.group.fail_polls == 0, "the failing polls")
        assert len(messages(caplog, "lease group unreachable")) == 1
        assert replica.keeper.failure is None
    finally:
        replica.close()


def test_a_bug_in_a_callback_is_the_keepers_failure() -> None:
    replica = Replica(["a@example.com"])
    try:
        with pytest.raises(ValueError):
            replica.group.on_assigned({99})  # the topic grew partitions: not silently ignored
        assert isinstance(replica.keeper.failure, ValueError)
        wait_until(lambda: not replica.keeper._thread.is_alive(), "the poll thread to end")  # type: ignore[union-attr]
    finally:
        replica.close()


def test_kafka_pythons_slow_listener_warning_is_dropped_for_the_lease_listener_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import services.common.kafka  # noqa: F401  (installs the filter)

    coordinator = logging.getLogger("kafka.coordinator.consumer")
    text = "Rebalance listener %s.%s for group %s took %.3fs. Sync listeners block the consumer event loop"
    with caplog.at_level(logging.WARNING, "kafka.coordinator.consumer"):
        coordinator.warning(text, "_LeaseListener", "on_partitions_revoked", "deskmail-fetcher", 2.5)
        coordinator.warning(text, "_Listener", "on_partitions_revoked", "deskmail-router", 2.5)
    assert [r.args[0] for r in caplog.records if r.args] == ["_Listener"]  # type: ignore[index]
