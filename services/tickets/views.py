"""What the tickets store hands out and takes in: frozen result and request types.

Kept apart from the modules that hold the SQL so the API, the CLI and the
tests can name these types without reading the queries. The package
(``services.tickets``) re-exports every name here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

# deferred: a reply to mail not known yet, held back until it comes (services/tickets/pending.py)
Outcome = Literal["created", "commented", "duplicate", "rejected", "deferred"]
Action = Literal["create", "comment", "reject"]
Role = Literal["author", "participant"]
CommentKind = Literal["mail_in", "mail_out", "note"]
# queued: in the outbox or on the outbound topic; retrying: the sender got a 4xx
# or no connection and tries again; sent: the SMTP server said 250; failed: 5xx
# or the retry window ended; bounced: a delivery status notification came back
# for it (after the server took it). sent, failed and bounced are final, and only
# a bounce replaces sent or failed: a delivery event never replaces bounced.
DeliveryStatus = Literal["queued", "retrying", "sent", "failed", "bounced"]
# A final status is never overwritten by a later event.
PENDING_STATUSES: tuple[DeliveryStatus, ...] = ("queued", "retrying")
# What a bounce did (TicketerStep counts it): bounced, it marked the outgoing mail it
# reports on; delayed, it reports a delay of such mail (marks nothing); unmatched, it
# names no mail deskmail sent (kept on its thread, or suspended).
BounceOutcome = Literal["bounced", "delayed", "unmatched"]
# The database's schema against this code's migrations: current (at the newest
# revision), missing (never migrated: no tables), behind (an older revision:
# migrate), ahead (a revision this code does not know: a newer deskmail migrated it).
SchemaState = Literal["current", "missing", "behind", "ahead"]
# A ticket's workflow; waiting: for the customer. See services/tickets/workflow.py.
TicketStatus = Literal["open", "in_progress", "waiting", "resolved", "closed"]
TICKET_STATUSES: tuple[TicketStatus, ...] = ("open", "in_progress", "waiting", "resolved", "closed")
# Statuses in which a ticket counts as done (time to resolution ends there).
DONE_STATUSES: tuple[TicketStatus, ...] = ("resolved", "closed")
EventKind = Literal["status", "assignee", "type", "components", "follow_up"]
# Where a search found its ticket: the ticket's own text or one of its comments.
SearchWhere = Literal["summary", "description", "comment"]
# A search snippet's matched terms lie between these private-use characters, never
# in HTML: the page escapes the snippet, then turns each pair into <mark>...</mark>.
MARK_START = "\ue000"
MARK_END = "\ue001"


@dataclass(frozen=True)
class Applied:
    """What ``apply`` did. ``comment_id`` is set when the command added a comment
    (for ``duplicate``: the comment the original command added, if any)."""

    outcome: Outcome
    ticket_key: str | None
    comment_id: int | None = None
    reason: str | None = None  # a rejection decided here (rate_limited), not by the router
    bounce: BounceOutcome | None = None  # set for a bounce that was applied (not a duplicate)
    # Held-back replies that awaited this mail (TicketCommand records): apply them next.
    released: tuple[bytes, ...] = ()


@dataclass(frozen=True)
class TicketSummary:
    key: str
    queue: str
    number: int
    type: str | None
    components: tuple[str, ...]
    summary: str
    status: str
    author_email: str
    author_name: str | None
    created_at: datetime
    updated_at: datetime
    comment_count: int
    assignee: str | None = None
    version: int = 1
    awaiting_reply: bool = False


@dataclass(frozen=True)
class SearchHit:
    """One ticket a search found, with its best match.

    ``snippet`` is plain text around the match (from the summary, the
    description or comment ``comment_id``, as ``where`` says) with each matched
    term between MARK_START and MARK_END; text that held those characters
    itself has lost them, so every pair is a real match. ``rank``: higher is
    better; comparable only within one search.
    """

    ticket: TicketSummary
    snippet: str
    where: SearchWhere
    comment_id: int | None
    rank: float


@dataclass(frozen=True)
class Participant:
    email: str  # lower-cased: the key that keeps participants unique per ticket
    name: str | None
    member: bool
    role: Role


@dataclass(frozen=True)
class Recipient:
    """An address an outgoing comment is mailed to (To or Cc)."""

    email: str  # lower-cased
    name: str | None = None
    member: bool = False  # an organization member; becomes the participant's flag


@dataclass(frozen=True)
class ThreadEntry:
    """One comment of a ticket: incoming mail, an agent's mail or a note.

    The fields after ``created_at`` describe agent comments; for incoming mail
    they keep their defaults. ``delivery_status`` is set only for ``mail_out``.
    """

    id: int
    kind: CommentKind
    author_email: str
    author_name: str | None
    body: str
    html: str | None
    message_id: str | None
    created_at: datetime
    internal: bool = False
    outbound_id: str | None = None
    to: tuple[Recipient, ...] = ()
    cc: tuple[Recipient, ...] = ()
    signature_alias: str | None = None
    delivery_status: DeliveryStatus | None = None
    delivery_detail: str | None = None  # the last SMTP reply or connection error
    delivery_updated_at: datetime | None = None
    # Incoming mail: sender authentication proved its From; None for an agent's comment.
    author_verified: bool | None = None
    # Incoming mail: the quoted history and signature split off ``body``
    # (which holds the new text); None when nothing was split off.
    quoted: str | None = None
    charset_detected: str | None = None  # detected, where the mail's declared charset was missing or wrong
    automatic: bool = False  # an automatic reply or bounce: stored, and it changed nothing on the ticket


@dataclass(frozen=True)
class AttachmentInfo:
    filename: str
    content_type: str
    size: int
    sha256: str
    blob_ref: str | None
    comment_id: int | None  # None: attached to the mail that opened the ticket
    content_id: str | None = None  # the mail's HTML shows it inline as src="cid:..."


@dataclass(frozen=True)
class TicketDetail:
    key: str
    queue: str
    number: int
    type: str | None
    components: tuple[str, ...]
    summary: str
    description: str
    description_html: str | None
    status: str
    author_email: str
    author_name: str | None
    author_member: bool
    created_at: datetime
    updated_at: datetime
    participants: tuple[Participant, ...]
    thread: tuple[ThreadEntry, ...]  # comments, oldest first
    attachments: tuple[AttachmentInfo, ...]
    message_ids: tuple[str, ...]  # every Message-ID known for the ticket, oldest first
    # Sender authentication proved the opening mail's From; false when trust is not
    # configured (a member is then believed by the From line) or it was never checked.
    author_verified: bool = False
    assignee: str | None = None  # a member's address; None: unassigned
    version: int = 1  # pass it back with a change: a newer one means somebody else changed the ticket
    awaiting_reply: bool = False  # the customer wrote last and no agent has mailed since
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    follow_up_of: str | None = None  # the closed ticket this one follows up (its key)
    follow_ups: tuple[str, ...] = ()  # keys of tickets opened as follow-ups of this one
    events: tuple[TicketEvent, ...] = ()  # field changes, oldest first
    charset_detected: str | None = None  # the opening mail's, where its declared charset was missing or wrong
    priority: str | None = None  # low | normal | high | urgent, set by a routing rule; None: none
    tags: tuple[str, ...] = ()  # set by routing rules, sorted
    matched_rules: tuple[str, ...] = ()  # the routing rules the opening mail matched, in order


@dataclass(frozen=True)
class TicketEvent:
    """One change of a ticket's fields: who (None: deskmail itself), when, from -> to.

    Values are text: a status, an assignee's address ('' for unassigned), a type,
    components joined by ", ", or for ``follow_up`` the other ticket's key."""

    id: int
    kind: EventKind
    actor: str | None
    old_value: str | None
    new_value: str | None
    reason: str | None
    created_at: datetime


