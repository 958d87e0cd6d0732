"""Keep a group join that ended between two polls (kafka-python 3.0.12).

``BaseCoordinator.join_group_async`` runs JoinGroup + SyncGroup as one task and waits for
it only as long as the caller's ``poll(timeout_ms=...)`` allows. When that time runs out
first, the task is left running so that the next poll waits for the same task. But the
next poll starts a new task whenever the old one ``is_done``: a join that ended while the
caller was not inside ``poll`` (processing a batch, sleeping, or simply between two
calls) is thrown away, assignment and all, and a fresh JoinGroup is sent. On the local
broker every JoinGroup waits half a session timeout, so a member polling with a short
timeout can go on joining for minutes; on a Kafka cluster the leader's fresh JoinGroup
starts another rebalance of the whole group.

Importing this module wraps ``join_group_async``: if the task left from an earlier poll
succeeded and the member is still in the rebalance that task belongs to, its result is
taken as the wait inside the original would have taken it (state STABLE, heartbeat on,
``_on_join_complete_async`` with the assignment), and the original then runs as before
(it returns at once unless a rejoin is needed). A task that failed is left to the
original, which retries as it always did.

Applied only to the verified version and source of ``join_group_async``; any other
version raises at import, so an upgrade is re-verified, not guessed. Upstream master
(August 2026) still starts a new task for a finished one.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka.coordinator.base import BaseCoordinator, MemberState

from services.common.kafka_verified import require_verified

__all__ = ["apply", "original_join_group_async", "pending_join_succeeded"]

log = logging.getLogger(__name__)

# kafka-python version -> sha256 of inspect.getsource(BaseCoordinator.join_group_async).
VERIFIED = {"3.0.12": "f9b7d8038dabf04d5e43becb43a0c5e24627431d2395c06e12c6c2a805fdf8b5"}

original_join_group_async: Any = None


def pending_join_succeeded(coordinator: Any) -> bool:
    """A join task from an earlier poll ended well, and nothing has reset the member since.

    ``_do_join_and_sync_async`` sets REBALANCING when it sends JoinGroup; only the wait in
    ``join_group_async`` moves it on to STABLE, and ``reset_generation`` (leaving the
    group, an unknown member) to UNJOINED.
    """
    task = coordinator._join_task
    return (task is not None and task.is_done and task.exception is None
            and coordinator.state is MemberState.REBALANCING)


async def _join_group_async(self: Any, timeout_ms: Any = None) -> Any:
    if pending_join_succeeded(self) and self.need_rejoin():
        assignment = self._join_task.value
        self._join_task = None
        log.debug("group %s: taking the join that ended after the last poll", self.group_id)
        with self._lock:
            self.rejoining = False
            self.rejoin_needed = False
            self.state = MemberState.STABLE
            self._enable_heartbeat()
        await self._on_join_complete_async(self._generation.generation_id, self._generation.member_id,
                                           self._generation.protocol, assignment)
    return await original_join_group_async(self, timeout_ms)


_join_group_async.deskmail_keeps_join = True  # type: ignore[attr-defined]


def apply() -> bool:
    """Wrap join_group_async; True once wrapped. RuntimeError for an unverified version or source."""
    global original_join_group_async
    current = BaseCoordinator.join_group_async
    if getattr(current, "deskmail_keeps_join", False):
        return True
    require_verified(current, "BaseCoordinator.join_group_async", VERIFIED, "services/common/kafka_join_patch.py",
                     "check whether join_group_async still starts a new join for a finished one and "
                     "re-verify the patch before running this version")
    original_join_group_async = current
    BaseCoordinator.join_group_async = _join_group_async
    return True


apply()
