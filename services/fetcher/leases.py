"""Mailbox leases: which fetcher replica polls which IMAP mailbox.

Every fetcher replica is a member of the consumer group ``<group_prefix>-fetcher``
on the lease topic (``kafka.topics.leases``, ``fetcher.lease_partitions``
partitions, no records). A mailbox belongs to one partition, the sha256 of its
address modulo the topic's partition count (several mailboxes may share one), and
the group's assignment is the lease: a replica polls exactly the mailboxes of the
partitions assigned to it. Kafka gives a partition to one member per generation,
and a member rejoins, letting its partitions move, only after its revocation
callback returned; the fetcher stops the mailbox's worker inside that callback,
so a clean handover (a replica added, stopped or rolled) never overlaps.

A replica that dies keeps its partitions until the broker expires its session:
the failover bound is ``fetcher.lease.session_timeout_ms`` (plus a rebalance). A
replica that lives but cannot reach the broker must not go on polling what the
broker may have given away: the split-brain guard (``LeaseDeadline``) is renewed
only by a confirmation of the membership (an offset commit the coordinator
accepted, or an assignment) and ends one heartbeat interval before the broker can
expire the member. Workers check it before every fetch and every mark. An overlap
is then bounded by the batch a worker had in flight when the deadline passed; the
ticketer's receipts (``imap:<mailbox>:<uidvalidity>:<uid>``) absorb what it
re-sends.

Pure: the mapping, the bookkeeping (``LeaseBook``), the timing (``LeaseTiming``)
and the deadline; ``keeper.py`` wires them to the consumer and the workers.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ALWAYS", "Lease", "LeaseBook", "LeaseDeadline", "LeaseTiming", "MailboxLease", "lease_partition"]

# The rebalance timeout (max_poll_interval_ms) exceeds the longest revocation by this much.
REBALANCE_MARGIN_SECONDS = 30.0


def lease_partition(address: str, partitions: int) -> int:
    """The lease partition of a mailbox: sha256 of its (lower-case) address, modulo the count.

    Stable across processes, releases and Python versions (no ``hash()``)."""
    if partitions < 1:
        raise ValueError(f"a lease topic has at least one partition, not {partitions}")
    digest = hashlib.sha256(address.lower().encode("utf-8")).digest()
    return int.from_bytes(digest, "big") % partitions


class Lease(Protocol):
    """What a worker asks before every fetch and every mark."""

    def valid(self) -> bool: ...


class _Always:
    """A lease that never ends: a worker run on its own (tests, tools)."""

    def valid(self) -> bool:
        return True


ALWAYS: Lease = _Always()


class LeaseDeadline:
    """The split-brain guard: valid until ``validity_seconds`` after the last
    confirmation of the membership. Thread-safe; ``clock`` is monotonic seconds."""

    def __init__(self, validity_seconds: float, clock: Callable[[], float] = time.monotonic):
        if validity_seconds <= 0:
            raise ValueError("a lease must be valid for some time after a confirmation")
        self.validity_seconds = validity_seconds
        self.clock = clock
        self._until = -math.inf
        self._lock = threading.Lock()

    def renew(self, confirmed_at: float) -> None:
        """The broker accepted the membership at ``confirmed_at`` (the moment the
        confirming request was sent, not when its answer came). Never moves back."""
        with self._lock:
            self._until = max(self._until, confirmed_at + self.validity_seconds)

    def end(self) -> None:
        with self._lock:
            self._until = -math.inf

    def valid(self) -> bool:
        return self.remaining() > 0

    def remaining(self) -> float:
        """Seconds left; 0 or less once it ended."""
        with self._lock:
            return self._until - self.clock()


class MailboxLease:
    """One worker's lease: the replica's deadline, until the mailbox is taken from it.

    ``revoke`` is for a worker that did not stop within the revocation's bound: its
    partition moves anyway, and whatever it does afterwards must not mark mail."""

    def __init__(self, deadline: LeaseDeadline):
        self.deadline = deadline
        self._revoked = threading.Event()

    def revoke(self) -> None:
        self._revoked.set()

    def valid(self) -> bool:
        return not self._revoked.is_set() and self.deadline.valid()


class LeaseBook:
    """Which partitions, and so which mailboxes, this replica holds.

    ``assign`` and ``revoke`` return the mailboxes whose worker to start or stop
    (address -> partition). Not thread-safe: the keeper holds its lock around it.
    """

    def __init__(self, addresses: Iterable[str], partitions: int):
        self.partitions = partitions
        self._by_partition: dict[int, list[str]] = {}
        for address in sorted(set(addresses)):
            self._by_partition.setdefault(lease_partition(address, partitions), []).append(address)
        self._held: set[int] = set()

    def mailboxes(self, partitions: Iterable[int]) -> dict[str, int]:
        return {address: p for p in sorted(set(partitions)) for address in self._by_partition.get(p, ())}

    def assign(self, partitions: Iterable[int]) -> dict[str, int]:
        """Record ``partitions`` as held; the mailboxes newly held. Raises ValueError for a
        partition the topic did not have at start (its partition count changed)."""
        wanted = set(partitions)
        unknown = sorted(p for p in wanted if not 0 <= p < self.partitions)
        if unknown:
            raise ValueError(f"lease partitions {unknown} beyond the {self.partitions} the topic had at start: "
                             "its partition count changed, which moves mailboxes between partitions")
        new = wanted - self._held
        self._held |= new
        return self.mailboxes(new)

    def revoke(self, partitions: Iterable[int]) -> dict[str, int]:
        """Forget ``partitions``; the mailboxes no longer held."""
        gone = set(partitions) & self._held
        self._held -= gone
        return self.mailboxes(gone)

    def revoke_all(self) -> dict[str, int]:
        return self.revoke(set(self._held))

    @property
    def held_partitions(self) -> frozenset[int]:
        return frozenset(self._held)

    @property
    def held(self) -> Mapping[str, int]:
        return self.mailboxes(self._held)


@dataclass(frozen=True)
class LeaseTiming:
    """The lease group's timeouts and what follows from them.

    ``stop_seconds`` is the longest a revoked worker may take to finish its batch in
    flight (``worker.stop_seconds``). With the defaults (10000/3000 ms, IMAP timeout
    30 s): a confirmation keeps the lease 7 s, the member confirms every 1.5 s, and
    the rebalance timeout is 190 + 30 s.
    """

    session_timeout_ms: int
    heartbeat_interval_ms: int
    stop_seconds: float

    def __post_init__(self) -> None:
        if not 0 < self.heartbeat_interval_ms < self.session_timeout_ms:
            raise ValueError("the heartbeat interval must be positive and below the session timeout")

    @property
    def validity_seconds(self) -> float:
        """How long one confirmation keeps the lease: the session timeout less one heartbeat
        interval, so the workers pause before the broker can expire the member (the margin
        also covers a coordinator that does not count a commit as a heartbeat)."""
        return (self.session_timeout_ms - self.heartbeat_interval_ms) / 1000

    @property
    def confirm_every_seconds(self) -> float:
        """Half a heartbeat interval: several confirmations fit in one validity."""
        return self.heartbeat_interval_ms / 2000

    @property
    def confirm_timeout_ms(self) -> int:
        return self.heartbeat_interval_ms

    @property
    def poll_timeout_ms(self) -> int:
        return max(50, min(1000, self.heartbeat_interval_ms // 2))

    @property
    def max_poll_interval_ms(self) -> int:
        """kafka-python's ``max_poll_interval_ms``, which is also the rebalance timeout the
        member sends: the group waits that long for a member to give its partitions up,
        and a member whose poll returns later leaves the group. So it must exceed the
        longest revocation, ``stop_seconds``."""
        return int((self.stop_seconds + REBALANCE_MARGIN_SECONDS) * 1000)
