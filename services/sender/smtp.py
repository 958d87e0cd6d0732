"""The one module that talks SMTP (smtplib), and the sender's SMTP error taxonomy.

``connect`` opens a logged-in session (implicit TLS, STARTTLS or plain; AUTH only
when a password is configured). ``SmtpPool`` keeps one open session per
(host, port, login) and reuses it for the next mail. Every failure becomes a
``TemporaryFailure`` (retry the mail later) or a ``PermanentFailure`` (report the
mail as failed now), each with the SMTP ``code`` when the server answered, a
``kind`` from a closed set (a metric label), the ``stage`` it happened in and a
readable ``reply`` that never contains the password.

Decisions:

* A 4xx reply, a refused/reset/timed-out connection, a dropped session and DNS
  failures are temporary. A 5xx reply is permanent.
* A refused login (535 and other 5xx answers to AUTH) is permanent. It is a
  configuration problem, but retrying would not fix it: the password is read
  when the process starts, so a corrected secret takes effect only after a
  restart; repeated failed logins get accounts locked at many providers; and the
  retry window of each mail would hold up every mail behind it in the partition.
  The mail is reported failed at once with the server's answer and a hint. A
  4xx answer to AUTH (454 temporary authentication failure) stays temporary.
* An untrusted certificate, a TLS protocol mismatch (``security: ssl`` against a
  plain port) and a server without STARTTLS or AUTH are permanent for the same
  reason; other TLS failures (a handshake cut short) are temporary.
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

import base64
import contextlib
import smtplib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

from services.common.config import Smtp

Kind = Literal["dns", "connect", "timeout", "tls", "login", "disconnected", "sender", "recipients", "data", "protocol"]
KINDS: tuple[Kind, ...] = ("dns", "connect", "timeout", "tls", "login", "disconnected", "sender", "recipients",
                           "data", "protocol")
Stage = Literal["connect", "tls", "login", "send"]

# TLS failures that a retry cannot fix: the two ends do not speak the same protocol.
_TLS_MISMATCH = frozenset({"WRONG_VERSION_NUMBER", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION",
                           "NO_PROTOCOLS_AVAILABLE", "UNKNOWN_PROTOCOL", "HTTP_REQUEST"})


class SmtpFailure(Exception):
    """Sending failed. ``reply`` is safe to show and log; ``code`` is the SMTP code or None."""

    temporary = False

    def __init__(self, kind: Kind, stage: Stage, reply: str, code: int | None = None):
        super().__init__(reply)
        self.kind: Kind = kind
        self.stage: Stage = stage
        self.reply = reply
        self.code = code


class TemporaryFailure(SmtpFailure):
    """Retry later: a 4xx reply, or the server could not be reached or dropped the session."""

    temporary = True


class PermanentFailure(SmtpFailure):
    """Do not retry: a 5xx reply, a refused login, or a TLS/extension setup that cannot work."""


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


def failure_for_reply(code: int, text: str, kind: Kind, stage: Stage, message: str) -> SmtpFailure:
    """A 4xx reply is temporary, anything else (5xx, or a reply that makes no sense) permanent."""
    cls = TemporaryFailure if 400 <= code < 500 else PermanentFailure
    return cls(kind, stage, message, code)


def classify(exc: BaseException, where: str, stage: Stage) -> SmtpFailure:
    """Map an exception of an SMTP session to a Temporary- or PermanentFailure.

    ``where`` is ``host:port``; ``stage`` is what was being done (it decides the
    meaning of a refused command and of a TLS error). Pure: no I/O.
    """
    host = where.rsplit(":", 1)[0]
    if isinstance(exc, SmtpFailure):
        return exc
    if isinstance(exc, socket.gaierror):
        return TemporaryFailure("dns", "connect", f"cannot resolve {host}: {exc.strerror or exc} — check the host name")
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or exc.reason or str(exc)
        return PermanentFailure("tls", "tls", f"the TLS certificate of {where} is not trusted: {detail} — "
                                              "set smtp.cafile to its CA, or verify_tls: false")
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return TemporaryFailure("disconnected", "tls" if stage in ("connect", "tls") else stage,
                                f"{where} closed the connection during TLS")
    if isinstance(exc, ssl.SSLError):
        reason = str(exc.reason or "")
        if reason in _TLS_MISMATCH:
            return PermanentFailure("tls", "tls", f"TLS handshake with {where} failed: {reason.lower().replace('_', ' ')}"
                                                  " — check `security:` (ssl for port 465, starttls for 587)")
        return TemporaryFailure("tls", "tls", f"TLS with {where} failed: {reason or exc}")
    # smtplib's exceptions are OSErrors: they go first, the socket's own errors last.
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TemporaryFailure("disconnected", stage, f"{where} closed the connection" + (
            f" ({exc})" if str(exc) and "closed" not in str(exc).lower() else ""))
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        text = _reply_text(exc.smtp_error)
        hint = "" if 400 <= exc.smtp_code < 500 else " — check the login and the password (or app password)"
        return failure_for_reply(exc.smtp_code, text, "login", "login",
                                 f"login refused by {host}: {exc.smtp_code} {text}{hint}")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        if stage == "tls":
            return PermanentFailure("tls", "tls", f"{where} does not offer STARTTLS — use security: ssl or none")
        if stage == "login":
            return PermanentFailure("login", "login", f"{where} does not offer AUTH on this connection — "
                                                      "use security: starttls or ssl, or remove the password")
        return PermanentFailure("protocol", stage, f"{where} does not support {exc or 'a required extension'}")
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = {r: (code, _reply_text(text)) for r, (code, text) in exc.recipients.items()}
        return recipients_failure(where, refused)
    if isinstance(exc, smtplib.SMTPSenderRefused):
        text = _reply_text(exc.smtp_error)
        return failure_for_reply(exc.smtp_code, text, "sender", "send",
                                 f"{host} refused the sender {exc.sender}: {exc.smtp_code} {text}")
    if isinstance(exc, smtplib.SMTPDataError):
        text = _reply_text(exc.smtp_error)
        return failure_for_reply(exc.smtp_code, text, "data", "send", f"{host} refused the message: {exc.smtp_code} {text}")
    if isinstance(exc, smtplib.SMTPConnectError):
        text = _reply_text(exc.smtp_error)
        return failure_for_reply(exc.smtp_code, text, "connect", "connect",
                                 f"{where} refused the session: {exc.smtp_code} {text}")
    if isinstance(exc, smtplib.SMTPResponseException):  # HELO and other commands
        text = _reply_text(exc.smtp_error)
        kind: Kind = "login" if stage == "login" else "tls" if stage == "tls" else "protocol"
        return failure_for_reply(exc.smtp_code, text, kind, stage, f"{host} answered {exc.smtp_code} {text}")
    if isinstance(exc, smtplib.SMTPException):
        if stage == "login":  # "No suitable authentication method found."
            return PermanentFailure("login", "login", f"cannot log in to {where}: {exc}")
        return PermanentFailure("protocol", stage, f"SMTP failed with {where}: {exc}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        hint = " — check host, port and firewall" if stage == "connect" else ""
        return TemporaryFailure("timeout", stage, f"no answer from {where} in time{hint}")
    if isinstance(exc, ConnectionRefusedError):
        return TemporaryFailure("connect", stage, f"cannot connect to {where}: connection refused — check host and port")
    if isinstance(exc, OSError):
        detail = exc.strerror or str(exc) or type(exc).__name__
        detail = detail[:1].lower() + detail[1:]
        if stage == "connect":
            return TemporaryFailure("connect", stage, f"cannot connect to {where}: {detail}")
        return TemporaryFailure("connect", stage, f"connection to {where} failed: {detail}")
    return PermanentFailure("protocol", stage, f"unexpected SMTP failure with {where}: {type(exc).__name__}")


def recipients_failure(where: str, refused: Mapping[str, tuple[int, str]]) -> SmtpFailure:
    """Every recipient refused: temporary if any refusal was 4xx, else permanent."""
    host = where.rsplit(":", 1)[0]
    codes = [code for code, _ in refused.values()]
    temporary = next((c for c in codes if 400 <= c < 500), None)
    listed = "; ".join(f"<{r}> {code} {text}".rstrip() for r, (code, text) in refused.items())
    message = f"{host} refused every recipient: {listed}"
    if temporary is not None:
        return TemporaryFailure("recipients", "send", message, temporary)
    return PermanentFailure("recipients", "send", message, codes[0] if codes else None)


def connect(smtp: Smtp, timeout: float, *, local_hostname: str | None = None) -> smtplib.SMTP:
    """Open a session to ``smtp`` and log in (only when a password is configured).

    ``security``: ``ssl`` is implicit TLS, ``starttls`` upgrades the plain session
    before logging in and refuses to go on without it, ``none`` is plain. Raises
    ``SmtpFailure`` (its ``stage`` says how far it got); the socket is closed on
    any failure.
    """
    where = f"{smtp.host}:{smtp.port}"
    password = smtp.password.reveal() if smtp.password is not None else None
    secrets = _secret_forms(smtp.login or smtp.address, password)
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
        failure.reply = _scrub(failure.reply, secrets)
        failure.args = (failure.reply,)
        raise failure from None


@dataclass
class _Session:
    smtp: Smtp
    client: smtplib.SMTP
    last_used: float


class SmtpPool:
    """One open session per (host, port, login), reused mail after mail.

    Thread-safe (one send at a time per pool). ``timeout`` bounds every socket
    operation; ``check_after`` is the idle time after which a session is probed
    with NOOP before it is used again.
    """

    def __init__(self, timeout: float, *, check_after: float = 5.0, local_hostname: str | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.timeout = timeout
        self.check_after = check_after
        self.local_hostname = local_hostname
        self.clock = clock
        self._sessions: dict[tuple[str, int, str | None], _Session] = {}
        self._lock = threading.Lock()

    def send(self, smtp: Smtp, envelope_from: str, recipients: Sequence[str], message: bytes,
             *, smtputf8: bool = False) -> SendResult:
        """Send one message; returns when the server accepted it (250 to DATA).

        Raises ``TemporaryFailure`` or ``PermanentFailure``. Blocks for at most a
        few ``timeout`` periods (connect, TLS, login, each command).
        """
        if not recipients:
            raise PermanentFailure("recipients", "send", "the mail has no recipients")
        key = (smtp.host, smtp.port, smtp.login)
        where = f"{smtp.host}:{smtp.port}"
        secrets = _secret_forms(smtp.login or smtp.address, smtp.password.reveal() if smtp.password else None)
        with self._lock:
            session = self._reusable(key, smtp)
            reused = session is not None
            while True:
                if session is None:
                    session = _Session(smtp, connect(smtp, self.timeout, local_hostname=self.local_hostname),
                                       self.clock())
                    self._sessions[key] = session
                try:
                    result = _transact(session.client, where, envelope_from, recipients, message, smtputf8)
                except _EarlyDrop as drop:
                    self._drop(key)
                    if reused:  # a stale pooled session: nothing was sent, try a fresh one once
                        session, reused = None, False
                        continue
                    failure = drop.failure
                except SmtpFailure as exc:
                    failure = exc
                    if failure.kind in ("disconnected", "connect", "timeout", "tls"):
                        self._drop(key)
                    else:
                        session.last_used = self.clock()
                else:
                    session.last_used = self.clock()
                    return result
                failure.reply = _scrub(failure.reply, secrets)
                failure.args = (failure.reply,)
                raise failure

    def close(self) -> None:
        """QUIT every open session."""
        with self._lock:
            for key in list(self._sessions):
                self._drop(key)

    def _reusable(self, key: tuple[str, int, str | None], smtp: Smtp) -> _Session | None:
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.smtp != smtp:  # other settings for the same account (a corrected password)
            self._drop(key)
            return None
        if self.clock() - session.last_used >= self.check_after:
            try:
                code, _ = session.client.noop()
            except (OSError, smtplib.SMTPException):
                code = -1
            if code != 250:
                self._drop(key)
                return None
        return session

    def _drop(self, key: tuple[str, int, str | None]) -> None:
        session = self._sessions.pop(key, None)
        if session is not None:
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
            raise failure_for_reply(code, _reply_text(text), "sender", "send",
                                    f"{host} refused the sender {envelope_from}: {code} {_reply_text(text)}")
        refused: dict[str, tuple[int, str]] = {}
        for rcpt in recipients:
            code, text = client.rcpt(rcpt)
            if code not in (250, 251):
                refused[rcpt] = (code, _reply_text(text))
        if len(refused) == len(recipients):
            _reset(client)
            raise recipients_failure(where, refused)
        data_sent = True
        code, text = client.data(message)
        if code != 250:
            _reset(client)
            raise failure_for_reply(code, _reply_text(text), "data", "send",
                                    f"{host} refused the message: {code} {_reply_text(text)}")
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
    reply = _reply_text(text)
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


def _reply_text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())[:500]


def _secret_forms(login: str | None, password: str | None) -> list[str]:
    """The password as it could appear in a reply: plain, and inside AUTH PLAIN/LOGIN base64."""
    if not password:
        return []
    forms = [password, base64.b64encode(password.encode()).decode()]
    if login:
        forms.append(base64.b64encode(f"\0{login}\0{password}".encode()).decode())
    return forms


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@cache
def _local_hostname() -> str:
    """EHLO name: this host's FQDN, looked up once per process (it may take a DNS query)."""
    return socket.getfqdn()
