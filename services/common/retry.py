"""The one retry policy: exponential backoff with full jitter, on an injected clock.

Every loop that waits before trying again (the consume loop, the fetcher's
mailbox sessions, the outbox relay, the sender's SMTP attempts, the local
supervisor's restarts) holds a ``Retry``: it counts the attempts, knows when the
sequence started, and sleeps through the ``Clock`` it was given, so tests drive
the time with ``FakeClock`` instead of sleeping.

A sleep never blocks a stop: it waits on the caller's ``threading.Event`` and
returns ``"stopped"`` the moment it is set. It also never starves a liveness
probe: ``heartbeat`` is called at least once a second while waiting. A ``Retry``
with a ``budget`` refuses a wait that would end past ``budget`` seconds after the
first failure (``"exhausted"``): the caller then gives the work up its own way
(the consume loop pauses its partitions, the sender reports the mail failed).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

Outcome = Literal["retry", "stopped", "exhausted"]


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0
    maximum: float = 300.0
    factor: float = 2.0
    jitter: bool = True

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 32))
        if not self.jitter:
            return ceiling
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as ``stop`` is set."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A clock for tests: ``wait`` advances the time at once instead of sleeping.

    ``on_wait(seconds)`` is called for every wait, so a test can set the stop
    event or change the world at a chosen moment.
    """

    def __init__(self, start: float = 1000.0, on_wait: Callable[[float], None] | None = None):
        self.now = start
        self.waits: list[float] = []
        self.on_wait = on_wait

    def monotonic(self) -> float:
        return self.now

    def wait(self, stop: threading.Event, seconds: float) -> bool:
        if stop.is_set():
            return True
        seconds = max(0.0, seconds)
        self.waits.append(seconds)
        self.now += seconds
        if self.on_wait is not None:
            self.on_wait(seconds)
        return stop.is_set()

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _nothing() -> None:
    pass


class Retry:
    """One sequence of attempts at the same work; see the module docstring.

    Not thread-safe: each loop owns its own. ``reset()`` after a success.
    """

    def __init__(
        self,
        backoff: Backoff,
        *,
        clock: Clock = SYSTEM_CLOCK,
        budget: float | None = None,
        heartbeat: Callable[[], None] = _nothing,
    ):
        self.backoff = backoff
        self.clock = clock
        self.budget = budget
        self.heartbeat = heartbeat
        self.attempts = 0  # failures so far in this sequence
        self._started: float | None = None

    def reset(self) -> None:
        self.attempts = 0
        self._started = None

    def elapsed(self) -> float:
        """Seconds since the sequence started (its first failure, or ``start()``); 0 before."""
        if self._started is None:
            return 0.0
        return self.clock.monotonic() - self._started

    def delay(self) -> float:
        """The (jittered) delay before the next attempt, whatever the budget."""
        return self.backoff.delay(self.attempts)

    def next_delay(self, margin: float = 0.0) -> float | None:
        """The delay before the next attempt, or None if it (plus ``margin``, the
        time the attempt itself may take) would end outside the budget."""
        delay = self.delay()
        if self.budget is not None and self.elapsed() + delay + margin > self.budget:
            return None
        return delay

    def start(self) -> None:
        """Start the budget now (before the first attempt) instead of at the first failure."""
        if self._started is None:
            self._started = self.clock.monotonic()

    def failed(self) -> None:
        """Note a failure without waiting (the first one starts the budget)."""
        self.start()

    def schedule(self) -> float:
        """Note a failure and return the delay before the next attempt, without
        waiting (for a loop that keeps working meanwhile and checks the time)."""
        self.failed()
        delay = self.delay()
        self.attempts += 1
        return delay

    def sleep(self, stop: threading.Event, *, margin: float = 0.0, delay: float | None = None) -> Outcome:
        """Note a failure and wait before the next attempt.

        ``delay`` overrides the computed one (a caller that already logged it).
        Returns ``"retry"`` after the wait, ``"stopped"`` when ``stop`` was set
        before or during it, ``"exhausted"`` (without waiting) when the budget
        leaves no room for another attempt.
        """
        self.failed()
        if stop.is_set():
            return "stopped"
        if delay is None:
            delay = self.next_delay(margin)
            if delay is None:
                return "exhausted"
        self.attempts += 1
        deadline = self.clock.monotonic() + delay
        while True:
            self.heartbeat()
            left = deadline - self.clock.monotonic()
            if left <= 0:
                return "stopped" if stop.is_set() else "retry"
            if self.clock.wait(stop, min(left, 1.0)):
                return "stopped"
