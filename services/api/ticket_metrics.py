"""The api's ticket metrics: the workflow histograms, observed where the api makes
the change, and the ``deskmail_tickets{queue,status}`` and
``deskmail_suspended{queue,reason}`` gauges, computed at scrape time.

The histograms are declared in ``services.common.metrics``; the api observes
them because it is the long-lived process where agents reply and change
tickets (the CLI is short-lived and observes nothing).

The gauge is a collector, not a Gauge kept up to date: each scrape reads
``TicketStore.ticket_counts()``, the per-(queue, status, assignee) counts the
store keeps with every change, so a scrape costs one small read whatever the
number of tickets and never counts the tickets table. It is registered in a
registry of the app's own (``registry``), served after the process-wide one,
so building several apps in one process (tests) never registers it twice. If
the database cannot be read, the scrape goes on without the gauge and a
warning is logged, at most once a minute.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from services.common.config import Config
from services.common.suspended import REASON_CODES
from services.common.metrics import TICKET_FIRST_RESPONSE_SECONDS, TICKET_RESOLUTION_SECONDS
from services.tickets import TICKET_STATUSES, Changed, Reply, TicketStore

log = logging.getLogger("deskmail.api")
GAUGE = "deskmail_tickets"
SUSPENDED_GAUGE = "deskmail_suspended"
WARN_EVERY_S = 60.0


def observe_change(changed: Changed | None) -> None:
    """A change that made the ticket resolved or closed: its time to resolution."""
    if changed is not None and changed.resolved_after is not None:
        TICKET_RESOLUTION_SECONDS.labels(queue=changed.queue).observe(changed.resolved_after)


def observe_reply(reply: Reply, queue: str) -> None:
    """The first mail an agent sent on a ticket: its time to first response; and
    the status the reply set, if it resolved the ticket."""
    if reply.first_response_after is not None:
        TICKET_FIRST_RESPONSE_SECONDS.labels(queue=queue).observe(reply.first_response_after)
    observe_change(reply.changed)


class TicketCounts(Collector):
    """``deskmail_tickets{queue,status}`` from the kept counts; every configured
    queue reports every status (0 included), so a dashboard's series never vanish."""

    def __init__(self, config: Config, store: TicketStore) -> None:
        self._config = config
        self._store = store
        self._warned_at: float | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self._store.ticket_counts()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the database is down
            self._warned_at = _warn(self._warned_at, "ticket counts", exc)
            return
        totals: dict[tuple[str, str], int] = {(q.key, s): 0 for q in self._config.queues for s in TICKET_STATUSES}
        for (queue, status, _assignee), n in counts.items():
            totals[(queue, status)] = totals.get((queue, status), 0) + n
        family = GaugeMetricFamily(GAUGE, "Tickets per queue and status, from the counts the store keeps.",
                                   labels=["queue", "status"])
        for (queue, status), n in sorted(totals.items()):
            family.add_metric([queue, status], n)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Describing must not read the database (registration calls it).
        return iter(())


class SuspendedCounts(Collector):
    """``deskmail_suspended{queue,reason}``: mail waiting in the suspended list (not
    released), per queue and reason code, from one GROUP BY at each scrape. Every
    configured queue reports every code the router refuses with (0 included);
    rows without a queue report queue "". Dead letters are not counted here
    (``deskmail_bus_deadletters_total`` counts them)."""

    def __init__(self, config: Config, store: TicketStore) -> None:
        self._config = config
        self._store = store
        self._warned_at: float | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self._store.suspended_counts()
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail because the database is down
            self._warned_at = _warn(self._warned_at, "suspended mail counts", exc)
            return
        totals = {(q.key, code): 0 for q in self._config.queues
                  for code in (*REASON_CODES, *(r.name for r in q.rules if r.drop))}
        totals.update(counts)
        family = GaugeMetricFamily(SUSPENDED_GAUGE, "Suspended mail waiting for an admin, per queue and reason "
                                   "code (rejections not released).", labels=["queue", "reason"])
        for (queue, reason), n in sorted(totals.items()):
            family.add_metric([queue, reason], n)
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


def _warn(warned_at: float | None, what: str, exc: Exception) -> float | None:
    """Log that ``what`` is missing from /metrics, at most once a minute; the new warned-at time."""
    now = time.monotonic()
    if warned_at is not None and now - warned_at < WARN_EVERY_S:
        return warned_at
    reason = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
    log.warning("%s unavailable for /metrics: %s", what, reason, extra={"stage": "api"})
    return now


def registry(config: Config, store: TicketStore) -> CollectorRegistry:
    """The app's own registry, holding the ticket and suspended mail gauges."""
    own = CollectorRegistry(auto_describe=False)
    own.register(TicketCounts(config, store))
    own.register(SuspendedCounts(config, store))
    return own
