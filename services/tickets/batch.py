"""Many commands and delivery events in one write transaction, each in a savepoint.

The ticketer applies a polled batch this way (``TicketStore.batch``): one commit
instead of one per command, while a command that fails rolls back to its own
savepoint alone, so it can be dead-lettered and the rest still commit. Nothing is
durable before the block returns; when it raises, nothing of the batch is.

On SQLite the transaction holds the database's write lock from its first statement
(BEGIN IMMEDIATE) to its commit; on PostgreSQL it holds the row locks it takes, the
queue counters among them, until then. A batch is one poll of the consume loop:
short, and bounded by ``kafka.consumer.max_poll_records``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from services.tickets import outgoing, pending, ratelimit, suspended
from services.tickets.apply import ClosedReply, apply_command
from services.tickets.commands import Command
from services.tickets.outgoing import Delivery
from services.tickets.views import Applied


class Batch:
    """The writes of the ticketer on one transaction; see the module docstring."""

    def __init__(self, conn: Connection):
        self.conn = conn

    def apply(self, cmd: Mapping[str, Any], *, closed_reply: ClosedReply = "follow_up",
              limits: ratelimit.Limits = ratelimit.NONE, hold: pending.Hold | None = None) -> Applied:
        """``TicketStore.apply`` within the batch. Raises InvalidCommand, with the
        command's savepoint rolled back."""
        command = Command.parse(cmd)
        try:
            with self.conn.begin_nested():
                return apply_command(self.conn, command, closed_reply, limits, hold)
        except IntegrityError:
            # A concurrent ticketer committed the same command, mail or participant
            # first: only this savepoint was rolled back, and the re-run sees its effect.
            with self.conn.begin_nested():
                return apply_command(self.conn, command, closed_reply, limits, hold)

    def record_delivery(self, event: Mapping[str, Any]) -> bool:
        """``TicketStore.record_delivery`` within the batch. Raises InvalidDeliveryEvent."""
        delivery = Delivery.parse(event)
        with self.conn.begin_nested():
            return outgoing.record_delivery(self.conn, delivery)

    def keep_original(self, command_id: str, raw_ref: str) -> bool:
        with self.conn.begin_nested():
            return suspended.keep_original(self.conn, command_id, raw_ref)

    def lacks_original(self, command_id: str) -> bool:
        return suspended.lacks_original(self.conn, command_id)
