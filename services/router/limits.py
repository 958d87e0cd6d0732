"""A queue's size limits applied to one parsed mail: what is kept, what is left out, and why.

Pure. ``check`` decides; the router then either makes the ticket or comment with
the kept attachments and ``Verdict.note`` in front of the text (``over_limit:
note``), or suspends the whole mail with ``Verdict.reason`` (``over_limit:
suspend``). An attachment left out is still listed on the ticket (name, type,
size, sha256) without its content, so an agent sees exactly what is missing.

The order of the checks: a mail over ``max_message_bytes`` keeps its text and
none of its attachments; otherwise each attachment over ``max_attachment_bytes``
is left out, and of the others the first ``max_attachments`` are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config.limits import MailLimits
from services.common.units import human_size
from services.router.mailparse import Attachment

__all__ = ["LeftOut", "Verdict", "check"]

REASON = "too_large"
MAX_NAMES = 20  # attachments named one by one in a note; the rest are counted


@dataclass(frozen=True)
class LeftOut:
    attachment: Attachment
    why: str  # "over the limit of 25 MB per attachment"


@dataclass(frozen=True)
class Verdict:
    kept: tuple[Attachment, ...]
    left_out: tuple[LeftOut, ...]
    message_over: str | None = None  # why the mail as a whole is over its limit

    @property
    def over(self) -> bool:
        return bool(self.left_out) or self.message_over is not None

    @property
    def summary(self) -> str:
        """One line: what was over which limit."""
        parts = [] if self.message_over is None else [self.message_over]
        named = [f"{o.attachment.filename} ({human_size(o.attachment.size)}, {o.why})"
                 for o in self.left_out[:MAX_NAMES]]
        if len(self.left_out) > MAX_NAMES:
            named.append(f"and {len(self.left_out) - MAX_NAMES} more")
        if named:
            noun = "attachment" if len(self.left_out) == 1 else "attachments"
            parts.append(f"{len(self.left_out)} {noun} left out: " + "; ".join(named))
        return "; ".join(parts)

    @property
    def note(self) -> str:
        """What the ticket or comment says in front of the mail's text."""
        summary = self.summary
        return f"[deskmail: this mail was over the queue's size limits. {summary[:1].upper()}{summary[1:]}.]"

    @property
    def reason(self) -> str:
        """The suspended reason of the whole mail (``over_limit: suspend``)."""
        return f"{REASON}: {self.summary}"


def check(attachments: tuple[Attachment, ...], size: int, limits: MailLimits) -> Verdict:
    """The verdict for a mail of ``size`` raw bytes with these attachments."""
    if size > limits.max_message_bytes:
        why = f"the mail is {human_size(size)}, over the limit of {human_size(limits.max_message_bytes)} per mail"
        return Verdict(kept=(), left_out=tuple(LeftOut(a, "not stored with a mail over its size limit")
                                               for a in attachments), message_over=why)
    kept: list[Attachment] = []
    left_out: list[LeftOut] = []
    for attachment in attachments:
        if attachment.size > limits.max_attachment_bytes:
            left_out.append(LeftOut(attachment, f"over the limit of {human_size(limits.max_attachment_bytes)} "
                                                "per attachment"))
        elif len(kept) >= limits.max_attachments:
            left_out.append(LeftOut(attachment, f"over the limit of {limits.max_attachments} attachments per mail"))
        else:
            kept.append(attachment)
    return Verdict(kept=tuple(kept), left_out=tuple(left_out))
