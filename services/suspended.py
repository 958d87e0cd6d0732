"""Suspended mail: everything that made no ticket or comment, in one list, and
its release through the normal pipeline.

Two kinds, one ``Item`` shape (time, sender, subject, reason):

- **rejections** (``TicketStore.list_suspended``), id ``<number>``: the router
  refused the mail (not a member, not authenticated, an auto-reply, a bounce,
  a loop, ...) or the ticketer found no thread for an outsider's reply. The raw
  mail is in the blob store (``raw_ref``).
- **dead letters** (``services.deadletters``), id ``dl:<topic>:<partition>:<offset>``
  (their place in the dead-letter topic): incoming mail or a command a stage
  could not process, reason ``dead_letter``. Only those of the inbound and
  commands topics are listed; outgoing mail's stay in `deskmail deadletters`.

``Releaser.release`` puts one item back through the pipeline. A rejection's raw
mail goes to the inbound topic (key: the mailbox, as the fetcher writes it) as
an InboundMail with ``release_of``; the router routes it without refusing it,
as ``release:<command id>``, and the ticketer marks the rejection released when
it applies that command. It returns once the broker acknowledged the record:
the ticket appears when the ticketer has applied it. Exactly once: the
ticketer's idempotency by command id makes a repeated release a no-op, and a
release of a rejection marked released is refused (``AlreadyReleased``). A dead
letter is replayed to its source topic, as `deskmail deadletters replay` does;
the topic cannot record that, so a second replay is not refused, and is
absorbed downstream the same way.

Who may release (organization admins) is the caller's check.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from email import policy
from email.errors import MessageError
from email.header import decode_header, make_header
from email.parser import HeaderParser
from email.utils import parseaddr
from typing import Any

from services.common import suspended as rules
from services.common.blobs import BlobMissing, BlobStore
from services.common.bus import Out
from services.common.codec import CodecError, codec
from services.common.config import Config
from services.common.errors import Transient
from services.common.kafka import Producer
from services.deadletters import DeadLetter
from services.tickets import SuspendedMail, TicketStore

DEAD_LETTER_PREFIX = "dl:"
SUMMARY_HEADERS = ("From", "To", "Cc", "Date", "Subject", "Message-ID", "Auto-Submitted", "Authentication-Results")
_DEAD_LETTER_ID = re.compile(r"dl:([A-Za-z0-9._-]{1,249}):(\d{1,9}):(\d{1,19})")
_HEADER_CHARS = 16_384  # enough for any header block a summary shows; a hostile one is cut


class SuspendedError(Exception):
    """An expected refusal; the message is one line for the agent or operator."""


class UnknownItem(SuspendedError, LookupError):
    """No suspended mail has this id."""


class AlreadyReleased(SuspendedError):
    """The rejection was released before: releasing it again would change nothing."""


class NoOriginal(SuspendedError):
    """The raw mail is not there to release or show (kept only since suspended mail existed, or lost)."""


@dataclass(frozen=True)
class DeadLetterId:
    topic: str
    partition: int
    offset: int

    def __str__(self) -> str:
        return f"{DEAD_LETTER_PREFIX}{self.topic}:{self.partition}:{self.offset}"


def parse_id(value: str, config: Config) -> int | DeadLetterId:
    """A rejection's number, or a dead letter's place; raises UnknownItem."""
    text = value.strip()
    if text.isdigit() and len(text) <= 18:
        return int(text)
    match = _DEAD_LETTER_ID.fullmatch(text)
    if match is None or match.group(1) != config.topics["deadletter"]:
        raise UnknownItem(f"no suspended mail {_shown(text)}: an id is a number or "
                          f"{DEAD_LETTER_PREFIX}{config.topics['deadletter']}:PARTITION:OFFSET")
    return DeadLetterId(match.group(1), int(match.group(2)), int(match.group(3)))


@dataclass(frozen=True)
class Item:
    """One line of the suspended list."""

    id: str
    time: datetime
    queue: str | None
    mailbox: str | None
    sender: str | None
    subject: str | None
    reason: str
    reason_code: str
    released_ticket: str | None = None
    released_by: str | None = None
    released_at: datetime | None = None
    has_original: bool = False

    def summary(self) -> dict[str, Any]:
        """What `deskmail suspended list --json` prints and the JSON API returns."""
        return {"id": self.id, "time": self.time.isoformat(), "queue": self.queue, "mailbox": self.mailbox,
                "sender": self.sender, "subject": self.subject, "reason": self.reason,
                "reason_code": self.reason_code, "released_ticket": self.released_ticket}


def from_rejection(r: SuspendedMail) -> Item:
    return Item(id=str(r.id), time=r.received_at, queue=r.queue, mailbox=r.mailbox, sender=r.author_email,
                subject=r.subject, reason=r.reason or r.reason_code, reason_code=r.reason_code,
                released_ticket=r.released_ticket, released_by=r.released_by, released_at=r.released_at,
                has_original=r.raw_ref is not None)


def from_dead_letter(d: DeadLetter, config: Config, blobs: BlobStore | None) -> Item | None:
    """The item of a dead letter of incoming mail (None for any other dead letter):
    its queue from the mailbox, sender and subject where the record can be read."""
    topic = d.topic
    if topic not in (config.topics["inbound"], config.topics["commands"]):
        return None
    mailbox = queue = sender = subject = None
    try:
        if topic == config.topics["inbound"]:
            inbound = codec("InboundMail").decode(d.value)
            mailbox = str(inbound["mailbox"])
            raw = _inbound_raw(inbound, blobs)
            if raw is not None:
                sender, subject = _sender_and_subject(raw)
        else:
            command = codec("TicketCommand").decode(d.value)
            mailbox, queue = str(command["mailbox"]), command.get("queue")
            sender, subject = command["author"]["email"], command["subject"]
    except CodecError:
        pass  # the dead letter's own reason says why; show what is known
    if queue is None and mailbox is not None:
        box = config.mailbox(mailbox)
        queue = box.queue if box is not None else None
    letter_id = DeadLetterId(config.topics["deadletter"], d.partition, d.offset)
    return Item(id=str(letter_id), time=d.time, queue=queue, mailbox=mailbox, sender=sender, subject=subject,
                reason=f"{rules.DEAD_LETTER}: {d.error_class}: {d.message}", reason_code=rules.DEAD_LETTER,
                has_original=topic == config.topics["inbound"])


def merged(rejections: Iterable[Item], letters: Iterable[Item], queue: str | None, reason_code: str | None,
           limit: int) -> list[Item]:
    """Both kinds newest first, filtered as the list asks, at most ``limit``."""
    wanted = [i for i in (*rejections, *letters)
              if (queue is None or i.queue == queue) and (reason_code is None or i.reason_code == reason_code)]
    return sorted(wanted, key=lambda i: i.time, reverse=True)[:limit]


def original(item: SuspendedMail, blobs: BlobStore) -> bytes:
    """The raw mail of a rejection; raises NoOriginal, Transient (blob store unavailable)."""
    if item.raw_ref is None:
        raise NoOriginal(f"suspended mail {item.id} was recorded before deskmail kept originals: "
                         "it cannot be opened or released")
    try:
        return blobs.get(item.raw_ref)
    except BlobMissing:
        raise NoOriginal(f"the original of suspended mail {item.id} is missing from the blob store") from None
    except OSError as exc:
        raise Transient(f"blob store unavailable: {exc}") from exc


def dead_letter_original(d: DeadLetter, config: Config, blobs: BlobStore | None) -> bytes:
    """The raw mail a dead letter of the inbound topic holds; raises NoOriginal."""
    if d.topic != config.topics["inbound"]:
        raise NoOriginal(f"dead letter {d.partition}:{d.offset} is a {d.topic or 'stage'} record, not a mail")
    try:
        raw = _inbound_raw(codec("InboundMail").decode(d.value), blobs)
    except CodecError:
        raw = None
    if raw is None:
        raise NoOriginal(f"the mail of dead letter {d.partition}:{d.offset} cannot be read ({d.error_class})")
    return raw


def header_summary(raw: bytes) -> list[tuple[str, str]]:
    """The main headers of a mail, decoded (RFC 2047), for `suspended show`."""
    message = _headers(raw)
    if message is None:
        return []
    out: list[tuple[str, str]] = []
    for name in SUMMARY_HEADERS:
        for value in message.get_all(name) or ():
            out.append((name, _decoded(value)))
    return out


@dataclass(frozen=True)
class Released:
    id: str
    detail: str  # one line: what was put where


DeadLetterLookup = Callable[[int, int], "DeadLetter | None"]


class Releaser:
    """Releases suspended mail through the pipeline; see the module docstring.

    ``producer`` is the project's acks=all producer (its ``send_all`` waits for the
    ack); ``dead_letters`` reads one dead letter by partition and offset (None:
    dead letters cannot be released here).
    """

    def __init__(self, config: Config, store: TicketStore, blobs: BlobStore, producer: Producer,
                 dead_letters: DeadLetterLookup | None = None, stage: str = "suspended"):
        self.config = config
        self.store = store
        self.blobs = blobs
        self.producer = producer
        self.dead_letters = dead_letters
        self.stage = stage

    def release(self, item_id: str, by: str | None) -> Released:
        """Release as admin ``by`` (None: no identity, `api.auth.mode: none`). Raises
        UnknownItem, AlreadyReleased, NoOriginal, Transient (broker or blob store
        unavailable: nothing was released, try again)."""
        parsed = parse_id(item_id, self.config)
        if isinstance(parsed, DeadLetterId):
            return self._replay(parsed)
        item = self.store.get_suspended(parsed)
        if item is None:
            raise UnknownItem(f"no suspended mail {parsed}")
        if item.released_at is not None:
            raise AlreadyReleased(f"suspended mail {item.id} was released already: it became "
                                  f"{item.released_ticket} ({item.released_by or 'unknown'}, "
                                  f"{item.released_at:%Y-%m-%d %H:%M UTC})")
        raw = original(item, self.blobs)
        record = self._inbound(item, raw, by)
        self.producer.send_all([Out(self.config.topics["inbound"], item.mailbox.encode(),
                                    codec("InboundMail").encode(record))], stage=self.stage)
        return Released(str(item.id), f"released suspended mail {item.id} as {record['id']}: "
                                      "it becomes a ticket or comment when the ticketer applies it")

    def _inbound(self, item: SuspendedMail, raw: bytes, by: str | None) -> dict[str, Any]:
        """The InboundMail of a release: the original mail, as the fetcher would write it."""
        inline = len(raw) <= self.config.blobs.inline_max_bytes
        return {
            "id": rules.release_command_id(item.command_id),
            "mailbox": item.mailbox,
            "source": "smtp" if item.command_id.startswith("smtp:") else "imap",
            "uidvalidity": 0,  # no IMAP receipt: the release is not a fetch
            "uid": 0,
            "received_at": item.received_at,
            "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
            "raw": raw if inline else None,
            "blob_ref": None if inline else item.raw_ref,
            "envelope_from": None,
            "envelope_to": [],
            "release_of": item.command_id,
            "released_by": by,
        }

    def _replay(self, letter_id: DeadLetterId) -> Released:
        if self.dead_letters is None:
            raise UnknownItem(f"{letter_id}: dead letters are released with `deskmail suspended release`")
        letter = self.dead_letters(letter_id.partition, letter_id.offset)
        if letter is None or from_dead_letter(letter, self.config, None) is None or not letter.topic:
            raise UnknownItem(f"no suspended mail {letter_id}")
        self.producer.send_all([Out(letter.topic, letter.key or b"", letter.value)], stage=self.stage)
        return Released(str(letter_id), f"replayed {letter_id} to {letter.topic}")


def _inbound_raw(inbound: dict[str, Any], blobs: BlobStore | None) -> bytes | None:
    if inbound.get("raw") is not None:
        return bytes(inbound["raw"])
    if inbound.get("blob_ref") and blobs is not None:
        try:
            return blobs.get(inbound["blob_ref"])
        except (BlobMissing, OSError):
            return None
    return None


def _headers(raw: bytes) -> Any:
    head = raw[:_HEADER_CHARS]
    end = head.find(b"\r\n\r\n")
    head = head if end < 0 else head[:end + 2]
    try:
        # Read as UTF-8 first: raw 8-bit headers are mostly UTF-8 today.
        return HeaderParser(policy=policy.compat32).parsestr(head.decode("utf-8", "surrogateescape"))
    except (MessageError, ValueError, LookupError, TypeError):
        return None


def _decoded(value: Any) -> str:
    """A header value as text: RFC 2047 words decoded, raw 8-bit bytes read as UTF-8."""
    try:
        text = str(make_header(decode_header(str(value))))
    except (MessageError, ValueError, LookupError, TypeError):
        text = str(value)
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _sender_and_subject(raw: bytes) -> tuple[str | None, str | None]:
    message = _headers(raw)
    if message is None:
        return None, None
    sender = parseaddr(_decoded(message.get("From", "")))[1] or None
    subject = _decoded(message["Subject"]) if message.get("Subject") is not None else None
    return sender, subject


def _shown(text: str) -> str:
    return repr(text[:80])

