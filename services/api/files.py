"""How an attachment is handed to a browser: always as a download, never as a page of deskmail's.

A customer chooses an attachment's bytes, its name and its declared type. Served
inline from deskmail's origin, an .html or .svg file would run its script with
the agent's cookies, so every attachment is ``Content-Disposition: attachment``,
only a short list of inert types keeps its type (anything else, HTML, SVG and XML
included, is ``application/octet-stream``), and the response carries its own
sandboxing CSP in case a browser shows it anyway.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import quote

__all__ = ["ATTACHMENT_CSP", "INERT_TYPES", "content_disposition", "safe_filename", "served_type"]

# Types a browser shows without running anything. image/svg+xml is not one of them.
INERT_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "application/pdf", "text/plain"})
OPAQUE = "application/octet-stream"
# Opened anyway (a browser that ignores the disposition, a "view" in a PDF viewer):
# no script, no plugin, no loads, a unique origin.
ATTACHMENT_CSP = "default-src 'none'; sandbox; frame-ancestors 'none'"
MAX_NAME = 150
# Characters RFC 5987 allows unencoded in filename* (attr-char), besides letters and digits.
_ATTR_CHARS = "!#$&+-.^_`|~"


def served_type(declared: str) -> str:
    """The Content-Type to serve an attachment declared as ``declared`` with."""
    media = declared.split(";", 1)[0].strip().lower()
    return media if media in INERT_TYPES else OPAQUE


def safe_filename(name: str) -> str:
    """The file's name without any folder part, control or format characters
    (bidi overrides that hide an extension), leading dots or trailing dots and
    spaces; at most 150 characters, keeping the extension; "attachment" when
    nothing is left."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))
    base = base.strip().lstrip(".").rstrip(". ")
    if len(base) > MAX_NAME:
        stem, dot, ext = base.rpartition(".")
        keep = dot + ext if dot and len(ext) <= 16 else ""
        base = base[: MAX_NAME - len(keep)] + keep
    return base or "attachment"


def content_disposition(name: str) -> str:
    """``attachment`` with an ASCII ``filename`` for old clients and the exact name
    in ``filename*`` (RFC 6266, RFC 5987), both from the sanitised name."""
    safe = safe_filename(name)
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;%' else "_" for c in safe)
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(safe, safe=_ATTR_CHARS)}"
