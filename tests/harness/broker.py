"""Test-only helpers around the local broker (see ``services.localbroker``)."""

from __future__ import annotations

import itertools
import os
import re
import secrets

# The tests' own kafka-python clients get the fixes deskmail's clients have: bounded
# blocking calls, and a group join that ended between two polls is kept.
from services.common import kafka_join_patch, kafka_patch  # noqa: F401

__all__ = ["FAST_CONSUMER", "unique_name"]

# Consumer settings for tests against the Tansu broker: a group join takes
# about session_timeout_ms / 2 there (1 s with these values, 23 s with the
# kafka-python defaults).
FAST_CONSUMER: dict[str, object] = {
    "session_timeout_ms": 2000,
    "heartbeat_interval_ms": 500,
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
}

_counter = itertools.count(1)
_unsafe = re.compile(r"[^A-Za-z0-9._-]+")


def unique_name(prefix: str = "t", max_len: int = 100) -> str:
    """A name no other call in any process returns, e.g. ``orders-7f3a-12-9c1d2e``.

    Only ``[A-Za-z0-9._-]`` is used, so the result is a valid Kafka topic or
    group name, IMAP mailbox name, login or SQL identifier (after quoting).
    """
    clean = _unsafe.sub("-", prefix).strip("-.") or "t"
    suffix = f"-{os.getpid():x}-{next(_counter)}-{secrets.token_hex(3)}"
    return clean[: max(1, max_len - len(suffix))] + suffix
