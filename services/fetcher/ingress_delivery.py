"""The ingress's delivery: one accepted message becomes InboundMail records the broker acknowledged.

Pure parts (the record, its stable id) and the blocking ``Delivery`` that the
ingress (services.fetcher.ingress) runs in its worker threads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from services.common.blobs import BlobStore, BlobWriter
from services.common.bus import Out
from services.common.codec import codec
from services.common.errors import Transient
from services.common.kafka import Producer
from services.fetcher import mailauth
from services.fetcher.records import inbound_record

STAGE = "fetcher"
SOURCE: Literal["smtp"] = "smtp"

# How long DATA waits for the broker's acknowledgement before answering 451.
ACK_TIMEOUT_SECONDS = 30.0


# ---------------------------------------------------------------- pure parts


def record_id(mailbox: str, sha256: str) -> str:
    """Stable per mailbox and content, so a retried delivery carries the same id."""
    return f"smtp:{mailbox}:{sha256}"


def envelope_sender(mail_from: str | None) -> str | None:
    """MAIL FROM as recorded: ``""`` for the null reverse-path of bounces, None if unknown."""
    if mail_from is None:
        return None
    return "" if mail_from.strip() in ("", "<>") else mail_from


def ingress_record(
    mailbox: str,
    raw: bytes,
    sha256: str,
    envelope_from: str | None,
    envelope_to: Sequence[str],
    received_at: datetime,
    blobs: BlobStore,
    inline_max_bytes: int,
    blob_ref: str | None = None,
    size: int | None = None,
    received_sha256: str | None = None,
) -> dict[str, Any]:
    """The InboundMail record of one message for one mailbox (see services.fetcher.records).

    A message streamed to the blob store comes as ``blob_ref`` and ``size``, with ``raw`` empty.
    The id comes from ``received_sha256``, the bytes as the client sent them (default:
    ``sha256``), so a retry carries the same id although deskmail's trace fields differ.
    """
    return inbound_record(
        record_id=record_id(mailbox, received_sha256 or sha256), mailbox=mailbox, source=SOURCE, raw=raw, sha256=sha256,
        received_at=received_at, blobs=blobs, inline_max_bytes=inline_max_bytes,
        envelope_from=envelope_from, envelope_to=envelope_to, blob_ref=blob_ref, size=size,
    )


@dataclass(frozen=True)
class Accepted:
    """One message after DATA and the accepted recipients, grouped by mailbox.

    The message is ``raw`` when it was small enough to keep in memory, else ``blob``:
    streamed to the blob store and not committed yet (the delivery does that).
    """

    raw: bytes
    envelope_from: str | None
    recipients: dict[str, list[str]]  # mailbox address -> RCPT TO addresses as given
    blob: BlobWriter | None = None
    client_ip: str = ""
    helo: str = ""
    protocol: Literal["smtp", "lmtp"] = "smtp"

    @property
    def size(self) -> int:
        return self.blob.size if self.blob is not None else len(self.raw)


# ---------------------------------------------------------------- blocking delivery


@dataclass(frozen=True)
class Authenticator:
    """deskmail as the receiving server (services.fetcher.mailauth): its id and its bounded DNS."""

    authserv_id: str
    lookup: mailauth.TxtLookup
    dns_timeout: float

    def __call__(self, raw: bytes, mail: Accepted) -> bytes:
        """The mail as stored: deskmail's trace fields on top, forged claims of its id renamed.

        LMTP is final delivery from an MTA that received the mail (and checked it, if it
        is in ``trusted_authserv_ids``): deskmail checks nothing, it only renames claims of its id.
        """
        if mail.protocol == "lmtp":
            return mailauth.remove_claims(raw, self.authserv_id)
        mail_from = mail.envelope_from or ""
        verdict = mailauth.verify(raw, mail.client_ip, mail.helo, mail_from, self.lookup, self.dns_timeout)
        fields = mailauth.trace_fields(verdict, self.authserv_id, mail.client_ip, mail.helo, mail_from)
        return fields + mailauth.remove_claims(raw, self.authserv_id)


class Delivery:
    """Writes one accepted message to the inbound topic and waits for the broker.

    Blocking: call it from a worker thread. Raises ``Transient`` when the blob store
    or the broker did not take every record. With an ``authenticator`` the stored
    message carries deskmail's own DKIM/SPF/DMARC verdict (its DNS lookups run here).
    """

    def __init__(self, producer: Producer, topic: str, blobs: BlobStore, inline_max_bytes: int,
                 ack_timeout: float = ACK_TIMEOUT_SECONDS, authenticator: Authenticator | None = None):
        self.producer = producer
        self.topic = topic
        self.blobs = blobs
        self.inline_max_bytes = inline_max_bytes
        self.ack_timeout = ack_timeout
        self.authenticator = authenticator

    def __call__(self, mail: Accepted) -> str:
        """Returns the hex SHA-256 of the message (the content part of every record id)."""
        blob_ref = None
        if mail.blob is not None:
            try:  # fsynced, file and name, before any record refers to it
                blob_ref = mail.blob.commit(durable=True)
            except OSError as exc:
                raise Transient(f"blob store cannot take the message: {exc}") from exc
            sha256 = mail.blob.sha256
        else:
            sha256 = hashlib.sha256(mail.raw).hexdigest()
        raw, stored_sha256, size = mail.raw, sha256, mail.size
        if self.authenticator is not None:
            raw, blob_ref = self._authenticated(mail, blob_ref)
            stored_sha256, size = hashlib.sha256(raw).hexdigest(), len(raw)
            if blob_ref is not None:
                raw = b""
        received_at = datetime.now(timezone.utc)
        encode = codec("InboundMail").encode
        outs = [
            Out(self.topic, mailbox.encode(),
                encode(ingress_record(mailbox, raw, stored_sha256, mail.envelope_from, rcpts, received_at,
                                      self.blobs, self.inline_max_bytes, blob_ref, size, sha256)))
            for mailbox, rcpts in mail.recipients.items()
        ]
        self.producer.send_all(outs, STAGE, timeout=self.ack_timeout)
        return sha256

    def _authenticated(self, mail: Accepted, blob_ref: str | None) -> tuple[bytes, str | None]:
        """The message with deskmail's verdict, and its new blob when it was streamed.

        A streamed message is read back whole (at most ``ingress.max_message_bytes``):
        DKIM hashes the whole body, and the fields go in front of it.
        """
        assert self.authenticator is not None
        try:
            raw = self.blobs.get(blob_ref) if blob_ref is not None else mail.raw
            stored = self.authenticator(raw, mail)
            return stored, (self.blobs.put(stored) if blob_ref is not None else None)
        except OSError as exc:
            raise Transient(f"blob store cannot take the message: {exc}") from exc
