"""Starting a polled batch's mails ahead of the consume loop, several at a time.

The consume loop hands the sender one record at a time and takes the effect as
done when ``process`` returns. To keep several SMTP sessions busy and compose one
mail while another is on the wire, the sender sees each polled batch first
(``StageContext.on_poll``): ``Ahead.polled`` queues its records, and worker
threads attempt them (compose, send, the DeliveryEvent) while the loop is still at
an earlier record. ``Ahead.collect(record)``, the step's ``process``, waits for that
record's attempt and returns (or raises) its outcome, so the contract holds: the
effect is done when ``process`` returns.

What may start, per input partition, in offset order:

* a record only once every earlier record of its partition with the same key (one
  ticket) has its final outcome, so a ticket's mails go out, and their events are
  produced, in order;
* at most ``sessions`` records per SMTP server at once (the pool's sessions);
* nothing more in a partition once one of its attempts ended without a final
  outcome (``Later``, ``Transient``, a bug): the loop stops that partition at that
  record (or retries it in place), and the rest of it waits for the next poll.

An outcome nobody collected yet is kept until the loop gets to its record. That
matters when an earlier mail of the partition waits out a retry: the loop rewinds
the partition to it, and the mails behind it that were already sent come back in a
later poll; their kept ``sent`` outcome is returned then, and the mail is not sent
again. A kept outcome that was not final is dropped when its record is polled
again, and the record is attempted anew from attempt 1 (``forget``): that early
attempt shows in the metrics, not as a ``retrying`` event.

So in the normal path a mail is sent once. What a crash can send twice is what was
sent and not committed: the batch in flight (``SENDER.max_poll_records``) plus, for
each partition waiting at a retried mail, the mails behind it already sent.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Literal

from services.common.bus import Out, Partition, Record
from services.common.errors import BadRecord

# What an attempt of one record gives: its outs, or what it raised.
Outcome = Sequence[Out] | BaseException
# Where a record goes: (its key for ordering, its SMTP server), None if it is not known
# before an attempt (an undecodable record: attempted by the loop itself, in order).
Lane = tuple[Hashable, Hashable]


@dataclass
class _Entry:
    record: Record
    lane: Lane | None
    state: Literal["queued", "running", "done"] = "queued"
    outcome: Outcome = ()
    final: bool = False


@dataclass
class _Partition:
    entries: dict[int, _Entry] = field(default_factory=dict)  # by offset, in offset order
    blocked: bool = False  # an attempt ended without a final outcome: start nothing more


class Ahead:
    """See the module docstring.

    ``attempt(record)`` is the whole processing of one record (it may raise);
    ``lane(record)`` names its ordering key and SMTP server; ``forget(record)``
    drops what ``attempt`` remembers of an unfinished attempt. ``sessions`` is the
    most attempts at once per server, ``workers`` the threads in all.
    """

    def __init__(self, attempt: Callable[[Record], Sequence[Out]], lane: Callable[[Record], Lane | None],
                 forget: Callable[[Record], None], *, sessions: int, workers: int):
        self.attempt = attempt
        self.lane = lane
        self.forget = forget
        self.sessions = sessions
        self._partitions: dict[Partition, _Partition] = {}
        self._busy: dict[Hashable, int] = {}  # attempts under way per SMTP server
        self._lock = threading.Condition()
        self._closed = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sender")

    def polled(self, batches: Mapping[Partition, Sequence[Record]]) -> None:
        """Queue a polled batch and start what may start. Never blocks on SMTP."""
        lanes = {(r.topic, r.partition, r.offset): self.lane(r) for records in batches.values() for r in records}
        with self._lock:
            for tp, records in batches.items():
                if not records:
                    continue
                part = self._partitions.setdefault(tp, _Partition())
                first = records[0].offset
                for offset, entry in list(part.entries.items()):
                    # Below the poll's first offset: committed already (or by the partition's
                    # other owner); not final: attempted anew.
                    if offset < first or (entry.state == "done" and not entry.final):
                        del part.entries[offset]
                        if entry.state == "done" and not entry.final:
                            self.forget(entry.record)
                part.blocked = False
                for r in records:
                    if r.offset not in part.entries:
                        part.entries[r.offset] = _Entry(r, lanes[(r.topic, r.partition, r.offset)])
                part.entries = dict(sorted(part.entries.items()))
            self._start()

    def collect(self, record: Record) -> Sequence[Out]:
        """The outcome of ``record``: waits for its attempt, or makes it here if it was
        not started ahead. Returns its outs or raises what the attempt raised."""
        with self._lock:
            part = self._partitions.get(Partition(record.topic, record.partition))
            entry = part.entries.get(record.offset) if part is not None else None
            if part is None or entry is None:
                here = None
            elif entry.state == "queued":
                # Made here, but still in the partition's entries while it runs: a later
                # mail of its ticket must not start before it is final.
                entry.state, here = "running", entry
                if entry.lane is not None:
                    self._busy[entry.lane[1]] = self._busy.get(entry.lane[1], 0) + 1
            else:
                while entry.state != "done":
                    self._lock.wait()
                del part.entries[record.offset]
                if isinstance(entry.outcome, BaseException):
                    raise entry.outcome
                return entry.outcome
        if here is None or part is None:
            return self.attempt(record)
        final = False
        try:
            outs = self.attempt(record)
            final = True
            return outs
        except BadRecord:
            final = True
            raise
        finally:
            with self._lock:
                part.entries.pop(record.offset, None)
                self._done(part, here, final)

    def close(self) -> None:
        """Start nothing more and wait for the attempts under way (each bounded by the
        SMTP timeouts)."""
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _start(self) -> None:
        """Start every queued record that may start (see the module docstring); under the lock."""
        if self._closed:
            return
        for part in self._partitions.values():
            if part.blocked:
                continue
            waiting: set[Hashable] = set()  # keys with an earlier record not final yet
            for entry in part.entries.values():
                if entry.lane is None:
                    break  # attempted by the loop itself, in order
                key, server = entry.lane
                if entry.state == "done" and entry.final:
                    continue
                if entry.state == "queued" and key not in waiting and self._busy.get(server, 0) < self.sessions:
                    entry.state = "running"
                    self._busy[server] = self._busy.get(server, 0) + 1
                    self._pool.submit(self._run, part, entry)
                waiting.add(key)

    def _run(self, part: _Partition, entry: _Entry) -> None:
        final = True
        try:
            outcome: Outcome = self.attempt(entry.record)
        except BadRecord as exc:  # dead-lettered by the loop; the partition goes on
            outcome = exc
        except BaseException as exc:  # Later, Transient, a bug: the loop decides when it gets here
            outcome, final = exc, False
        with self._lock:
            entry.outcome = outcome
            self._done(part, entry, final)

    def _done(self, part: _Partition, entry: _Entry, final: bool) -> None:
        """``entry``'s attempt ended; start what may start now. Under the lock."""
        entry.state, entry.final = "done", final
        if entry.lane is not None:
            self._busy[entry.lane[1]] -= 1
        if not final:
            part.blocked = True
        self._lock.notify_all()
        self._start()
