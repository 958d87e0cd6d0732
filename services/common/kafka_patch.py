"""Bound kafka-python 3.0.12's blocking client calls (upstream dpkp/kafka-python#3121).

In kafka-python 3.0.x every blocking consumer and admin call (``poll``, ``commit``,
``position``, ``partitions_for_topic``, ...) hands a coroutine to the client's IO thread
and then waits for it in ``NetworkSelector.run`` with ``threading.Event.wait()`` and no
timeout (kafka/net/selector.py). The call's own ``timeout_ms`` is enforced only inside
the coroutine: if the IO thread does not run that coroutine to its end (a task queued
without waking the selector, a future nobody resolves, a stalled IO loop), the caller
blocks forever while the broker goes on answering. Upstream bounded that wait on master
after 3.0.12 (commits 664fe5b7, #3123, and 7874d5ef, #3124); no release has it yet.

Importing this module replaces ``NetworkSelector.run`` with the 3.0.12 body plus two
changes to the caller's wait, and nothing else:

- the caller waits in slices of ``NUDGE_SECONDS`` and, after each slice, writes one byte
  to the IO thread's wakeup socket, so a lost wakeup costs at most one slice;
- after ``CEILING_SECONDS`` it raises ``KafkaTimeoutError`` instead of waiting forever
  (upstream raises the same error after ``default_api_timeout_ms`` + ``bridge_grace_ms``,
  60 + 5 s). The coroutine is left to finish or fail on its own, as upstream leaves it.

The ceiling is above every deadline deskmail's calls carry (request and bootstrap
timeouts 30 s, ``max_block_ms`` 60 s), so a healthy call never reaches it.

The patch is applied only to the verified version, and only if ``run`` still has the
verified source. A version whose ``run`` takes ``timeout_ms`` (the upstream fix) is left
alone; any other version raises at import, so an upgrade is re-verified, not guessed.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from typing import Any

import kafka
import kafka.errors as Errors

try:
    from kafka.net.selector import NetworkSelector
except ImportError:  # kafka-python 3.1 moved it (and bounds run() there itself)
    from kafka.net.backend.selector import NetworkSelector  # type: ignore[no-redef]

from services.common.kafka_verified import require_verified

__all__ = ["CEILING_SECONDS", "NUDGE_SECONDS", "apply", "original_run"]

log = logging.getLogger(__name__)

CEILING_SECONDS = 65.0
NUDGE_SECONDS = 1.0

# kafka-python version -> sha256 of inspect.getsource(NetworkSelector.run) as shipped.
VERIFIED = {"3.0.12": "491eb51ca4037cb42f8015a08c8bd3da21c8c5b6fa299a110777eb68d13b8dbb"}

original_run: Any = None  # NetworkSelector.run as shipped, once apply() replaced it


def _timeout(coro: Any) -> Errors.KafkaTimeoutError:
    name = getattr(coro, "__qualname__", None) or repr(coro)
    return Errors.KafkaTimeoutError(
        f"net.run({name}) did not complete within {CEILING_SECONDS:.0f} s: the client's IO loop "
        "did not finish the call (bounded by deskmail, see services/common/kafka_patch.py)"
    )


def _bounded_run(self: Any, coro: Any, *args: Any) -> Any:
    """NetworkSelector.run of 3.0.12 with a bounded, nudging wait (see the module docstring).

    Raises KafkaTimeoutError after CEILING_SECONDS; otherwise returns or raises what the
    coroutine does, exactly as the original.
    """
    if self._closed:
        raise RuntimeError("NetworkSelector closed!")
    if self._io_thread is None:
        future = self.call_soon_with_future(coro, *args)
        self.poll(timeout_ms=CEILING_SECONDS * 1000, future=future)
        if not future.is_done:
            log.warning("kafka-python call gave up after %.0f s: %s", CEILING_SECONDS, coro)
            raise _timeout(coro)
        if future.exception is not None:
            raise future.exception
        return future.value
    elif threading.current_thread() is self._io_thread:
        raise RuntimeError(
            "Cannot block on net.run() from the IO thread itself. "
            "This typically happens when a synchronous rebalance listener "
            "(or another IO-thread callback) calls a blocking consumer/admin API. "
            "Use AsyncConsumerRebalanceListener and await the async variant, "
            "or move the blocking work to a worker thread.")
    elif self._exception:
        raise self._exception from None

    event = threading.Event()
    state: dict[str, Any] = {"value": None, "exception": None}

    async def waiter() -> None:
        try:
            state["value"] = await self._invoke(coro, *args)
        except BaseException as exc:
            # fail_pending_waiters sets 'exception'; dont overwrite
            if state["exception"] is None:
                state["exception"] = exc
            elif not isinstance(exc, GeneratorExit):
                log.warning("During exception %s, caught additional error %s (ignoring)", state["exception"], exc)
        finally:
            with self._pending_waiters_lock:
                self._pending_waiters.pop(event, None)
            event.set()

    with self._pending_waiters_lock:
        self._pending_waiters[event] = state
    self.call_soon_threadsafe(waiter)
    deadline = time.monotonic() + CEILING_SECONDS
    while not event.wait(min(NUDGE_SECONDS, max(0.0, deadline - time.monotonic()))):
        if time.monotonic() >= deadline:
            # Left registered: if the coroutine ends later, its finally pops the entry.
            log.warning("kafka-python call gave up after %.0f s: %s", CEILING_SECONDS, coro)
            raise _timeout(coro)
        self.wakeup()  # the selector re-checks its ready queue; harmless if nothing is lost
    if state["exception"] is not None:
        raise state["exception"]
    return state["value"]


_bounded_run.deskmail_bounded = True  # type: ignore[attr-defined]


def apply() -> bool:
    """Patch NetworkSelector.run; returns True if patched (now or before), False if not needed.

    Raises RuntimeError for a kafka-python version or ``run`` source that was not verified.
    """
    current = NetworkSelector.run
    if getattr(current, "deskmail_bounded", False):
        return True
    if "timeout_ms" in inspect.signature(current).parameters:
        log.info("kafka-python %s bounds NetworkSelector.run itself; not patched", kafka.__version__)
        return False
    require_verified(current, "NetworkSelector.run", VERIFIED, "services/common/kafka_patch.py",
                     "check upstream dpkp/kafka-python#3121 and re-verify the patch before running this version")
    global original_run
    original_run = current
    NetworkSelector.run = _bounded_run
    return True


apply()
