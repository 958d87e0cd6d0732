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
) -> dict[str, Any]:
    """The InboundMail record of one message for one mailbox (see services.fetcher.records).

    A message streamed to the blob store comes as ``blob_ref`` and ``size``, with ``raw`` empty.
    """
    return inbound_record(
        record_id=record_id(mailbox, sha256), mailbox=mailbox, source=SOURCE, raw=raw, sha256=sha256,
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

    @property
    def size(self) -> int:
        return self.blob.size if self.blob is not None else len(self.raw)


# ---------------------------------------------------------------- blocking delivery


class Delivery:
    """Writes one accepted message to the inbound topic and waits for the broker.

    Blocking: call it from a worker thread. Raises ``Transient`` when the blob store
    or the broker did not take every record.
    """

    def __init__(self, producer: Producer, topic: str, blobs: BlobStore, inline_max_bytes: int,
                 ack_timeout: float = ACK_TIMEOUT_SECONDS):
        self.producer = producer
        self.topic = topic
        self.blobs = blobs
        self.inline_max_bytes = inline_max_bytes
        self.ack_timeout = ack_timeout

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
        received_at = datetime.now(timezone.utc)
        encode = codec("InboundMail").encode
        outs = [
            Out(self.topic, mailbox.encode(),
                encode(ingress_record(mailbox, mail.raw, sha256, mail.envelope_from, rcpts, received_at,
                                      self.blobs, self.inline_max_bytes, blob_ref, mail.size)))
            for mailbox, rcpts in mail.recipients.items()
        ]
        self.producer.send_all(outs, STAGE, timeout=self.ack_timeout)
        return sha256
