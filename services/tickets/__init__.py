"""The tickets database: the shared database layer of deskmail.

Three processes use it, always through ``TicketStore`` and never with SQL of
their own:

- the ticketer (``services.ticketer``) writes: it applies TicketCommands and
  records the sender's DeliveryEvents;
- the api (``services.api``) reads tickets and adds agents' replies, whose
  outgoing mail it relays from the outbox to the broker;
- the CLI (``services.cli``) reads tickets and rejections, adds replies,
  manages API tokens and migrates the schema.

Importers write ``from services.tickets import TicketStore, ...``; the names
below are the package's public surface. ``tables`` (the schema) and
``migrations`` (Alembic) are for the store itself and for tests that compare
the migrated schema with the tables.
"""

from services.tickets.errors import (
    BadDatabaseUrl,
    InvalidChange,
    InvalidCommand,
    InvalidDeliveryEvent,
    InvalidReply,
    InvalidToken,
    SchemaAhead,
    SchemaNotCurrent,
    StoreUnavailable,
    UnknownTicket,
    VersionConflict,
)
from services.tickets.listing import BadCursor, Count, Page, View
from services.tickets.store import TicketStore
from services.tickets.suspended import Expired, SuspendedMail, SuspendedPage
from services.tickets.tokens import ApiToken
from services.tickets.views import (
    PENDING_STATUSES,
    Action,
    DONE_STATUSES,
    MARK_END,
    MARK_START,
    TICKET_STATUSES,
    Applied,
    BounceOutcome,
    AttachmentInfo,
    Changed,
    CommentKind,
    DeliveryStatus,
    OutboundBuilder,
    OutboxRecord,
    Outcome,
    Participant,
    Recipient,
    Rejection,
    Reply,
    Role,
    SchemaState,
    SearchHit,
    SearchWhere,
    Threading,
    ThreadEntry,
    TicketChange,
    TicketDetail,
    TicketEvent,
    TicketStatus,
    TicketSummary,
)

__all__ = [
    "PENDING_STATUSES", "Action", "ApiToken", "InvalidToken", "Applied", "AttachmentInfo", "BounceOutcome", "BadDatabaseUrl", "CommentKind",
    "DeliveryStatus", "InvalidCommand", "InvalidDeliveryEvent", "InvalidReply", "OutboundBuilder",
    "OutboxRecord", "Outcome", "Participant", "Recipient", "Rejection", "Reply", "Role",
    "SchemaAhead", "SchemaNotCurrent", "SchemaState", "StoreUnavailable", "Threading", "ThreadEntry",
    "TicketDetail", "TicketStore", "TicketSummary", "UnknownTicket",
    "DONE_STATUSES", "TICKET_STATUSES", "Changed", "InvalidChange", "TicketChange", "TicketEvent",
    "TicketStatus", "VersionConflict", "BadCursor", "Count", "Page", "View",
    "MARK_END", "MARK_START", "SearchHit", "SearchWhere", "Expired", "SuspendedMail", "SuspendedPage",
]
