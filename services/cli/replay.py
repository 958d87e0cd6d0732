"""`deskmail replay STAGE`: move a stopped stage's consumer group back on every one
of its input topics, so the stage processes those records again.

Every effect downstream is idempotent (docs/operations.md, "Replay"), so a replay
only adds what the first pass did not make: mail refused then and accepted now.
The plan (``services/common/replay.py``) never moves a partition forward, so a
replay never skips a record the stage has not processed.

Progress: ``--follow`` stays after the reset and shows the group's committed
offsets catching up with the highwater of the moment of the reset (or, without a
target option, with the highwater now), until it is caught up or Ctrl-C. It is
never on by default: the stage is stopped when its offsets move, and is started
afterwards, often from another shell.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

import click

from services.cli.common import (
    FAILED,
    BadValue,
    bootstrap_option,
    broker_errors,
    config_option,
    fail,
    kafka_clients,
    load_config,
)
from services.common import replay as r
from services.common.stage import STAGES, group_id

FOLLOW_INTERVAL = 1.0  # seconds between two reads of the group's offsets
QUIET_PRINT_EVERY = 10.0  # seconds between progress lines when stdout is not a terminal


@click.command("replay")
@click.argument("stage", type=click.Choice(sorted(STAGES)))
@config_option
@bootstrap_option
@click.option("--from", "from_time", metavar="TIME", default=None,
              help="From the first record written at or after TIME: ISO 8601 with Z or an offset "
                   "(2025-01-31T08:00:00Z), or a span back from now (90m, 24h, 7d).")
@click.option("--offset", type=click.IntRange(min=0), default=None,
              help="From this offset on every partition (within what each holds).")
@click.option("--to-beginning", is_flag=True, help="From the first record each partition still holds.")
@click.option("--partition", type=click.IntRange(min=0), default=None,
              help="Only this partition (of each input topic).")
@click.option("--dry-run", is_flag=True, help="Show the plan and change nothing.")
@click.option("--yes", is_flag=True, help="Move the offsets without asking (needed without a terminal).")
@click.option("--follow", is_flag=True,
              help="Then show the stage catching up until it has (alone: watch a replay started before).")
def replay(stage: str, config_path: str | None, bootstrap: str | None, from_time: str | None,
           offset: int | None, to_beginning: bool, partition: int | None, dry_run: bool, yes: bool,
           follow: bool) -> None:
    """Make a stopped stage process its input again: stop the stage, run this, start it.

    Shows, per topic and partition, the committed offset, the new one and the records
    to reprocess. Effects are idempotent: no ticket or comment is made twice.
    """
    if stage == "sender":
        raise BadValue(r.SENDER_REFUSAL)
    chosen = [name for name, given in (("--from", from_time is not None), ("--offset", offset is not None),
                                       ("--to-beginning", to_beginning)) if given]
    if len(chosen) > 1:
        raise click.UsageError(f"choose one of {', '.join(chosen)}")
    if not chosen and not follow:
        raise click.UsageError("say where to replay from: --from TIME, --offset N or --to-beginning")
    if not chosen and dry_run:
        raise click.UsageError("--dry-run needs --from, --offset or --to-beginning")
    target = _target(from_time, offset, to_beginning)
    if target is not None and not dry_run and not yes and not sys.stdin.isatty():
        raise BadValue(r.NO_CONFIRMATION)

    cfg = load_config(config_path)
    group = group_id(cfg, stage)
    names = [cfg.topics[key] for key in STAGES[stage].inputs]
    with broker_errors(f"cannot replay {group}", refusals=True):
        offsets = kafka_clients(cfg, bootstrap).group_offsets(group)
        try:
            partitions = _partitions(offsets, names, partition)
            at_ms = target.ms if isinstance(target, r.FromTime) else None
            if target is None:
                states = offsets.states(partitions)
                _follow(offsets, {(s.topic, s.partition): s.committed if s.committed is not None else s.beginning
                                  for s in states}, {(s.topic, s.partition): s.highwater for s in states})
                return
            if not dry_run:
                members = offsets.members()
                if members:
                    fail(r.members_refusal(stage, group, members))
            plan = r.plan(offsets.states(partitions, at_ms), target)
            click.echo(f"{group}: replay {_describe(target)}")
            for line in r.table(plan):
                click.echo(line)
            if dry_run:
                click.echo("dry run: nothing changed")
                return
            if not plan.moves:
                click.echo("nothing to replay: no partition moves")
                return
            if not yes and not click.confirm(f"move {group} back to reprocess {r.records(plan.total)}?"):
                click.echo("nothing changed")
                raise SystemExit(FAILED)
            try:
                offsets.move(plan.moves)
            except r.GroupActive as exc:
                fail(r.members_refusal(stage, group, exc.members))
            except r.OffsetsNotMoved as exc:
                fail(str(exc))
            click.echo(f"moved {group}: start the {stage} and it reprocesses {r.records(plan.total)}")
            if follow:
                _follow(offsets, plan.moves, {(p.topic, p.partition): p.highwater for p in plan.partitions
                                              if p.moved})
        finally:
            offsets.close()


def _target(from_time: str | None, offset: int | None, to_beginning: bool) -> r.Target | None:
    if from_time is not None:
        try:
            return r.FromTime(r.parse_time(from_time, datetime.now(timezone.utc)))
        except ValueError as exc:
            raise BadValue(f"--from: {exc}") from None
    if offset is not None:
        return r.ToOffset(offset)
    return r.FromBeginning() if to_beginning else None


def _partitions(offsets: Any, names: list[str], only: int | None) -> list[Any]:
    try:
        found = offsets.partitions(names)
    except ValueError as exc:
        fail(f"{exc}: run `deskmail topics create` first")
    if only is None:
        return list(found)
    for name in names:
        held = sorted(p.partition for p in found if p.topic == name)
        if only not in held:
            raise BadValue(f"--partition {only}: {name} has partitions {held[0]}-{held[-1]}")
    return [p for p in found if p.partition == only]


def _describe(target: r.Target) -> str:
    if isinstance(target, r.FromTime):
        return f"from {r.utc_text(target.at)} (the first record written at or after it, per partition)"
    if isinstance(target, r.ToOffset):
        return f"from offset {target.offset}"
    return "from the beginning"


def _follow(offsets: Any, start: Mapping[tuple[str, int], int], target: Mapping[tuple[str, int], int],
            clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Print the group's progress from ``start`` to ``target`` until it is there or Ctrl-C."""
    progress = r.Progress(start, target)
    meter = r.RateMeter()
    tty = sys.stdout.isatty()
    printed_at: float | None = None
    partitions = sorted(target)
    try:
        while True:
            done = progress.done(offsets.committed(partitions))
            now = clock()
            meter.add(now, done)
            line = r.format_progress(done, progress.total, meter.rate())
            finished = done >= progress.total
            if tty:
                click.echo("\r" + line + "\x1b[K", nl=finished)
            elif finished or printed_at is None or now - printed_at >= QUIET_PRINT_EVERY:
                click.echo(line)
                printed_at = now
            if finished:
                return
            sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        click.echo("\nstopped watching; the replay goes on")
