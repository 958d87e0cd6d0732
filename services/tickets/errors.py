"""What the tickets store raises, besides SQLAlchemy's own errors.

Each class says what the caller should do: dead-letter a bad record
(``InvalidCommand``, ``InvalidDeliveryEvent``), show an agent a 4xx
(``InvalidReply``, ``UnknownTicket``) or tell an operator how to fix the
installation (``BadDatabaseUrl``, ``StoreUnavailable``, ``SchemaNotCurrent`` and
its ``SchemaAhead``).
Messages of the operator's errors are one line and never hold a password.
"""

from __future__ import annotations

from services.tickets.views import SchemaState


class InvalidCommand(ValueError):
    """The command lacks a field or has a value the ticketer cannot apply."""


class InvalidReply(ValueError):
    """An agent's comment the store cannot keep: no text, no recipients for a
    mail, a value longer than its column, or an outbound id already used."""


class InvalidDeliveryEvent(ValueError):
    """A DeliveryEvent lacks a field or has a value the ticketer cannot record."""


class InvalidToken(ValueError):
    """An API token cannot be made as asked (bad name, expiry in the past)."""


class UnknownTicket(LookupError):
    """No ticket has this key."""


class InvalidChange(ValueError):
    """A change the store cannot make: an unknown status, an empty type, a value
    longer than its column."""


class VersionConflict(Exception):
    """The ticket changed since the caller read it (its version is newer than the
    one given): nothing was changed. ``current`` is the version now."""

    def __init__(self, key: str, expected: int, current: int) -> None:
        super().__init__(f"{key} was changed by someone else (version {current}, you had {expected}): "
                         "reload it and try again")
        self.key = key
        self.expected = expected
        self.current = current


class BadDatabaseUrl(ValueError):
    """``database_url`` cannot be parsed, names a driver that is not installed,
    or a backend the store does not support (only SQLite and PostgreSQL)."""


class StoreUnavailable(Exception):
    """The database cannot be reached: nothing listens at the address, the host
    is unknown, the credentials are refused, or the SQLite file cannot be opened."""


class SchemaNotCurrent(Exception):
    """The database's schema revision is not the one this code expects
    (``state`` is ``missing``, ``behind`` or ``ahead``); nothing was migrated."""

    def __init__(self, message: str, *, state: SchemaState, revision: str | None, head: str) -> None:
        super().__init__(message)
        self.state = state
        self.revision = revision  # the database's revision; None when it has none
        self.head = head  # the newest revision this code knows


class SchemaAhead(SchemaNotCurrent):
    """The database is at a revision this code does not know: a newer deskmail
    migrated it (``state`` is ``ahead``). Migrating cannot help; the operator rolls
    forward to that release or restores the database from before its migration."""
