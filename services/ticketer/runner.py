"""Wires the ticket store to its two input topics: one DB transaction per
record, offsets committed after the transaction.

- commands (TicketCommand from the router): ``TicketStore.apply``;
- events (DeliveryEvent from the sender): ``TicketStore.record_delivery``, which
  sets the delivery status of the outgoing comment (idempotent; a final status
  is never overwritten; events for unknown outbound ids change nothing).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, OperationalError

from services.common import metrics
from services.common.bus import Out, Record
from services.common.codec import CodecError, codec
from services.common.config import Config
from services.common.errors import BadRecord, Transient
from services.common.runtime import Health
from services.common.stage import StageContext, StageSpec, run_stage
from services.tickets import InvalidCommand, InvalidDeliveryEvent, TicketStore

log = logging.getLogger("deskmail.ticketer")
STAGE = "ticketer"
SPEC = StageSpec(STAGE, inputs=["commands", "events"])


class TicketerStep:
    """Dispatches each record by its topic; see the module docstring."""

    def __init__(self, store: TicketStore, commands_topic: str, events_topic: str):
        self.store = store
        self.commands_topic = commands_topic
        self.events_topic = events_topic
        self.commands = codec("TicketCommand")
        self.events = codec("DeliveryEvent")

    def process(self, record: Record) -> Sequence[Out]:
        if record.topic == self.commands_topic:
            self._apply(record)
        elif record.topic == self.events_topic:
            self._record_delivery(record)
        else:
            raise BadRecord(f"the ticketer does not consume topic {record.topic}", error_class="UnexpectedTopic")
        return []

    def _apply(self, record: Record) -> None:
        try:
            command = self.commands.decode(record.value)
        except CodecError as exc:
            raise BadRecord(str(exc)) from exc
        started = time.perf_counter()
        try:
            with _transient_db_errors():
                applied = self.store.apply(command)
        except InvalidCommand as exc:
            raise BadRecord(f"{command.get('id')}: {exc}") from exc
        metrics.TICKETER_APPLY_SECONDS.observe(time.perf_counter() - started)
        metrics.TICKETER_APPLIED.labels(applied.outcome).inc()
        log.debug(
            "applied",
            extra={"stage": STAGE, "command": command["id"], "outcome": applied.outcome,
                   "ticket": applied.ticket_key, "queue": command["queue"]},
        )

    def _record_delivery(self, record: Record) -> None:
        try:
            event = self.events.decode(record.value)
        except CodecError as exc:
            raise BadRecord(str(exc)) from exc
        try:
            with _transient_db_errors():
                changed = self.store.record_delivery(event)
        except InvalidDeliveryEvent as exc:
            raise BadRecord(f"{event.get('id')}: {exc}") from exc
        log.debug(
            "delivery recorded" if changed else "delivery event ignored",
            extra={"stage": STAGE, "ticket": event.get("ticket"), "outcome": event["status"]},
        )


@contextmanager
def _transient_db_errors() -> Iterator[None]:
    """Database outages become Transient (retried); other database errors stop the process."""
    try:
        yield
    except OperationalError as exc:
        raise Transient(f"database unavailable: {exc.orig!r}") from exc
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise Transient(f"database connection lost: {exc.orig!r}") from exc
        raise


def run_ticketer(config: Config, stop: threading.Event, health: Health, bootstrap: Sequence[str] | None = None) -> None:
    store = TicketStore(config.database_url)
    store.migrate()

    def build(ctx: StageContext) -> TicketerStep:
        ctx.on_close(store.close)
        return TicketerStep(store, ctx.config.topics["commands"], ctx.config.topics["events"])

    run_stage(config, SPEC, build, stop, health, bootstrap)
