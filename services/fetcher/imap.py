"""The one place an IMAP client is built, and the fetcher's IMAP error taxonomy.

``connect`` opens a session (implicit TLS, STARTTLS or plain) and logs in. Every
connection or protocol failure, here or later in the session (``guarded``), is
turned by ``classify`` into a ``MailboxError`` whose ``reason`` comes from a
closed set (it is a metric label) and whose message is readable and never
contains the password. Anything else is a programming error and propagates.

The rest of the fetcher talks to the session through ``MailClient``, the small
slice of ``imapclient.IMAPClient`` it uses, so tests can swap in another client.

A session from ``connect`` enters IDLE only once it has caught up with its folder,
and for a second after mail came in it looks for more itself (``CatchUp``): mail
that came in while a batch was being delivered is found within 0.1 s, as if the
server had announced it, instead of after the server's own notice (Dovecot sends it
half a second after the first change; a change made after the last SEARCH but
before IDLE began it never announces at all).
"""

from __future__ import annotations

import contextlib
import imaplib
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, Protocol

from imapclient import IMAPClient
from imapclient.exceptions import CapabilityError, LoginError

from services.common.config import Imap
from services.common.retry import SYSTEM_CLOCK, Clock

Reason = Literal["dns", "connect", "tls", "login", "select", "protocol", "timeout"]
REASONS: tuple[Reason, ...] = ("dns", "connect", "tls", "login", "select", "protocol", "timeout")


class MailboxError(Exception):
    """A mailbox session failed; ``reason`` is one of ``REASONS``, ``message`` is safe to log."""

    def __init__(self, reason: Reason, message: str):
        super().__init__(f"{reason}: {message}")
        self.reason: Reason = reason
        self.message = message


class MailClient(Protocol):
    """What the fetcher needs from an IMAP session (a subset of ``IMAPClient``)."""

    def has_capability(self, capability: str) -> bool: ...
    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]: ...
    def folder_exists(self, folder: str) -> bool: ...
    def create_folder(self, folder: str) -> Any: ...
    def search(self, criteria: Any = "ALL", charset: str | None = None) -> list[int]: ...
    def fetch(self, messages: Sequence[int], data: Sequence[str], modifiers: Any = None) -> dict[int, dict[bytes, Any]]: ...
    def add_flags(self, messages: Sequence[int], flags: Sequence[str | bytes], silent: bool = False) -> Any: ...
    def move(self, messages: Sequence[int], folder: str) -> Any: ...
    def copy(self, messages: Sequence[int], folder: str) -> Any: ...
    def uid_expunge(self, messages: Sequence[int]) -> Any: ...
    def expunge(self, messages: Sequence[int] | None = None) -> Any: ...
    def idle(self) -> Any: ...
    def idle_check(self, timeout: float | None = None) -> list[tuple[Any, ...]]: ...
    def idle_done(self) -> Any: ...
    def logout(self) -> Any: ...
    def shutdown(self) -> None: ...


ClientFactory = Callable[[Imap, float], MailClient]
"""Builds a logged-in session: ``connect`` in production, a fake in unit tests."""


def tls_context(imap: Imap) -> ssl.SSLContext:
    """Verifying context (system CAs, or ``imap.cafile``); verification off only if asked."""
    context = ssl.create_default_context(cafile=imap.cafile)
    if not imap.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _quiet(client: Any) -> None:
    """Turn off imaplib's debug output, which imapclient sets to its highest level
    for a logger of its own: imaplib then formats every line it reads (megabytes of
    repr per batch of mail) for a logger deskmail never enables. It was two thirds
    of the fetcher's IMAP client time."""
    inner = getattr(client, "_imap", None)
    if inner is not None and hasattr(inner, "debug"):
        inner.debug = 0


