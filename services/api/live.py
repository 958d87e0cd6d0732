"""Live updates of the ticket page and the queue views: polling with ETags.

The page's script (static/live.js) asks ``GET .../live`` every few seconds
with ``If-None-Match``: 304 while nothing changed, else the server-rendered
fragments as JSON, which it swaps in, never touching what the agent is editing.

Polling rather than server-sent events: deskmail has no change feed to
subscribe to (the ticketer, the sender's events and the CLI write to the
database from other processes), so a stream would poll the database anyway,
and each open stream would hold one of the api's worker threads for as long
as a tab is open. A poll is one short request that works through any proxy
and across api replicas, and its 304 costs a few bytes.

An ETag is a digest of what the fragments show (``stamp``): for a ticket its
version, updated_at, comment count, event count, newest delivery update and
view; for a list the rows' keys and versions and the counts. The data is read
either way: the 304 saves rendering and transfer, not the query.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from services.tickets import TicketDetail, TicketSummary

# Every answer is revalidated: a browser or proxy must not serve a stale fragment.
NO_CACHE = {"cache-control": "no-cache, private"}


def stamp(*parts: object) -> str:
    """A weak ETag over ``parts`` (their repr: what the fragment shows, not its bytes)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f'W/"{digest}"'


def ticket_stamp(t: TicketDetail, *view: object) -> str:
    newest_delivery = max((e.delivery_updated_at for e in t.thread if e.delivery_updated_at is not None),
                          default=None)
    return stamp("ticket", t.key, t.version, t.updated_at.isoformat(), len(t.thread), len(t.events),
                 newest_delivery.isoformat() if newest_delivery else None, t.awaiting_reply, *view)


def rows_stamp(rows: Iterable[TicketSummary], *extra: object) -> str:
    return stamp("list", tuple((t.key, t.version, t.updated_at.isoformat(), t.comment_count, t.awaiting_reply)
                               for t in rows), *extra)


def unchanged(request: Request, etag: str) -> bool:
    """Whether the browser already has the answer tagged ``etag``."""
    sent = request.headers.get("if-none-match", "")
    return any(tag.strip() in (etag, "*") for tag in sent.split(","))


def not_modified(etag: str) -> Response:
    return Response(status_code=304, headers={"etag": etag, **NO_CACHE})


def fragments(etag: str, parts: dict[str, str], **extra: Any) -> JSONResponse:
    """The changed fragments, by the id of the element each one replaces."""
    body = {"etag": etag, "fragments": parts, **extra}
    return JSONResponse(body, headers={"etag": etag, **NO_CACHE})