@dataclass(frozen=True)
class TicketChange:
    """What an agent asks to change; None leaves a field as it is. ``assignee=""``
    unassigns. Who may be assigned is the caller's check (it knows the queues)."""

    status: TicketStatus | None = None
    assignee: str | None = None
    type: str | None = None
    components: tuple[str, ...] | None = None

    def empty(self) -> bool:
        return self.status is None and self.assignee is None and self.type is None and self.components is None


@dataclass(frozen=True)
class Changed:
    """What ``change_ticket`` (or a reply with a status) did: the new version and
    the events it recorded (empty when nothing differed). ``resolved_after`` is
    set when the ticket became done (resolved or closed) from an active status:
    the time since it was opened, for the resolution-time histogram."""

    ticket_key: str
    queue: str
    version: int
    events: tuple[TicketEvent, ...]
    resolved_after: float | None = None


@dataclass(frozen=True)
class Rejection:
    command_id: str
    mailbox: str
    queue: str | None
    classification: str
    author_email: str
    subject: str
    message_id: str
    reason: str | None
    received_at: datetime
    recorded_at: datetime


@dataclass(frozen=True)
class Threading:
    """What the store knows only inside the reply's transaction, handed to the
    outbound builder: the new comment's id and the threading headers."""

    ticket_key: str
    queue: str
    summary: str
    comment_id: int
    in_reply_to: str | None
    references: tuple[str, ...]
    created_at: datetime


# Builds the encoded OutboundMail (Avro single-object bytes) of a reply. Runs
# inside the store's transaction; an exception rolls the reply back.
OutboundBuilder = Callable[[Threading], bytes]


@dataclass(frozen=True)
class Reply:
    """An agent's comment as stored by ``add_reply``."""

    ticket_key: str
    entry: ThreadEntry
    changed: Changed | None = None  # the status set in the same action ("send and set waiting")
    # Seconds from the ticket's opening to this reply, when it is the first mail an agent sent.
    first_response_after: float | None = None


@dataclass(frozen=True)
class OutboxRecord:
    """An outgoing mail waiting for (or done with) the relay to the broker."""

    id: str  # the OutboundMail id
    ticket_key: str  # the record key on deskmail.mail.outbound
    comment_id: int
    payload: bytes
    created_at: datetime
    relayed_at: datetime | None