def connect(imap: Imap, timeout: float, *, client_class: Callable[..., Any] = IMAPClient) -> MailClient:
    """Open a session to ``imap`` and log in.

    ``security``: ``ssl`` is implicit TLS on connect, ``starttls`` upgrades a plain
    connection before login (and refuses to log in without it), ``none`` is plain.
    Raises ``MailboxError`` for connection, TLS, login and protocol failures;
    anything else (a programming error) propagates as it is. The socket is closed
    on any failure.
    """
    where = f"{imap.host}:{imap.port}"
    password = imap.password.reveal()
    context = None
    if imap.security != "none":
        try:
            context = tls_context(imap)
        except (OSError, ssl.SSLError) as exc:
            raise MailboxError("tls", f"cannot load the CA file {imap.cafile}: {getattr(exc, 'strerror', None) or exc}") from None
    client: Any = None
    stage: Reason = "connect"
    try:
        if imap.security == "ssl":
            stage = "tls"  # the TLS handshake happens inside the constructor
            client = client_class(imap.host, port=imap.port, ssl=True, ssl_context=context, timeout=timeout)
        else:
            client = client_class(imap.host, port=imap.port, ssl=False, timeout=timeout)
            if imap.security == "starttls":
                stage = "tls"
                try:
                    client.starttls(context)
                except CapabilityError:
                    raise MailboxError("tls", f"{where} does not offer STARTTLS") from None
        _quiet(client)
        stage = "login"
        client.login(imap.login, password)
        return CatchUp(client)  # type: ignore[return-value]
    except BaseException as exc:
        if client is not None:
            with contextlib.suppress(Exception):
                client.shutdown()
        if not isinstance(exc, SESSION_ERRORS) and not malformed_reply(exc):
            raise  # a programming error (or Ctrl-C): not the server's doing, so no reconnect
        error = classify(exc, where, during=stage)
        raise MailboxError(error.reason, _scrub(error.message, password)) from None


