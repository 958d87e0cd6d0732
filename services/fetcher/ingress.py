"""SMTP and LMTP ingress for own-domain addresses (mailboxes with ``ingress: true``).

An MTA (or the MX itself) hands mail for those addresses to deskmail over SMTP
(``ingress.listen``) or LMTP (``ingress.lmtp_listen``). The server runs on its own
asyncio loop in one thread of the ingress process (services.fetcher.ingress_runner)
and writes InboundMail records (source ``smtp``) through its producer and blob store.
On shutdown it drains (``IngressServer.stop``): no new connections, transactions in
flight finish, idle sessions get ``421 4.3.2``, all within ``ingress.drain_seconds``.

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
* A client outside ``ingress.allowed_networks``: ``554 5.7.1`` at connect, unless
  ``ingress.auth.users`` are set (SMTP only): then ``MAIL`` needs AUTH first, ``530
  5.7.0`` without it (services.fetcher.ingress_access).
* Beyond ``ingress.max_sessions`` open connections, or ``ingress.max_inflight_bytes``
  of message data received and not yet answered: ``421 4.3.2`` at connect, ``451
  4.3.2`` at MAIL (announced SIZE) or after DATA (services.fetcher.ingress_limits).

Memory stays bounded: a message above the claim-check size (``blobs.inline_max_bytes``)
is streamed to a temporary blob file while it arrives and renamed to its content
address (fsynced) before its records are produced (services.fetcher.ingress_data);
only smaller ones are held in memory. The broker call and the disk writes block, so
they run in small thread pools, never on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import ssl
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dns.resolver
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from services.common import metrics
from services.common.blobs import BlobStore
from services.common.config import Config
from services.common.config.schema import IngressSettings
from services.common.errors import Transient
from services.common.kafka import Producer
from services.fetcher import mailauth
from services.fetcher.ingress_access import (
    AUTH_ATTEMPTS,
    MECHANISMS,
    REPLY_AUTH_REQUIRED,
    AccessPolicy,
    Dialect,
)
from services.fetcher.ingress_data import (
    ACCEPTED,
    BUSY,
    DEFERRED,
    ERROR,
    GOODBYE_SECONDS,
    REPLY_DEFERRED,
    REPLY_SHUTDOWN,
    UNKNOWN_RECIPIENT,
    IngressEnvelope,
    IngressLmtpSession,
    IngressSession,
    SessionContext,
)
from services.fetcher.ingress_delivery import (
    ACK_TIMEOUT_SECONDS,
    SOURCE,
    STAGE,
    Accepted,
    Authenticator,
    Delivery,
    envelope_sender,
)
from services.fetcher.ingress_limits import REPLY_BUSY, REPLY_TOO_MANY_SESSIONS, Admission, announced_size

log = logging.getLogger("deskmail.fetcher.ingress")

# Deliveries waiting for the broker at once; more wait their turn (and time out into 451).
DELIVERY_THREADS = 4
# Threads writing streamed messages to the blob store (page-cache writes; the fsync is the delivery's).
DISK_THREADS = 2
# An idle client is disconnected after this long (RFC 5321 4.5.3.2.7 suggests 5 minutes).
SESSION_TIMEOUT_SECONDS = 300.0
# Default drain bound when the server is built without one (ingress.drain_seconds's default).
DRAIN_SECONDS = 30.0

# Replies (RFC 3463 enhanced status codes).
REPLY_OK = "250 2.0.0 Ok: queued as {id}"
REPLY_NO_MAILBOX = "550 5.1.1 <{address}>: no such mailbox here"
REPLY_ERROR = "451 4.3.0 Internal error, try again later"


# ---------------------------------------------------------------- aiosmtpd handler


class IngressHandler:
    """aiosmtpd hooks: MAIL within the budget, RCPT for ingress mailboxes only, DATA answered after the ack."""

    def __init__(self, addresses: frozenset[str], deliver: Callable[[Accepted], str],
                 executor: concurrent.futures.Executor, ack_timeout: float, protocol: Dialect,
                 admission: Admission):
        self.addresses = addresses
        self.deliver = deliver
        self.executor = executor
        self.ack_timeout = ack_timeout
        self.protocol = protocol
        self.admission = admission
        self.in_flight = 0

    async def handle_MAIL(self, server: SMTP, session: Session, envelope: Envelope,  # noqa: N802 (aiosmtpd)
                          address: str, mail_options: list[str]) -> str:
        """Reserve an announced SIZE in the in-flight budget, or refuse it now, before the data is sent.

        Reserving (not just checking) keeps concurrent senders from all passing MAIL
        and then outgrowing the budget after sending their data.
        """
        assert isinstance(envelope, IngressEnvelope)
        if getattr(server, "admittance", "open") == "auth" and not session.authenticated:
            metrics.FETCHER_INGRESS_REFUSALS.labels("auth_required").inc()
            log.warning("sender refused: authentication required", extra={"reason": "auth_required"})
            return REPLY_AUTH_REQUIRED
        size = announced_size(mail_options)
        if size and not self.admission.take(size):
            metrics.FETCHER_INGRESS.labels(BUSY).inc()
            metrics.FETCHER_INGRESS_DEFERRALS.labels("inflight_bytes").inc()
            log.warning("message deferred, the client will retry",
                        extra={"reason": "inflight_bytes", "size": size, "count": self.admission.inflight_bytes})
            return REPLY_BUSY
        envelope.reserved = size
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

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
        """Deliver ``envelope.message`` (set by IngressSession.smtp_DATA) and answer once the broker acked."""
        assert isinstance(envelope, IngressEnvelope) and envelope.message is not None
        message = envelope.message
        recipients: dict[str, list[str]] = {}
        for address in envelope.rcpt_tos:
            recipients.setdefault(address.lower(), []).append(address)
        mail = Accepted(raw=message.raw if message.writer is None else b"",
                        envelope_from=envelope_sender(envelope.mail_from), recipients=recipients,
                        blob=message.writer, client_ip=peer_ip(session), helo=session.host_name or "",
                        protocol=self.protocol)
        raw_size = mail.size
        # LMTP: one reply per accepted RCPT, in order (RFC 2033 4.2); SMTP: one reply.
        replies = len(envelope.rcpt_tos) if self.protocol == "lmtp" else 1
        self.in_flight += 1
        try:
            job = self.executor.submit(self.deliver, mail)
            message.guard(job)  # the temporary blob file stays until the delivery is done with it
            sha256 = await asyncio.wait_for(asyncio.wrap_future(job), self.ack_timeout)
        except (Transient, asyncio.TimeoutError) as exc:
            reason = "timeout" if isinstance(exc, asyncio.TimeoutError) else "broker"
            metrics.FETCHER_INGRESS.labels(DEFERRED).inc()
            metrics.FETCHER_INGRESS_DEFERRALS.labels(reason).inc()
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
            metrics.FETCHER_BYTES.labels(mailbox).inc(raw_size)
            log.info("delivered", extra={"mailbox": mailbox, "count": 1})
        return "\r\n".join([REPLY_OK.format(id=sha256[:16])] * replies)

    async def handle_exception(self, error: Exception) -> str:
        """A bug in a transaction: 451, so the sending MTA keeps the mail (never a 5xx bounce)."""
        metrics.FETCHER_INGRESS.labels(ERROR).inc()
        log.error("ingress transaction failed", exc_info=error, extra={"reason": ERROR})
        return REPLY_ERROR


# ---------------------------------------------------------------- the server


class _Refusal(asyncio.Protocol):
    """A connection beyond ``ingress.max_sessions``: 421 instead of the greeting, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(REPLY_TOO_MANY_SESSIONS.encode())
        transport.close()  # after the reply is flushed


