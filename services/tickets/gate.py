"""The schema check every process that uses the tickets database (the ticketer,
the api) makes at start, before its work.

No process migrates: only `deskmail db migrate` changes the schema (on Kubernetes
the Job deskmail-db-migrate, which runs while the new pods start; `deskmail up`
migrates before it starts anything). So at start the schema is

- ``current``: go on;
- ``missing`` or ``behind``: the migration has not run yet. Wait for it, alive (the
  liveness probe keeps passing) and not ready, with the reason on /readyz and in
  one log line; a stop ends the wait. On Kubernetes the rollout waits too, so the
  old pods keep working until the schema is there;
- ``ahead``: a newer deskmail migrated the database, and waiting would not help:
  ``SchemaAhead`` at once (`deskmail run` exits with code 4 and that one line);
- unreachable: ``StoreUnavailable`` at once (exit code 3), like any dependency
  missing at start.

A process that passed the check never checks again: a migration while it runs
is one its release came before, and migrations keep the previous release working
(docs/operations.md, "Upgrade").
"""

from __future__ import annotations

import logging
import threading

from services.common.runtime import Health
from services.tickets.errors import SchemaAhead, SchemaNotCurrent
from services.tickets.store import TicketStore

log = logging.getLogger("deskmail.schema")
WAIT_SECONDS = 5.0


def await_schema(store: TicketStore, stop: threading.Event, health: Health, stage: str,
                 *, interval: float = WAIT_SECONDS) -> bool:
    """Return True once the schema is current, False when ``stop`` was set first.

    Raises SchemaAhead (never waited on) and StoreUnavailable.
    """
    waiting_for: str | None = None
    while True:
        try:
            store.require_current()
        except SchemaAhead:
            raise
        except SchemaNotCurrent as exc:
            reason = str(exc)
            health.set_ready(False, reason=reason)
            if reason != waiting_for:  # once, and again only when the state changes
                log.warning("waiting for the database schema", extra={"stage": stage, "reason": reason})
                waiting_for = reason
        else:
            if waiting_for is not None:
                log.info("database schema is current", extra={"stage": stage})
                health.set_ready(False)
            return True
        health.tick()
        if stop.wait(interval):
            return False
