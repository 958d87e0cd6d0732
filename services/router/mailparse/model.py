"""What the parser hands the router: a ParsedMail, its addresses and attachments, and MalformedMail."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

__all__ = ["Address", "Attachment", "Dsn", "MalformedMail", "ParsedMail"]


class MalformedMail(Exception):
    """The mail cannot be used at all; ``str(exc)`` is the reason for the dead-letter record."""


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox: ``email`` lower-cased for matching, ``name`` the decoded display name."""

    email: str
    name: str | None = None

    @property
    def display(self) -> str:
        """``Name <email>``, or the bare address, for people to read."""
        return f"{self.name} <{self.email}>" if self.name else self.email


@dataclass(frozen=True, slots=True)
class Attachment:
    """A part that is not the body: files, inline images, attached mails."""

    filename: str  # decoded, without directory parts; made up when the mail names none
    content_type: str  # lower case, e.g. "application/pdf"
    payload: bytes = field(repr=False)  # transfer encoding removed
    size: int  # len(payload)
    sha256: str  # hex digest of payload
    content_id: str | None  # without angle brackets; how HTML refers to an inline image
    inline: bool  # meant to be shown within the body (inline disposition, or a Content-ID)


@dataclass(frozen=True, slots=True)
class Dsn:
    """What a delivery status notification says about the mail it reports on
    (services/router/mailparse/dsn.py). Every field comes from the bounce, so
    from anyone: bounded, one line each, and only a hint until the ticketer
    finds the mail it names among the mail deskmail sent."""

    original_message_id: str | None  # the reported mail's Message-ID, without brackets (a msg-id)
    original_ticket: str | None  # the X-Deskmail-Ticket header of the reported mail, if it was quoted
    original_subject: str | None  # its Subject, decoded, one line
    recipients: tuple[str, ...]  # the failed recipients, lower case, at most five
    status: str | None  # the enhanced status code, e.g. "5.1.1"
    diagnostic: str | None  # the remote server's reply or the first explanatory sentence, one line
    permanent: bool  # a failure (5.x.x, Action: failed); False for a delay warning (4.x.x, Action: delayed)


@dataclass(frozen=True, slots=True)
class ParsedMail:
    """What the router needs from one mail. Strings are decoded text, NUL-free."""

    from_addr: Address  # From, else Sender, Reply-To or Return-Path (noted in defects)
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    subject: str  # decoded, one line, whitespace runs collapsed, at most 255 characters; "" when missing
    text: str  # plain-text body, "\n" line ends; HTML converted when there is no text part
    html: str | None  # the HTML body as sent, if any
    message_id: str | None  # without angle brackets; None when missing or not a msg-id (see msgids)
    in_reply_to: str | None  # first msg-id of In-Reply-To
    references: tuple[str, ...]  # msg-ids in order, without duplicates, at most 50
    date: datetime | None  # timezone-aware; None when missing or unparseable
    attachments: tuple[Attachment, ...]
    auto_submitted: bool  # written by a machine (classify.is_auto_submitted)
    bounce: bool  # a delivery status notification (classify.is_bounce)
    suppress_auto_reply: bool  # must not be answered automatically
    defects: tuple[str, ...]  # what was wrong with the mail and was worked around
    from_header: bool  # from_addr was read from From itself, not from a fallback header
    # The Authentication-Results and Received fields, top-down as (lower-case name,
    # unfolded value): the trace services/router/senderauth.py reads.
    trace: tuple[tuple[str, str], ...]
    # The codec the body text was decoded with where its declared charset was
    # missing, unknown, invalid for its bytes or the wrong Cyrillic code page
    # (services/router/mailparse/charsets.py); None: decoded as declared.
    charset_detected: str | None = None
    # X-Deskmail-Ticket, which deskmail writes on the mail it sends: with a
    # Message-ID deskmail signed, the mail is deskmail's own (a loop).
    deskmail_ticket: str | None = None
    # Sent through a mailing list or newsletter system (classify.is_list_mail).
    list_mail: bool = False
    # For a bounce (``bounce``): what its report says, None when it says nothing readable.
    dsn: Dsn | None = None
    # Every top-level header field as parsed, (lower-case name, value with its folds,
    # encoded-words and raw 8-bit bytes still in), for the routing rules' "any
    # header"; read them decoded with mailparse.header_values. Decoding all of them
    # for every mail would cost more than the rules that look at one. Not part of
    # equality: the fields above are what the mail means.
    header_fields: tuple[tuple[str, str], ...] = field(default=(), compare=False, repr=False)
    header_charset: str | None = field(default=None, compare=False, repr=False)  # raw 8-bit headers' guess
