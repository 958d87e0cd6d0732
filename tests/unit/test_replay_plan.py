"""`deskmail replay`'s pure part: TIME, the per-partition plan, progress and the refusals."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from services.common.replay import (
    SENDER_REFUSAL,
    FromBeginning,
    FromTime,
    PartitionState,
    Progress,
    RateMeter,
    ToOffset,
    format_progress,
    members_refusal,
    parse_time,
    plan,
    plan_partition,
    table,
)

NOW = datetime(2025, 1, 31, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("text, expected", [
    ("24h", NOW - timedelta(hours=24)),
    ("90m", NOW - timedelta(minutes=90)),
    ("7d", NOW - timedelta(days=7)),
    ("30s", NOW - timedelta(seconds=30)),
    (" 2h ", NOW - timedelta(hours=2)),
    ("2025-01-31T08:00:00Z", datetime(2025, 1, 31, 8, 0, tzinfo=timezone.utc)),
    ("2025-01-31T10:00:00+02:00", datetime(2025, 1, 31, 8, 0, tzinfo=timezone.utc)),
    ("2025-01-31T08:00Z", datetime(2025, 1, 31, 8, 0, tzinfo=timezone.utc)),
    ("2025-01-31T03:00:00.250-05:00", datetime(2025, 1, 31, 8, 0, 0, 250_000, tzinfo=timezone.utc)),
])
def test_time_is_iso_8601_with_a_zone_or_a_span_back_from_now(text: str, expected: datetime) -> None:
    assert parse_time(text, NOW) == expected


@pytest.mark.parametrize("text, message", [
    ("2025-01-31T08:00:00", "has no time zone: add Z for UTC"),
    ("2025-01-31", "has no time zone"),
    ("yesterday", "neither an ISO 8601 time"),
    ("24 h", "neither an ISO 8601 time"),
    ("-24h", "neither an ISO 8601 time"),
    ("24H", "neither an ISO 8601 time"),
    ("1w", "neither an ISO 8601 time"),
    ("0h", "a span of 0 replays nothing"),
    ("2025-02-01T00:00:00Z", "is in the future"),
    ("", "neither an ISO 8601 time"),
])
def test_time_that_cannot_be_meant_is_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_time(text, NOW)


def state(committed: int | None, beginning: int = 0, highwater: int = 100,
          at_time: int | None = None) -> PartitionState:
    return PartitionState("inbound", 0, committed, beginning, highwater, at_time)


@pytest.mark.parametrize("s, target, new, reprocess, note", [
    # from a time: the first offset at or after it, up to the committed offset
    (state(100, at_time=60), FromTime(NOW), 60, 40, ""),
    (state(80, at_time=60), FromTime(NOW), 60, 20, ""),  # the stage was behind: only what it had done
    (state(100, at_time=None), FromTime(NOW), 100, 0, "no record at or after that time"),
    (state(50, at_time=60), FromTime(NOW), 50, 0, "not processed that far yet"),  # never forward
    (state(60, at_time=60), FromTime(NOW), 60, 0, "already there"),
    # the beginning: what the partition still holds
    (state(100, beginning=30), FromBeginning(), 30, 70, ""),
    (state(0), FromBeginning(), 0, 0, "already there"),
    # an offset, within what the partition holds
    (state(100), ToOffset(10), 10, 90, ""),
    (state(100, beginning=30), ToOffset(10), 30, 70, ""),
    (state(100), ToOffset(500), 100, 0, "already there"),  # 500 is past the end: the end
    (state(80), ToOffset(500), 80, 0, "not processed that far yet"),
    (state(40), ToOffset(70), 40, 0, "not processed that far yet"),
    # committed offsets the partition no longer holds (retention) or never held (a new topic)
    (state(10, beginning=30), FromBeginning(), 10, 0, "already there"),
    (state(500, highwater=100), ToOffset(90), 90, 10, ""),
    # a partition the group never committed on is not touched
    (state(None, at_time=60), FromTime(NOW), None, 0, "no committed offset"),
    (state(None), FromBeginning(), None, 0, "no committed offset"),
    # an empty partition
    (state(0, highwater=0, at_time=None), FromTime(NOW), 0, 0, "no record at or after"),
])
def test_the_plan_per_partition(s: PartitionState, target: object, new: int | None, reprocess: int, note: str) -> None:
    p = plan_partition(s, target)  # type: ignore[arg-type]
    assert (p.new, p.reprocess) == (new, reprocess)
    assert note in p.note and (note or p.note == "")
    assert p.moved == (new is not None and new != s.committed)


def test_the_plan_over_topics_totals_and_moves_only_what_changes() -> None:
    states = [
        PartitionState("commands", 0, 12, 0, 12, at_time=3),
        PartitionState("commands", 1, 50, 0, 55, at_time=40),
        PartitionState("events", 0, None, 0, 4, at_time=0),
        PartitionState("events", 1, 9, 0, 9, at_time=None),
    ]
    p = plan(states, FromTime(NOW))
    assert [(x.topic, x.partition) for x in p.partitions] == [("commands", 0), ("commands", 1), ("events", 0),
                                                                ("events", 1)]
    assert p.total == 9 + 10
    assert p.moves == {("commands", 0): 3, ("commands", 1): 40}
    lines = table(p)
    assert lines[0].split() == ["TOPIC", "PARTITION", "COMMITTED", "NEW", "REPROCESS"]
    assert lines[1].split() == ["commands", "0", "12", "3", "9"]
    assert lines[3].split()[:5] == ["events", "0", "-", "-", "0"]
    assert lines[-1] == "total: 19 records to reprocess"
    assert table(plan(states[:1], ToOffset(11)))[-1] == "total: 1 record to reprocess"


def test_progress_counts_committed_records_between_start_and_target() -> None:
    progress = Progress(start={("t", 0): 10, ("t", 1): 0}, target={("t", 0): 30, ("t", 1): 5})
    assert progress.total == 25
    assert progress.done({("t", 0): 10, ("t", 1): 0}) == 0
    assert progress.done({("t", 0): 25}) == 15  # a partition not committed yet counts nothing
    assert progress.done({("t", 0): 99, ("t", 1): 7}) == 25  # mail arriving after the reset is not counted
    assert progress.done({("t", 0): 3, ("t", 1): None}) == 0


def test_rate_and_time_left() -> None:
    meter = RateMeter(window=10)
    assert meter.rate() is None
    meter.add(0.0, 0)
    meter.add(1.0, 0)
    assert meter.rate() == 0
    assert format_progress(0, 500, meter.rate()) == "0 of 500 records (0%), waiting for the stage"
    for second in range(2, 30):
        meter.add(float(second), (second - 1) * 10)  # 10 records a second from second 1 on
    assert meter.rate() == pytest.approx(10.0)
    assert format_progress(280, 1_500, meter.rate()) == "280 of 1,500 records (18%), 10/s, about 2m02s left"
    assert format_progress(1_500, 1_500, meter.rate()) == "1,500 of 1,500 records (100%), caught up"
    assert format_progress(0, 0, None) == "0 of 0 records (100%), caught up"


def test_refusals_say_what_to_do() -> None:
    assert members_refusal("router", "deskmail-router", 2) == (
        "stop the router first: 2 members in group deskmail-router (offsets move only while the group is empty)")
    assert members_refusal("ticketer", "x-ticketer", 1).startswith("stop the ticketer first: 1 member in group")
    assert members_refusal("router", "deskmail-router", None) == (
        "stop the router first: group deskmail-router has live members (the broker refused to move its offsets)")
    assert "send mail again" in SENDER_REFUSAL and "deskmail tickets reply" in SENDER_REFUSAL
    assert "\n" not in SENDER_REFUSAL
