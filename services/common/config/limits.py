"""Size limits on incoming mail: ``limits:`` at the top of deskmail.yaml, and per queue.

The top-level section sets every queue's limits; a queue's own ``limits:`` sets
any of the same keys for that queue alone (the others keep the top-level value).
What happens to a mail over a limit is ``over_limit``: ``note`` (the default)
makes the ticket or comment anyway, without what is over the limit, and says
exactly what was left out; ``suspend`` sets the whole mail aside as suspended
(reason ``too_large``), for an admin to release. Nothing is dropped silently.

The router applies them (services/router/limits.py). Mail larger than
``ingress.max_message_bytes`` never reaches deskmail by SMTP: the ingress answers
552 and the sending server tells its sender.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from services.common.config.base import Section

__all__ = ["LimitsSettings", "MailLimits", "QueueLimitsSettings"]

OverLimit = Literal["note", "suspend"]
MIB = 1024 * 1024


class LimitsSettings(Section):
    """``limits:``: every queue's limits."""

    max_message_bytes: int = Field(50 * MIB, ge=1024)  # the raw mail, headers and all parts
    max_attachments: int = Field(100, ge=0)  # files and inline images of one mail
    max_attachment_bytes: int = Field(25 * MIB, ge=1)  # one attachment, decoded
    over_limit: OverLimit = "note"


class QueueLimitsSettings(Section):
    """A queue's ``limits:``: any key of ``LimitsSettings``; unset keys keep the top-level value."""

    max_message_bytes: int | None = Field(None, ge=1024)
    max_attachments: int | None = Field(None, ge=0)
    max_attachment_bytes: int | None = Field(None, ge=1)
    over_limit: OverLimit | None = None


@dataclass(frozen=True)
class MailLimits:
    """One queue's limits, resolved."""

    max_message_bytes: int = 50 * MIB
    max_attachments: int = 100
    max_attachment_bytes: int = 25 * MIB
    over_limit: OverLimit = "note"

    @classmethod
    def of(cls, top: LimitsSettings, queue: QueueLimitsSettings | None) -> MailLimits:
        own = {} if queue is None else {k: v for k, v in queue.model_dump().items() if v is not None}
        return cls(**{**top.model_dump(), **own})
