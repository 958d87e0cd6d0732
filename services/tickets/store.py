"""``TicketStore``: the one object through which deskmail reads and writes tickets.

A thin facade: it owns the engine and the transactions, and hands each
connection to the module that holds the SQL of one concept:

- ``commands`` checks a TicketCommand, ``apply`` applies it (idempotently:
  a command, IMAP message or Message-ID seen before answers ``duplicate``);
- ``queries`` reads tickets and rejections for the page, the API and the CLI;
- ``suspended`` lists, releases and expires rejections (suspended mail);
- ``outgoing`` stores agents' replies with their outbox rows, relays the
  outbox and records delivery events;
- ``engine`` builds the engine, migrates and checks the schema.

Errors: a malformed command raises ``InvalidCommand`` (dead-letter it).
Database errors propagate unchanged; ``sqlalchemy.exc.OperationalError``
(connection lost, database locked) is transient and left to the caller's retry
policy. A unique-constraint race with a concurrent ticketer is handled here by
re-running the command once, which then sees the other side's effect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import StaticPool

from services.tickets import engine as db
from services.tickets import listing, outgoing, queries, ratelimit, search, suspended, tokens, workflow
from services.tickets.apply import ClosedReply, apply_command
from services.tickets.batch import Batch
from services.tickets.checks import check_page
from services.tickets import pending
from services.tickets.commands import Command
from services.tickets.errors import InvalidReply
from services.tickets.listing import Count, Page, View
from services.tickets.outgoing import Delivery, ReplyDraft
from services.tickets.suspended import Expired, SuspendedMail, SuspendedPage
from services.tickets.views import (
    Applied,
    Changed,
    OutboundBuilder,
    OutboxRecord,
    Recipient,
    Rejection,
    Reply,
    SchemaState,
    SearchHit,
    TicketChange,
    TicketDetail,
    TicketStatus,
    TicketSummary,
)


class TicketStore:
    """Tickets DB on SQLite (``sqlite:///path``) or PostgreSQL
    (``postgresql+psycopg://...``). Thread-safe: one engine, pooled connections.
    Several stores (processes) may share one database.

    Construction does not connect; it raises ``BadDatabaseUrl`` for a URL that
    cannot be parsed, an unsupported backend or a driver that is not installed.
    """

    def __init__(self, url: str, *, sqlite_busy_timeout_s: float = 30.0) -> None:
        self._url = db.parse_url(url)
        self._engine = db.build_engine(self._url, sqlite_busy_timeout_s=sqlite_busy_timeout_s)
        # Searches read their two indexes side by side (search.Beside), except
        # in an in-memory database: its one shared connection is not for two
        # threads at once.
        self._search_threads: ThreadPoolExecutor | None = (
            None if isinstance(self._engine.pool, StaticPool) else ThreadPoolExecutor(4, thread_name_prefix="deskmail-search")
        )

    @property
    def engine(self) -> Engine:
        return self._engine

    def close(self) -> None:
        if self._search_threads is not None:
            self._search_threads.shutdown()
        self._engine.dispose()

    def __enter__(self) -> TicketStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the schema and the connection ---------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision. Safe to call from several
        processes at once: the upgrade runs in one transaction under a lock
        (PostgreSQL advisory lock; SQLite's write lock). Raises
        ``StoreUnavailable`` when the database cannot be reached, and
        ``SchemaAhead`` (changing nothing) when a newer deskmail migrated it."""
        db.ping(self._engine, self._url)
        db.migrate(self._engine, self._url)

    def ping(self) -> None:
        """Connect once; raises ``StoreUnavailable`` (one line, no password) when
        the database cannot be reached: nothing listening, unknown host, refused
        credentials, an SQLite file that cannot be opened."""
        db.ping(self._engine, self._url)

    def schema_state(self) -> SchemaState:
        """The schema's revision against this code's migrations, read from
        Alembic's version table without migrating: ``current``, ``missing``
        (never migrated), ``behind`` (migrate) or ``ahead`` (migrated by a newer
        deskmail). Raises ``StoreUnavailable``."""
        return db.schema_revisions(self._engine, self._url)[0]

    def schema_revisions(self) -> tuple[SchemaState, str | None, str]:
        """``schema_state()`` with the database's revision (None when it has
        none) and the newest revision this code knows. Raises ``StoreUnavailable``."""
        return db.schema_revisions(self._engine, self._url)

    def require_current(self) -> None:
        """Raises ``SchemaNotCurrent`` (its message tells the operator what to
        do) unless ``schema_state()`` is ``current``: ``SchemaAhead`` when it is
        ``ahead``; ``StoreUnavailable`` when the database cannot be reached.
        Never migrates."""
        db.require_current(self._engine, self._url)

    # -- applying commands ---------------------------------------------------

    def apply(self, cmd: Mapping[str, Any], *, closed_reply: ClosedReply = "follow_up",
              limits: ratelimit.Limits = ratelimit.NONE, hold: pending.Hold | None = None) -> Applied:
        """Apply one TicketCommand (the dict fastavro decodes) in one transaction:
        tickets, comments, participants and attachments (and, for a bounce of
        mail deskmail sent, that comment's ``bounced`` status), or nothing for a
        duplicate. ``closed_reply`` is the queue's rule for mail on a closed
        ticket (``follow_up``: a new linked ticket; ``reopen``); ``limits``
        the rate limits on mail from outside; ``hold``: a reply to mail not known
        yet is held back (``deferred``, services/tickets/pending.py) instead of
        opening a ticket now. Raises InvalidCommand."""
        command = Command.parse(cmd)
        try:
            return self._apply_once(command, closed_reply, limits, hold)
        except IntegrityError:
            # A concurrent ticketer committed the same command, mail or participant
            # first. Our transaction was rolled back; the re-run sees its effect.
            return self._apply_once(command, closed_reply, limits, hold)

    def _apply_once(self, c: Command, closed_reply: ClosedReply, limits: ratelimit.Limits,
                    hold: pending.Hold | None) -> Applied:
        with db.write(self._engine) as conn:
            return apply_command(conn, c, closed_reply, limits, hold)

    @contextmanager
    def batch(self) -> Iterator[Batch]:
        """One write transaction for many commands and delivery events, each in a
        savepoint of its own (``services/tickets/batch.py``): committed when the
        block returns, rolled back when it raises."""
        with db.write(self._engine) as conn:
            yield Batch(conn)

    def due_replies(self, now: datetime | None = None, limit: int = 100) -> list[bytes]:
        """Held-back replies whose wait is over (TicketCommand records), oldest first:
        apply each without a hold."""
        with self._engine.connect() as conn:
            return pending.due(conn, now or datetime.now(timezone.utc), limit)

    def prune_arrivals(self, before: datetime) -> int:
        """Forget the rate limits' arrivals older than ``before``; returns how many."""
        with db.write(self._engine) as conn:
            return ratelimit.prune(conn, before)

    # -- the workflow: status, assignee, type, components --------------------

    def change_ticket(self, key: str, change: TicketChange, *, actor: str, expected_version: int | None,
                      now: datetime | None = None) -> Changed:
        """Change a ticket's fields in one transaction, each change an event by
        ``actor``. ``expected_version`` is the version the agent saw (None: no
        check). Raises UnknownTicket, VersionConflict, InvalidChange."""
        with db.write(self._engine) as conn:
            return workflow.change(conn, key, change, actor=actor, expected_version=expected_version,
                                   now=now or datetime.now(timezone.utc))

    def auto_close(self, queue: str, days: int, now: datetime | None = None, limit: int = 500) -> list[str]:
        """Close the queue's tickets resolved more than ``days`` ago (up to ``limit``
        per call, one transaction); returns their keys."""
        with db.write(self._engine) as conn:
            return workflow.auto_close(conn, queue, days, now or datetime.now(timezone.utc), limit)

    def list_view(self, view: View, limit: int = 50, cursor: str | None = None) -> Page:
        """One page of a queue view (filters, sort, keyset cursor); raises BadCursor."""
        with self._engine.connect() as conn:
            return listing.page(conn, view, limit, cursor)

    def count_view(self, view: View) -> Count:
        """How many tickets a view holds (exact, or a lower bound past listing.COUNT_CAP)."""
        with self._engine.connect() as conn:
            return listing.count(conn, view)

    def ticket_counts(self, queues: Sequence[str] | None = None) -> dict[tuple[str, str, str], int]:
        """Tickets per (queue, status, assignee or '' for unassigned), read from the
        counts kept with every change: cheap at any number of tickets."""
        with self._engine.connect() as conn:
            return workflow.counts(conn, queues)

    # -- queries for the CLI and the API -------------------------------------

    def count_tickets(self, queue: str | None = None) -> int:
        with self._engine.connect() as conn:
            return queries.count_tickets(conn, queue)

    def list_tickets(
        self, queue: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[TicketSummary]:
        """Newest first (by mail time, then by insertion)."""
        check_page(limit, offset)
        with self._engine.connect() as conn:
            return queries.list_tickets(conn, queue, limit, offset)

    def search(self, query: str, queues: Sequence[str], limit: int = 50, offset: int = 0) -> list[SearchHit]:
        """Tickets in ``queues`` whose summary, description or comments match
        ``query`` (any text: no input is a syntax error), best first,
        one hit per ticket with a snippet of its best match. Only the newest
        matches of a very common word are ranked: see ``services.tickets.search``."""
        check_page(limit, offset)
        with self._engine.connect() as conn:
            beside = search.Beside(self._search_threads, self._engine.connect) if self._search_threads else None
            return search.search(conn, query, queues, limit, offset, beside)

    def get_ticket(self, key: str) -> TicketDetail | None:
        with self._engine.connect() as conn:
            return queries.get_ticket(conn, key)

    def list_rejections(
        self, mailbox: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[Rejection]:
        """Newest first (by mail time, then by insertion)."""
        check_page(limit, offset)
        with self._engine.connect() as conn:
            return queries.list_rejections(conn, mailbox, limit, offset)

    # -- suspended mail: rejections, listed, released, expired ----------------

    def list_suspended(self, queues: Sequence[str] | None = None, reason_code: str | None = None,
                       limit: int = 50, cursor: str | None = None) -> SuspendedPage:
        """Rejections newest first (by mail time), released ones included, in
        ``queues`` (None: all, rows without a queue too), of one reason code or
        any; a keyset page after ``cursor``. Raises BadCursor."""
        with self._engine.connect() as conn:
            return suspended.page(conn, queues, reason_code, limit, cursor)

    def get_suspended(self, rejection_id: int) -> SuspendedMail | None:
        with self._engine.connect() as conn:
            return suspended.get(conn, rejection_id)

    def mark_released(self, command_id: str, ticket_key: str, by: str | None,
                      now: datetime | None = None) -> bool:
        """Mark the rejection of ``command_id`` released as ``ticket_key`` (the
        ticketer does this itself when it applies the release); False when it
        was released already or there is no such rejection."""
        with db.write(self._engine) as conn:
            return suspended.mark_released(conn, command_id, ticket_key, by, now or datetime.now(timezone.utc))

    def keep_original(self, command_id: str, raw_ref: str) -> bool:
        """Name ``raw_ref`` as the original of the rejection ``command_id`` if it has
        none; False when it had one or there is no such rejection."""
        with db.write(self._engine) as conn:
            return suspended.keep_original(conn, command_id, raw_ref)

    def lacks_original(self, command_id: str) -> bool:
        """True when ``command_id`` was set aside without its original mail."""
        with self._engine.connect() as conn:
            return suspended.lacks_original(conn, command_id)

    def suspended_counts(self, queue: str | None = None) -> dict[tuple[str, str], int]:
        """Rejections not released, per (queue or '' for none, reason code), of
        ``queue`` or of all."""
        with self._engine.connect() as conn:
            return suspended.counts(conn, queue)

    def expire_suspended(self, before: datetime, limit: int = 500) -> Expired:
        """Delete up to ``limit`` rejections of mail received before ``before`` (one
        transaction); returns how many, and the blob references of their raw mail
        that no remaining rejection refers to (the caller deletes those blobs)."""
        with db.write(self._engine) as conn:
            return suspended.expire(conn, before, limit)

    def count_by_queue(self) -> dict[str, int]:
        """Tickets per queue (queues without tickets are absent)."""
        with self._engine.connect() as conn:
            return queries.count_by_queue(conn)

    def ticket_mailbox(self, key: str) -> str | None:
        """The configured mailbox the ticket's opening mail arrived at (None for
        tickets created before that was recorded, or for unknown keys)."""
        with self._engine.connect() as conn:
            return queries.ticket_mailbox(conn, key)

    # -- agents' comments and outgoing mail ----------------------------------

    def add_reply(
        self,
        ticket_key: str,
        *,
        author_email: str,
        author_name: str | None,
        text: str,
        html: str | None = None,
        send_email: bool,
        internal: bool = False,
        to: Sequence[Recipient] = (),
        cc: Sequence[Recipient] = (),
        signature_alias: str | None = None,
        outbound_id: str | None = None,
        message_id: str | None = None,
        build_outbound: OutboundBuilder | None = None,
        now: datetime | None = None,
        set_status: TicketStatus | None = None,
        expected_version: int | None = None,
    ) -> Reply:
        """Store an agent's comment on ``ticket_key`` in one transaction.

        With ``send_email`` the comment is an outgoing mail (kind ``mail_out``,
        status ``queued``): ``outbound_id``, the pre-assigned ``message_id``
        (without brackets) and ``build_outbound`` are required, and at least one
        ``to`` recipient. The Message-ID is registered for the ticket's queue, so
        the customer's answer threads back by In-Reply-To; ``build_outbound``
        gets the comment id and the threading headers (In-Reply-To: the thread's
        newest known Message-ID; References: its first and newest ones) and
        returns the encoded OutboundMail, written to ``outbox`` in the same
        transaction. Recipients not yet on the ticket become participants.
        Without ``send_email`` the comment is a note and nothing is mailed.

        An emailed comment answers the customer (``awaiting_reply`` ends) and the
        first one is the ticket's first response. ``set_status`` changes the
        status in the same transaction ("send and set waiting"), checked
        against ``expected_version`` like ``change_ticket``.

        Authorization (who may mail whom) is the caller's job. Raises
        UnknownTicket, InvalidReply, VersionConflict; whatever ``build_outbound``
        raises rolls the comment back and propagates.
        """
        draft = ReplyDraft.parse(
            author_email=author_email, author_name=author_name, text=text, html=html,
            send_email=send_email, internal=internal, to=to, cc=cc,
            signature_alias=signature_alias, outbound_id=outbound_id, message_id=message_id,
            build_outbound=build_outbound, set_status=set_status, expected_version=expected_version,
        )
        created_at = now or datetime.now(timezone.utc)
        if created_at.tzinfo is None:
            raise InvalidReply(f"now must be timezone-aware: {created_at!r}")
        try:
            with db.write(self._engine) as conn:
                return outgoing.add_reply(conn, ticket_key, draft, created_at)
        except IntegrityError as exc:
            # Unique outbound id and (queue, Message-ID): a caller reusing ids.
            raise InvalidReply(
                f"outbound id {outbound_id!r} or Message-ID {message_id!r} is already in use"
            ) from exc

    def pending_outbox(self, limit: int = 100) -> list[OutboxRecord]:
        """Outgoing mail not yet relayed to the broker, oldest first."""
        check_page(limit, 0)
        with self._engine.connect() as conn:
            return outgoing.pending_outbox(conn, limit)

    def mark_relayed(self, ids: Iterable[str], now: datetime | None = None) -> int:
        """Mark outbox rows relayed (call only after the broker's ack); returns
        how many were still pending. Ids already relayed or unknown are ignored."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            return 0
        with db.write(self._engine) as conn:
            return outgoing.mark_relayed(conn, wanted, now or datetime.now(timezone.utc))

    def relay_outbox(self, publish: Callable[[Sequence[OutboxRecord]], None], limit: int = 100) -> int:
        """Hand up to ``limit`` unrelayed rows, oldest first, to ``publish`` and
        mark them relayed once it returns; returns how many were relayed.

        ``publish`` must return only after the broker acknowledged every record
        (and raise otherwise: then nothing is marked and the error propagates).
        The rows stay locked while it runs (PostgreSQL: ``FOR UPDATE SKIP
        LOCKED``, so concurrent relays take disjoint rows; SQLite: the database
        write lock), so two relays never publish the same row. A crash after
        the broker's ack and before the commit relays the rows again: the one
        window in which a mail may be sent twice.
        """
        check_page(limit, 0)
        with db.write(self._engine) as conn:
            return outgoing.relay_outbox(conn, publish, limit)

    def record_delivery(self, event: Mapping[str, Any]) -> bool:
        """Apply one DeliveryEvent (the dict fastavro decodes) to its comment.

        Returns True when the comment's delivery state changed. Returns False
        for an outbound id no comment has (a test mail, another deployment's
        mail) and for an event arriving after a final status: ``sent`` and
        ``failed`` are never overwritten, so a late ``retrying`` or a
        redelivered event changes nothing. Raises InvalidDeliveryEvent.
        """
        delivery = Delivery.parse(event)
        with db.write(self._engine) as conn:
            return outgoing.record_delivery(conn, delivery)

    # ------------------------------------------------------------ API tokens

    def create_token(self, member_email: str, name: str, expires_at: datetime | None = None,
                     now: datetime | None = None) -> tuple[int, str]:
        """A new API token for ``member_email``: (id, the token). Only its hash is stored;
        the token cannot be shown again. Raises InvalidToken."""
        with db.write(self._engine) as conn:
            return tokens.create(conn, member_email, name, expires_at, now or datetime.now(timezone.utc))

    def token_member(self, token: str, now: datetime | None = None) -> str | None:
        """The member email of a valid token (not revoked, not expired), else None."""
        with db.write(self._engine) as conn:
            return tokens.find(conn, token, now or datetime.now(timezone.utc))

    def list_tokens(self) -> list[tokens.ApiToken]:
        with self._engine.connect() as conn:
            return tokens.list_all(conn)

    def revoke_token(self, token_id: int, now: datetime | None = None) -> bool:
        """Revoke at once; False when there is no such active token."""
        with db.write(self._engine) as conn:
            return tokens.revoke(conn, token_id, now or datetime.now(timezone.utc))
