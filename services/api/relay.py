"""The outbox relay: moves outgoing mail from the tickets DB to the broker.

``add_reply`` writes each outgoing mail to the ``outbox`` table in the same
transaction as its comment. The relay produces unrelayed rows to
deskmail.mail.outbound (key: the ticket key, so one ticket's mail stays in
order) and marks them relayed only after the broker acknowledged them
(``TicketStore.relay_outbox``). A crash between the ack and the commit relays
the rows again under the same outbound id; the sender may then send that mail
twice, and only in that window. Concurrent relays (several api replicas, the
CLI's ``--relay-now``) take disjoint rows.

The api process runs ``OutboxRelay.run`` in a background thread that wakes on
``wake()`` (a reply was stored) and every ``interval`` seconds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from sqlalchemy.exc import OperationalError

from services.common.bus import Out
from services.common.errors import Transient
from services.common.kafka import Producer
from services.common.retry import SYSTEM_CLOCK, Backoff, Clock, Retry
from services.tickets import OutboxRecord, TicketStore

log = logging.getLogger("deskmail.api.relay")
STAGE = "api"


class OutboxRelay:
    def __init__(
        self,
        store: TicketStore,
        producer: Producer,
        topic: str,
        *,
        batch: int = 100,
        interval: float = 1.0,
        ack_timeout: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
    ):
        self.store = store
        self.producer = producer
        self.topic = topic
        self.batch = batch
        self.interval = interval
        self.ack_timeout = ack_timeout
        self._wake = threading.Event()
        self.retry = Retry(Backoff(initial=0.5, maximum=30.0), clock=clock)

    def wake(self) -> None:
        """Relay soon (a reply was just stored). Never blocks."""
        self._wake.set()

    def relay_pending(self) -> int:
        """Relay every pending row now; returns how many. Raises Transient when
        the broker did not acknowledge (those rows stay pending)."""
        total = 0
        while True:
            relayed = self.store.relay_outbox(self._publish, self.batch)
            total += relayed
            if relayed < self.batch:
                return total

    def _publish(self, records: Sequence[OutboxRecord]) -> None:
        outs = [Out(self.topic, r.ticket_key.encode("utf-8"), r.payload) for r in records]
        self.producer.send_all(outs, STAGE, timeout=self.ack_timeout)

    def run(self, stop: threading.Event, on_alive: Callable[[], None] = lambda: None) -> None:
        """Relay until ``stop`` is set. Broker and database outages are retried
        with backoff; any other error propagates (the process stops)."""
        self.retry.heartbeat = on_alive
        while not stop.is_set():
            on_alive()
            self._wake.clear()
            try:
                relayed = self.relay_pending()
            except (Transient, OperationalError) as exc:
                delay = self.retry.next_delay()
                log.warning("outbox relay failed, retrying",
                            extra={"stage": STAGE, "error": str(exc), "delay": delay and round(delay, 2)})
                if self.retry.sleep(stop, delay=delay) == "stopped":
                    return
                continue
            self.retry.reset()
            if relayed:
                log.info("relayed", extra={"stage": STAGE, "topic": self.topic, "count": relayed})
            self._wake.wait(self.interval)
