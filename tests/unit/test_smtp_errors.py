"""The sender's SMTP error taxonomy: which failures are retried, and what they say."""

from __future__ import annotations

import smtplib
import socket
import ssl

import pytest

from services.common.smtp_failures import (
    KINDS,
    PermanentFailure,
    SmtpFailure,
    TemporaryFailure,
    classify,
    failure_for_reply,
    recipients_failure,
    scrub,
    secret_forms,
)

WHERE = "smtp.example.com:587"


def cert_error() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    exc.verify_message = "self-signed certificate"
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    return exc


def ssl_error(cls: type[ssl.SSLError], reason: str) -> ssl.SSLError:
    exc = cls(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    return exc


@pytest.mark.parametrize(("exc", "stage", "cls", "kind", "code", "text"), [
    (socket.gaierror(-2, "Name or service not known"), "connect", TemporaryFailure, "dns", None,
     "cannot resolve smtp.example.com: Name or service not known — check the host name"),
    (ConnectionRefusedError(111, "Connection refused"), "connect", TemporaryFailure, "connect", None,
     "cannot connect to smtp.example.com:587: connection refused — check host and port"),
    (ConnectionResetError(104, "Connection reset by peer"), "send", TemporaryFailure, "connect", None,
     "connection to smtp.example.com:587 failed: connection reset by peer"),
    (OSError(113, "No route to host"), "connect", TemporaryFailure, "connect", None,
     "cannot connect to smtp.example.com:587: no route to host"),
    (socket.timeout("timed out"), "connect", TemporaryFailure, "timeout", None,
     "no answer from smtp.example.com:587 in time — check host, port and firewall"),
    (TimeoutError(), "send", TemporaryFailure, "timeout", None, "no answer from smtp.example.com:587 in time"),
    (smtplib.SMTPServerDisconnected("Connection unexpectedly closed"), "send", TemporaryFailure, "disconnected",
     None, "smtp.example.com:587 closed the connection"),
    (cert_error(), "tls", PermanentFailure, "tls", None,
     "the TLS certificate of smtp.example.com:587 is not trusted: self-signed certificate — "
     "set smtp.cafile to its CA, or verify_tls: false"),
    (ssl_error(ssl.SSLError, "WRONG_VERSION_NUMBER"), "connect", PermanentFailure, "tls", None,
     "TLS handshake with smtp.example.com:587 failed: wrong version number — check `security:` "
     "(ssl for port 465, starttls for 587)"),
    (ssl_error(ssl.SSLError, "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"), "tls", TemporaryFailure, "tls", None,
     "TLS with smtp.example.com:587 failed: DECRYPTION_FAILED_OR_BAD_RECORD_MAC"),
    (ssl_error(ssl.SSLEOFError, "UNEXPECTED_EOF_WHILE_READING"), "tls", TemporaryFailure, "disconnected", None,
     "smtp.example.com:587 closed the connection during TLS"),
    (smtplib.SMTPAuthenticationError(535, b"5.7.8 Authentication credentials invalid"), "login",
     PermanentFailure, "login", 535,
     "login refused by smtp.example.com: 535 5.7.8 Authentication credentials invalid — "
     "check the login and the password (or app password)"),
    (smtplib.SMTPAuthenticationError(454, b"4.7.0 Temporary authentication failure"), "login",
     TemporaryFailure, "login", 454, "login refused by smtp.example.com: 454 4.7.0 Temporary authentication failure"),
    (smtplib.SMTPNotSupportedError("STARTTLS extension not supported by server."), "tls", PermanentFailure, "tls",
     None, "smtp.example.com:587 does not offer STARTTLS — use security: ssl or none"),
    (smtplib.SMTPNotSupportedError("SMTP AUTH extension not supported by server."), "login", PermanentFailure,
     "login", None, "smtp.example.com:587 does not offer AUTH on this connection — use security: starttls or ssl, "
                    "or remove the password"),
    (smtplib.SMTPException("No suitable authentication method found."), "login", PermanentFailure, "login", None,
     "cannot log in to smtp.example.com:587: No suitable authentication method found."),
    (smtplib.SMTPConnectError(421, b"4.3.2 Service not available"), "connect", TemporaryFailure, "connect", 421,
     "smtp.example.com:587 refused the session: 421 4.3.2 Service not available"),
    (smtplib.SMTPConnectError(554, b"5.7.1 No SMTP service here"), "connect", PermanentFailure, "connect", 554,
     "smtp.example.com:587 refused the session: 554 5.7.1 No SMTP service here"),
    (smtplib.SMTPSenderRefused(553, b"5.7.1 Sender address rejected: not owned by user", "x@example.com"), "send",
     PermanentFailure, "sender", 553,
     "smtp.example.com refused the sender x@example.com: 553 5.7.1 Sender address rejected: not owned by user"),
    (smtplib.SMTPDataError(452, b"4.3.1 Insufficient system storage"), "send", TemporaryFailure, "data", 452,
     "smtp.example.com refused the message: 452 4.3.1 Insufficient system storage"),
    (smtplib.SMTPDataError(554, b"5.7.1 Message rejected as spam"), "send", PermanentFailure, "data", 554,
     "smtp.example.com refused the message: 554 5.7.1 Message rejected as spam"),
    (smtplib.SMTPHeloError(501, b"5.5.2 Syntax: HELO hostname"), "connect", PermanentFailure, "protocol", 501,
     "smtp.example.com answered 501 5.5.2 Syntax: HELO hostname"),
])
def test_classify(exc: BaseException, stage: str, cls: type[SmtpFailure], kind: str, code: int | None,
                  text: str) -> None:
    failure = classify(exc, WHERE, stage)  # type: ignore[arg-type]
    assert type(failure) is cls
    assert failure.temporary is (cls is TemporaryFailure)
    assert (failure.kind, failure.code, failure.reply) == (kind, code, text)
    assert failure.kind in KINDS


def test_reply_codes_decide_by_class() -> None:
    for code in (421, 450, 451, 452, 454):
        assert isinstance(failure_for_reply(code, "x", "data", "send", "m"), TemporaryFailure)
    for code in (500, 550, 552, 553, 554, 250, 354, -1):
        assert isinstance(failure_for_reply(code, "x", "data", "send", "m"), PermanentFailure)


def test_every_recipient_refused_is_temporary_if_any_refusal_was() -> None:
    permanent = recipients_failure(WHERE, {"a@x.test": (550, "5.1.1 no such user"), "b@x.test": (553, "5.1.3 bad")})
    assert isinstance(permanent, PermanentFailure)
    assert (permanent.kind, permanent.code) == ("recipients", 550)
    assert permanent.reply == ("smtp.example.com refused every recipient: <a@x.test> 550 5.1.1 no such user; "
                               "<b@x.test> 553 5.1.3 bad")
    temporary = recipients_failure(WHERE, {"a@x.test": (550, "5.1.1 no such user"), "b@x.test": (451, "4.7.1 later")})
    assert isinstance(temporary, TemporaryFailure)
    assert temporary.code == 451
    via_smtplib = classify(smtplib.SMTPRecipientsRefused({"a@x.test": (451, b"4.7.1 greylisted")}), WHERE, "send")
    assert isinstance(via_smtplib, TemporaryFailure) and via_smtplib.reply.endswith("<a@x.test> 451 4.7.1 greylisted")


def test_a_failure_is_an_exception_with_its_reply_as_message() -> None:
    failure = classify(ConnectionRefusedError(111, "Connection refused"), WHERE, "connect")
    assert isinstance(failure, Exception)
    assert str(failure) == failure.reply
    assert classify(failure, WHERE, "send") is failure


def test_the_password_never_shows_in_a_reply() -> None:
    secrets = secret_forms("support", "hunter2!")
    reply = classify(smtplib.SMTPAuthenticationError(
        535, b"5.7.8 bad credentials for AHN1cHBvcnQAaHVudGVyMiE= (hunter2!) aHVudGVyMiE="), WHERE, "login").reply
    scrubbed = scrub(reply, secrets)
    assert "hunter2" not in scrubbed
    assert "AHN1cHBvcnQAaHVudGVyMiE=" not in scrubbed and "aHVudGVyMiE=" not in scrubbed
    assert scrubbed.count("***") == 3
    assert secret_forms("support", None) == []
