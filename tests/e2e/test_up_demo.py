"""`deskmail up` with no configuration: a ready demo, from a mail in to a reply in the sink, and a clean stop."""

from __future__ import annotations

import email
import email.policy
import json
import os
import random
import re
import signal
import smtplib
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.harness.stack import REPO, wait_for

pytestmark = pytest.mark.e2e

PORTS = 8  # ingress, mail sink, web, fetcher, router, ticketer, sender, ingress metrics


def free_port_base() -> int:
    """A base N with N..N+7 all free on 127.0.0.1."""
    for _ in range(100):
        base = random.randrange(20_000, 60_000)
        sockets = []
        try:
            for port in range(base, base + PORTS):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no 8 free ports in a row")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class Up:
    """`deskmail up` as a subprocess in its own folder, with its output in a file."""

    def __init__(self, cwd: Path, *args: str):
        self.cwd = cwd
        self.out = cwd / "up.out"
        env = {k: v for k, v in os.environ.items() if k not in ("DESKMAIL_CONFIG", "DESKMAIL_BOOTSTRAP")}
        env.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.env = env
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "services.cli", "up", *args], cwd=cwd, env=env,
                                         stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def logs(self) -> str:
        parts = []
        for log in sorted((self.cwd / "deskmail-data" / "logs").glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}")
        return "\n".join(parts)

    def running(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"deskmail up exited with {self.proc.returncode}:\n{self.output()}")
        return "Press Ctrl-C to stop." in self.output()

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=self.cwd, env=self.env, text=True,
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL)


def tickets(up: Up, config: Path) -> list[dict]:
    result = up.cli("tickets", "list", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def connects(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_up_without_config_runs_the_demo_and_stops_cleanly(tmp_path):
    base = free_port_base()
    ingress, sink, web = base, base + 1, base + 2
    up = Up(tmp_path, "--demo-ports-base", str(base))
    pids: list[int] = []
    try:
        wait_for(up.running, 90, "deskmail up to start")
        out = up.output()
        data = tmp_path / "deskmail-data"
        config = data / "deskmail.yaml"
        assert f"wrote a demo configuration to {config}" in out
        pids = [int(p) for p in re.findall(r"pid (\d+)", out)]
        for name in ("mail sink", "fetcher", "ingress", "router", "ticketer", "sender", "api"):
            assert re.search(rf"^  {name} +pid \d+", out, re.M), f"{name} not started:\n{out}"
        assert len(pids) == 8, out  # the broker and seven children
        assert "Demo: mail to support@example.com becomes a ticket in queue SUPPORT." in out
        assert f"{data}/sent-mail/" in out and f"http://127.0.0.1:{web}/queues/SUPPORT" in out

        # the printed one-line command, run as printed, sends a mail to the demo address
        command = re.search(r"^  send one: +(.+)$", out, re.M)
        assert command, out
        wait_for(lambda: connects(ingress), 60, f"the ingress on {ingress}\n{up.logs()}")
        sent = subprocess.run(command.group(1), shell=True, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        found = wait_for(lambda: tickets(up, config), 90, f"the demo ticket\n{up.logs()}")
        assert [(t["key"], t["type"], t["components"], t["summary"], t["author"]) for t in found] == [
            ("SUPPORT-1", "question", ["general"], "My printer is on fire", "customer@example.org")]

        # the ticket page is served, and an agent's reply goes out through the sender into the sink
        def page() -> str:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/tickets/SUPPORT-1", timeout=5) as r:
                    return r.read().decode()
            except OSError:
                return ""

        assert "My printer is on fire" in wait_for(page, 60, f"the ticket page\n{up.logs()}")
        # as a browser does: the page's form token, its cookie, and the page's Origin
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/tickets/SUPPORT-1", timeout=5) as r:
            cookie = r.headers["Set-Cookie"].split(";", 1)[0]
            token = re.search(r'name="csrf_token" value="([^"]+)"', r.read().decode())
        assert token and cookie.startswith("deskmail_csrf=")
        form = urllib.parse.urlencode({"text": "Please unplug it first.", "to": "customer@example.org",
                                       "send_email": "on", "signature": "Demo support",
                                       "author": "agent@example.com", "csrf_token": token.group(1)}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{web}/tickets/SUPPORT-1/reply", data=form,
                                         headers={"Origin": f"http://127.0.0.1:{web}", "Cookie": cookie})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200  # after the redirect to the ticket page
        saved = wait_for(lambda: sorted((data / "sent-mail").glob("*.eml")), 60,
                         f"the reply in the mail sink\n{up.logs()}")
        reply = email.message_from_bytes(saved[0].read_bytes(), policy=email.policy.default)
        assert reply["Delivered-To"] == "customer@example.org"
        assert "Demo support" in reply["From"] and "support@example.com" in reply["From"]
        assert "SUPPORT-1" in reply["Subject"]
        assert "Please unplug it first." in reply.get_body(("plain",)).get_content()

        # anything else that speaks SMTP to the sink lands there too
        with smtplib.SMTP("127.0.0.1", sink, timeout=30) as client:
            client.sendmail("x@example.com", ["y@example.org"], b"Subject: direct\r\n\r\nhi\r\n")
        assert len(list((data / "sent-mail").glob("*.eml"))) == len(saved) + 1
    finally:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGINT)
        try:
            code = up.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            up.proc.kill()
            raise AssertionError(f"deskmail up did not stop within 40 s after SIGINT:\n{up.output()}") from None
    assert code == 0, up.output()
    assert up.output().rstrip().endswith("stopped")
    left = [pid for pid in pids if alive(pid)]
    assert not left, f"processes left running: {left}"


def test_up_refuses_to_start_when_a_port_is_busy(tmp_path):
    base = free_port_base()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 2))  # the web port
        squatter.listen()
        started = time.monotonic()
        up = Up(tmp_path, "--demo-ports-base", str(base))
        code = up.proc.wait(timeout=60)
    out = up.output()
    assert code != 0, out
    assert f"port {base + 2} on 127.0.0.1 (web) is in use by another program" in out
    assert "--demo-ports-base" in out
    assert "deskmail is running" not in out and "broker" not in out
    assert time.monotonic() - started < 30
    # nothing was written, so the suggested --demo-ports-base takes effect on the next run
    assert not (tmp_path / "deskmail-data" / "deskmail.yaml").exists()
