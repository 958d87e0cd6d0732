"""What the tickets store raises, besides SQLAlchemy's own errors.

Each class says what the caller should do: dead-letter a bad record
(``InvalidCommand``, ``InvalidDeliveryEvent``) or show an agent a 4xx
(``InvalidReply``, ``UnknownTicket``).
"""

from __future__ import annotations


class InvalidCommand(ValueError):
    """The command lacks a field or has a value the ticketer cannot apply."""


class InvalidReply(ValueError):
    """An agent's comment the store cannot keep: no text, no recipients for a
    mail, a value longer than its column, or an outbound id already used."""


class InvalidDeliveryEvent(ValueError):
    """A DeliveryEvent lacks a field or has a value the ticketer cannot record."""


class UnknownTicket(LookupError):
    """No ticket has this key."""
