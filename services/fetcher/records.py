"""The InboundMail record, built the same way for IMAP and for the SMTP/LMTP ingress."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from services.common.blobs import BlobStore
from services.common.config import Config
from services.common.errors import Transient

# Room left in a Kafka record for the InboundMail fields around the raw bytes.
RECORD_OVERHEAD_BYTES = 64 * 1024


def inline_max_bytes(config: Config) -> int:
    """Raw mail up to this size travels inside the record; larger goes to the blob store."""
    return max(0, min(config.blobs.inline_max_bytes, config.kafka.max_message_bytes - RECORD_OVERHEAD_BYTES))


def inbound_record(
    *,
    record_id: str,
    mailbox: str,
    source: Literal["imap", "smtp"],
    raw: bytes,
    received_at: datetime,
    blobs: BlobStore,
    inline_max_bytes: int,
    sha256: str | None = None,
    uidvalidity: int = 0,
    uid: int = 0,
    envelope_from: str | None = None,
    envelope_to: Sequence[str] = (),
    blob_ref: str | None = None,
    size: int | None = None,
) -> dict[str, Any]:
    """One message as an InboundMail record; mail above ``inline_max_bytes`` goes to ``blobs``.

    A message the caller already streamed to the store comes as ``blob_ref`` with its
    ``size`` and ``sha256`` (and an empty ``raw``). Raises ``Transient`` when the blob
    store cannot take the message.
    """
    if blob_ref is None and len(raw) > inline_max_bytes:
        try:
            blob_ref = blobs.put(raw)
        except OSError as exc:
            raise Transient(f"blob store cannot take {record_id}: {exc}") from exc
    return {
        "id": record_id,
        "mailbox": mailbox,
        "source": source,
        "uidvalidity": uidvalidity,
        "uid": uid,
        "received_at": received_at,
        "size": len(raw) if size is None else size,
        "sha256": sha256 or hashlib.sha256(raw).hexdigest(),
        "raw": None if blob_ref else raw,
        "blob_ref": blob_ref,
        "envelope_from": envelope_from,
        "envelope_to": list(envelope_to),
    }
