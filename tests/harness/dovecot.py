"""A throwaway Dovecot IMAP server for tests.

:class:`DovecotServer` writes its own ``dovecot.conf`` into a temporary
directory and runs ``dovecot -F`` as a child process (it must run as root, as
Dovecot drops privileges itself). It offers:

* a plain IMAP listener on :attr:`DovecotServer.imap_port` (STARTTLS offered,
  plaintext LOGIN also allowed without TLS),
* an implicit-TLS listener on :attr:`DovecotServer.imaps_port`,

both on ``127.0.0.1``, with a self-signed certificate for ``localhost`` and
``127.0.0.1`` (:attr:`DovecotServer.cafile`). Users live in passwd-files that
Dovecot re-reads when they change, so :meth:`DovecotServer.add_user` works
while the server runs. Mail is stored as Maildir under the temporary directory
and owned by ``nobody``; the hierarchy separator is ``/`` and Drafts, Sent,
Trash and Junk carry their SPECIAL-USE flags once created. IDLE, MOVE,
UIDPLUS, CONDSTORE and MULTIAPPEND are available. A failed login answers in
about 0.5 s (Dovecot flushes auth failures on a 0.5 s timer) and does not slow
down the next login.
"""

from __future__ import annotations

from datetime import datetime

import base64
import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Literal, Self

from imapclient import IMAPClient

from services.localbroker import free_port

__all__ = ["DovecotServer", "DovecotError"]

Security = Literal["imaps", "starttls", "plain"]

_MAIL_USER = "nobody"
# Messages per APPEND command in append_many(); keeps single commands bounded.
_MULTIAPPEND_BATCH = 200
_APPENDUID_RE = re.compile(rb"\[APPENDUID \d+ ([0-9:,]+)\]")


class DovecotError(RuntimeError):
    """Dovecot could not be started, or a required program is missing."""


def _which(name: str, *extra_dirs: str) -> str:
    path = shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), *extra_dirs]))
    if path is None:
        raise DovecotError(
            f"{name!r} not found: install the Debian packages dovecot-imapd and openssl "
            "(scripts/install-deps does it)"
        )
    return path


def _tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip()
    except OSError:
        return "<no log>"


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _uid_range(spec: bytes) -> list[int]:
    uids: list[int] = []
    for part in spec.split(b","):
        lo, _, hi = part.partition(b":")
        uids.extend(range(int(lo), int(hi or lo) + 1))
    return uids


