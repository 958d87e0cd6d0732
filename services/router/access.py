"""Who may open tickets by mail in which queue. Pure: config in, decision out.

Rules (the access list itself is ``services.common.permissions``, shared with the api):
- an organization member may write to a queue whose ``access`` list admits them
  (their address, one of their ``group:NAME``s, ``members`` or ``everyone``; an
  empty list admits every member), whatever the address's external switch says;
- a member whom the access list does not admit is refused, even on an address that
  accepts external mail (members can create tickets only where they have access);
- anyone else is admitted only where the address accepts external mail.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.common.config import Config, Mailbox
from services.common.permissions import member_may_use


@dataclass(frozen=True)
class Decision:
    allowed: bool
    member: bool
    reason: str | None = None  # closed set of short codes, used as a metric label
    detail: str | None = None  # human sentence for logs and the rejection record


def decide(config: Config, mailbox: Mailbox, sender: str) -> Decision:
    queue = config.queue(mailbox.queue)
    assert queue is not None, "config guarantees every mailbox belongs to a queue"
    member = config.member(sender)
    if member is not None:
        if member_may_use(member, queue):
            return Decision(True, True)
        return Decision(
            False, True, "no_queue_access",
            f"{sender} is a member but has no access to queue {queue.key}",
        )
    if mailbox.accept_external:
        return Decision(True, False)
    return Decision(
        False, False, "external_not_accepted",
        f"{sender} is not an organization member and {mailbox.address} accepts mail only from members",
    )
