"""One builder for every consuming stage (router, ticketer, sender).

A stage is named by a ``StageSpec`` (its name and input topics), declared once
here (``STAGES``): its runner runs it, and `deskmail replay` moves its group back
on every one of its inputs. The runner passes a function that builds the stage's ``Step`` from a ``StageContext``
(config, producer, stop event, health). ``run_stage`` assembles the rest the same
way for every stage: the Kafka clients, the consumer group
``<group_prefix>-<name>``, the consume loop with the stage's settings, and the
closing of everything on the way out (the step's own resources first, then the
producer), so the runners hold only what is particular to them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field

from services.common import durability
from services.common.bus import ConsumeLoop, LoopSettings, Partition, Record, Source, Step
from services.common.config import Config
from services.common.dlq import DeadLetterLimit
from services.common.kafka import Kafka, Producer
from services.common.runtime import Health


@dataclass(frozen=True)
class StageSpec:
    name: str
    inputs: Sequence[str]  # keys of ``config.topics``
    outputs: Sequence[str] = ()  # what the step produces, besides the dead-letter topic every stage writes
    max_poll_records: int | None = None  # None: kafka.consumer.max_poll_records


# The sender polls batches of 20 (100 measured no faster; a crash may resend a batch in flight): services/sender/runner.py says how a retry waits without holding them.
ROUTER = StageSpec("router", inputs=("inbound",), outputs=("commands",))
TICKETER = StageSpec("ticketer", inputs=("commands", "events"))
SENDER = StageSpec("sender", inputs=("outbound",), outputs=("events",), max_poll_records=20)
STAGES = {spec.name: spec for spec in (ROUTER, TICKETER, SENDER)}


def group_id(config: Config, stage: str) -> str:
    """The consumer group of ``stage``: ``<kafka.group_prefix>-<stage>``."""
    return f"{config.kafka.group_prefix}-{stage}"


@dataclass
class StageContext:
    config: Config
    producer: Producer
    stop: threading.Event
    health: Health
    closing: ExitStack
    polled: list[Callable[[Mapping[Partition, Sequence[Record]]], None]] = field(default_factory=list)

    def on_close(self, close: Callable[[], object]) -> None:
        """Call ``close`` when the stage ends (before the producer is closed)."""
        self.closing.callback(close)

    def on_poll(self, see: Callable[[Mapping[Partition, Sequence[Record]]], None]) -> None:
        """Show ``see`` every polled batch before the loop hands its records to the step
        (the sender starts the batch's mails ahead). ``see`` must not block."""
        self.polled.append(see)


def loop_settings(config: Config, stage: str) -> LoopSettings:
    """The consume loop's settings for ``stage`` from ``consume:`` (with its per-stage override)."""
    consume = config.consume
    override = consume.stages.get(stage)
    limit = override.deadletter_limit if override and override.deadletter_limit else consume.deadletter_limit
    return LoopSettings(
        transient_wait_seconds=consume.transient_wait_seconds,
        deadletter_limit=DeadLetterLimit(percent=limit.percent, of_last=limit.of_last),
    )


def run_stage(
    config: Config,
    spec: StageSpec,
    build: Callable[[StageContext], Step],
    stop: threading.Event,
    health: Health,
    bootstrap: Sequence[str] | None = None,
) -> None:
    """Run ``spec``'s consume loop until ``stop``; see the module docstring.

    Raises ``UnsafeTopics`` before anything else when a topic it writes could lose
    records (``services/common/durability.py``), and what the loop raises (a
    programming error, ``DeadLetterFlood``): the process stops and its supervisor
    restarts it.
    """
    kafka = Kafka(config, bootstrap)
    durability.check_writes(config, kafka.describe_topics, [*spec.outputs, "deadletter"], spec.name)
    with ExitStack() as closing:
        producer = kafka.producer()
        closing.callback(producer.close)
        ctx = StageContext(config, producer, stop, health, closing.enter_context(ExitStack()))
        step = build(ctx)
        source: Source = kafka.source(group_id(config, spec.name), spec.max_poll_records)
        if ctx.polled:
            source = _Watched(source, ctx.polled)
        loop = ConsumeLoop(
            source,
            producer,
            step,
            spec.name,
            topics=[config.topics[name] for name in spec.inputs],
            deadletter_topic=config.topics["deadletter"],
            stop=stop,
            settings=loop_settings(config, spec.name),
            on_alive=health.tick,
            on_ready=health.set_ready,
        )
        loop.run()


class _Watched:
    """A ``Source`` that shows each non-empty polled batch to the ``StageContext.on_poll``
    callbacks before returning it; everything else goes straight to the source."""

    def __init__(self, source: Source, polled: Sequence[Callable[[Mapping[Partition, Sequence[Record]]], None]]):
        self.source = source
        self.polled = tuple(polled)

    def poll(self, timeout_ms: int) -> Mapping[Partition, Sequence[Record]]:
        batches = self.source.poll(timeout_ms)
        if batches:
            for see in self.polled:
                see(batches)
        return batches

    def subscribe(self, topics: Sequence[str], on_revoked: Callable[[set[Partition]], None]) -> None:
        self.source.subscribe(topics, on_revoked)

    def commit(self, offsets: Mapping[Partition, int]) -> None:
        self.source.commit(offsets)

    def assignment(self) -> set[Partition]:
        return self.source.assignment()

    def member(self) -> bool:
        return self.source.member()

    def seek(self, tp: Partition, offset: int) -> None:
        self.source.seek(tp, offset)

    def pause(self, partitions: set[Partition]) -> None:
        self.source.pause(partitions)

    def resume(self, partitions: set[Partition]) -> None:
        self.source.resume(partitions)

    def lag(self, tp: Partition) -> int | None:
        return self.source.lag(tp)

    def close(self) -> None:
        self.source.close()
