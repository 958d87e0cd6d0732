"""The key that signs outgoing Message-IDs: configured, or made once in the data folder.

``organization.message_id_key`` (``{env: NAME}`` or ``{file: PATH}``) is the key
when set; every process that writes mail (the api, the CLI) must then see the
same one. Unset, ``message_id_key`` reads ``<data_dir>/message-id.key``, making
it on first use (random, mode 0600), so ``deskmail up`` works on its defaults.
Threading does not depend on the key (the tickets database knows every
Message-ID deskmail sent); it makes those Message-IDs impossible to guess, so a
stranger cannot name one to write into a ticket. A lost or changed key only
means older Message-IDs no longer verify with ``mailrules.verify_message_id``.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from services.common.config.model import Config
from services.common.config.secrets import MIN_KEY_CHARS, Secret, SecretUnavailable

KEY_FILE = "message-id.key"


def message_id_key(config: Config) -> Secret:
    """The configured key, else the data folder's (made if missing).

    Raises SecretUnavailable, naming the file and never its content, when the
    file cannot be read or written, is readable by others than its owner, or
    holds too short a key.
    """
    if config.message_id_key is not None:
        return config.message_id_key
    return _key_file(config.data_dir / KEY_FILE)


def existing_message_id_key(config: Config) -> Secret | None:
    """The configured key, else the data folder's if it is there; None
    otherwise. For readers (the router's loop check), which must not make a
    key of their own that no writer uses."""
    if config.message_id_key is not None:
        return config.message_id_key
    path = config.data_dir / KEY_FILE
    return _key_file(path) if path.exists() else None


def _key_file(path: Path) -> Secret:
    try:
        if not path.exists():
            _create(path)
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretUnavailable(
                f"{path} is readable by others than its owner (mode {stat.S_IMODE(mode):o}): chmod 600 it"
            )
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SecretUnavailable(f"cannot use the Message-ID key file {path}: {exc.strerror}") from None
    if len(value) < MIN_KEY_CHARS:
        raise SecretUnavailable(f"{path} holds no key of at least {MIN_KEY_CHARS} characters")
    return Secret(value, f"file:{path}")


def _create(path: Path) -> None:
    """Write a fresh key under a temporary name, then link it into place: the
    link fails if another process made the file first (its key is kept), and no
    reader ever sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
