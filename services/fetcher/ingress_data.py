"""The ingress's SMTP/LMTP session: aiosmtpd with DATA read as a stream.

aiosmtpd collects DATA as a list of one ``bytearray`` per line, joins it, and hands
the handler the whole message (``handle_DATA``): a 30 MB message cost about 75 MB
while it waited for the broker (docs/benchmarks.md). ``IngressSession.smtp_DATA`` replaces
that one method (the rest of aiosmtpd's protocol is untouched): it reads the lines
the same way (``readuntil(b"\\r\\n")``, so pipelining, the 1,001-byte line limit and
``data_size_limit`` behave as before) and puts them in a :class:`Message`, which
keeps up to ``inline_max_bytes`` in memory and streams anything larger to a blob
store writer in 64 KiB chunks, on a disk thread, never on the event loop. The
handler then receives ``envelope.message`` instead of ``envelope.original_content``.

Every byte received counts against the ingress's in-flight budget
(:mod:`services.fetcher.ingress_limits`) until the transaction is answered; a
message that outgrows it, like one over ``data_size_limit``, is read to its end
and dropped. Whatever happens (552, 451, a dropped connection), the temporary
blob file is removed unless the delivery committed it.

The session also applies the access policy (services.fetcher.ingress_access: 554 at
connect outside the allowed networks, AUTH only after STARTTLS or on loopback) and
takes part in the drain on shutdown: once the server drains, a session between
transactions is answered ``421 4.3.2`` (at once when it waits for a command, else at
its next command), one in a transaction finishes it first. A goodbye never closes a
connection with unread input (the kernel would reset it, and a reset can discard the
reply before the client read it): the session writes the reply, closes its sending
side and reads on until the client closes, at most ``GOODBYE_SECONDS``.

This depends on aiosmtpd internals that ``smtp_DATA`` itself uses (``_reader``,
``_writer``, ``_call_handler_hook``, ``_set_post_data_state``) and on its command
table ``_smtp_methods``, its ``_handle_client`` and ``_auth_require_tls``: checked
against aiosmtpd 1.4.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import MISSING, SMTP, Envelope

from services.common import metrics
from services.common.blobs import BlobStore, BlobWriter
from services.fetcher.ingress_access import REPLY_NOT_ALLOWED, AccessPolicy, Admittance, Dialect
from services.fetcher.ingress_limits import REPLY_BUSY, Admission, DeferReason

log = logging.getLogger("deskmail.fetcher.ingress")

# Bytes collected before they are written to the blob store, and the step in which the budget is taken.
CHUNK_BYTES = 64 * 1024

REPLY_TOO_BIG = "552 5.3.4 Message too big: the limit is {limit} bytes"
REPLY_LINE_TOO_LONG = "500 Line too long (see RFC5321 4.5.3.1.6)"  # aiosmtpd's own text
REPLY_DEFERRED = "451 4.3.0 Temporary failure, try again later"
REPLY_SHUTDOWN = "421 4.3.2 Service shutting down, try again later"
# After a goodbye (421, 554) the session waits this long for the client to close before it does.
GOODBYE_SECONDS = 5.0

# Outcomes counted in deskmail_fetcher_ingress_sessions_total (transactions by reply class).
ACCEPTED, UNKNOWN_RECIPIENT, TOO_BIG, BUSY, DEFERRED, ERROR = (
    "accepted", "unknown_recipient", "too_big", "busy", "deferred", "error")
# Why _receive refused a message beyond the outcomes above.
TOO_LONG, STORE_FAILED = "too_long", "store_failed"


class Message:
    """The DATA of one transaction: in memory up to ``inline_max_bytes``, beyond it in a blob writer.

    ``add`` runs on the event loop; ``spill`` (blocking: disk I/O) on a disk thread.
    ``discard`` removes the temporary blob file once the last blocking operation on
    it has finished; after a ``commit`` of the writer it does nothing.
    """

    def __init__(self, blobs: BlobStore, inline_max_bytes: int):
        self.blobs = blobs
        self.inline_max_bytes = inline_max_bytes
        self.size = 0
        self.held = 0  # bytes of the in-flight budget taken for this message
        self.writer: BlobWriter | None = None
        self._buffer = bytearray()
        self._last: concurrent.futures.Future[Any] | None = None

    def add(self, line: bytes) -> None:
        self._buffer += line
        self.size += len(line)

    def drop_buffer(self) -> None:
        """Forget the bytes in memory (the message is refused; what was spilled goes at ``discard``)."""
        self._buffer = bytearray()

    def spill_due(self, final: bool = False) -> bool:
        """Whether the buffered bytes should go to the blob store now."""
        if self.size <= self.inline_max_bytes or not self._buffer:
            return False
        return final or len(self._buffer) >= CHUNK_BYTES

    def spill(self) -> None:
        """Blocking: write the buffered bytes to the blob writer (opened on the first call). Raises OSError."""
        if self.writer is None:
            self.writer = self.blobs.writer()
        self.writer.write(bytes(self._buffer))
        self._buffer.clear()

    @property
    def raw(self) -> bytes:
        """The message when it stayed in memory (only then)."""
        assert self.writer is None
        return bytes(self._buffer)

    def guard(self, future: concurrent.futures.Future[Any]) -> None:
        """Note the latest blocking operation on this message, which ``discard`` waits for."""
        self._last = future

    def discard(self) -> None:
        self.drop_buffer()
        if self._last is None:
            self._drop()
        else:  # runs now if it is done, else in its thread when it is
            self._last.add_done_callback(lambda _: self._drop())

    def _drop(self) -> None:
        if self.writer is not None:
            self.writer.abort()


class IngressEnvelope(Envelope):
    message: Message | None = None
    reserved = 0  # in-flight bytes taken at MAIL for the announced SIZE, until DATA or the reset


@dataclass(frozen=True)
class SessionContext:
    """What every ingress session shares: limits, blob store, the thread for disk writes,
    the access policy, and the drain flag (set once, when the server starts draining)."""

    admission: Admission
    blobs: BlobStore
    inline_max_bytes: int
    disk: concurrent.futures.Executor
    policy: AccessPolicy = AccessPolicy(())
    draining: threading.Event = field(default_factory=threading.Event)


class IngressSession(SMTP):
    """One SMTP connection of the ingress (see the module docstring)."""

    envelope: IngressEnvelope | None  # type: ignore[assignment]
    dialect: Dialect = "smtp"

    def __init__(self, handler: Any, *, context: SessionContext, **kwargs: Any):
        super().__init__(handler, **kwargs)
        self.context = context
        self._counted = True  # the server counted this session in its factory
        self.admittance: Admittance = "open"
        self.closing = False  # a goodbye was said: nothing more is answered
        self.in_command = False
        self._smtp_methods = {name: self._guarded(name, method) for name, method in self._smtp_methods.items()}

    def _create_envelope(self) -> IngressEnvelope:
        return IngressEnvelope()

    @property
    def in_transaction(self) -> bool:
        """Between an accepted MAIL and the end of its transaction (the reply to DATA, RSET)."""
        return self.envelope is not None and self.envelope.mail_from is not None

    @property
    def waiting(self) -> bool:
        """Idle between transactions, waiting for a command: the drain says goodbye to it at once."""
        return not self.in_command and not self.in_transaction and not self.closing

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        first = self.transport is None  # not the switch to TLS after STARTTLS
        super().connection_made(transport)
        if first:
            assert self.session is not None
            peer = self.session.peer
            ip = str(peer[0]) if isinstance(peer, tuple) and peer else ""
            self.admittance = self.context.policy.admit(ip, self.dialect)
            # AUTH without TLS only on loopback (aiosmtpd asks for STARTTLS first otherwise)
            self._auth_require_tls = not self.context.policy.may_authenticate(ip, tls=False)

    async def _handle_client(self) -> None:
        if self.admittance == "refused":
            metrics.FETCHER_INGRESS_REFUSALS.labels("network").inc()
            log.warning("connection refused: not an allowed network", extra={"reason": "network"})
            self.goodbye(REPLY_NOT_ALLOWED)
            return
        if self.context.draining.is_set():  # accepted just before the listener closed
            self.goodbye(REPLY_SHUTDOWN)
            return
        await super()._handle_client()

    def _guarded(self, name: str, method: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        """A command as aiosmtpd runs it, but answered 421 between transactions once draining."""
        async def command(arg: Any) -> None:
            if self.closing:  # the client was told goodbye: what it still sends is read and dropped
                return
            if self.context.draining.is_set() and not self.in_transaction and name != "QUIT":
                self.goodbye(REPLY_SHUTDOWN)
                return
            self.in_command = True
            try:
                await method(arg)
            finally:
                self.in_command = False
        return command

    def goodbye(self, reply: str) -> None:
        """Answer ``reply`` (421 or 554), close the sending side, and close the connection once
        the client did, or after ``GOODBYE_SECONDS``. Idempotent; never blocks."""
        transport = self.transport
        if self.closing or not isinstance(transport, asyncio.WriteTransport) or transport.is_closing():
            return
        self.closing = True
        transport.write(reply.encode("ascii") + b"\r\n")
        if transport.can_write_eof():  # not over TLS: there the close follows the timeout alone
            transport.write_eof()
        self.loop.call_later(GOODBYE_SECONDS, transport.close)

    def _set_post_data_state(self) -> None:
        """A new envelope (after DATA, RSET, EHLO): the old one's SIZE reservation is returned."""
        self._release_reservation()
        super()._set_post_data_state()

    def _release_reservation(self) -> None:
        envelope = getattr(self, "envelope", None)
        if isinstance(envelope, IngressEnvelope) and envelope.reserved:
            self.context.admission.release(envelope.reserved)
            envelope.reserved = 0

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:  # once, also when STARTTLS switched the transport
            self._counted = False
            self.context.admission.close_session()
        self._release_reservation()
        super().connection_lost(error)

    async def push(self, status: str | bytes) -> None:
        """aiosmtpd refuses an announced SIZE itself: count it and give it an enhanced code.
        After a goodbye nothing more is said."""
        if self.closing:
            return
        text = status.decode("ascii", "replace") if isinstance(status, bytes) else status
        if text.startswith("552 ") and not text.startswith("552 5."):
            status = self._too_big()
        await super().push(status)  # type: ignore[type-var]

    def _too_big(self) -> str:
        metrics.FETCHER_INGRESS.labels(TOO_BIG).inc()
        log.info("message refused", extra={"reason": TOO_BIG})
        return REPLY_TOO_BIG.format(limit=self.data_size_limit)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 (aiosmtpd's command method)
        """aiosmtpd's DATA, with the message streamed into a :class:`Message` and the budget taken as it grows."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        admission = self.context.admission
        message = Message(self.context.blobs, self.context.inline_max_bytes)
        message.held, self.envelope.reserved = self.envelope.reserved, 0  # the message holds it now
        try:
            refusal = await self._receive(message)
            if self.closing:  # the drain's deadline said 421 meanwhile: the client will send it again
                self._set_post_data_state()
                return
            if refusal is None and not self._take(message):
                refusal = BUSY
            if refusal is None:
                if message.spill_due(final=True):
                    try:
                        await self._spill(message)
                    except OSError as exc:
                        refusal = _store_failed(exc)
            if refusal is not None:
                reply = self._refusal(refusal)  # before the reset: LMTP answers once per recipient
                self._set_post_data_state()
                await self.push(reply)
                return
            self.envelope.message = message
            status = await self._call_handler_hook("DATA")
            self._set_post_data_state()
            await self.push("250 OK" if status is MISSING else status)
        finally:
            admission.release(message.held)
            message.discard()

    async def _receive(self, message: Message) -> str | None:
        """Read DATA up to the lone dot into ``message``; the refusal to answer, or None.

        The budget is taken in steps of ``CHUNK_BYTES`` (the rest by the caller), in
        ``message.held`` (the caller releases it, whatever happens). After
        a refusal the data is read on to its end and dropped, so nothing is held for it
        and the next command is read where it starts (RFC 5321 4.2.5: reply after the data).
        """
        limit = self.data_size_limit
        received = 0  # as sent, dot-stuffing included, like aiosmtpd's data_size_limit check
        refusal: str | None = None
        line_start = True
        while self.transport is not None:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.CancelledError:  # the connection was reset during DATA
                self._writer.close()
                raise
            except asyncio.LimitOverrunError as exc:  # a line beyond the stream limit: drain it
                refusal = refusal or TOO_LONG
                line = await self._reader.read(exc.consumed)
            if line_start and line == b".\r\n":
                break
            received += len(line)
            if refusal is None and limit and received > limit:
                refusal = TOO_BIG
            if refusal is None:
                message.add(line[1:] if line_start and line.startswith(b".") else line)
                if message.size - message.held >= CHUNK_BYTES and not self._take(message):  # beyond SIZE
                    refusal = BUSY
                if refusal is None and message.spill_due():
                    try:
                        await self._spill(message)
                    except OSError as exc:
                        refusal = _store_failed(exc)
                if refusal is not None:  # nothing more is kept for it
                    message.drop_buffer()
                    self.context.admission.release(message.held)
                    message.held = 0
            line_start = line.endswith(b"\r\n")
        return refusal

    def _take(self, message: Message) -> bool:
        """Hold exactly ``message.size`` bytes of the budget; False when the growth does not fit.

        Below the SIZE reserved at MAIL nothing is taken; a message smaller than
        announced gives the rest back.
        """
        admission = self.context.admission
        if message.size <= message.held:
            admission.release(message.held - message.size)
        elif not admission.take(message.size - message.held):
            return False
        message.held = message.size
        return True

    async def _spill(self, message: Message) -> None:
        future = self.context.disk.submit(message.spill)
        message.guard(future)
        await asyncio.wrap_future(future)

    def _refusal(self, refusal: str) -> str:
        if refusal == TOO_BIG:
            reply = self._too_big()
        elif refusal == TOO_LONG:
            reply = REPLY_LINE_TOO_LONG
        else:
            reason: DeferReason = "inflight_bytes" if refusal == BUSY else "broker"
            metrics.FETCHER_INGRESS_DEFERRALS.labels(reason).inc()
            metrics.FETCHER_INGRESS.labels(BUSY if refusal == BUSY else DEFERRED).inc()
            log.warning("message deferred, the client will retry", extra={"reason": reason})
            reply = REPLY_BUSY if refusal == BUSY else REPLY_DEFERRED
        # LMTP answers the data once per accepted recipient (RFC 2033 4.2)
        assert self.envelope is not None
        return "\r\n".join([reply] * (len(self.envelope.rcpt_tos) if isinstance(self, LMTP) else 1))


def _store_failed(exc: OSError) -> str:
    log.warning("the blob store cannot take the message", extra={"reason": "broker", "error": str(exc)})
    return STORE_FAILED


class IngressLmtpSession(IngressSession, LMTP):
    """One LMTP connection: LHLO instead of EHLO, otherwise the same session."""

    dialect: Dialect = "lmtp"
