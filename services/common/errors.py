"""The two exceptions that carry meaning between a processing step and its runner."""

from __future__ import annotations


class BadRecord(Exception):
    """This record can never be processed: dead-letter it with this reason and go on."""


class Transient(Exception):
    """A dependency is unavailable right now: retry the same record after a backoff."""
