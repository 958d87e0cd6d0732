"""Agents' comments and their outgoing mail: the transactional outbox.

``add_reply`` writes the comment, its pre-assigned Message-ID and, for a
comment that is emailed, the encoded OutboundMail in ``outbox``, all on the
caller's transaction. ``relay_outbox`` hands unrelayed rows to a publisher
and marks them relayed only after it returned (the broker acknowledged). A
crash between the ack and that commit relays the rows again: the same
outbound id reaches the sender twice, and the mail may then be sent twice;
only that window can duplicate a mail. ``record_delivery`` applies the
sender's DeliveryEvents to the comment; a final status is never overwritten.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy.engine import Connection

from services.common.ids import SYNTHETIC_MESSAGE_ID_DOMAIN
from services.tickets import checks, workflow
from services.tickets import statements as st
from services.tickets.errors import InvalidCommand, InvalidDeliveryEvent, InvalidReply, UnknownTicket
from services.tickets.rows import build, inserted_id, recipient_json, thread_entry
from services.tickets.tables import EMAIL, MESSAGE_ID, OUTBOUND_ID, outbox
from services.tickets.views import (
    DeliveryStatus,
    OutboundBuilder,
    OutboxRecord,
    Recipient,
    Reply,
    Threading,
    TICKET_STATUSES,
    TicketChange,
    TicketStatus,
)

# An outgoing mail's References: the thread's first Message-ID and the newest
# ones, as RFC 5322 suggests for long threads.
_MAX_REFERENCES = 20


@dataclass(frozen=True)
class ReplyDraft:
    """The arguments of ``add_reply`` checked once, before the transaction."""

    author_email: str
    author_name: str | None
    text: str
    html: str | None
    send_email: bool
    internal: bool
    to: tuple[Recipient, ...]
    cc: tuple[Recipient, ...]
    signature_alias: str | None
    outbound_id: str | None
    message_id: str | None
    build_outbound: OutboundBuilder | None
    set_status: TicketStatus | None = None  # "send and set waiting": the status set in the same transaction
    expected_version: int | None = None  # with set_status: the version the agent saw

    @classmethod
    def parse(cls, **kw: Any) -> ReplyDraft:
        try:
            text = checks.text(kw["text"])
            if not text.strip():
                raise InvalidReply("a comment needs text")
            send_email = bool(kw["send_email"])
            internal = bool(kw["internal"])
            to = tuple(_recipient(r) for r in kw["to"])
            cc = tuple(_recipient(r) for r in kw["cc"])
            draft = cls(
                author_email=checks.bounded(kw["author_email"], "author_email", EMAIL).strip().lower(),
                author_name=checks.optional_text(kw["author_name"]),
                text=text,
                html=checks.optional_text(kw["html"]),
                send_email=send_email,
                internal=internal,
                to=to,
                cc=cc,
                signature_alias=checks.optional_text(kw["signature_alias"]),
                outbound_id=checks.optional_bounded(kw["outbound_id"], "outbound_id", OUTBOUND_ID),
                message_id=checks.optional_bounded(kw["message_id"], "message_id", MESSAGE_ID),
                build_outbound=kw["build_outbound"],
                set_status=kw.get("set_status"),
                expected_version=kw.get("expected_version"),
            )
        except InvalidReply:
            raise
        except (InvalidCommand, TypeError, ValueError) as exc:
            raise InvalidReply(str(exc)) from exc
        if send_email:
            if internal:
                raise InvalidReply("an internal comment is never emailed")
            if not to:
                raise InvalidReply("an emailed comment needs at least one To recipient")
            if draft.outbound_id is None or draft.message_id is None or draft.build_outbound is None:
                raise InvalidReply("an emailed comment needs outbound_id, message_id and build_outbound")
        elif to or cc:
            raise InvalidReply("recipients given for a comment that is not emailed")
        if draft.set_status is not None and draft.set_status not in TICKET_STATUSES:
            raise InvalidReply(f"status must be one of {', '.join(TICKET_STATUSES)}, not {draft.set_status!r}")
        return draft


def _recipient(value: Any) -> Recipient:
    if not isinstance(value, Recipient):
        raise InvalidReply(f"a recipient must be a Recipient, got {type(value).__name__}")
    email = checks.bounded(value.email, "recipient", EMAIL).strip().lower()
    if "@" not in email or any(ch.isspace() for ch in email):
        raise InvalidReply(f"{value.email!r} is not an email address")
    return Recipient(email, checks.optional_text(value.name), bool(value.member))


def add_reply(conn: Connection, key: str, d: ReplyDraft, created_at: datetime) -> Reply:
    t = conn.execute(st.TICKET_FOR_REPLY, {"key": key}).first()
    if t is None:
        raise UnknownTicket(key)
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    if d.send_email:
        # Ids deskmail made up for mail that had none mean nothing to anyone else's mail program.
        known = [m for m in conn.execute(st.TICKET_MESSAGE_IDS, {"ticket_id": t.id}).scalars()
                 if not m.endswith(SYNTHETIC_MESSAGE_ID_DOMAIN)]
        in_reply_to = known[-1] if known else None
        references = _references(known)
    status: DeliveryStatus | None = "queued" if d.send_email else None
    values = {
        "ticket_id": t.id,
        "kind": "mail_out" if d.send_email else "note",
        "author_email": d.author_email,
        "author_name": d.author_name,
        "author_verified": None,  # an agent's comment is no mail: nothing to prove
        "body": d.text,
        "html": d.html,
        "message_id": d.message_id if d.send_email else None,
        "created_at": created_at,
        "command_id": None,
        "internal": d.internal,
        "outbound_id": d.outbound_id if d.send_email else None,
        "to_addrs": [recipient_json(r) for r in d.to] if d.send_email else None,
        "cc_addrs": [recipient_json(r) for r in d.cc] if d.send_email else None,
        "signature_alias": d.signature_alias,
        "delivery_status": status,
        "delivery_detail": None,
        "delivery_updated_at": created_at if d.send_email else None,
    }
    comment_id = inserted_id(conn.execute(st.INSERT_COMMENT, values))
    if d.send_email:
        assert d.build_outbound is not None and d.message_id is not None
        conn.execute(
            st.INSERT_MESSAGE,
            {"queue": t.queue, "message_id": d.message_id, "ticket_id": t.id, "comment_id": comment_id},
        )
        payload = d.build_outbound(Threading(
            ticket_key=t.key, queue=t.queue, summary=t.summary, comment_id=comment_id,
            in_reply_to=in_reply_to, references=references, created_at=created_at,
        ))
        if not isinstance(payload, bytes) or not payload:
            raise InvalidReply("build_outbound must return the encoded OutboundMail")
        conn.execute(
            st.INSERT_OUTBOX,
            {"id": d.outbound_id, "ticket_id": t.id, "comment_id": comment_id, "payload": payload,
             "created_at": created_at, "relayed_at": None},
        )
        _add_recipients(conn, t.id, (*d.to, *d.cc))
    first_response_after = None
    if d.send_email:
        conn.execute(st.ANSWERED, {"ticket_id": t.id, "answered_at": created_at})
        if t.first_response_at is None:
            first_response_after = max(0.0, (created_at - t.created_at).total_seconds())
    if created_at > t.updated_at:
        conn.execute(st.TOUCH_TICKET, {"ticket_id": t.id, "new_updated_at": created_at})
    changed = None
    if d.set_status is not None:
        changed = workflow.change(conn, t.key, TicketChange(status=d.set_status), actor=d.author_email,
                                  expected_version=d.expected_version, now=created_at)
    return Reply(t.key, thread_entry({**values, "id": comment_id}), changed, first_response_after)


def _references(known: Sequence[str]) -> tuple[str, ...]:
    if len(known) <= _MAX_REFERENCES:
        return tuple(known)
    return (known[0], *known[len(known) - _MAX_REFERENCES + 1:])


def _add_recipients(conn: Connection, ticket_id: int, people: Sequence[Recipient]) -> None:
    known = set(conn.execute(st.KNOWN_PARTICIPANTS, {"ticket_id": ticket_id}).scalars())
    rows = []
    for person in people:
        if person.email not in known:
            known.add(person.email)
            rows.append({"ticket_id": ticket_id, "email": person.email, "name": person.name,
                         "member": person.member, "role": "participant"})
    if rows:
        conn.execute(st.INSERT_PARTICIPANT, rows)


def mark_relayed(conn: Connection, ids: list[str], now: datetime) -> int:
    return int(conn.execute(st.MARK_RELAYED, {"ids": ids, "relayed": now}).rowcount)


@dataclass(frozen=True)
class Delivery:
    """A DeliveryEvent checked once, before the transaction."""

    outbound_id: str
    status: DeliveryStatus
    detail: str | None  # the SMTP code and reply, or the connection error
    at: datetime

    @classmethod
    def parse(cls, event: Mapping[str, Any]) -> Delivery:
        """Raises InvalidDeliveryEvent for a missing field, an unknown status
        or a naive time."""
        try:
            outbound_id = checks.bounded(event["outbound_id"], "outbound_id", OUTBOUND_ID)
            status = event["status"]
            if status not in ("sent", "retrying", "failed"):
                raise InvalidDeliveryEvent(f"unknown delivery status {status!r}")
            at = event["time"]
            if not isinstance(at, datetime) or at.tzinfo is None:
                raise InvalidDeliveryEvent(f"time must be a timezone-aware datetime: {at!r}")
            parts = [str(event.get("smtp_code") or ""), checks.text(event.get("smtp_reply") or "")]
            detail = " ".join(p.strip() for p in parts if p.strip()) or None
        except InvalidDeliveryEvent:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidDeliveryEvent(f"malformed DeliveryEvent: {exc!r}") from exc
        return cls(outbound_id, status, detail, at)


def pending_outbox(conn: Connection, limit: int) -> list[OutboxRecord]:
    rows = conn.execute(st.PENDING_OUTBOX.limit(limit)).all()
    return [build(OutboxRecord, r) for r in rows]


def relay_outbox(conn: Connection, publish: Callable[[Sequence[OutboxRecord]], None], limit: int) -> int:
    """Publish and mark up to ``limit`` rows on ``conn``'s write transaction,
    which keeps them locked while ``publish`` runs (see ``TicketStore.relay_outbox``)."""
    rows = conn.execute(st.PENDING_OUTBOX.limit(limit).with_for_update(of=outbox, skip_locked=True)).all()
    if not rows:
        return 0
    records = [build(OutboxRecord, r) for r in rows]
    publish(records)
    return mark_relayed(conn, [r.id for r in records], datetime.now(timezone.utc))


def record_delivery(conn: Connection, d: Delivery) -> bool:
    """Apply one DeliveryEvent; True when the comment's delivery state changed."""
    result = conn.execute(
        st.RECORD_DELIVERY,
        {"event_outbound_id": d.outbound_id, "new_status": d.status,
         "new_detail": d.detail, "new_updated_at": d.at},
    )
    return bool(result.rowcount == 1)
