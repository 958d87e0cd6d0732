"""Wires the ticket store to the commands topic: one DB transaction per command,
offsets committed after the transaction."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy.exc import DBAPIError, OperationalError

from services.common import metrics
from services.common.bus import ConsumeLoop, Kafka, Out
from services.common.codec import CodecError, codec
from services.common.config import Config
from services.common.errors import BadRecord, Transient
from services.common.runtime import Health
from services.ticketer.store import InvalidCommand, TicketStore

log = logging.getLogger("deskmail.ticketer")
STAGE = "ticketer"


class TicketerStep:
    def __init__(self, store: TicketStore):
        self.store = store
        self.commands = codec("TicketCommand")

    def process(self, record: ConsumerRecord) -> Sequence[Out]:
        try:
            command = self.commands.decode(record.value)
        except CodecError as exc:
            raise BadRecord(str(exc)) from exc
        started = time.perf_counter()
        try:
            applied = self.store.apply(command)
        except InvalidCommand as exc:
            raise BadRecord(f"{command.get('id')}: {exc}") from exc
        except OperationalError as exc:
            raise Transient(f"database unavailable: {exc.orig!r}") from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise Transient(f"database connection lost: {exc.orig!r}") from exc
            raise
        metrics.TICKETER_APPLY_SECONDS.observe(time.perf_counter() - started)
        metrics.TICKETER_APPLIED.labels(applied.outcome).inc()
        log.debug(
            "applied",
            extra={"stage": STAGE, "command": command["id"], "outcome": applied.outcome,
                   "ticket": applied.ticket_key, "queue": command["queue"]},
        )
        return []


def run_ticketer(config: Config, stop: threading.Event, health: Health, bootstrap: Sequence[str] | None = None) -> None:
    store = TicketStore(config.database_url)
    store.migrate()
    kafka = Kafka(config, bootstrap)
    producer = kafka.producer()
    loop = ConsumeLoop(
        kafka, producer, TicketerStep(store), STAGE, group=f"{config.kafka.group_prefix}-ticketer",
        topics=[config.topics["commands"]], stop=stop, on_alive=health.tick, on_ready=health.set_ready,
    )
    try:
        loop.run()
    finally:
        producer.close()
