"""The mailbox workers of one fetcher replica: a thread, a stop event and a lease each.

The lease keeper starts a worker when its mailbox's partition is assigned and
stops it when the partition is revoked; the process stops them all on shutdown.
A worker that dies of an unexpected error (a bug) is recorded in ``crashed``,
which stops the process, as before leases.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from services.fetcher.leases import LeaseDeadline, MailboxLease

log = logging.getLogger("deskmail.fetcher")


class Worker(Protocol):
    address: str

    def run(self) -> None: ...


# Builds the worker of one mailbox with its own stop event and lease (runner.py: a MailboxWorker).
WorkerFactory = Callable[[str, threading.Event, MailboxLease], Worker]


@dataclass
class _Running:
    thread: threading.Thread
    stop: threading.Event
    lease: MailboxLease


class Stopping:
    """Workers whose stop is set: ``done`` once every thread has returned."""

    def __init__(self, running: dict[str, _Running]):
        self._running = running

    @classmethod
    def joined(cls, *parts: "Stopping | None") -> "Stopping":
        return cls({a: r for part in parts if part is not None for a, r in part._running.items()})

    @property
    def addresses(self) -> list[str]:
        return sorted(self._running)

    def done(self) -> bool:
        return not any(r.thread.is_alive() for r in self._running.values())

    def wait(self, until: float) -> bool:
        """Join the threads until the monotonic time ``until``; whether all returned."""
        for running in self._running.values():
            running.thread.join(timeout=max(0.0, until - time.monotonic()))
        return self.done()

    def give_up(self) -> list[str]:
        """Revoke the leases of the workers still running, so they can no longer fetch or
        mark; returns their addresses."""
        stuck = sorted(a for a, r in self._running.items() if r.thread.is_alive())
        for address in stuck:
            self._running[address].lease.revoke()
        return stuck


class WorkerPool:
    """Starts and stops mailbox workers by address. Thread-safe."""

    def __init__(self, build: WorkerFactory, deadline: LeaseDeadline):
        self.build = build
        self.deadline = deadline
        self.crashed: list[tuple[str, BaseException]] = []
        self._running: dict[str, _Running] = {}
        self._stopping: dict[str, _Running] = {}  # stop set, maybe not returned yet
        self._lock = threading.Lock()

    def start(self, address: str) -> None:
        """Start the worker of ``address`` unless it runs. A stopped worker that did not
        return in time (its lease revoked by ``Stopping.give_up``) is not waited for."""
        with self._lock:
            if address in self._running:
                return
            stop = threading.Event()
            lease = MailboxLease(self.deadline)
            worker = self.build(address, stop, lease)
            thread = threading.Thread(target=self._guarded, args=(worker,), name=f"fetcher:{address}", daemon=True)
            self._running[address] = _Running(thread, stop, lease)
            thread.start()

    def stop(self, addresses: Iterable[str]) -> Stopping:
        """Set the stop of each worker (it finishes its batch in flight); does not wait.
        A worker stopped before and still running is part of the answer too."""
        with self._lock:
            for address in [a for a, r in self._stopping.items() if not r.thread.is_alive()]:
                del self._stopping[address]
            taken: dict[str, _Running] = {}
            for address in set(addresses):
                running = self._running.pop(address, None) or self._stopping.get(address)
                if running is not None:
                    taken[address] = self._stopping[address] = running
        for running in taken.values():
            running.stop.set()
        return Stopping(taken)

    def stop_all(self) -> Stopping:
        with self._lock:
            addresses = set(self._running) | set(self._stopping)
        return self.stop(addresses)

    def running(self) -> set[str]:
        with self._lock:
            return {a for a, r in self._running.items() if r.thread.is_alive()}

    def _guarded(self, worker: Worker) -> None:
        try:
            worker.run()
        except BaseException as exc:  # recorded for the main loop, which stops the process
            log.exception("mailbox worker crashed", extra={"stage": "fetcher", "mailbox": worker.address})
            self.crashed.append((worker.address, exc))
