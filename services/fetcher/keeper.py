"""The lease keeper: one fetcher replica's membership in the lease group.

It polls the group without pause in a thread of its own (joins, heartbeats'
bookkeeping and rebalance callbacks happen inside that poll), starts the worker
of each mailbox whose partition is assigned, and on revocation stops those
workers and waits for them before the member rejoins, so the partition moves
only after they finished their batch in flight. Between polls it asks the
broker to confirm the membership and renews the split-brain deadline with the
moment it asked. The guarantees and numbers are in ``services.fetcher.leases``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from services.common import metrics
from services.common.errors import Transient
from services.fetcher.leases import LeaseBook, LeaseDeadline, LeaseTiming
from services.fetcher.pool import Stopping, WorkerPool

log = logging.getLogger("deskmail.fetcher")

STAGE = "fetcher"

# on_revoked(partitions, lost) starts giving them up and returns a probe: True once done.
Revoked = Callable[[set[int], bool], Callable[[], bool]]


class LeaseSource(Protocol):
    """The lease group as the keeper needs it (``services.common.kafka.LeaseConsumer``)."""

    def subscribe(self, on_assigned: Callable[[set[int]], None], on_revoked: Revoked) -> None: ...

    def poll(self, timeout_ms: int) -> None:
        """Drive the membership; the callbacks run inside. Raises Transient."""

    def confirm(self, timeout_ms: int) -> bool:
        """Whether the broker accepted the membership just now (sent at the call)."""

    def close(self) -> None: ...


class LeaseKeeper:
    """Runs the poll thread and turns assignments into running workers.

    ``failure`` is set when the poll thread or a callback died of an unexpected
    error; the runner then stops the process. ``stop`` and ``close`` end it.
    """

    def __init__(
        self,
        source: LeaseSource,
        book: LeaseBook,
        pool: WorkerPool,
        deadline: LeaseDeadline,
        timing: LeaseTiming,
        replica: str,
        group: str,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.source = source
        self.book = book
        self.pool = pool
        self.deadline = deadline
        self.timing = timing
        self.replica = replica
        self.group = group
        self.clock = clock
        self.failure: BaseException | None = None
        self._lock = threading.RLock()
        self._closing = threading.Event()
        self._settled = threading.Event()  # no revocation waits for its workers
        self._settled.set()
        self._thread: threading.Thread | None = None
        self._signalled: Stopping | None = None
        self._expired_noted = False
        self._unreachable_noted = False

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.source.subscribe(self._assigned, self._revoked)
        self._thread = threading.Thread(target=self._run, name="fetcher:leases", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and set every worker's stop (they finish their batch); does not wait."""
        self._closing.set()
        self._signalled = self.pool.stop_all()

    def close(self, until: float) -> None:
        """After ``stop``: wait for the poll thread and the workers until ``until``
        (``time.monotonic()``), log each release, then leave the group, so the partitions
        move only once the workers returned (or their time was up)."""
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=max(0.0, until - time.monotonic()))
        with self._lock:
            released = self.book.revoke_all()
            stopping = Stopping.joined(self._signalled, self.pool.stop_all())
        stopping.wait(until)
        self._released(released, stopping, "shutdown")
        self.source.close()

    # ------------------------------------------------------------ the poll thread

    def _run(self) -> None:
        next_confirm = self.clock()
        try:
            while not self._closing.is_set() and self.failure is None:
                if not self._settled.is_set():  # a revocation outlasted a poll call: it finishes first
                    self._settled.wait(0.1)
                    continue
                try:
                    self.source.poll(self.timing.poll_timeout_ms)
                    self._unreachable_noted = False
                except Transient as exc:
                    if self._settled.is_set():  # else the poll only gave up waiting for a revocation
                        self._note_unreachable(exc)
                    self._closing.wait(self.timing.poll_timeout_ms / 1000)
                now = self.clock()
                if now >= next_confirm and self._holding():
                    next_confirm = now + self.timing.confirm_every_seconds
                    if self.source.confirm(self.timing.confirm_timeout_ms):
                        self.deadline.renew(now)
                self._watch_deadline()
        except BaseException as exc:  # a bug: the runner stops the process
            log.exception("lease keeper failed", extra={"stage": STAGE, "group": self.group, "replica": self.replica})
            self.failure = exc

    def _holding(self) -> bool:
        with self._lock:
            return bool(self.book.held_partitions)

    def _note_unreachable(self, exc: Exception) -> None:
        if not self._unreachable_noted:
            log.warning("lease group unreachable", extra={"stage": STAGE, "group": self.group,
                                                          "replica": self.replica, "error": str(exc)})
            self._unreachable_noted = True

    def _watch_deadline(self) -> None:
        with self._lock:
            held = len(self.book.held)
        holding = held > 0
        if holding and not self.deadline.valid():
            if not self._expired_noted:
                log.warning("lease not confirmed in time: this replica's mailboxes are paused",
                            extra={"stage": STAGE, "group": self.group, "replica": self.replica, "count": held})
                self._expired_noted = True
        elif self._expired_noted:
            if holding:
                log.info("lease confirmed again", extra={"stage": STAGE, "group": self.group,
                                                         "replica": self.replica})
            self._expired_noted = False

    # ------------------------------------------------------------ rebalance callbacks (in poll)

    def _assigned(self, partitions: set[int]) -> None:
        try:
            with self._lock:
                if self._closing.is_set():
                    return  # close() revokes what the book holds; these never started
                self.deadline.renew(self.clock())  # the assignment itself confirms the membership
                acquired = self.book.assign(partitions)
                for address, partition in acquired.items():
                    log.info("mailbox acquired", extra=self._extra(address, partition))
                    self.pool.start(address)
                metrics.FETCHER_LEASE_CHANGES.labels("acquired").inc(len(acquired))
                metrics.FETCHER_LEASED_MAILBOXES.set(len(self.book.held))
        except BaseException as exc:
            self.failure = exc
            raise

    def _revoked(self, partitions: set[int], lost: bool) -> Callable[[], bool]:
        try:
            with self._lock:
                if lost:
                    self.deadline.end()  # expelled: the partitions may be elsewhere already
                released = self.book.revoke(partitions)
                stopping = self.pool.stop(released)
        except BaseException as exc:
            self.failure = exc
            raise
        if not released:
            return lambda: True
        self._settled.clear()
        until = self.clock() + self.timing.stop_seconds

        def given_up() -> bool:
            if not stopping.done() and self.clock() < until:
                return False
            self._released(released, stopping, "lost" if lost else "revoked")
            self._settled.set()
            return True

        return given_up

    # ------------------------------------------------------------ releasing

    def _released(self, released: Mapping[str, int], stopping: Stopping, reason: str) -> None:
        for address in stopping.give_up():
            log.warning("mailbox worker did not stop in time; its lease is revoked",
                        extra=self._extra(address, released.get(address)))
        for address, partition in released.items():
            for gauge in (metrics.FETCHER_UP, metrics.FETCHER_LAST_SUCCESS):
                try:
                    gauge.remove(address)  # the mailbox's next holder reports it
                except KeyError:
                    pass
            log.info("mailbox released", extra={**self._extra(address, partition), "reason": reason})
        metrics.FETCHER_LEASE_CHANGES.labels("released").inc(len(released))
        with self._lock:
            metrics.FETCHER_LEASED_MAILBOXES.set(len(self.book.held))

    def _extra(self, address: str, partition: int | None) -> dict[str, object]:
        return {"stage": STAGE, "mailbox": address, "partition": partition, "group": self.group,
                "replica": self.replica}
