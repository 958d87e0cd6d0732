"""An agent's reply on a ticket: the one place it is decided and stored.

The ticket page, the JSON API and ``deskmail tickets reply`` all call
``post_reply``. ``plan_reply`` is its pure core (config + ticket + request in,
a ``ReplyPlan`` or a ``ReplyError`` out): who may reply (organization members),
which mailbox sends (the one the ticket's mail arrived at, else the queue's
first mailbox with SMTP), the From address (``smtp.address``), the signature
(by alias, default the mailbox's first), the recipients (by default the ticket's
external participants) and whether the queue may mail them at all
(``allow_outbound_mail`` off: nobody outside the organization). A refused reply
stores and sends nothing.

Every value that goes into a header of the mail (each recipient's address and
name, the signature alias, the subject, the From address) must be one line:
a line break of any kind (``mailrules.check_header_text``) refuses the reply
(``ReplyInvalid``) before anything is stored, and typed recipient lists are
checked before they are split, so a U+2028 cannot turn one recipient into two.
The record carries only In-Reply-To and References ids that are msg-ids
(``mailrules.is_msg_id``), at most ``mailrules.MAX_REFERENCES`` of them.

``post_reply`` then builds the OutboundMail record (subject via
``subject_for``, pre-assigned Message-ID via ``new_message_id``) and hands it to
``TicketStore.add_reply``, which writes the comment and its outbox row in one
transaction; the outbox relay of the api process sends it to the broker. A
reply may set the ticket's status in the same transaction ("send and set
waiting"), checked against the version the agent saw: a concurrent change
refuses the whole reply (``ReplyConflict``, with the changes the agent missed).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any

from services.api.changes import unseen_events
from services.common.codec import CodecError, codec
from services.common.config import Config, Mailbox, Member, Queue, Signature
from services.common.config import message_id_key
from services.common.mailrules import (
    HeaderTextError,
    UnknownSignature,
    blocked_recipients,
    check_header_text,
    is_msg_id,
    new_message_id,
    signature_for,
    subject_for,
    trim_references,
)
from services.tickets import (
    InvalidReply,
    OutboundBuilder,
    Recipient,
    Reply,
    Threading,
    TicketDetail,
    TicketEvent,
    TicketStatus,
    TicketStore,
    UnknownTicket,
    VersionConflict,
)

_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")


class ReplyError(Exception):
    """The reply was refused; nothing was stored or sent. ``status`` is the HTTP
    status the API answers with; the message is meant for the agent."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class TicketNotFound(ReplyError):
    status = 404


class ReplyForbidden(ReplyError):
    """The author may not reply, or the queue may not mail these recipients."""

    status = 403


class ReplyInvalid(ReplyError):
    """The request itself is malformed: no text, a bad address, no recipients."""

    status = 422


class ReplyConflict(ReplyError):
    """The reply would set a status, but the ticket changed since the agent read it
    (now at version ``current``; ``events`` are the changes they missed)."""

    status = 409

    def __init__(self, message: str, current: int, events: tuple[TicketEvent, ...]):
        super().__init__(message)
        self.current = current
        self.events = events


@dataclass(frozen=True)
class ReplyRequest:
    ticket_key: str
    author_email: str
    text: str
    to: tuple[str, ...] | None = None  # None: the ticket's external participants
    cc: tuple[str, ...] = ()
    signature: str | None = None  # alias; None: the sending mailbox's first
    internal: bool = False  # an internal comment is never emailed
    set_status: TicketStatus | None = None  # "send and set waiting": the status set with the reply
    expected_version: int | None = None  # with set_status: the version the agent saw (None: no check)


@dataclass(frozen=True)
class ReplyPlan:
    """What ``post_reply`` will store and send; the mail fields are None for an
    internal comment."""

    ticket_key: str
    queue: str
    author: Member
    text: str
    send_email: bool
    mailbox: Mailbox | None = None
    from_address: str | None = None
    alias: str | None = None
    signature: Signature | None = None
    to: tuple[Recipient, ...] = ()
    cc: tuple[Recipient, ...] = ()
    subject: str | None = None


@dataclass(frozen=True)
class ReplyForm:
    """Defaults for the reply form of the ticket page."""

    to: tuple[Recipient, ...]
    mailbox: Mailbox | None  # None: the queue cannot send mail
    signatures: tuple[Signature, ...]
    send_email: bool  # the "send as email" default
    outbound_allowed: bool  # the queue's allow_outbound_mail


# ------------------------------------------------------------------ pure core


def agent(config: Config, email: str | None) -> Member:
    """The organization member replying; ReplyForbidden for anyone else."""
    member = config.member(email.strip()) if email and email.strip() else None
    if member is None:
        who = repr(email.strip()) if email and email.strip() else "nobody"
        raise ReplyForbidden(f"{who} is not an organization member: only members may reply")
    return member


