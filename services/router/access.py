"""Who may open tickets by mail in which queue. Pure: config in, decision out.

Rules (the access list itself is ``services.common.permissions``, shared with the api):
- an organization member may write to a queue whose ``access`` list admits them
  (their address, one of their ``group:NAME``s, ``members`` or ``everyone``; an
  empty list admits every member), whatever the address's external switch says;
- a member whom the access list does not admit is refused, even on an address that
  accepts external mail (members can create tickets only where they have access);
- anyone else is admitted only where the address accepts external mail;
- a member's address whose mail does not prove it (``authenticated`` False, see
  services/router/senderauth.py) is anyone else: admitted as an outsider where
  the address accepts external mail, refused with ``sender_not_authenticated``
  where it does not.
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


def decide(config: Config, mailbox: Mailbox, sender: str, *, authenticated: bool) -> Decision:
    """``authenticated``: the mail proves its From (always True when no trust is configured)."""
    queue = config.queue(mailbox.queue)
    assert queue is not None, "config guarantees every mailbox belongs to a queue"
    member = config.member(sender)
    if member is not None and not authenticated:
        if mailbox.accept_external:
            return Decision(True, False)
        return Decision(
            False, False, "sender_not_authenticated",
            f"mail from member address {sender} does not prove its sender "
            f"and {mailbox.address} accepts mail only from members",
        )
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