@dataclass(frozen=True)
class Listener:
    protocol: Dialect
    host: str
    port: int


class IngressServer:
    """The SMTP/LMTP listeners on their own asyncio loop in one thread.

    ``start`` returns once every listener is bound (raises ``OSError`` if one cannot
    be); ``stop`` drains: it closes the listeners at once, answers ``421 4.3.2`` to
    sessions between transactions, lets the transactions in flight finish (250 after
    the ack, or a 4xx) for at most ``drain_seconds``, then says 421 to whatever is left
    and closes every connection. No session in DATA is closed without a reply.
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
        *,
        max_sessions: int,
        max_inflight_bytes: int,
        policy: AccessPolicy | None = None,
        drain_seconds: float = DRAIN_SECONDS,
    ):
        self.addresses = frozenset(a.lower() for a in addresses)
        self.delivery = delivery
        self.listeners = list(listeners)
        self.max_message_bytes = max_message_bytes
        self.tls_context = tls_context
        self.ack_timeout = ack_timeout
        self.hostname = hostname or socket.gethostname()
        self.drain_seconds = drain_seconds
        self.bound: list[Listener] = []
        self.admission = Admission(max_sessions, max_inflight_bytes)
        # Without a policy (tests of the protocol alone): everyone may deliver, nobody authenticates.
        self.policy = policy or AccessPolicy.of(("0.0.0.0/0", "::/0"), ())
        self._executor = concurrent.futures.ThreadPoolExecutor(DELIVERY_THREADS, thread_name_prefix="ingress-ack")
        self._disk = concurrent.futures.ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="ingress-disk")
        self._context = SessionContext(self.admission, delivery.blobs, delivery.inline_max_bytes, self._disk,
                                       self.policy)
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._sessions: weakref.WeakSet[IngressSession] = weakref.WeakSet()
        self._stopped = False

    @property
    def listening(self) -> bool:
        """Every listener bound and accepting (not draining)."""
        return (bool(self._servers) and len(self.bound) == len(self.listeners)
                and not self._context.draining.is_set() and all(s.is_serving() for s in self._servers))

    def start(self) -> None:
        logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd logs every command (AUTH too) at INFO
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
            self.stop(0)
            raise

    def _session_options(self, protocol: Dialect) -> dict[str, Any]:
        """aiosmtpd's AUTH options: PLAIN and LOGIN when users are configured (SMTP only),
        at most ``AUTH_ATTEMPTS`` per session; no mechanism at all otherwise."""
        if protocol == "lmtp" or not self.policy.auth_offered:
            return {"auth_exclude_mechanism": MECHANISMS}
        return {"authenticator": self._authenticate,
                "command_call_limit": {"AUTH": AUTH_ATTEMPTS, "*": sys.maxsize}}

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        """aiosmtpd's authenticator: the login of a matching account, never a word about the password."""
        login = None
        if mechanism in MECHANISMS and isinstance(auth_data, LoginPassword):
            login = self.policy.check(bytes(auth_data.login), bytes(auth_data.password))
        if login is None:
            metrics.FETCHER_INGRESS_REFUSALS.labels("auth_failed").inc()
            log.warning("authentication failed", extra={"reason": "auth_failed", "address": peer_ip(session)})
            return AuthResult(success=False, handled=False)
        log.info("authenticated", extra={"reason": mechanism.lower(), "address": peer_ip(session)})
        return AuthResult(success=True, auth_data=login)

    async def _listen(self, listener: Listener) -> asyncio.base_events.Server:
        handler = IngressHandler(self.addresses, self.delivery, self._executor, self.ack_timeout, listener.protocol,
                                 self.admission)
        kind = IngressLmtpSession if listener.protocol == "lmtp" else IngressSession
        options = self._session_options(listener.protocol)

        def session() -> asyncio.Protocol:
            # Counted here, not in connection_made: one accept call may take several connections.
            if not self.admission.open_session():
                metrics.FETCHER_INGRESS_DEFERRALS.labels("sessions").inc()
                log.warning("connection refused, the client will retry",
                            extra={"reason": "sessions", "count": self.admission.sessions})
                return _Refusal()
            server = kind(handler, context=self._context, data_size_limit=self.max_message_bytes,
                          enable_SMTPUTF8=True, hostname=self.hostname, ident="deskmail",
                          tls_context=self.tls_context, timeout=SESSION_TIMEOUT_SECONDS, loop=self._loop, **options)
            self._sessions.add(server)
            return server

        return await self._loop.create_server(session, listener.host, listener.port, reuse_address=True)

    def stop(self, drain_seconds: float | None = None) -> None:
        """Drain (at most ``drain_seconds``, default the server's) and close everything. Idempotent; blocks."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None and self._thread.is_alive():
            seconds = self.drain_seconds if drain_seconds is None else drain_seconds
            try:
                asyncio.run_coroutine_threadsafe(self._drain(seconds), self._loop).result(
                    timeout=seconds + GOODBYE_SECONDS + 10)
            except (concurrent.futures.TimeoutError, RuntimeError) as exc:
                log.warning("ingress did not stop cleanly", extra={"stage": STAGE, "error": str(exc)})
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            if not self._thread.is_alive():
                self._loop.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._disk.shutdown(wait=False, cancel_futures=True)
        metrics.FETCHER_INGRESS_DRAINING.set(0)
        log.info("ingress stopped", extra={"stage": STAGE})

    def _open(self) -> list[IngressSession]:
        return [s for s in self._sessions if s.transport is not None]

    async def _drain(self, seconds: float) -> None:
        for server in self._servers:
            server.close()  # no new connections; the open ones go on
        self._context.draining.set()
        metrics.FETCHER_INGRESS_DRAINING.set(1)
        waiting = [s for s in self._open() if s.waiting]
        for session in waiting:
            session.goodbye(REPLY_SHUTDOWN)
        busy = len(self._open()) - len(waiting)
        log.info("ingress draining", extra={"stage": STAGE, "count": busy, "delay": seconds})
        deadline = self._loop.time() + seconds
        while any(not s.closing for s in self._open()) and self._loop.time() < deadline:
            await asyncio.sleep(0.05)
        late = [s for s in self._open() if not s.closing]
        if late:
            log.warning("ingress drain timed out: sessions told to come back",
                        extra={"stage": STAGE, "count": len(late), "delay": seconds})
        for session in late:
            session.goodbye(REPLY_SHUTDOWN)
        end = self._loop.time() + GOODBYE_SECONDS
        while self._open() and self._loop.time() < end:  # the clients read the goodbye and close
            await asyncio.sleep(0.05)
        for session in self._open():
            if session.transport is not None:
                session.transport.close()
        await asyncio.sleep(0)


# ---------------------------------------------------------------- from the config


def tls_context(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def peer_ip(session: Session) -> str:
    """The client's IP address as SPF wants it (aiosmtpd's ``peer`` is a socket address tuple)."""
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else ""


def authenticator(settings: IngressSettings) -> Authenticator:
    """deskmail's DKIM/SPF/DMARC checks with ``ingress.dns_servers`` or the system's resolvers.

    pyspf can only use dnspython's process-wide default resolver, so it is replaced here
    (one ingress per process; in tests, the latest one started wins).
    """
    res = mailauth.resolver(settings.dns_servers, settings.dns_timeout_seconds)
    dns.resolver.default_resolver = res
    return Authenticator(settings.authserv_id, mailauth.txt_lookup(res), settings.dns_timeout_seconds)


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
    delivery = Delivery(producer, config.topics["inbound"], blobs, inline_max_bytes, ack_timeout,
                        authenticator(settings))
    policy = AccessPolicy.of(settings.allowed_networks, config.ingress_logins)
    return IngressServer(addresses, delivery, listeners, settings.max_message_bytes, context, ack_timeout,
                         max_sessions=settings.max_sessions, max_inflight_bytes=settings.max_inflight_bytes,
                         policy=policy, drain_seconds=settings.drain_seconds)
