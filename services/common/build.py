"""Which deskmail this is: the release (the installed package's version) and the
source revision it was built from.

The image sets ``DESKMAIL_REVISION`` from its ``REVISION`` build argument (the same
value as its ``org.opencontainers.image.revision`` label); anywhere else the revision
is ``unknown``. Both end up in ``deskmail --version`` and in the
``deskmail_build_info`` gauge, so a label value is kept short and plain: anything
that is not a short run of letters, digits, ``.``, ``_``, ``+`` or ``-`` is
``unknown`` too.
"""

from __future__ import annotations

import os
import re
from importlib import metadata

REVISION_ENV = "DESKMAIL_REVISION"
UNKNOWN = "unknown"
_PLAIN = re.compile(r"[0-9A-Za-z._+-]{1,64}")


def version() -> str:
    """The installed deskmail's version (pyproject.toml's), or ``unknown``."""
    try:
        return _plain(metadata.version("deskmail"))
    except metadata.PackageNotFoundError:
        return UNKNOWN


def revision() -> str:
    """``DESKMAIL_REVISION`` (a commit id), or ``unknown``."""
    return _plain(os.environ.get(REVISION_ENV, "").strip())


def describe() -> str:
    """What ``deskmail --version`` prints."""
    return f"deskmail {version()} (revision {revision()})"


def _plain(value: str) -> str:
    return value if _PLAIN.fullmatch(value) else UNKNOWN
