"""services.common.kafka_patch: kafka-python's blocking calls end, whatever the IO loop does.

Each test drives a real ``NetworkSelector`` (the client's IO loop) with no broker. Without
the patch the calls below block forever; each runs in a daemon thread, so an unpatched
run fails the assertion instead of hanging the suite.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import kafka
import pytest
from kafka.errors import KafkaTimeoutError
from kafka.future import Future
from kafka.net.selector import NetworkSelector

from services.common import kafka_patch

BLOCKED = "the call is still blocked"


def call_in_thread(fn: Callable[..., Any], *args: Any, wait: float = 5.0) -> dict[str, Any]:
    """Run ``fn(*args)`` in a daemon thread; return {"value"} or {"error"}, and how long it took."""
    box: dict[str, Any] = {}

    def target() -> None:
        started = time.monotonic()
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(wait)
    assert not thread.is_alive(), BLOCKED
    return box


@pytest.fixture
def loop() -> Iterator[NetworkSelector]:
    """A started IO loop (its own thread, as every KafkaConsumer has)."""
    net = NetworkSelector()
    net.start()
    try:
        yield net
    finally:
        net.close()  # also releases a caller still blocked in run()


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_patch, "NUDGE_SECONDS", 0.05)
    monkeypatch.setattr(kafka_patch, "CEILING_SECONDS", 0.5)


def awaiting(future: Future) -> Callable[[], Any]:
    async def wait() -> Any:
        return await future
    return wait


def test_the_patch_is_applied_at_import() -> None:
    assert getattr(NetworkSelector.run, "deskmail_bounded", False)
    assert kafka_patch.apply() is True  # idempotent


def test_a_lost_wakeup_costs_one_nudge_not_forever(loop: NetworkSelector, fast: None) -> None:
    # The future is resolved off the IO thread: its callback re-queues the waiting task
    # with call_soon(), which does not wake the selector, asleep in select() with no
    # timeout (nothing else is scheduled). Unpatched, the task is never run.
    future = Future()
    threading.Timer(0.1, future.success, args=(42,)).start()

    box = call_in_thread(loop.run, awaiting(future))

    assert box == {"value": 42, "seconds": box["seconds"]}
    assert box["seconds"] < kafka_patch.CEILING_SECONDS


def test_a_call_the_loop_never_finishes_times_out(loop: NetworkSelector, fast: None) -> None:
    box = call_in_thread(loop.run, awaiting(Future()))

    assert isinstance(box.get("error"), KafkaTimeoutError), box
    assert "did not complete within" in str(box["error"])
    assert kafka_patch.CEILING_SECONDS <= box["seconds"] < kafka_patch.CEILING_SECONDS + 1


def test_without_an_io_thread_the_call_is_bounded_too(fast: None) -> None:
    net = NetworkSelector()  # not started: run() drives the loop on the calling thread
    try:
        box = call_in_thread(net.run, awaiting(Future()))
        assert isinstance(box.get("error"), KafkaTimeoutError), box
    finally:
        net.close()


def test_results_and_errors_pass_through_unchanged(loop: NetworkSelector) -> None:
    async def answer(x: int) -> int:
        return x * 2

    async def fail() -> None:
        raise ValueError("from the coroutine")

    assert loop.run(answer, 21) == 42
    with pytest.raises(ValueError, match="from the coroutine"):
        loop.run(fail)
    idle = NetworkSelector()
    try:
        assert idle.run(answer, 4) == 8
    finally:
        idle.close()


def test_an_unverified_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(NetworkSelector, "run", kafka_patch.original_run)
    monkeypatch.setattr(kafka, "__version__", "3.0.99")
    with pytest.raises(RuntimeError, match="3.0.99 is not verified"):
        kafka_patch.apply()


def test_a_changed_run_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(self: Any, coro: Any, *args: Any) -> Any:  # same signature, other source
        return None

    monkeypatch.setattr(NetworkSelector, "run", run)
    with pytest.raises(RuntimeError, match="differs from the verified source"):
        kafka_patch.apply()


def test_a_version_with_the_upstream_fix_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(self: Any, coro: Any, *args: Any, timeout_ms: float | None = None) -> Any:
        return None

    monkeypatch.setattr(NetworkSelector, "run", run)
    monkeypatch.setattr(kafka, "__version__", "3.1.0")
    assert kafka_patch.apply() is False
    assert NetworkSelector.run is run