def classify(exc: BaseException, where: str = "", during: Reason | None = None) -> MailboxError:
    """Map any exception of an IMAP session to a ``MailboxError`` with a reason.

    ``during`` is what was being attempted (``tls`` while handshaking, ``login``
    while logging in); it decides the reason of otherwise ambiguous errors.
    """
    at = f" ({where})" if where else ""
    if isinstance(exc, MailboxError):
        return exc
    if isinstance(exc, socket.gaierror):
        return MailboxError("dns", f"cannot resolve the IMAP host{at}: {exc.strerror or exc}")
    if isinstance(exc, (ssl.SSLZeroReturnError, ssl.SSLEOFError)) and during not in ("tls", "connect"):
        return MailboxError("connect", f"the server closed the TLS connection{at}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return MailboxError("tls", f"TLS certificate not trusted{at}: {_ssl_detail(exc)}")
    if isinstance(exc, ssl.SSLError):
        return MailboxError("tls", f"TLS failed{at}: {_ssl_detail(exc)}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return MailboxError("timeout", f"no answer from the IMAP server in time{at}")
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc) or type(exc).__name__
        return MailboxError("connect", f"connection to the IMAP server failed{at}: {detail}")
    if isinstance(exc, LoginError):
        return MailboxError("login", f"login rejected{at}: {_text(exc)}")
    if isinstance(exc, imaplib.IMAP4.readonly):
        return MailboxError("select", f"the folder is read-only{at}")
    if isinstance(exc, imaplib.IMAP4.abort):
        text = _text(exc)
        if "socket error" in text or "EOF" in text:
            return MailboxError("connect", f"connection to the IMAP server lost{at}: {text}")
        return MailboxError("protocol", f"IMAP session aborted{at}: {text}")
    if isinstance(exc, imaplib.IMAP4.error):
        if during == "login":
            return MailboxError("login", f"login failed{at}: {_text(exc)}")
        return MailboxError("protocol", f"IMAP command failed{at}: {_text(exc)}")
    if during == "tls":
        return MailboxError("tls", f"TLS setup failed{at}: {type(exc).__name__}")
    return MailboxError("protocol", f"unexpected IMAP failure{at}: {type(exc).__name__}: {_text(exc)}")


# Exceptions that end a session and mean "reconnect": socket and TLS errors (OSError)
# and IMAP errors. imaplib.IMAP4.error is also the base of every imapclient exception
# (IMAPClientError is that class; ProtocolError, CapabilityError, LoginError,
# IllegalStateError, InvalidCriteriaError derive from it; abort and readonly too).
SESSION_ERRORS: tuple[type[Exception], ...] = (MailboxError, OSError, imaplib.IMAP4.error)

# Where imapclient lets a malformed server reply out as a bare ValueError or TypeError
# instead of its ProtocolError (its parser wraps most, not these): the module of the
# innermost frame, or (module, function). parse_message_list rejects a SEARCH reply
# that is no list of numbers (ValueError, or UnicodeDecodeError on 8-bit bytes);
# _process_select_response calls int() on EXISTS/UIDVALIDITY... and slices FLAGS as
# the server sent them (ValueError, or TypeError when the value is missing); imaplib
# decodes the CAPABILITY reply as ASCII while connecting (UnicodeDecodeError).
_REPLY_PARSER_MODULES = frozenset({"imapclient.response_parser", "imapclient.response_lexer",
                                   "imapclient.response_types"})
_REPLY_PARSER_FUNCTIONS = frozenset({("imapclient.imapclient", "_process_select_response"),
                                     ("imaplib", "_get_capabilities")})
_REPLY_PARSE_ERRORS = (ValueError, TypeError, IndexError)


def malformed_reply(exc: BaseException) -> bool:
    """Whether ``exc`` is imapclient failing to parse what the server sent.

    Decided by where it was raised, not by its type alone: a ValueError or
    TypeError that imapclient raises over the arguments it was given (ours), or
    that our own code raises, is a programming error and must not look like a
    misbehaving server.
    """
    if not isinstance(exc, _REPLY_PARSE_ERRORS):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    module = tb.tb_frame.f_globals.get("__name__", "")
    return module in _REPLY_PARSER_MODULES or (module, tb.tb_frame.f_code.co_name) in _REPLY_PARSER_FUNCTIONS


def guarded(client: MailClient) -> MailClient:
    """Wrap a session so that a malformed server reply that imapclient could not
    parse becomes ``MailboxError("protocol")``: a misbehaving server then ends only
    its own session, which reconnects.

    Connection and IMAP errors (``SESSION_ERRORS``) pass through as they are. Any
    other exception (a TypeError or AttributeError, a bug in our code or in the
    client) propagates unchanged and stops the worker, instead of becoming a
    silent reconnect loop.
    """
    return _Guarded(client)  # type: ignore[return-value]


class _Guarded:
    def __init__(self, client: MailClient):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except SESSION_ERRORS:
                raise
            except Exception as exc:
                if not malformed_reply(exc):
                    raise
                raise MailboxError("protocol", f"unexpected reply to {name}: {type(exc).__name__}: {_text(exc)}") from exc

        return call


# After a SEARCH found mail, more is likely to follow: the session looks for it this
# often, for this long, before it IDLEs (Dovecot announces a change in IDLE only half a
# second after it). Looking at once instead measured 3 mails per cycle at 100 mails/s and
# 60% more CPU per mail over the pipeline (fetcher, Dovecot, router, broker); every
# 0.1 s bounds a busy mailbox to about 8 cycles a second.
LOOK_SECONDS = 0.1
BUSY_SECONDS = 1.0


class CatchUp:
    """A session that enters IDLE only when no mail came in since its last SEARCH,
    and that looks for mail itself for a moment after mail came in.

    It remembers the lowest UID the last SELECT and SEARCH have not seen (the
    SELECT's UIDNEXT, or one past the highest UID the SEARCH found). To look is to
    bring the session's view up to date (NOOP) and ask for any message at or above
    that UID (two round trips). Within ``BUSY_SECONDS`` after a SEARCH that found
    mail, ``idle`` sends no IDLE and ``idle_check`` looks every ``LOOK_SECONDS``,
    answering ``[(count, b"EXISTS")]`` as soon as there is such mail, so the caller
    rescans; it sends IDLE when that time is over. Otherwise ``idle`` looks once
    first: if there is such mail, it sends no IDLE and the next ``idle_check``
    answers at once. So a mailbox that keeps receiving mail is rescanned every
    ``LOOK_SECONDS`` or so, and a quiet one IDLEs as before. ``idle_check`` never
    returns empty before its timeout. Without a UIDNEXT from the server (RFC 3501
    requires one) it IDLEs at once. A false alarm (the new mail was already marked,
    or deleted) costs one empty rescan. Errors are the session's.
    """

    def __init__(self, client: Any, clock: Clock = SYSTEM_CLOCK):
        self._client = client
        self._clock = clock
        self._unseen_from: int | None = None  # the lowest UID neither SELECT nor SEARCH has seen
        self._busy_until = 0.0  # monotonic time until which the session looks instead of IDLEing
        self._state: Literal["off", "pending", "looking", "idling"] = "off"
        self._pending: list[tuple[Any, ...]] = []
        self._never = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def select_folder(self, folder: str, readonly: bool = False) -> dict[bytes, Any]:
        info: dict[bytes, Any] = self._client.select_folder(folder, readonly=readonly)
        uidnext = info.get(b"UIDNEXT")
        self._unseen_from = uidnext if isinstance(uidnext, int) and uidnext > 0 else None
        return info

    def search(self, criteria: Any = "ALL", charset: str | None = None) -> list[int]:
        found: list[int] = self._client.search(criteria, charset)
        if found and self._unseen_from is not None:
            self._unseen_from = max(self._unseen_from, max(int(uid) for uid in found) + 1)
            self._busy_until = self._clock.monotonic() + BUSY_SECONDS
        return found

    def idle(self) -> Any:
        if self._unseen_from is not None and self._clock.monotonic() < self._busy_until:
            self._state = "looking"
            return None
        if self._announce(self._newer()):
            return None
        return self._start_idle()

    def idle_check(self, timeout: float | None = None) -> list[tuple[Any, ...]]:
        if self._state == "pending":
            self._state = "off"
            return self._pending
        if self._state == "looking":
            return self._look(timeout)
        return self._client.idle_check(timeout=timeout)  # type: ignore[no-any-return]

    def idle_done(self) -> Any:
        idling, self._state = self._state == "idling", "off"
        return self._client.idle_done() if idling else None

    def _look(self, timeout: float | None) -> list[tuple[Any, ...]]:
        """Look every LOOK_SECONDS until mail, the timeout, or the end of the busy time
        (then IDLE for what is left of the timeout)."""
        end = None if timeout is None else self._clock.monotonic() + timeout
        while True:
            now = self._clock.monotonic()
            if now >= self._busy_until:
                self._start_idle()
                left = None if end is None else max(0.0, end - now)
                return self._client.idle_check(timeout=left)  # type: ignore[no-any-return]
            if end is not None and now >= end:
                return []
            self._clock.wait(self._never, min(LOOK_SECONDS, self._busy_until - now,
                                              LOOK_SECONDS if end is None else end - now))
            newer = self._newer()
            if newer:
                self._state = "off"
                return [(len(newer), b"EXISTS")]

    def _announce(self, newer: list[int]) -> bool:
        if not newer:
            return False
        self._state, self._pending = "pending", [(len(newer), b"EXISTS")]
        return True

    def _start_idle(self) -> Any:
        answer = self._client.idle()
        self._state = "idling"
        return answer

    def _newer(self) -> list[int]:
        """UIDs at or above ``_unseen_from`` in the folder now. ``UID n:*`` also matches
        the highest UID when it is below n, hence the filter."""
        if self._unseen_from is None:
            return []
        self._client.noop()  # SEARCH answers from the session's view: bring it up to date first
        found = self._client.search(["UID", f"{self._unseen_from}:*"])
        return [int(uid) for uid in found if int(uid) >= self._unseen_from]


def select(client: MailClient, folder: str) -> dict[bytes, Any]:
    """SELECT ``folder`` read-write; a refused or read-only folder is reason ``select``."""
    try:
        return client.select_folder(folder, readonly=False)
    except imaplib.IMAP4.readonly:
        raise MailboxError("select", f"folder {folder!r} opened read-only; the fetcher must mark mail") from None
    except imaplib.IMAP4.abort:
        raise
    except imaplib.IMAP4.error as exc:
        raise MailboxError("select", f"cannot open folder {folder!r}: {_text(exc)}") from None


def _ssl_detail(exc: ssl.SSLError) -> str:
    return str(getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or _text(exc))


def _text(exc: BaseException) -> str:
    text = str(exc)
    if len(text) >= 3 and text[:2] in ("b'", 'b"') and text[-1] == text[1]:
        text = text[2:-1]  # imaplib puts the server's bytes reply in the message as a repr
    return text[:300] if text else type(exc).__name__


def _scrub(message: str, secrets: Iterable[str] | str) -> str:
    for secret in [secrets] if isinstance(secrets, str) else secrets:
        if secret:
            message = message.replace(secret, "***")
    return message
