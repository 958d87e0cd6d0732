"""The SMTP error taxonomy (the sender, the test mail and check connection share it):
which failures are retried, and what they say.

Every failure of an SMTP session becomes a ``TemporaryFailure`` (retry the mail
later) or a ``PermanentFailure`` (report the mail as failed now), each with the
SMTP ``code`` when the server answered, a ``kind`` from a closed set (a metric
label), the ``stage`` it happened in and a readable ``reply`` that never
contains the password (``scrub``). ``classify`` is pure: no I/O.

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
"""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
from collections.abc import Iterable, Mapping
from typing import Literal

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
        text = reply_text(exc.smtp_error)
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
        refused = {r: (code, reply_text(text)) for r, (code, text) in exc.recipients.items()}
        return recipients_failure(where, refused)
    if isinstance(exc, smtplib.SMTPSenderRefused):
        text = reply_text(exc.smtp_error)
        return failure_for_reply(exc.smtp_code, text, "sender", "send",
                                 f"{host} refused the sender {exc.sender}: {exc.smtp_code} {text}")
    if isinstance(exc, smtplib.SMTPDataError):
        text = reply_text(exc.smtp_error)
        return failure_for_reply(exc.smtp_code, text, "data", "send", f"{host} refused the message: {exc.smtp_code} {text}")
    if isinstance(exc, smtplib.SMTPConnectError):
        text = reply_text(exc.smtp_error)
        return failure_for_reply(exc.smtp_code, text, "connect", "connect",
                                 f"{where} refused the session: {exc.smtp_code} {text}")
    if isinstance(exc, smtplib.SMTPResponseException):  # HELO and other commands
        text = reply_text(exc.smtp_error)
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


def reply_text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())[:500]


def secret_forms(login: str | None, password: str | None) -> list[str]:
    """The password as it could appear in a reply: plain, and inside AUTH PLAIN/LOGIN base64."""
    if not password:
        return []
    forms = [password, base64.b64encode(password.encode()).decode()]
    if login:
        forms.append(base64.b64encode(f"\0{login}\0{password}".encode()).decode())
    return forms


def scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