def sending_mailbox(config: Config, queue: Queue, received_at: str | None) -> Mailbox | None:
    """The mailbox whose SMTP settings send the queue's replies for a ticket whose
    mail arrived at ``received_at``: that one when it has SMTP, else the queue's
    first mailbox with SMTP, else None."""
    if received_at is not None:
        mailbox = config.mailbox(received_at)
        if mailbox is not None and mailbox.queue == queue.key and mailbox.smtp is not None:
            return mailbox
    return next((m for m in queue.mailboxes if m.smtp is not None), None)


def default_recipients(config: Config, ticket: TicketDetail) -> tuple[Recipient, ...]:
    """The ticket's external people: its author if external, then every external
    participant, each once, without deskmail's own addresses."""
    own = config.own_addresses
    people = [(ticket.author_email.strip().lower(), ticket.author_name)]
    people += [(p.email, p.name) for p in ticket.participants]
    seen: set[str] = set()
    out: list[Recipient] = []
    for email, name in people:
        if not email or email in seen or email in own or config.member(email) is not None:
            continue
        seen.add(email)
        out.append(Recipient(email, name))
    return tuple(out)


def parse_addresses(values: Iterable[str], field: str = "To") -> tuple[Recipient, ...]:
    """Addresses as typed by an agent: ``a@x.org``, ``Ann <a@x.org>``, several
    per value separated by commas or semicolons. ReplyInvalid names a bad one,
    and a value with a line break (``field`` names it in the message)."""
    out: list[Recipient] = []
    for value in values:
        # Before splitting: getaddresses() ends an address at some line breaks
        # (U+2028, NEL), which would make one typed recipient two.
        _one_line(field, value)
        for name, email in getaddresses([value.replace(";", ",")]):
            if not name and not email:
                continue
            if not _EMAIL.match(email):
                shown = f"{name} <{email}>" if name else email
                raise ReplyInvalid(f"{shown.strip() or value.strip()!r} is not an email address")
            out.append(Recipient(email.lower(), name.strip() or None))
    return tuple(out)


def plan_reply(
    config: Config, ticket: TicketDetail, received_at: str | None, request: ReplyRequest
) -> ReplyPlan:
    """Decide a reply (see the module docstring). Raises ReplyError."""
    author = agent(config, request.author_email)
    text = request.text.replace("\r\n", "\n")
    if not text.strip():
        raise ReplyInvalid("the reply has no text")
    queue = config.queue(ticket.queue)
    if queue is None:
        raise ReplyError(f"queue {ticket.queue} of {ticket.key} is no longer configured")
    if request.internal:
        return ReplyPlan(ticket.key, queue.key, author, text, send_email=False)
    mailbox = sending_mailbox(config, queue, received_at)
    if mailbox is None or mailbox.smtp is None:
        raise ReplyError(
            f"Queue {queue.key} has no mailbox with SMTP settings, so it cannot send mail; "
            "post an internal comment instead, or add `smtp:` to one of its mailboxes"
        )
    to = default_recipients(config, ticket) if request.to is None else parse_addresses(request.to)
    to = _unique(to)
    cc = tuple(r for r in _unique(parse_addresses(request.cc, "Cc")) if r.email not in {t.email for t in to})
    if not to:
        raise ReplyInvalid(f"the reply has no recipients: {ticket.key} has no external participant, name one in To")
    own = config.own_addresses
    looping = [r.email for r in (*to, *cc) if r.email in own]
    if looping:
        raise ReplyInvalid(f"{', '.join(looping)} is deskmail's own address and cannot receive a reply")
    to = tuple(_with_member_flag(config, r) for r in to)
    cc = tuple(_with_member_flag(config, r) for r in cc)
    external = blocked_recipients(config, mailbox, [r.email for r in (*to, *cc)])
    if external:
        verb = "is" if len(external) == 1 else "are"
        raise ReplyForbidden(
            f"Queue {queue.key} does not allow sending mail outside the organization; "
            f"{', '.join(external)} {verb} external"
        )
    if request.signature:
        _one_line("the signature", request.signature)
    signature = _signature(mailbox, request.signature)
    plan = ReplyPlan(
        ticket_key=ticket.key,
        queue=queue.key,
        author=author,
        text=text,
        send_email=True,
        mailbox=mailbox,
        from_address=mailbox.smtp.address,
        alias=signature.alias if signature else queue.name,
        signature=signature,
        to=to,
        cc=cc,
        subject=subject_for(ticket.key, ticket.summary),
    )
    _check_headers(plan)
    return plan


def _check_headers(plan: ReplyPlan) -> None:
    """ReplyInvalid unless every header value of the planned mail is one line.

    Typed recipients were checked when parsed; this catches the rest, from the
    config (alias, From address) and the ticket (default recipients, subject).
    """
    for field, people in (("To", plan.to), ("Cc", plan.cc)):
        for person in people:
            _one_line(f"the {field} address", person.email)
            _one_line(f"the {field} name", person.name or "")
    _one_line("the From address", plan.from_address or "")
    _one_line("the alias", plan.alias or "")
    _one_line("the subject", plan.subject or "")


