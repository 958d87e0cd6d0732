"""SMTP and LMTP ingress for own-domain addresses (mailboxes with ``ingress: true``).

An MTA (or the MX itself) hands mail for those addresses to deskmail over SMTP
(``ingress.listen``) or LMTP (``ingress.lmtp_listen``). The server runs on its own
asyncio loop in one thread of the fetcher process and writes InboundMail records
(source ``smtp``) through the fetcher's producer and blob store.

Reply contract, which is what makes the ingress lose nothing:

* ``RCPT`` for an address that is not a configured ingress mailbox: ``550 5.1.1``.
  The server never relays.
* A message over ``ingress.max_message_bytes``: ``552`` (SIZE is advertised, so a
  polite client is refused at ``MAIL FROM ... SIZE=``, others after the data).
* ``DATA`` is answered ``250`` only after the broker acknowledged one record per
  accepted recipient mailbox. When it does not within ``ack_timeout`` seconds (or
  the blob store cannot take the mail) the answer is ``451 4.3.0``: the sending MTA
  keeps the mail and retries. A late acknowledgement followed by a retry writes the
  same record twice; its id ``smtp:<mailbox>:<sha256>`` is stable, and the ticketer
  applies a command id only once.
* LMTP answers DATA once per accepted recipient (RFC 2033); all of them carry the
  same outcome, because the records of one message are acknowledged together.

The broker call blocks, so it runs in a small thread pool, never on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import socket
import ssl
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.common import metrics
from services.common.blobs import BlobStore
from services.common.bus import Out
from services.common.codec import codec
from services.common.config import Config
from services.common.errors import Transient
from services.common.kafka import Producer
from services.fetcher.records import inbound_record

log = logging.getLogger("deskmail.fetcher.ingress")

STAGE = "fetcher"
SOURCE: Literal["smtp"] = "smtp"
Dialect = Literal["smtp", "lmtp"]

# How long DATA waits for the broker's acknowledgement before answering 451.
ACK_TIMEOUT_SECONDS = 30.0
# Deliveries waiting for the broker at once; more wait their turn (and time out into 451).
DELIVERY_THREADS = 4
# An idle client is disconnected after this long (RFC 5321 4.5.3.2.7 suggests 5 minutes).
SESSION_TIMEOUT_SECONDS = 300.0
# On stop, transactions already past DATA get this long beyond the ack timeout to finish.
STOP_GRACE_SECONDS = 5.0

# Replies (RFC 3463 enhanced status codes).
REPLY_OK = "250 2.0.0 Ok: queued as {id}"
REPLY_NO_MAILBOX = "550 5.1.1 <{address}>: no such mailbox here"
REPLY_TOO_BIG = "552 5.3.4 Message too big: the limit is {limit} bytes"
REPLY_DEFERRED = "451 4.3.0 Temporary failure, try again later"
REPLY_ERROR = "451 4.3.0 Internal error, try again later"
REPLY_SHUTDOWN = "421 4.3.2 Service shutting down, try again later\r\n"

# Outcomes counted in deskmail_fetcher_ingress_sessions_total.
ACCEPTED, UNKNOWN_RECIPIENT, TOO_BIG, DEFERRED, ERROR = (
    "accepted", "unknown_recipient", "too_big", "deferred", "error")


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
) -> dict[str, Any]:
    """The InboundMail record of one message for one mailbox (see services.fetcher.records)."""
    return inbound_record(
        record_id=record_id(mailbox, sha256), mailbox=mailbox, source=SOURCE, raw=raw, sha256=sha256,
        received_at=received_at, blobs=blobs, inline_max_bytes=inline_max_bytes,
        envelope_from=envelope_from, envelope_to=envelope_to,
    )


@dataclass(frozen=True)
class Accepted:
    """One message after DATA: raw bytes and the accepted recipients, grouped by mailbox."""

    raw: bytes
    envelope_from: str | None
    recipients: dict[str, list[str]]  # mailbox address -> RCPT TO addresses as given


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
        sha256 = hashlib.sha256(mail.raw).hexdigest()
        received_at = datetime.now(timezone.utc)
        encode = codec("InboundMail").encode
        outs = [
            Out(self.topic, mailbox.encode(),
                encode(ingress_record(mailbox, mail.raw, sha256, mail.envelope_from, rcpts, received_at,
                                      self.blobs, self.inline_max_bytes)))
            for mailbox, rcpts in mail.recipients.items()
        ]
        self.producer.send_all(outs, STAGE, timeout=self.ack_timeout)
        return sha256


# ---------------------------------------------------------------- aiosmtpd handler


class IngressHandler:
    """aiosmtpd hooks: accept RCPT for ingress mailboxes only, answer DATA after the ack."""

    def __init__(self, addresses: frozenset[str], deliver: Callable[[Accepted], str],
                 executor: concurrent.futures.Executor, ack_timeout: float, protocol: Dialect):
        self.addresses = addresses
        self.deliver = deliver
        self.executor = executor
        self.ack_timeout = ack_timeout
        self.protocol = protocol
        self.in_flight = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,  # noqa: N802 (aiosmtpd)
                          address: str, rcpt_options: list[str]) -> str:
        mailbox = address.lower()
        if mailbox not in self.addresses:
            metrics.FETCHER_INGRESS.labels(UNKNOWN_RECIPIENT).inc()
            log.info("recipient refused", extra={"address": address, "reason": UNKNOWN_RECIPIENT})
            return REPLY_NO_MAILBOX.format(address=address)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        recipients: dict[str, list[str]] = {}
        for address in envelope.rcpt_tos:
            recipients.setdefault(address.lower(), []).append(address)
        raw = envelope.original_content or b""
        mail = Accepted(raw=raw, envelope_from=envelope_sender(envelope.mail_from), recipients=recipients)
        # LMTP: one reply per accepted RCPT, in order (RFC 2033 4.2); SMTP: one reply.
        replies = len(envelope.rcpt_tos) if self.protocol == "lmtp" else 1
        self.in_flight += 1
        try:
            loop = asyncio.get_running_loop()
            sha256 = await asyncio.wait_for(loop.run_in_executor(self.executor, self.deliver, mail),
                                            self.ack_timeout)
        except (Transient, asyncio.TimeoutError) as exc:
            reason = "timeout" if isinstance(exc, asyncio.TimeoutError) else "broker"
            metrics.FETCHER_INGRESS.labels(DEFERRED).inc()
            metrics.BUS_RETRIES.labels(STAGE).inc()
            for mailbox in recipients:
                log.warning("delivery deferred, the client will retry",
                            extra={"mailbox": mailbox, "reason": reason, "error": str(exc) or type(exc).__name__})
            return "\r\n".join([REPLY_DEFERRED] * replies)
        except Exception:  # a bug: still 4xx, so the sending MTA keeps the mail instead of bouncing it
            metrics.FETCHER_INGRESS.labels(ERROR).inc()
            log.exception("ingress delivery failed", extra={"mailbox": ",".join(recipients), "reason": ERROR})
            return "\r\n".join([REPLY_ERROR] * replies)
        finally:
            self.in_flight -= 1
        metrics.FETCHER_INGRESS.labels(ACCEPTED).inc()
        for mailbox in recipients:
            metrics.FETCHER_MESSAGES.labels(mailbox, SOURCE).inc()
            metrics.FETCHER_BYTES.labels(mailbox).inc(len(raw))
            log.info("delivered", extra={"mailbox": mailbox, "count": 1})
        return "\r\n".join([REPLY_OK.format(id=sha256[:16])] * replies)

    async def handle_exception(self, error: Exception) -> str:
        """A bug in a transaction: 451, so the sending MTA keeps the mail (never a 5xx bounce)."""
        metrics.FETCHER_INGRESS.labels(ERROR).inc()
        log.error("ingress transaction failed", exc_info=error, extra={"reason": ERROR})
        return REPLY_ERROR


class _Replies:
    """Counts 552 replies (aiosmtpd sends them itself) and gives them an enhanced code."""

    data_size_limit: int | None

    async def push(self, status: str | bytes) -> None:
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        if text.startswith("552 ") and not text.startswith("552 5."):
            metrics.FETCHER_INGRESS.labels(TOO_BIG).inc()
            log.info("message refused", extra={"reason": TOO_BIG})
            status = REPLY_TOO_BIG.format(limit=self.data_size_limit)
        await super().push(status)  # type: ignore[misc]


class SmtpServer(_Replies, SMTP):
    pass


class LmtpServer(_Replies, LMTP):
    pass


# ---------------------------------------------------------------- the server


@dataclass(frozen=True)
class Listener:
    protocol: Dialect
    host: str
    port: int


class IngressServer:
    """The SMTP/LMTP listeners on their own asyncio loop in one thread.

    ``start`` returns once every listener is bound (raises ``OSError`` if one cannot
    be); ``stop`` stops accepting, lets transactions past DATA finish, and closes
    every connection.
    """

    def __init__(
        self,
        addresses: Sequence[str],
        delivery: Delivery,
        listeners: Sequence[Listener],
        max_message_bytes: int,
        tls_context: ssl.SSLContext | None = None,
        ack_timeout: float = ACK_TIMEOUT_SECONDS,
        hostname: str | None = None,
    ):
        self.addresses = frozenset(a.lower() for a in addresses)
        self.delivery = delivery
        self.listeners = list(listeners)
        self.max_message_bytes = max_message_bytes
        self.tls_context = tls_context
        self.ack_timeout = ack_timeout
        self.hostname = hostname or socket.gethostname()
        self.bound: list[Listener] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="ingress-ack")
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._handlers: list[IngressHandler] = []

    def start(self) -> None:
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command at INFO
        self._thread = threading.Thread(target=self._loop.run_forever, name="ingress", daemon=True)
        self._thread.start()
        try:
            for listener in self.listeners:
                server = asyncio.run_coroutine_threadsafe(self._listen(listener), self._loop).result()
                self._servers.append(server)
                port = int(server.sockets[0].getsockname()[1])
                self.bound.append(Listener(listener.protocol, listener.host, port))
                log.info("ingress listening",
                         extra={"stage": STAGE, "address": f"{listener.host}:{port}", "reason": listener.protocol})
        except BaseException:
            self.stop()
            raise

    async def _listen(self, listener: Listener) -> asyncio.base_events.Server:
        handler = IngressHandler(self.addresses, self.delivery, self._executor, self.ack_timeout, listener.protocol)
        self._handlers.append(handler)
        kind = LmtpServer if listener.protocol == "lmtp" else SmtpServer

        def session() -> SMTP:
            server = kind(handler, data_size_limit=self.max_message_bytes, enable_SMTPUTF8=True,
                          hostname=self.hostname, ident="deskmail", tls_context=self.tls_context,
                          timeout=SESSION_TIMEOUT_SECONDS, loop=self._loop)
            self._sessions.add(server)
            return server

        return await self._loop.create_server(session, listener.host, listener.port, reuse_address=True)

    def stop(self) -> None:
        """Stop accepting, wait for transactions in flight (bounded), close sessions. Idempotent."""
        if self._thread is None or not self._thread.is_alive():
            self._executor.shutdown(wait=False, cancel_futures=True)
            return
        try:
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(
                timeout=self.ack_timeout + STOP_GRACE_SECONDS + 5)
        except (concurrent.futures.TimeoutError, RuntimeError) as exc:
            log.warning("ingress did not stop cleanly", extra={"stage": STAGE, "error": str(exc)})
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._loop.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        log.info("ingress stopped", extra={"stage": STAGE})

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        deadline = self._loop.time() + self.ack_timeout + STOP_GRACE_SECONDS
        while any(h.in_flight for h in self._handlers) and self._loop.time() < deadline:
            await asyncio.sleep(0.05)
        for session in list(self._sessions):
            transport = session.transport
            if isinstance(transport, asyncio.WriteTransport):  # between commands now: say goodbye (RFC 5321 3.8)
                transport.write(REPLY_SHUTDOWN.encode())
            if transport is not None:
                transport.close()
        for server in self._servers:
            await server.wait_closed()


# ---------------------------------------------------------------- from the config


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def build_ingress(
    config: Config,
    producer: Producer,
    blobs: BlobStore,
    inline_max_bytes: int,
    *,
    ack_timeout: float = ACK_TIMEOUT_SECONDS,
) -> IngressServer | None:
    """The ingress for the config's ``ingress: true`` mailboxes; None when there are none.

    Raises OSError for unreadable TLS files (listen addresses were checked by the config).
    """
    addresses = [m.address for m in config.mailboxes if m.ingress]
    if not addresses:
        return None
    settings = config.ingress
    host, port = settings.listen.host, settings.listen.port
    listeners = [Listener("smtp", host, port)]
    if settings.lmtp_listen:
        host, port = settings.lmtp_listen.host, settings.lmtp_listen.port
        listeners.append(Listener("lmtp", host, port))
    context = tls_context(settings.tls_cert, settings.tls_key) if settings.tls_cert and settings.tls_key else None
    delivery = Delivery(producer, config.topics["inbound"], blobs, inline_max_bytes, ack_timeout)
    return IngressServer(addresses, delivery, listeners, settings.max_message_bytes, context, ack_timeout)
