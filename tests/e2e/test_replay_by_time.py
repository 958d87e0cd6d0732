"""Replay by time on the real pipeline: strangers' mail to a members-only address is
refused, the address is opened to external mail, and `deskmail replay router --from T`
(T between two groups of mail) turns exactly the refused mail after T into tickets.
Mail before T stays refused, the members' tickets are not made twice, and the dry
run's count is what the router processes again.

The real processes (`deskmail run` ticketer, router, fetcher with the SMTP ingress)
and the real broker: it answers offsets_for_times per batch of arrival, so the two
groups are written more than a second apart.
"""

from __future__ import annotations

import json
import signal
import smtplib
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from services.tickets import TicketStore
from tests.harness.stack import REPO, Stack, free_port, wait_for

pytestmark = pytest.mark.e2e


def _config(unique: Callable[[str], str], data: Path, port: int) -> str:
    topics = {k: unique(f"rbt-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("rbt-group")}
          partitions: 2
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {json.dumps(topics)}
        data_dir: {data}
        ingress: {{listen: "127.0.0.1:{port}"}}
        organization:
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [ops]}}
        queues:
          - key: OPS
            access: [group:ops]
            mailboxes:
              - {{address: ops@example.com, ingress: true, accept_external: false}}
        """)


def _mail(sender: str, n: int) -> bytes:
    return (f"From: <{sender}>\r\nTo: <ops@example.com>\r\nDate: Tue, 01 Dec 2026 09:{n:02d}:00 +0000\r\n"
            f"Message-ID: <rbt-{n}@{sender.split('@')[1]}>\r\nSubject: Mail {n}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\nMail number {n}.\r\n").encode()


def _send(port: int, mails: list[tuple[str, int]]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        for sender, n in mails:
            assert client.sendmail(sender, ["ops@example.com"], _mail(sender, n)) == {}


def test_a_replay_from_a_time_makes_tickets_of_the_mail_refused_since(tmp_path: Path, broker: Any,
                                                                      unique: Callable[[str], str]) -> None:
    port = free_port()
    stack = Stack(_config(unique, tmp_path / "data", port), tmp_path, broker.bootstrap)
    store = TicketStore(stack.config.database_url)
    try:
        stack.create_topics()
        stack.start("ticketer", "router", "ingress")
        before = [("ann@customer.test", 1), ("bob@customer.test", 2), ("alice@example.com", 3)]
        after = [("cat@customer.test", 4), ("dan@customer.test", 5), ("eve@customer.test", 6),
                 ("alice@example.com", 7)]
        _send(port, before)
        time.sleep(1.2)
        since = datetime.now(timezone.utc).isoformat()
        time.sleep(1.2)
        _send(port, after)
        wait_for(lambda: len(store.list_suspended().items) == 5 and store.count_tickets() == 2, 60,
                 "5 refused mails and 2 tickets")

        # the address now takes external mail; the router is stopped and replayed from `since`
        stack.config_path.write_text(stack.config_path.read_text().replace("accept_external: false",
                                                                           "accept_external: true"))
        assert stack.signal("router", signal.SIGTERM) == 0
        config = ("--config", str(stack.config_path), "--bootstrap", stack.bootstrap)
        dry = stack.cli("replay", "router", "--from", since, "--dry-run", *config)
        assert f"total: {len(after)} records to reprocess" in dry.stdout, dry.stdout
        created_before = stack.metric("ticketer", "deskmail_ticketer_commands_applied_total", outcome="created")
        duplicates_before = stack.metric("ticketer", "deskmail_ticketer_commands_applied_total",
                                         outcome="duplicate")

        follow = subprocess.Popen([sys.executable, "-m", "services.cli", "replay", "router", "--from", since,
                                   "--yes", "--follow", *config], cwd=REPO, env=stack.env, text=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert follow.stdout is not None
            lines = []
            while not lines or not lines[-1].startswith("moved "):
                line = follow.stdout.readline()
                assert line, f"the replay ended early: {lines} {follow.stderr.read() if follow.stderr else ''}"
                lines.append(line)
            stack.start("router")
            out, err = follow.communicate(timeout=120)
        finally:
            if follow.poll() is None:
                follow.kill()
        assert follow.returncode == 0, err
        assert out.strip().splitlines()[-1] == f"{len(after)} of {len(after)} records (100%), caught up"

        wait_for(lambda: store.count_tickets() == 5, 60, "the mail refused after `since` as tickets")
        wait_for(lambda: stack.metric("ticketer", "deskmail_ticketer_commands_applied_total", outcome="duplicate")
                 - duplicates_before >= 1, 60, "the member's mail after `since` absorbed as a duplicate")
        tickets = store.list_tickets(limit=100)
        assert sorted(t.author_email for t in tickets) == sorted(
            ["alice@example.com", "alice@example.com", "cat@customer.test", "dan@customer.test", "eve@customer.test"])
        assert sorted(t.summary for t in tickets) == ["Mail 3", "Mail 4", "Mail 5", "Mail 6", "Mail 7"]
        assert stack.metric("ticketer", "deskmail_ticketer_commands_applied_total",
                            outcome="created") - created_before == 3
        # the dry run's count is what the router read again
        assert stack.metric("router", "deskmail_bus_records_processed_total", stage="router") == len(after)
        # the mail before `since` is still only refused; the refusals after it stay listed
        suspended = {s.author_email for s in store.list_suspended().items}
        assert suspended == {"ann@customer.test", "bob@customer.test", "cat@customer.test", "dan@customer.test",
                             "eve@customer.test"}
        assert all(s.released_ticket is None for s in store.list_suspended().items)
    finally:
        store.close()
        codes = stack.stop()
    assert codes == {"ticketer": 0, "router": 0, "ingress": 0}, codes
