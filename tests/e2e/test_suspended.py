"""Suspended mail end to end: a stranger's mail to a members-only address is
refused, shows in `deskmail suspended list` and on the queue's Suspended tab,
an admin releases it with the page's button, and after a second release (the
button pressed twice, then the command line) there is exactly one ticket.

The real processes (`deskmail run` ticketer, router, fetcher with the SMTP
ingress, api) and a real broker; the admin is named by the authenticating
proxy's header (the api trusts loopback as its proxy).
"""

from __future__ import annotations

import json
import re
import smtplib
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.tickets import TicketStore
from tests.harness.stack import Stack, free_port, wait_for

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import httpx

pytestmark = pytest.mark.e2e

ROOT = {"X-Forwarded-Email": "root@example.com"}
MAIL = (b"From: Mallory Stranger <mallory@stranger.test>\r\nTo: <ops@example.com>\r\n"
        b"Date: Tue, 01 Dec 2026 09:00:00 +0000\r\nMessage-ID: <sus-1@stranger.test>\r\nSubject: Disk is full\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe backup disk is full.\r\n")


def _config(unique: Callable[[str], str], data: Path, ingress_port: int) -> str:
    topics = {k: unique(f"sus-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("sus-group")}
          partitions: 2
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {json.dumps(topics)}
        data_dir: {data}
        ingress: {{listen: "127.0.0.1:{ingress_port}"}}
        api: {{user_header: X-Forwarded-Email, auth: {{mode: proxy}}}}
        organization:
          domains: [example.com]
          admins: [root@example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [ops]}}
            - {{email: root@example.com, name: Root Admin}}
        queues:
          - key: OPS
            access: [group:ops]
            mailboxes:
              - {{address: ops@example.com, ingress: true, accept_external: false, ticket: {{type: task}}}}
        """)


@pytest.fixture
def stack(tmp_path: Path, broker: Any, unique: Callable[[str], str]) -> Iterator[tuple[Stack, int]]:
    port = free_port()
    instance = Stack(_config(unique, tmp_path / "data", port), tmp_path, broker.bootstrap)
    instance.create_topics()
    yield instance, port
    instance.stop()


def test_a_strangers_mail_is_suspended_released_once_and_becomes_one_ticket(stack: tuple[Stack, int]) -> None:
    processes, port = stack
    store = TicketStore(processes.config.database_url)
    processes.start("ticketer", "router", "ingress", "api")
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        assert client.sendmail("mallory@stranger.test", ["ops@example.com"], MAIL) == {}
    [item] = wait_for(lambda: store.list_suspended().items, 60, "the refused mail in the suspended list")
    assert (item.queue, item.author_email, item.reason_code) == ("OPS", "mallory@stranger.test",
                                                                  "external_not_accepted")
    assert store.count_tickets() == 0
    config = ("--config", str(processes.config_path), "--bootstrap", processes.bootstrap)

    listed = [json.loads(line) for line in processes.cli("suspended", "list", "--json", *config).stdout.splitlines()]
    assert [(r["id"], r["sender"], r["subject"], r["reason_code"]) for r in listed] == [
        (str(item.id), "mallory@stranger.test", "Disk is full", "external_not_accepted")]

    base = f"http://127.0.0.1:{processes.ports['api']}"
    with httpx.Client(base_url=base, headers=ROOT, timeout=30) as browser:
        page = browser.get("/queues/OPS/suspended")
        assert page.status_code == 200 and "Disk is full" in page.text and "mallory@stranger.test" in page.text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token and f'action="/queues/OPS/suspended/{item.id}/release"' in page.text
        pressed = browser.post(f"/queues/OPS/suspended/{item.id}/release", data={"csrf_token": token.group(1)},
                               headers={"Origin": base})
        assert pressed.status_code == 303, pressed.text
        # A second press at once: refused if the ticketer was quicker, else a second record that it absorbs.
        twice = browser.post(f"/queues/OPS/suspended/{item.id}/release", data={"csrf_token": token.group(1)},
                             headers={"Origin": base})
        assert twice.status_code in (303, 409), twice.text

        released = wait_for(lambda: store.get_suspended(item.id).released_ticket, 60, "the release to be applied")
        assert released == "OPS-1"
        if twice.status_code == 303:
            wait_for(lambda: processes.metric("ticketer", "deskmail_ticketer_commands_applied_total",
                                              outcome="duplicate") >= 1, 60, "the second release to be absorbed")
        ticket = store.get_ticket("OPS-1")
        assert ticket is not None and ticket.author_email == "mallory@stranger.test"
        assert "The backup disk is full." in ticket.description

        # The second release is refused wherever it comes from, and changes nothing.
        again = processes.cli("suspended", "release", str(item.id), "--as", "root@example.com", *config, check=False)
        assert again.returncode == 1 and "released already: it became OPS-1" in again.stderr
        assert browser.post(f"/api/v1/suspended/{item.id}/release", json={}).status_code == 409
        assert "released as" in browser.get("/queues/OPS/suspended").text
    assert store.count_tickets() == 1
    assert processes.metric("api", "deskmail_suspended", queue="OPS", reason="external_not_accepted") == 0
    store.close()
    codes = processes.stop()
    assert codes == {"ticketer": 0, "router": 0, "ingress": 0, "api": 0}, codes
