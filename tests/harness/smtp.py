"""A real SMTP submission server for tests: aiosmtpd with TLS and AUTH.

:class:`SmtpServer` listens on a fixed loopback port (picked once, kept across
:meth:`SmtpServer.stop` / :meth:`SmtpServer.start`, so a test can take the server
down in the middle of a send and bring it back where the sender expects it).

* ``tls="starttls"`` (default): plain port, STARTTLS required before anything
  else, AUTH (PLAIN, LOGIN) offered and required only after STARTTLS.
* ``tls="implicit"``: SMTPS, TLS from the first byte, AUTH required.

The certificate is self-signed for ``localhost`` and ``127.0.0.1``
(:attr:`SmtpServer.cafile`). Users are ``{login: password}``.

Accepted mail is delivered into Dovecot when a :class:`DovecotServer` is given:
each recipient must have been added with :meth:`SmtpServer.add_mailbox` (the
Dovecot login is the address) and the message is APPENDed to its INBOX before the
server answers 250, like an LMTP hand-off. Without Dovecot, accepted mail is kept
in :attr:`SmtpServer.messages`. :meth:`SmtpServer.refuse` makes the server answer
a chosen recipient with a given reply (451 or 550, say); :meth:`SmtpServer.drop_at_data`
drops the session carrying a mail to one recipient at the end of its DATA.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, cast

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from services.localbroker import free_port
from tests.harness.dovecot import DovecotServer

__all__ = ["Received", "SmtpServer"]

# aiosmtpd logs every session at INFO, and warns about AUTH without STARTTLS even
# under SMTPS.
logging.getLogger("mail.log").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Received:
    """One accepted transaction."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    data: bytes
    login: str | None


def make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 (openssl CLI)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    cmd = [
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "7", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
        "-addext", "extendedKeyUsage=serverAuth",
        "-keyout", str(key), "-out", str(cert),
    ]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"openssl could not make a certificate (Debian package openssl):\n{result.stderr}")
    key.chmod(0o600)
    return cert, key


class _Handler:
    def __init__(self, server: "SmtpServer"):
        self.server = server

    async def handle_RCPT(self, smtp: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.server._refusals.get(address.lower())
        if reply is not None:
            return reply
        if self.server.dovecot is not None and address.lower() not in self.server._mailboxes:
            return f"550 5.1.1 <{address}>: Recipient address rejected: no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        if self.server._take_drop(envelope.rcpt_tos):
            cast(asyncio.Transport, smtp.transport).abort()  # the client never sees a reply
            return "421 4.3.0 connection dropped"
        data = envelope.original_content or envelope.content or b""
        if isinstance(data, str):
            data = data.encode("utf-8")
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        received = Received(envelope.mail_from or "", tuple(envelope.rcpt_tos), bytes(data), login)
        if self.server.dovecot is not None:
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, self.server._deliver, received)
            except Exception as exc:
                return f"451 4.3.0 delivery to Dovecot failed: {type(exc).__name__}"
        with self.server._lock:
            self.server.messages.append(received)
        return "250 2.0.0 Ok: queued"


