"""`deskmail up` treats a child whose /healthz is stale like a liveness probe would."""

from __future__ import annotations

import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from services import localchild


def _health_server(status: list[int]) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(status[0])
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def child(tmp_path: Path):
    status = [200]
    server = _health_server(status)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    c = localchild.Child("router", [], tmp_path / "router.log", proc=proc,
                    health_url=f"http://127.0.0.1:{server.server_port}/healthz")
    yield c, status
    proc.kill()
    proc.wait()
    server.shutdown()


def test_a_healthy_child_is_left_alone(child, monkeypatch):
    c, status = child
    monkeypatch.setattr(localchild, "UNHEALTHY_GRACE_SECONDS", 0.0)
    localchild.probe(c)
    localchild.probe(c)
    assert c.proc.poll() is None and c.unhealthy_since is None


def test_a_stale_child_is_killed_only_after_the_grace_period(child, monkeypatch):
    c, status = child
    status[0] = 503
    monkeypatch.setattr(localchild, "UNHEALTHY_GRACE_SECONDS", 3600.0)
    localchild.probe(c)
    localchild.probe(c)
    assert c.proc.poll() is None and c.unhealthy_since is not None  # stale, but not for long
    monkeypatch.setattr(localchild, "UNHEALTHY_GRACE_SECONDS", 0.0)
    localchild.probe(c)
    assert c.proc.wait(timeout=5) == -9


def test_recovering_resets_the_clock(child, monkeypatch):
    c, status = child
    status[0] = 503
    localchild.probe(c)
    status[0] = 200
    localchild.probe(c)
    assert c.unhealthy_since is None and c.proc.poll() is None