def _one_line(field: str, value: str) -> None:
    try:
        check_header_text(field, value)
    except HeaderTextError as exc:
        raise ReplyInvalid(str(exc)) from None


def reply_form(config: Config, ticket: TicketDetail, received_at: str | None) -> ReplyForm:
    queue = config.queue(ticket.queue)
    mailbox = sending_mailbox(config, queue, received_at) if queue is not None else None
    return ReplyForm(
        to=default_recipients(config, ticket),
        mailbox=mailbox,
        signatures=mailbox.signatures if mailbox is not None else (),
        send_email=mailbox is not None,
        outbound_allowed=bool(queue and queue.allow_outbound_mail),
    )


def outbound_record(
    plan: ReplyPlan, outbound_id: str, message_id: str, threading: Threading
) -> dict[str, Any]:
    """The OutboundMail record (as fastavro encodes it) of a planned reply."""
    assert plan.send_email and plan.mailbox is not None and plan.from_address and plan.alias and plan.subject
    return {
        "id": outbound_id,
        "kind": "reply",
        "ticket": threading.ticket_key,
        "comment_id": threading.comment_id,
        "queue": threading.queue,
        "mailbox": plan.mailbox.address,
        "from_address": plan.from_address,
        "alias": plan.alias,
        "signature": (plan.signature.text or None) if plan.signature else None,
        "to": [{"email": r.email, "name": r.name} for r in plan.to],
        "cc": [{"email": r.email, "name": r.name} for r in plan.cc],
        "subject": plan.subject,
        "text": plan.text,
        "html": None,
        "message_id": message_id,
        # The router keeps only msg-ids; an id stored before it did would make the
        # sender refuse the mail, so such ids are left out here instead.
        "in_reply_to": threading.in_reply_to if threading.in_reply_to and is_msg_id(threading.in_reply_to) else None,
        "references": trim_references([r for r in threading.references if is_msg_id(r)]),
        "attachments": [],
        "created_at": threading.created_at,
    }


def _signature(mailbox: Mailbox, alias: str | None) -> Signature | None:
    try:
        return signature_for(mailbox, alias)
    except UnknownSignature as exc:
        raise ReplyError(str(exc)) from None


def _unique(people: Sequence[Recipient]) -> tuple[Recipient, ...]:
    seen: set[str] = set()
    out = []
    for person in people:
        if person.email not in seen:
            seen.add(person.email)
            out.append(person)
    return tuple(out)


def _with_member_flag(config: Config, person: Recipient) -> Recipient:
    return Recipient(person.email, person.name, config.member(person.email) is not None)


# ------------------------------------------------------------------ with the store


def new_outbound_id() -> str:
    return f"out-{uuid.uuid4().hex}"


def post_reply(
    config: Config,
    store: TicketStore,
    request: ReplyRequest,
    *,
    make_id: Callable[[], str] = new_outbound_id,
) -> Reply:
    """Plan and store a reply: the comment and, for a mail, its outbox row, in
    one transaction. Raises ReplyError (TicketNotFound, ReplyForbidden,
    ReplyInvalid); nothing is stored then."""
    ticket = store.get_ticket(request.ticket_key)
    if ticket is None:
        raise TicketNotFound(f"no ticket {request.ticket_key}")
    plan = plan_reply(config, ticket, store.ticket_mailbox(ticket.key), request)
    outbound_id = message_id = None
    build: OutboundBuilder | None = None
    if plan.send_email:
        assert plan.from_address is not None
        outbound_id = make_id()
        message_id = new_message_id(outbound_id, plan.from_address, key=message_id_key(config), ticket=ticket.key)
        encoder = codec("OutboundMail")

        def encode(threading: Threading) -> bytes:
            assert outbound_id is not None and message_id is not None
            return encoder.encode(outbound_record(plan, outbound_id, message_id, threading))

        build = encode

    try:
        return store.add_reply(
            ticket.key,
            author_email=plan.author.email,
            author_name=plan.author.name,
            text=plan.text,
            send_email=plan.send_email,
            internal=not plan.send_email,
            to=plan.to,
            cc=plan.cc,
            signature_alias=plan.signature.alias if plan.signature else None,
            outbound_id=outbound_id,
            message_id=message_id,
            build_outbound=build,
            set_status=request.set_status,
            expected_version=request.expected_version,
        )
    except UnknownTicket:
        raise TicketNotFound(f"no ticket {request.ticket_key}") from None
    except VersionConflict as exc:
        now = store.get_ticket(ticket.key)
        missed = unseen_events(now, exc.expected) if now is not None else ()
        raise ReplyConflict(str(exc), exc.current, missed) from None
    except (InvalidReply, CodecError) as exc:
        raise ReplyInvalid(str(exc)) from exc
