"""The one module that talks SMTP (smtplib): opening sessions and the session pool.

``connect`` opens a logged-in session (implicit TLS, STARTTLS or plain; AUTH only
when a password is configured). ``SmtpPool`` keeps up to ``sessions`` open
sessions per (host, port, login) and reuses them for the next mails. Failures are raised as the
``services.common.smtp_failures`` taxonomy describes.

Decisions:

* Some recipients refused, others accepted: the mail is sent to the accepted
  ones and the result is a success whose ``refused`` names the others and whose
  reply lists them. Sending again for a refused recipient would deliver a second
  copy to everyone who already has it. Every recipient refused: temporary if any
  refusal was 4xx, else permanent.
* A session is reused only while it works: after ``check_after`` idle seconds
  it is probed with NOOP, and a reused session that fails before DATA was sent
  is replaced by a new one and the mail tried once more (nothing was sent yet).
  A failure after DATA was sent is reported as such and not repeated here.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

from services.common.config import Smtp
from services.common.smtp_failures import (
    PermanentFailure,
    SmtpFailure,
    Stage,
    classify,
    failure_for_reply,
    recipients_failure,
    reply_text,
    scrub,
    secret_forms,
)


@dataclass(frozen=True)
class SendResult:
    """The server took the mail: ``code`` and ``reply`` of the final answer to DATA.

    ``refused`` maps recipients the server refused (while accepting others) to
    their (code, reply); they are also listed at the end of ``reply``.
    """

    code: int
    reply: str
    refused: Mapping[str, tuple[int, str]] = field(default_factory=dict)


def tls_context(smtp: Smtp) -> ssl.SSLContext:
    """Verifying context (system CAs, or ``smtp.cafile``); verification off only if asked."""
    context = ssl.create_default_context(cafile=smtp.cafile)
    if not smtp.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def connect(smtp: Smtp, timeout: float, *, local_hostname: str | None = None) -> smtplib.SMTP:
    """Open a session to ``smtp`` and log in (only when a password is configured).

    ``security``: ``ssl`` is implicit TLS, ``starttls`` upgrades the plain session
    before logging in and refuses to go on without it, ``none`` is plain. Raises
    ``SmtpFailure`` (its ``stage`` says how far it got); the socket is closed on
    any failure.
    """
    where = f"{smtp.host}:{smtp.port}"
    password = smtp.password.reveal() if smtp.password is not None else None
    secrets = secret_forms(smtp.login or smtp.address, password)
    context = None
    if smtp.security != "none":
        try:
            context = tls_context(smtp)
        except (OSError, ssl.SSLError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc)
            raise PermanentFailure("tls", "tls", f"cannot load the CA file {smtp.cafile}: {detail}") from None
    name = local_hostname or _local_hostname()
    client: smtplib.SMTP | None = None
    stage: Stage = "connect"
    try:
        if smtp.security == "ssl":
            client = smtplib.SMTP_SSL(smtp.host, smtp.port, local_hostname=name, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(smtp.host, smtp.port, local_hostname=name, timeout=timeout)
        client.ehlo_or_helo_if_needed()
        if smtp.security == "starttls":
            stage = "tls"
            client.starttls(context=context)
            client.ehlo()
        if password is not None:
            stage = "login"
            client.login(smtp.login or smtp.address, password)
        return client
    except (OSError, smtplib.SMTPException) as exc:
        if client is not None:
            _close(client)
        failure = classify(exc, where, stage)
        failure.reply = scrub(failure.reply, secrets)
        failure.args = (failure.reply,)
        raise failure from None


@dataclass
class _Session:
    smtp: Smtp
    client: smtplib.SMTP
    last_used: float


_Key = tuple[str, int, str | None]


class SmtpPool:
    """Up to ``sessions`` open sessions per (host, port, login), reused mail after mail.

    Thread-safe: each send takes an idle session of its server (the one used last,
    so sequential sends keep to one session), opens a new one while fewer than
    ``sessions`` are open, or waits for one to come back; one session carries one
    mail at a time. ``timeout`` bounds every socket operation; ``check_after`` is
    the idle time after which a session is probed with NOOP before it is used again.
    """

    def __init__(self, timeout: float, *, sessions: int = 1, check_after: float = 5.0,
                 local_hostname: str | None = None, clock: Callable[[], float] = time.monotonic):
        if sessions < 1:
            raise ValueError("an SMTP pool needs at least one session per server")
        self.timeout = timeout
        self.sessions = sessions
        self.check_after = check_after
        self.local_hostname = local_hostname
        self.clock = clock
        self._idle: dict[_Key, list[_Session]] = {}
        self._open: dict[_Key, int] = {}  # sessions open or being opened, idle or carrying a mail
        self._closed = False
        self._lock = threading.Condition()

    def send(self, smtp: Smtp, envelope_from: str, recipients: Sequence[str], message: bytes,
             *, smtputf8: bool = False) -> SendResult:
        """Send one message; returns when the server accepted it (250 to DATA).

        Raises ``TemporaryFailure`` or ``PermanentFailure``. Blocks for at most a
        few ``timeout`` periods (connect, TLS, login, each command), plus the wait
        for a free session when ``sessions`` sends to this server are under way.
        """
        if not recipients:
            raise PermanentFailure("recipients", "send", "the mail has no recipients")
        key = (smtp.host, smtp.port, smtp.login)
        where = f"{smtp.host}:{smtp.port}"
        secrets = secret_forms(smtp.login or smtp.address, smtp.password.reveal() if smtp.password else None)
        session = self._take(key, smtp)
        reused = session is not None
        try:
            while True:
                if session is None:
                    session = _Session(smtp, connect(smtp, self.timeout, local_hostname=self.local_hostname),
                                       self.clock())
                try:
                    result = _transact(session.client, where, envelope_from, recipients, message, smtputf8)
                except _EarlyDrop as drop:
                    _close(session.client)
                    session = None
                    if reused:  # a stale pooled session: nothing was sent, try a fresh one once
                        reused = False
                        continue
                    failure = drop.failure
                except SmtpFailure as exc:
                    failure = exc
                    if failure.kind in ("disconnected", "connect", "timeout", "tls"):
                        _close(session.client)
                        session = None
                    else:
                        session.last_used = self.clock()
                else:
                    session.last_used = self.clock()
                    return result
                failure.reply = scrub(failure.reply, secrets)
                failure.args = (failure.reply,)
                raise failure
        finally:
            self._give_back(key, session)

    def close(self) -> None:
        """QUIT every idle session; a session still carrying a mail is closed when it comes back."""
        with self._lock:
            self._closed = True
            idle = [session for sessions in self._idle.values() for session in sessions]
            for key, sessions in self._idle.items():
                self._open[key] -= len(sessions)
            self._idle.clear()
            self._lock.notify_all()
        for session in idle:
            _close(session.client)

    def _take(self, key: _Key, smtp: Smtp) -> _Session | None:
        """A working idle session for ``key``, or None with a slot reserved for a new one."""
        while True:
            with self._lock:
                while True:
                    idle = self._idle.get(key)
                    if idle:
                        session = idle.pop()
                        break
                    if self._open.get(key, 0) < self.sessions:
                        self._open[key] = self._open.get(key, 0) + 1
                        return None
                    self._lock.wait()
            if self._usable(session, smtp):
                return session
            _close(session.client)  # its slot goes to the next idle session or a new one
            with self._lock:
                self._open[key] -= 1

    def _usable(self, session: _Session, smtp: Smtp) -> bool:
        if session.smtp != smtp:  # other settings for the same account (a corrected password)
            return False
        if self.clock() - session.last_used < self.check_after:
            return True
        try:
            code, _ = session.client.noop()
        except (OSError, smtplib.SMTPException):
            return False
        return code == 250

    def _give_back(self, key: _Key, session: _Session | None) -> None:
        """Return ``session`` to the idle sessions (None: its slot is free again)."""
        with self._lock:
            if session is not None and not self._closed:
                self._idle.setdefault(key, []).append(session)
            else:
                self._open[key] -= 1
            self._lock.notify_all()
        if session is not None and self._closed:
            _close(session.client)


class _EarlyDrop(Exception):
    """The session failed before DATA: the message was not sent."""

    def __init__(self, failure: SmtpFailure):
        super().__init__(failure.reply)
        self.failure = failure


def _transact(client: smtplib.SMTP, where: str, envelope_from: str, recipients: Sequence[str],
              message: bytes, smtputf8: bool) -> SendResult:
    host = where.rsplit(":", 1)[0]
    data_sent = False
    try:
        options: list[str] = []
        if smtputf8:
            if not client.has_extn("smtputf8"):
                raise PermanentFailure("protocol", "send", f"{where} does not support SMTPUTF8, which an address "
                                                           "of this mail needs")
            options.append("SMTPUTF8")
        if client.has_extn("size"):
            options.append(f"SIZE={len(message)}")
        code, text = client.mail(envelope_from, options)
        if code != 250:
            _reset(client)
            raise failure_for_reply(code, reply_text(text), "sender", "send",
                                    f"{host} refused the sender {envelope_from}: {code} {reply_text(text)}")
        refused: dict[str, tuple[int, str]] = {}
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, reply_text(text))
        if len(refused) == len(recipients):
            _reset(client)
            raise recipients_failure(where, refused)
        data_sent = True
        code, text = client.data(message)
        if code != 250:
            _reset(client)
            raise failure_for_reply(code, reply_text(text), "data", "send",
                                    f"{host} refused the message: {code} {reply_text(text)}")
    except SmtpFailure:
        raise
    except (OSError, smtplib.SMTPException) as exc:
        failure = classify(exc, where, "send")
        if not data_sent and failure.kind in ("disconnected", "connect", "timeout"):
            raise _EarlyDrop(failure) from None
        if data_sent:
            failure.reply += " (after the message was sent; the server may have taken it)"
            failure.args = (failure.reply,)
        raise failure from None
    reply = reply_text(text)
    if refused:
        reply += "; refused: " + "; ".join(f"<{r}> {c} {t}".rstrip() for r, (c, t) in refused.items())
    return SendResult(code, reply, refused)


def _reset(client: smtplib.SMTP) -> None:
    """RSET after a refused transaction so the session can carry the next mail.

    If that fails the session is closed; the pool then notices at the next mail,
    before anything is sent, and opens a new one.
    """
    try:
        code, _ = client.rset()
    except (OSError, smtplib.SMTPException):
        code = -1
    if code != 250:
        _close(client)


def _close(client: smtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        client.quit()
    with contextlib.suppress(Exception):
        client.close()


@cache
def _local_hostname() -> str:
    """EHLO name: this host's FQDN, looked up once per process (it may take a DNS query)."""
    return socket.getfqdn()
