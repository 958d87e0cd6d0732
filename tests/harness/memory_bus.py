"""An in-memory broker with a consumer (``Source``) and a producer (``Sink``) for
unit tests of the consume loop: no network, no threads, every step observable.

``MemoryBroker.events`` is the one ordered log of what happened ("ack", "commit",
and whatever a test's step appends), so a test can assert that a commit came
after the acks and effects it depends on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.bus import Out, Partition, Record
from services.common.errors import Transient
from services.common.retry import FakeClock


@dataclass
class MemoryBroker:
    partitions: int = 1
    topics: dict[str, list[list[Record]]] = field(default_factory=dict)
    committed: dict[Partition, int] = field(default_factory=dict)
    events: list[tuple[Any, ...]] = field(default_factory=list)

    def log(self, topic: str, partition: int = 0) -> list[Record]:
        return self.topics.setdefault(topic, [[] for _ in range(self.partitions)])[partition]

    def append(self, topic: str, value: bytes, key: bytes | None = None, partition: int = 0) -> Record:
        log = self.log(topic, partition)
        record = Record(topic, partition, len(log), key, value)
        log.append(record)
        return record


class MemorySource:
    """A consumer that owns every partition of its topics until ``revoke``.

    With a ``clock``, a poll that finds nothing advances it by its timeout, as a
    real poll would have waited that long.
    """

    def __init__(self, broker: MemoryBroker, max_records: int = 100, clock: FakeClock | None = None):
        self.broker = broker
        self.clock = clock
        self.max_records = max_records
        self.positions: dict[Partition, int] = {}
        self.paused: set[Partition] = set()
        self.polls = 0
        self.closed = False
        self.joined = True  # a member of its group (``member()``), with or without partitions
        self._on_revoked: Callable[[set[Partition]], None] = lambda tps: None

    def subscribe(self, topics: Sequence[str], on_revoked: Callable[[set[Partition]], None]) -> None:
        self._on_revoked = on_revoked
        for topic in topics:
            for p in range(len(self.broker.topics.setdefault(topic, [[] for _ in range(self.broker.partitions)]))):
                tp = Partition(topic, p)
                self.positions[tp] = self.broker.committed.get(tp, 0)

    def poll(self, timeout_ms: int) -> dict[Partition, list[Record]]:
        self.polls += 1
        batches: dict[Partition, list[Record]] = {}
        budget = self.max_records
        for tp, position in sorted(self.positions.items()):
            if tp in self.paused or budget <= 0:
                continue
            records = self.broker.log(tp.topic, tp.partition)[position:position + budget]
            if records:
                batches[tp] = records
                self.positions[tp] = position + len(records)
                budget -= len(records)
        if not batches and self.clock is not None:
            self.clock.advance(timeout_ms / 1000)
        return batches

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        for tp, offset in offsets.items():
            self.broker.committed[tp] = offset
            self.broker.events.append(("commit", tp.topic, tp.partition, offset))

    def assignment(self) -> set[Partition]:
        return set(self.positions)

    def member(self) -> bool:
        return self.joined

    def seek(self, tp: Partition, offset: int) -> None:
        self.positions[tp] = offset

    def pause(self, partitions: set[Partition]) -> None:
        self.paused |= partitions & self.assignment()

    def resume(self, partitions: set[Partition]) -> None:
        self.paused -= partitions

    def lag(self, tp: Partition) -> int | None:
        return len(self.broker.log(tp.topic, tp.partition)) - self.positions[tp]

    def revoke(self, partitions: set[Partition]) -> None:
        """A rebalance took ``partitions`` away (as kafka-python calls the listener)."""
        self._on_revoked(partitions)
        for tp in partitions:
            self.positions.pop(tp, None)
            self.paused.discard(tp)

    def close(self) -> None:
        self.closed = True


class MemorySink:
    """A producer: records reach the broker only in ``wait`` (the "ack").

    ``fail_waits`` makes that many next ``wait`` calls raise ``Transient`` (the
    broker did not acknowledge) without storing anything; ``fail_sends`` the
    same for ``send`` (the broker would not take the record).
    """

    def __init__(self, broker: MemoryBroker):
        self.broker = broker
        self.fail_waits = 0
        self.fail_sends = 0

    def send(self, out: Out) -> Out:
        if self.fail_sends:
            self.fail_sends -= 1
            raise Transient("no metadata for the topic in time")
        return out

    def wait(self, pending: Sequence[tuple[Out, Any]], stage: str) -> None:
        if not pending:
            return
        if self.fail_waits:
            self.fail_waits -= 1
            raise Transient("broker did not acknowledge")
        for out, _ in pending:
            self.broker.append(out.topic, out.value, out.key)
            self.broker.events.append(("ack", out.topic, out.value))