class _Controller(Controller):
    """Controller that remembers its sessions, so stop() can drop them."""

    def __init__(self, *args: Any, on_session: Callable[[], None], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.on_session = on_session
        self.sessions: list[SMTP] = []

    def factory(self) -> SMTP:
        with warnings.catch_warnings():  # "Requiring AUTH while not requiring TLS": it is TLS (SMTPS)
            warnings.simplefilter("ignore", UserWarning)
            smtpd = super().factory()
        self.sessions.append(smtpd)
        self.on_session()
        return smtpd


class SmtpServer:
    """aiosmtpd on ``host:port`` with TLS and AUTH required; see the module docstring.

    :param users: ``{login: password}`` accepted by AUTH.
    :param dovecot: deliver accepted mail into this Dovecot (recipients via :meth:`add_mailbox`).
    :param tls: ``"starttls"`` or ``"implicit"``.
    """

    def __init__(
        self,
        users: dict[str, str] | None = None,
        *,
        dovecot: DovecotServer | None = None,
        tls: Literal["starttls", "implicit"] = "starttls",
        host: str = "127.0.0.1",
        port: int | None = None,
    ) -> None:
        self.users = dict(users or {})
        self.dovecot = dovecot
        self.tls = tls
        self.host = host
        self.port = port or free_port(host)
        self.messages: list[Received] = []
        self._mailboxes: dict[str, str] = {}
        self._refusals: dict[str, str] = {}
        self._drops: dict[str, int] = {}
        self._lock = threading.Lock()
        self._dir = Path(tempfile.mkdtemp(prefix="smtpd-"))
        self._cert, self._key = make_cert(self._dir)
        self._controller: _Controller | None = None
        self._sessions = 0
        self._starts = 0

    @property
    def sessions(self) -> int:
        """Client sessions opened so far, over every start (the Controller's own startup
        probe not counted)."""
        return max(0, self._sessions - self._starts)

    @property
    def cafile(self) -> str:
        """PEM of the self-signed certificate (use as ``cafile``)."""
        return str(self._cert)

    @property
    def running(self) -> bool:
        return self._controller is not None

    # ------------------------------------------------------------ lifecycle
    def start(self) -> Self:
        """Listen on :attr:`port` (the same port after a :meth:`stop`)."""
        if self._controller is not None:
            raise RuntimeError("SmtpServer already running")
        # aiosmtpd sets its own deprecated Session.login_data on every AUTH
        warnings.filterwarnings("ignore", message=r"Session\.login_data is deprecated")
        deadline = time.monotonic() + 10
        while True:
            controller = self._new_controller()
            try:
                controller.start()
                break
            except OSError:  # the port is not free yet
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self._controller = controller
        self._starts += 1
        return self

    def _new_controller(self) -> "_Controller":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert, self._key)
        common: dict[str, Any] = {
            "hostname": self.host, "port": self.port, "server_hostname": "smtp.test",
            "authenticator": self._authenticate, "auth_required": True, "ready_timeout": 10.0,
            "on_session": self._count_session,
        }
        if self.tls == "implicit":  # TLS from the first byte: AUTH needs no STARTTLS
            return _Controller(_Handler(self), ssl_context=context, auth_require_tls=False, **common)
        return _Controller(_Handler(self), tls_context=context, require_starttls=True, auth_require_tls=True,
                           **common)

    def stop(self) -> None:
        """Stop listening and drop every open session (clients see the connection close)."""
        controller, self._controller = self._controller, None
        if controller is None:
            return
        done = threading.Event()

        def drop_sessions() -> None:
            for smtpd in controller.sessions:
                if smtpd.transport is not None:
                    cast(asyncio.Transport, smtpd.transport).abort()
            # Queued after the aborts' own callbacks, which close the sockets.
            controller.loop.call_soon(done.set)

        controller.loop.call_soon_threadsafe(drop_sessions)
        done.wait(5)
        controller.stop()

    def close(self) -> None:
        """Stop and remove the certificate directory."""
        self.stop()
        for path in (self._cert, self._key):
            path.unlink(missing_ok=True)
        self._dir.rmdir()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------- behaviour
    def add_user(self, login: str, password: str) -> None:
        """Accept this login for AUTH (takes effect for the next session)."""
        self.users[login] = password

    def add_mailbox(self, address: str, password: str) -> None:
        """Create a Dovecot user ``address`` whose INBOX receives mail sent to it."""
        if self.dovecot is None:
            raise RuntimeError("add_mailbox needs a Dovecot server")
        self.dovecot.add_user(address.lower(), password)
        self._mailboxes[address.lower()] = password

    def refuse(self, address: str, reply: str = "550 5.1.1 no such user") -> None:
        """Answer RCPT TO ``address`` with ``reply`` (e.g. ``451 4.7.1 try again later``)."""
        self._refusals[address.lower()] = reply

    def drop_at_data(self, address: str, times: int = 1) -> None:
        """Drop the connection that carries a mail to ``address`` at the end of its DATA,
        without taking the mail or answering (``times`` times): one session failing
        while the others go on."""
        with self._lock:
            self._drops[address.lower()] = times

    def _take_drop(self, rcpt_tos: list[str]) -> bool:
        with self._lock:
            for rcpt in rcpt_tos:
                if self._drops.get(rcpt.lower(), 0) > 0:
                    self._drops[rcpt.lower()] -= 1
                    return True
        return False

    def accept(self, address: str) -> None:
        """Stop refusing ``address``."""
        self._refusals.pop(address.lower(), None)

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.messages)

    def inbox(self, address: str) -> list[bytes]:
        """Raw messages in the Dovecot INBOX of ``address``, oldest first."""
        assert self.dovecot is not None
        password = self._mailboxes[address.lower()]
        with self.dovecot.connect(address.lower(), password, security="plain") as client:
            client.select_folder("INBOX", readonly=True)
            uids = client.search("ALL")
            data = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
        return [data[uid][b"BODY[]"] for uid in sorted(data)]

    # -------------------------------------------------------------- internals
    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and self.users.get(auth_data.login.decode("utf-8", "replace")) == auth_data.password.decode("utf-8", "replace")
        )
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _count_session(self) -> None:
        with self._lock:
            self._sessions += 1

    def _deliver(self, received: Received) -> None:
        assert self.dovecot is not None
        for rcpt in received.rcpt_tos:
            self.dovecot.append(rcpt.lower(), self._mailboxes[rcpt.lower()], received.data)
