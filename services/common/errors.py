"""The exceptions that carry meaning between a processing step and its runner."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class BadRecord(Exception):
    """This record can never be processed: dead-letter it with this reason and go on.

    The dead letter names the real cause, not this wrapper: ``error_class`` is the
    class given here, else the class of the exception this one was raised from
    (``raise BadRecord(...) from exc``), else ``BadRecord``. Operators filter and
    alert on it (``deskmail deadletters list --error-class MalformedMail``).
    """

    def __init__(self, message: str, *, error_class: str | None = None):
        super().__init__(message)
        self._error_class = error_class

    @property
    def error_class(self) -> str:
        if self._error_class:
            return self._error_class
        if self.__cause__ is not None:
            return type(self.__cause__).__name__
        return type(self).__name__


class Transient(Exception):
    """A dependency is unavailable right now: retry the same record after a backoff."""


class Unavailable(RuntimeError):
    """Something the process needs at start is missing (a topic not created yet): it
    stops with exit code 3, and the supervisor starts it again later."""


class UnsafeTopics(RuntimeError):
    """A topic this process writes could lose acknowledged records (replication or
    ``min.insync.replicas`` below the declaration, unclean leader election on): it
    refuses to start with exit code 2 until the topic is fixed."""


class Stopping(Exception):
    """The process is stopping while this record is unfinished: leave it uncommitted.

    The consume loop commits what came before it and returns; the record is
    processed again after the restart.
    """


class DeadLetterFlood(RuntimeError):
    """A stage dead-lettered more records than its limit allows: stop it.

    After a bad deploy or config change every record may fail; stopping (and
    alerting) beats draining the whole input topic into the dead-letter topic.
    """


class Later(Exception):
    """This record cannot be finished yet: come back to it after ``delay`` seconds.

    The consume loop commits what came before it in its partition, rewinds that
    partition to this record and pauses only that partition until the delay has
    passed; the other partitions go on. ``outs`` are produced (and acknowledged)
    with the batch, like a step's output: the sender's ``retrying`` event.
    """

    def __init__(self, message: str, delay: float, outs: Sequence[Any] = ()):
        super().__init__(message)
        self.delay = delay
        self.outs = tuple(outs)
