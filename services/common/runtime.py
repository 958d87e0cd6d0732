"""What every deskmail process shares: JSON logs, /metrics /healthz /readyz, SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

DEFAULT_PORTS = {"fetcher": 9101, "router": 9102, "ticketer": 9103, "sender": 9104, "ingress": 9105, "api": 8080}

# Fixed keys a log line may carry besides the message (style: structured logs).
LOG_KEYS = ("stage", "topic", "partition", "offset", "group", "mailbox", "uid", "uidvalidity", "queue",
            "ticket", "command", "outcome", "reason", "error", "delay", "count", "address", "url", "replica")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in LOG_KEYS:
            value = record.__dict__.get(key)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("kafka").setLevel(logging.WARNING)
    logging.getLogger("imapclient").setLevel(logging.WARNING)  # "Connection closed" on every reconnect
    logging.getLogger("alembic").setLevel(logging.WARNING)  # "setup plugin ..." lines at every start


class Health:
    """Liveness (the main loop ticks) and readiness (the process can do its work),
    with why it is not ready when the process knows (``/readyz`` says it)."""

    def __init__(self, stale_after: float = 120.0):
        self.stale_after = stale_after
        self._last_tick = time.monotonic()
        self._ready = False
        self._reason: str | None = None
        self._lock = threading.Lock()

    def tick(self) -> None:
        with self._lock:
            self._last_tick = time.monotonic()

    def set_ready(self, ready: bool, reason: str | None = None) -> None:
        """``reason``: one line for an operator, only with ``ready`` False."""
        with self._lock:
            self._ready = ready
            self._reason = None if ready else reason

    def readiness(self) -> str:
        """The /readyz body: ``ready``, ``not ready`` or ``not ready: <reason>``."""
        if self.ready():
            return "ready"
        with self._lock:
            return f"not ready: {self._reason}" if self._reason else "not ready"

    def alive(self) -> bool:
        with self._lock:
            return time.monotonic() - self._last_tick < self.stale_after

    def ready(self) -> bool:
        with self._lock:
            return self._ready and time.monotonic() - self._last_tick < self.stale_after


def serve_http(host: str, port: int, health: Health) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz and /readyz in a daemon thread; port 0 picks a free one."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith("/healthz"):
                ok = health.alive()
                body, ctype, code = (b"ok\n" if ok else b"stale\n"), "text/plain", 200 if ok else 503
            elif self.path.startswith("/readyz"):
                ok = health.ready()
                body, ctype, code = f"{health.readiness()}\n".encode(), "text/plain; charset=utf-8", 200 if ok else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # quiet: probes are frequent
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so loops can drain, commit and exit 0."""
    stop = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        logging.getLogger("deskmail").info("stopping", extra={"reason": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
