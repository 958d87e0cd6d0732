"""Suspended mail as an agent may see and release it: the pages and the JSON API
refuse alike.

Agents see the suspended mail of the queues they see (``access.seen_queues``);
mail without a queue only admins. Opening the original and releasing are for
admins (``organization.admins``), as queue settings are. The list holds only
rejections: dead letters are read from the dead-letter topic, which is too slow
for each page load, so `deskmail suspended list` shows them.
"""

from __future__ import annotations

from fastapi import HTTPException

from services import suspended
from services.api import access
from services.api.context import ApiContext
from services.common.blobs import BlobStore
from services.common.config import Config, Member
from services.common.errors import Transient
from services.tickets import SuspendedMail

DEAD_LETTERS_NOTE = "dead letters: see `deskmail suspended list`"


def may_release(config: Config, agent: Member | None) -> bool:
    return access.may_manage(config, agent)


def require_admin(config: Config, agent: Member | None) -> None:
    """Raises HTTPException 403 unless the agent is an admin."""
    if not may_release(config, agent):
        assert agent is not None
        raise HTTPException(403, f"{agent.email} is not an admin: only organization.admins open and release "
                                 "suspended mail")


def rejection_id(value: str) -> int:
    """A rejection's number from a path; 404 for anything else (a dead letter's
    id included: they are released with `deskmail suspended release`)."""
    text = value.strip()
    if not text.isdigit() or len(text) > 18:
        if text.startswith(suspended.DEAD_LETTER_PREFIX):
            raise HTTPException(404, f"{text[:80]}: dead letters are released with `deskmail suspended release`")
        raise HTTPException(404, f"no suspended mail {text[:80]}")
    return int(text)


def visible_item(ctx: ApiContext, agent: Member | None, item_id: int) -> SuspendedMail:
    """The rejection; 404 when there is none, 403 when its queue is not the agent's."""
    item = ctx.store.get_suspended(item_id)
    if item is None:
        raise HTTPException(404, f"no suspended mail {item_id}")
    if item.queue is None:
        if access.seen_queues(ctx.config, agent) is not None:
            raise HTTPException(403, "suspended mail without a queue is for admins")
    else:
        access.require_queue(ctx.config, agent, item.queue)
    return item


def release(ctx: ApiContext, agent: Member | None, item: SuspendedMail) -> suspended.Released:
    """Release ``item`` as the agent (an admin: the caller checked). Raises
    HTTPException: 409 released already or no original, 503 no broker here or
    the broker did not acknowledge (nothing was released)."""
    if ctx.releaser is None:
        raise HTTPException(503, "this api has no Kafka producer: suspended mail cannot be released here")
    try:
        done: suspended.Released = ctx.releaser.release(str(item.id), agent.email if agent else None)
    except suspended.UnknownItem as exc:
        raise HTTPException(404, str(exc)) from None
    except (suspended.AlreadyReleased, suspended.NoOriginal) as exc:
        raise HTTPException(409, str(exc)) from None
    except Transient as exc:
        raise HTTPException(503, f"nothing was released: {exc}") from None
    return done


def original(blobs: BlobStore, item: SuspendedMail) -> bytes:
    """The raw mail; 404 when it was not kept or is gone, 503 when the blob store is down."""
    try:
        return suspended.original(item, blobs)
    except suspended.NoOriginal as exc:
        raise HTTPException(404, str(exc)) from None
    except Transient as exc:
        raise HTTPException(503, str(exc)) from None
