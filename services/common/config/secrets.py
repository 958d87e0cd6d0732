"""Secret references in deskmail.yaml and the resolved ``Secret``.

A secret is never written into the file: it is ``{env: NAME}`` or ``{file: PATH}``
(``SecretRef``), resolved once by the loader into a ``Secret`` whose value shows
only through ``reveal()``: never in repr, str, logs or error messages.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, model_validator


class Secret:
    """A resolved secret. Its value never shows in repr, str, logs or exceptions."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str):
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self.source)


class SecretRef(BaseModel):
    """``{env: NAME}`` or ``{file: PATH}`` as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "SecretRef":
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret is {env: NAME} or {file: PATH}, exactly one of them")
        return self


# A signing key (organization.message_id_key) shorter than this is refused:
# it could be guessed, and then so could every Message-ID signed with it.
MIN_KEY_CHARS = 16


class SecretUnavailable(Exception):
    """The reference cannot be resolved; the message names the variable or file, never a value."""


def resolve(ref: SecretRef) -> Secret:
    """The secret ``ref`` points to; raises SecretUnavailable.

    A file's trailing line break is dropped (``echo pw > file`` writes one).
    """
    if ref.env is not None:
        value = os.environ.get(ref.env)
        if value is None:
            raise SecretUnavailable(f"environment variable {ref.env} is not set")
        return Secret(value, f"env:{ref.env}")
    assert ref.file is not None
    try:
        value = Path(ref.file).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SecretUnavailable(f"cannot read secret file {ref.file}: {exc.strerror}") from None
    return Secret(value, f"file:{ref.file}")
