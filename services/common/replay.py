"""Replaying a stage's input (`deskmail replay`): the plan and the progress, pure.

The Kafka adapter (``kafka.py``, ``GroupOffsets``) reads each input partition into a
``PartitionState``; ``plan`` decides the new committed offsets; the CLI shows the
plan, moves the group and can watch it catch up (``Progress``, ``RateMeter``).

The rules a plan follows, per partition:

- the new offset is the target (the beginning, ``--offset N``, or for ``--from
  TIME`` the first record at or after TIME), kept within what the partition holds;
- a replay never moves a partition forward: a target after the group's committed
  offset would skip mail the stage has not processed yet, so that partition stays;
- a partition with nothing at or after TIME stays where it is;
- a partition the group never committed on stays too: the stage reads it from the
  beginning anyway (``auto_offset_reset=earliest``);
- records to reprocess = the committed offset (within ``[beginning, highwater]``)
  minus the new offset. The highwater comes from a fetch response, never from
  ``end_offsets()``, which some brokers answer per batch.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

__all__ = [
    "NO_CONFIRMATION", "SENDER_REFUSAL", "FromBeginning", "FromTime", "GroupActive", "OffsetsNotMoved",
    "PartitionPlan", "PartitionState", "Plan", "Progress", "RateMeter", "Target", "ToOffset", "format_progress",
    "members_refusal", "parse_time", "plan", "plan_partition", "records", "table", "utc_text",
]

SENDER_REFUSAL = (
    "the sender cannot be replayed: its input is mail to send, and reading it again would send "
    "mail again that may already have reached its recipients; to send a reply again, reply again "
    "on its ticket (the ticket page or `deskmail tickets reply KEY`)"
)
NO_CONFIRMATION = "refusing to move offsets without confirmation: pass --yes (or --dry-run to see the plan)"


class GroupActive(Exception):
    """The group has live members, so its offsets cannot move. ``members`` is how
    many, or None when the broker could not say (it only refused the move)."""

    def __init__(self, members: int | None):
        super().__init__(f"{members if members is not None else 'some'} live members")
        self.members = members


class OffsetsNotMoved(Exception):
    """The broker refused to move the group's offsets for another reason (named)."""


def members_refusal(stage: str, group: str, members: int | None) -> str:
    """The one line `deskmail replay` prints when the stage is still running."""
    if members is None:
        return (f"stop the {stage} first: group {group} has live members "
                "(the broker refused to move its offsets)")
    return (f"stop the {stage} first: {members} member{'' if members == 1 else 's'} in group {group} "
            "(offsets move only while the group is empty)")


# ---- targets


@dataclass(frozen=True)
class FromBeginning:
    pass


@dataclass(frozen=True)
class ToOffset:
    offset: int


@dataclass(frozen=True)
class FromTime:
    at: datetime  # aware

    @property
    def ms(self) -> int:
        return int(self.at.timestamp() * 1000)


Target = FromBeginning | ToOffset | FromTime

_RELATIVE = re.compile(r"(\d{1,6})([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str, now: datetime) -> datetime:
    """``--from``'s TIME: ISO 8601 with an offset or Z (``2025-01-31T08:00:00Z``,
    ``2025-01-31T10:00+02:00``), or a span before ``now`` (``90m``, ``24h``, ``7d``,
    ``30s``). Raises ValueError with a message for the user: a time without a zone
    (whose zone would be a guess), a span of 0, a time after ``now``."""
    value = text.strip()
    relative = _RELATIVE.fullmatch(value)
    if relative:
        amount = int(relative.group(1))
        if amount == 0:
            raise ValueError(f"{text!r}: a span of 0 replays nothing")
        return now - timedelta(**{_UNITS[relative.group(2)]: amount})
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO 8601 time (2025-01-31T08:00:00Z) "
                         "nor a span like 90m, 24h or 7d") from None
    if moment.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone: add Z for UTC or an offset like +02:00")
    if moment > now:
        raise ValueError(f"{text!r} is in the future: nothing to replay")
    return moment


