"""services.common.kafka_join_patch: which finished join is kept, and which kafka-python
it agrees to wrap. The behaviour against a broker is tests/integration/test_kafka_join.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import kafka
import pytest
from kafka.coordinator.base import BaseCoordinator, MemberState
from kafka.future import Future

from services.common import kafka_join_patch


def coordinator(task: Future | None, state: MemberState) -> Any:
    return SimpleNamespace(_join_task=task, state=state)


def done(value: Any = b"assignment", error: Exception | None = None) -> Future:
    future = Future()
    if error is None:
        future.success(value)
    else:
        future.failure(error)
    return future


def test_the_wrapper_is_installed_at_import() -> None:
    assert getattr(BaseCoordinator.join_group_async, "deskmail_keeps_join", False)
    assert kafka_join_patch.apply() is True  # idempotent


def test_only_a_successful_join_of_the_current_rebalance_is_kept() -> None:
    assert kafka_join_patch.pending_join_succeeded(coordinator(done(), MemberState.REBALANCING))
    # still running: the original waits for it
    assert not kafka_join_patch.pending_join_succeeded(coordinator(Future(), MemberState.REBALANCING))
    # failed: the original retries, as it always did
    failed = done(error=kafka.errors.RebalanceInProgressError())
    assert not kafka_join_patch.pending_join_succeeded(coordinator(failed, MemberState.REBALANCING))
    # the member left the group or was reset since: the join is stale
    assert not kafka_join_patch.pending_join_succeeded(coordinator(done(), MemberState.UNJOINED))
    assert not kafka_join_patch.pending_join_succeeded(coordinator(None, MemberState.REBALANCING))


def test_an_unverified_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(BaseCoordinator, "join_group_async", kafka_join_patch.original_join_group_async)
    monkeypatch.setattr(kafka, "__version__", "3.0.99")
    with pytest.raises(RuntimeError, match="3.0.99 is not verified"):
        kafka_join_patch.apply()


def test_a_changed_join_group_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    async def join_group_async(self: Any, timeout_ms: Any = None) -> bool:  # other source
        return True

    monkeypatch.setattr(BaseCoordinator, "join_group_async", join_group_async)
    with pytest.raises(RuntimeError, match="differs from the verified source"):
        kafka_join_patch.apply()
