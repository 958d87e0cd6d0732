"""The check both kafka-python patches make before they touch kafka-python: the
installed version is one they were verified against, and the function they replace
is, byte for byte, the source they were verified on (services/common/kafka_patch.py,
services/common/kafka_join_patch.py). An upgrade is re-verified, never guessed."""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from typing import Any

import kafka

__all__ = ["fingerprint", "require_verified"]


def fingerprint(func: Any) -> str:
    """sha256 of ``inspect.getsource(func)``: what ``VERIFIED`` maps a version to."""
    return hashlib.sha256(inspect.getsource(func).encode()).hexdigest()


def require_verified(func: Any, what: str, verified: Mapping[str, str], patch: str, advice: str) -> None:
    """Raise RuntimeError unless kafka-python's version is in ``verified`` (version ->
    fingerprint) and ``func`` (named ``what``) has that version's fingerprint.
    ``patch``: the patching module's path; ``advice``: what to do about a new version."""
    version = kafka.__version__
    expected = verified.get(version)
    if expected is None:
        raise RuntimeError(
            f"kafka-python {version} is not verified by {patch} (verified: {', '.join(verified)}); {advice}"
        )
    if fingerprint(func) != expected:
        raise RuntimeError(f"kafka-python {version}: {what} differs from the verified source; {patch} refuses to patch it")