def utc_text(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# ---- the plan


@dataclass(frozen=True)
class PartitionState:
    """One input partition as the broker has it for the group."""

    topic: str
    partition: int
    committed: int | None  # None: the group never committed on it
    beginning: int  # the first offset the partition still holds
    highwater: int  # the offset the next record will get
    at_time: int | None = None  # --from: the first offset at or after TIME; None: no such record


@dataclass(frozen=True)
class PartitionPlan:
    topic: str
    partition: int
    committed: int | None
    new: int | None  # where the group will be; equals committed when the partition stays
    highwater: int
    reprocess: int
    note: str = ""  # why a partition stays, for the operator

    @property
    def moved(self) -> bool:
        return self.new is not None and self.new != self.committed


@dataclass(frozen=True)
class Plan:
    partitions: tuple[PartitionPlan, ...]

    @property
    def total(self) -> int:
        return sum(p.reprocess for p in self.partitions)

    @property
    def moves(self) -> dict[tuple[str, int], int]:
        """The offsets to commit: only the partitions that move."""
        return {(p.topic, p.partition): p.new for p in self.partitions if p.moved and p.new is not None}


def plan_partition(state: PartitionState, target: Target) -> PartitionPlan:
    """Where ``state``'s partition goes for ``target``, by the rules in the module docstring."""
    def stays(note: str) -> PartitionPlan:
        return PartitionPlan(state.topic, state.partition, state.committed, state.committed, state.highwater, 0, note)

    if state.committed is None:
        return stays("no committed offset: the stage reads it from the beginning anyway")
    # Where the stage would go on from: a committed offset the partition no longer holds
    # (retention) or never held (a recreated topic) is reset by the consumer.
    position = min(max(state.committed, state.beginning), state.highwater)
    if isinstance(target, FromBeginning):
        asked = state.beginning
    elif isinstance(target, ToOffset):
        asked = target.offset
    elif state.at_time is None:
        return stays("no record at or after that time")
    else:
        asked = state.at_time
    wanted = min(max(asked, state.beginning), state.highwater)
    if wanted > position:
        return stays("not processed that far yet: a replay never skips records")
    if wanted == position:
        return stays("already there")
    return PartitionPlan(state.topic, state.partition, state.committed, wanted, state.highwater,
                         position - wanted)


def plan(states: Iterable[PartitionState], target: Target) -> Plan:
    """Each partition's plan, in the order given (the stage's inputs, then partitions)."""
    return Plan(tuple(plan_partition(s, target) for s in states))


def records(n: int) -> str:
    return f"{n} record{'' if n == 1 else 's'}"


# ---- watching the group catch up


@dataclass(frozen=True)
class Progress:
    """A group catching up from ``start`` to ``target`` (the highwater when the
    replay began) per partition; records the stage finished are counted by its
    committed offsets."""

    start: Mapping[tuple[str, int], int]
    target: Mapping[tuple[str, int], int]

    @property
    def total(self) -> int:
        return sum(max(self.target[tp] - self.start.get(tp, self.target[tp]), 0) for tp in self.target)

    def done(self, committed: Mapping[tuple[str, int], int | None]) -> int:
        finished = 0
        for tp, end in self.target.items():
            begin = self.start.get(tp, end)
            at = committed.get(tp)
            if at is not None:
                finished += min(max(at - begin, 0), max(end - begin, 0))
        return finished


class RateMeter:
    """Records per second over the last ``window`` seconds of samples."""

    def __init__(self, window: float = 30.0):
        self.window = window
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, when: float, done: int) -> None:
        self.samples.append((when, done))
        while len(self.samples) > 2 and self.samples[1][0] <= when - self.window:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (t1, d1) = self.samples[0], self.samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else None


def format_progress(done: int, total: int, rate: float | None) -> str:
    """``1,200 of 5,000 records (24%), 310/s, about 13s left``."""
    share = 100 if total == 0 else done * 100 // total
    line = f"{done:,} of {total:,} records ({share}%)"
    if done >= total:
        return line + ", caught up"
    if not rate:
        return line + ", waiting for the stage"
    return line + f", {rate:,.0f}/s, about {_span((total - done) / rate)} left"


def _span(seconds: float) -> str:
    whole = int(seconds + 0.999)
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def table(p: Plan) -> Sequence[str]:
    """The plan as aligned lines: topic, partition, committed now, new, to reprocess, note."""
    rows = [("TOPIC", "PARTITION", "COMMITTED", "NEW", "REPROCESS", "")]
    for part in p.partitions:
        rows.append((part.topic, str(part.partition), _offset(part.committed), _offset(part.new),
                     str(part.reprocess), part.note))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 5 else cell for i, cell in enumerate(r)).rstrip() for r in rows]
    return [*lines, f"total: {records(p.total)} to reprocess"]


def _offset(value: int | None) -> str:
    return "-" if value is None else str(value)