class DovecotServer:
    """A Dovecot IMAP server in a temporary directory.

    :param host: loopback address to listen on.
    :param root: directory for config, sockets, logs and mail; a new temporary
        directory (removed by :meth:`stop`) when ``None``. Every parent of it
        must be searchable by ``nobody`` (pytest's ``tmp_path`` is not), and the
        path must be short (unix socket paths are limited to 107 bytes).
    :param startup_timeout: seconds :meth:`start` waits for both listeners.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        root: str | os.PathLike[str] | None = None,
        *,
        startup_timeout: float = 20.0,
    ) -> None:
        self.host = host
        self._root_arg = Path(root) if root is not None else None
        self._owns_root = root is None
        self.startup_timeout = startup_timeout
        self.root: Path | None = None
        self._imap_port: int | None = None
        self._imaps_port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._users: dict[str, str] = {}
        self._users_lock = threading.Lock()
        self._users_mtime: dict[str, int] = {}

    # ------------------------------------------------------------ properties
    @property
    def imap_port(self) -> int:
        """Plain IMAP port (STARTTLS offered, plaintext login allowed)."""
        if self._imap_port is None:
            raise RuntimeError("DovecotServer not started")
        return self._imap_port

    @property
    def imaps_port(self) -> int:
        """Implicit TLS (IMAPS) port."""
        if self._imaps_port is None:
            raise RuntimeError("DovecotServer not started")
        return self._imaps_port

    @property
    def cafile(self) -> str:
        """PEM file of the server's self-signed certificate (use as CA file)."""
        return str(self._dir / "cert.pem")

    @property
    def log_path(self) -> Path:
        """Dovecot's log file."""
        return self._dir / "dovecot.log"

    @property
    def mail_dir(self) -> Path:
        """Users' homes are ``mail_dir / login``, mail in ``Maildir`` below."""
        return self._dir / "mail"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def _dir(self) -> Path:
        if self.root is None:
            raise RuntimeError("DovecotServer not started")
        return self.root

    def log_tail(self, lines: int = 30) -> str:
        """Last lines of the Dovecot log and of its stdout/stderr."""
        return f"{_tail(self.log_path, lines)}\n--- output ---\n{_tail(self._dir / 'output.log', lines)}"

    def ssl_context(self, verify: bool = True) -> ssl.SSLContext:
        """A client context that trusts :attr:`cafile` (or verifies nothing)."""
        if verify:
            return ssl.create_default_context(cafile=self.cafile)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    # ------------------------------------------------------------- lifecycle
    def start(self) -> Self:
        """Generate cert and config, start Dovecot, wait for both listeners."""
        if self.running:
            raise RuntimeError("DovecotServer already running")
        if os.geteuid() != 0:
            raise DovecotError("DovecotServer must run as root (Dovecot drops privileges itself)")
        sbin = ("/usr/sbin", "/sbin")
        dovecot = _which("dovecot", *sbin)
        openssl = _which("openssl")
        if not Path("/usr/lib/dovecot/imap").exists():
            raise DovecotError("Dovecot's IMAP server is missing: install the Debian package dovecot-imapd")

        if self._root_arg is None:
            self.root = Path(tempfile.mkdtemp(prefix="dovecot-"))
        else:
            self.root = self._root_arg
            self.root.mkdir(parents=True, exist_ok=True)
        d = self.root
        d.chmod(0o755)  # mail processes run as nobody and must reach mail/
        (d / "mail").mkdir(exist_ok=True)
        shutil.chown(d / "mail", _MAIL_USER, _mail_group())
        (d / "passwd").mkdir(exist_ok=True)
        for login, password in self._users.items():
            self._write_user(login, password)
        self._make_cert(openssl)

        for attempt in range(3):
            self._imap_port = free_port(self.host)
            self._imaps_port = free_port(self.host)
            while self._imaps_port == self._imap_port:
                self._imaps_port = free_port(self.host)
            (d / "dovecot.conf").write_text(self._config())
            self._spawn(dovecot)
            try:
                self._wait_ready()
                return self
            except DovecotError:
                self._terminate()
                # Another process took a port between picking and binding it.
                if attempt == 2 or "in use" not in self.log_tail().lower():
                    raise
            except BaseException:
                self._terminate()
                raise
        raise AssertionError("unreachable")

    def _spawn(self, dovecot: str) -> None:
        d = self._dir
        self._out = (d / "output.log").open("ab")
        try:
            self._proc = subprocess.Popen(
                [dovecot, "-F", "-c", str(d / "dovecot.conf")],
                stdin=subprocess.DEVNULL,
                stdout=self._out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_set_parent_death_signal if sys.platform == "linux" else None,
                close_fds=True,
            )
        except OSError as exc:
            self._out.close()
            self._out = None
            raise DovecotError(f"cannot run {dovecot}: {exc}") from exc

    def stop(self, timeout: float = 10.0) -> None:
        """Stop Dovecot (SIGTERM, then SIGKILL) and remove an owned temp dir."""
        self._terminate(timeout)
        if self._owns_root and self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # ----------------------------------------------------------------- users
    def add_user(self, login: str, password: str) -> None:
        """Add a user, or change the password of an existing one.

        Takes effect for the next login, also while the server runs. Changing
        the password of an existing user of a running server can block for up
        to one second (see :meth:`_write_user`).
        """
        if not login or any(c in login for c in ":/\\\n\r\t ") or login.startswith("."):
            raise ValueError(f"unsupported login for the test passwd-file: {login!r}")
        with self._users_lock:
            changed = login in self._users and self._users[login] != password
            self._users[login] = password
            if self.root is not None:
                self._write_user(login, password)
                if changed and self.running:
                    # Dovecot stats a passwd-file at most once per second of
                    # its clock; a lookup in this same second may have cached
                    # the old password, so let the second pass.
                    time.sleep(1.0 - (time.time() % 1.0) + 0.01)

    def _write_user(self, login: str, password: str) -> None:
        """Write ``passwd/<login>``, one passwd-file per user.

        One file per user means a new user is a file Dovecot has never read,
        so it is seen at once (a single shared file is re-read only when its
        mtime changed and at most once per second).
        """
        path = self._dir / "passwd" / login
        tmp = path.with_name(f".{login}.tmp")
        # PLAIN.b64 keeps ':' and other special characters from breaking the line.
        b64 = base64.b64encode(password.encode("utf-8")).decode("ascii")
        tmp.write_text(f"{login}:{{PLAIN.b64}}{b64}\n")
        tmp.chmod(0o644)
        # Make the mtime grow strictly, so a rewrite within one second is
        # still seen as a change.
        stamp = max(int(time.time()), self._users_mtime.get(login, 0) + 1)
        os.utime(tmp, (stamp, stamp))
        self._users_mtime[login] = stamp
        os.replace(tmp, path)

    # ----------------------------------------------------------- IMAP helpers
    def connect(
        self,
        login: str | None = None,
        password: str | None = None,
        *,
        security: Security = "imaps",
        verify: bool = True,
        timeout: float = 10.0,
    ) -> IMAPClient:
        """An :class:`IMAPClient` to this server, logged in if ``login`` given.

        ``security``: ``"imaps"`` (implicit TLS), ``"starttls"`` (plain port,
        then STARTTLS) or ``"plain"`` (no TLS at all).
        """
        ctx = self.ssl_context(verify)
        if security == "imaps":
            client = IMAPClient(self.host, port=self.imaps_port, ssl=True, ssl_context=ctx, timeout=timeout)
        else:
            client = IMAPClient(self.host, port=self.imap_port, ssl=False, timeout=timeout)
            if security == "starttls":
                client.starttls(ctx)
        if login is not None:
            try:
                client.login(login, password or "")
            except BaseException:
                with contextlib.suppress(Exception):
                    client.shutdown()
                raise
        return client

    def append(
        self,
        login: str,
        password: str,
        raw: bytes,
        folder: str = "INBOX",
        flags: Sequence[str | bytes] = (),
        arrived: datetime | None = None,
    ) -> int | None:
        """APPEND one message; creates ``folder`` if needed. Returns its UID.
        ``arrived`` sets its INTERNALDATE (default: now)."""
        with self._session(login, password) as client:
            self._ensure_folder(client, folder)
            resp = client.append(folder, raw, flags=tuple(flags), msg_time=arrived)
        uids = self._appenduids(resp)
        return uids[0] if uids else None

    def append_many(
        self,
        login: str,
        password: str,
        raws: Iterable[bytes],
        folder: str = "INBOX",
        flags: Sequence[str | bytes] = (),
    ) -> list[int]:
        """APPEND many messages over one connection (MULTIAPPEND batches).

        Creates ``folder`` if needed; returns the new UIDs in order.
        """
        uids: list[int] = []
        flag_tuple = tuple(flags)
        with self._session(login, password) as client:
            self._ensure_folder(client, folder)
            batch: list[dict[str, object]] = []

            def flush() -> None:
                if batch:
                    # imapclient returns the raw (type, data) pair here and
                    # does not raise on NO.
                    typ, data = client.multiappend(folder, batch)
                    if typ != "OK":
                        raise RuntimeError(f"APPEND of {len(batch)} messages to {folder!r} failed: {typ} {data!r}")
                    uids.extend(self._appenduids(data))
                    batch.clear()

            for raw in raws:
                batch.append({"msg": raw, "flags": flag_tuple} if flag_tuple else {"msg": raw})
                if len(batch) >= _MULTIAPPEND_BATCH:
                    flush()
            flush()
        return uids

    def messages(self, login: str, password: str, folder: str = "INBOX") -> list[tuple[int, tuple[str, ...]]]:
        """``[(uid, flags)]`` of ``folder`` sorted by UID, flags as ``str``.

        The session-dependent ``\\Recent`` flag is left out.
        """
        with self._session(login, password) as client:
            client.select_folder(folder, readonly=True)
            uids = client.search("ALL")
            data = client.fetch(uids, ["FLAGS"]) if uids else {}
        out = []
        for uid, item in sorted(data.items()):
            flags = tuple(
                f.decode() if isinstance(f, bytes) else str(f)
                for f in item.get(b"FLAGS", ())
                if f not in (b"\\Recent", "\\Recent")
            )
            out.append((int(uid), flags))
        return out

    def create_folder(self, login: str, password: str, folder: str) -> None:
        """Create ``folder`` for ``login`` unless it exists."""
        with self._session(login, password) as client:
            self._ensure_folder(client, folder)

    @contextlib.contextmanager
    def _session(self, login: str, password: str) -> Iterator[IMAPClient]:
        client = self.connect(login, password, security="plain")
        try:
            yield client
        finally:
            with contextlib.suppress(Exception):
                client.logout()

    @staticmethod
    def _ensure_folder(client: IMAPClient, folder: str) -> None:
        if folder.upper() != "INBOX" and not client.folder_exists(folder):
            client.create_folder(folder)

    @staticmethod
    def _appenduids(resp: object) -> list[int]:
        """UIDs from an APPENDUID response code (UIDPLUS), [] if none."""
        if isinstance(resp, (list, tuple)):
            resp = b" ".join(x if isinstance(x, bytes) else str(x).encode() for x in resp)
        elif isinstance(resp, str):
            resp = resp.encode()
        if not isinstance(resp, bytes):
            return []
        m = _APPENDUID_RE.search(resp)
        return _uid_range(m.group(1)) if m else []

    # -------------------------------------------------------------- internals
    def _make_cert(self, openssl: str) -> None:
        d = self._dir
        cmd = [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "7", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,digitalSignature,keyCertSign",
            "-addext", "extendedKeyUsage=serverAuth",
            "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem"),
        ]
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if r.returncode != 0:
            raise DovecotError(f"openssl could not make a certificate:\n{r.stderr}")
        (d / "key.pem").chmod(0o600)
        (d / "cert.pem").chmod(0o644)

    def _config(self) -> str:
        d = self._dir
        return f"""\
# Generated by tests/harness/dovecot.py
protocols = imap
listen = {self.host}
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
auth_verbose = yes

ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
ssl_min_protocol = TLSv1.2

disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd/%u
}}
userdb {{
  driver = static
  args = uid={_MAIL_USER} gid={_mail_group()} home={d}/mail/%u
}}
mail_location = maildir:~/Maildir
mail_fsync = never
# '/' as hierarchy separator, as on most servers; SPECIAL-USE on the usual
# folders once a client creates them.
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Drafts {{
    special_use = \\Drafts
  }}
  mailbox Sent {{
    special_use = \\Sent
  }}
  mailbox Trash {{
    special_use = \\Trash
  }}
  mailbox Junk {{
    special_use = \\Junk
  }}
}}

service imap-login {{
  inet_listener imap {{
    address = {self.host}
    port = {self._imap_port}
  }}
  inet_listener imaps {{
    address = {self.host}
    port = {self._imaps_port}
    ssl = yes
  }}
}}
# No per-IP penalty after a failed login (it would slow the next test's login).
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
"""

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout
        pending = {"imap": self.imap_port, "imaps": self.imaps_port}
        last = ""
        while pending:
            rc = self._proc.poll()
            if rc is not None:
                raise DovecotError(f"dovecot exited with code {rc} at start:\n{self.log_tail()}")
            for name, port in list(pending.items()):
                try:
                    self._probe(port, tls=name == "imaps")
                    del pending[name]
                except (OSError, ssl.SSLError) as exc:
                    last = f"{name} port {port}: {exc!r}"
            if pending:
                if time.monotonic() >= deadline:
                    raise DovecotError(
                        f"dovecot not ready after {self.startup_timeout:.0f} s ({last}):\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def _probe(self, port: int, tls: bool) -> None:
        with socket.create_connection((self.host, port), timeout=2) as raw:
            sock: socket.socket = raw
            if tls:
                sock = self.ssl_context(verify=False).wrap_socket(raw, server_hostname="localhost")
            greeting = sock.recv(256)
            if not greeting.startswith(b"* OK"):
                raise OSError(f"unexpected greeting {greeting!r}")

    def _terminate(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    # The master and its children share one process group.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            self._proc = None
        if self._out is not None:
            self._out.close()
            self._out = None


def _mail_group() -> str:
    """Primary group of the mail user (``nogroup`` on Debian)."""
    return grp.getgrgid(pwd.getpwnam(_MAIL_USER).pw_gid).gr_name
