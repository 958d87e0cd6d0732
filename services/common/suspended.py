"""The rules of suspended mail that the router, the ticketer and the tools share.

Suspended mail is mail that made no ticket or comment: a rejection (the router's
``reject``, or a ``reply_only`` mail the ticketer found no thread for) or a dead
letter. An admin may release a rejection: its raw mail goes back on the inbound
topic with ``release_of`` naming the rejection's command id, the router routes it
without rejecting it again, and the command it makes is named
``release:<that id>``. The ticketer's idempotency by command id then makes a
second release of the same rejection change nothing.

Pure: strings in, strings out.
"""

from __future__ import annotations

RELEASE_PREFIX = "release:"
# The refusals of the router (services/router/access.py, route.py) and the ticketer
# (services/tickets/ratelimit.py): the suspended view's filter and the gauge name
# these even while none is waiting.
REASON_CODES = ("external_not_accepted", "no_queue_access", "sender_not_authenticated", "auto_reply", "bounce",
                "bulk", "loop", "rate_limited", "too_large")
RELEASED_BY = "released by "
# The reason code of a dead letter in the suspended list (rejections have the router's codes).
DEAD_LETTER = "dead_letter"
UNKNOWN_REASON = "other"


def reason_code(reason: str | None) -> str:
    """The part of a rejection's reason before the first ":": ``external_not_accepted``,
    ``auto_reply``, ``loop`` ...; ``other`` when there is none."""
    code = (reason or "").split(":", 1)[0].strip()
    return code or UNKNOWN_REASON


def release_command_id(original: str) -> str:
    """The id of the command a release of rejection ``original`` makes."""
    return RELEASE_PREFIX + original


def released_of(command_id: str) -> str | None:
    """The rejection's command id a ``release:`` command id names, else None."""
    if command_id.startswith(RELEASE_PREFIX) and len(command_id) > len(RELEASE_PREFIX):
        return command_id[len(RELEASE_PREFIX):]
    return None


def released_reason(by: str | None) -> str:
    """The reason a released mail's command carries: who overrode the refusal."""
    return RELEASED_BY + by if by else "released"


def released_by(reason: str | None) -> str | None:
    """The admin a released command's reason names (``released_reason``), else None."""
    if reason and reason.startswith(RELEASED_BY):
        who = reason[len(RELEASED_BY):].strip()
        return who or None
    return None
