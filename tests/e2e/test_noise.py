"""Noise end to end: a burst of mail from one sender is rate-limited after the
limit and visible as suspended; out-of-office replies open no ticket and, on
a ticket's thread, change nothing.

The real processes (`deskmail run` ticketer, router, fetcher with the SMTP
ingress, api) and a real broker.
"""

from __future__ import annotations

import json
import smtplib
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.tickets import TicketChange, TicketStore
from tests.harness.stack import Stack, free_port, wait_for

pytestmark = pytest.mark.e2e

BURST = 50


def _mail(n: int, sender: str = "flood@customer.test", extra: str = "", subject: str | None = None) -> bytes:
    return (f"From: <{sender}>\r\nTo: <support@example.com>\r\nDate: Tue, 01 Dec 2026 09:00:00 +0000\r\n"
            f"Message-ID: <noise-{n}@customer.test>\r\nSubject: {subject or f'Order {n}'}\r\n{extra}"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\n").encode()


def _config(unique: Callable[[str], str], data: Path, ingress_port: int) -> str:
    topics = {k: unique(f"noise-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("noise-group")}
          partitions: 2
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {json.dumps(topics)}
        data_dir: {data}
        ingress: {{listen: "127.0.0.1:{ingress_port}"}}
        organization:
          domains: [example.com]
          admins: [alice@example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [support]}}
        queues:
          - key: SUPPORT
            access: [group:support]
            mailboxes:
              - {{address: support@example.com, ingress: true, accept_external: true}}
        """)


@pytest.fixture
def stack(tmp_path: Path, broker: Any, unique: Callable[[str], str]) -> Iterator[tuple[Stack, int]]:
    port = free_port()
    instance = Stack(_config(unique, tmp_path / "data", port), tmp_path, broker.bootstrap)
    instance.create_topics()
    yield instance, port
    instance.stop()


def test_a_burst_is_rate_limited_and_auto_replies_change_nothing(stack: tuple[Stack, int]) -> None:
    processes, port = stack
    store = TicketStore(processes.config.database_url)
    processes.start("ticketer", "router", "ingress")
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        for n in range(BURST):
            assert client.sendmail("flood@customer.test", ["support@example.com"], _mail(n)) == {}

    # The default limit: 20 mails from one sender in 10 minutes; the other 30 are suspended.
    limited = wait_for(lambda: (lambda items: items if len(items) == BURST - 20 else None)(
        store.list_suspended(reason_code="rate_limited", limit=100).items), 90, "the rest of the burst suspended")
    assert store.count_tickets() == 20
    assert {i.author_email for i in limited} == {"flood@customer.test"}
    assert processes.metric("ticketer", "deskmail_ticketer_rate_limited_total", limit="sender") == BURST - 20
    # every mail that made a ticket took its time from arrival to commit; the suspended ones none
    assert processes.metric("ticketer", "deskmail_mail_to_ticket_seconds_count", mailbox="support@example.com") == 20
    assert processes.metric("ticketer", "deskmail_mail_to_ticket_seconds_bucket", mailbox="support@example.com",
                            le="+Inf") == 20
    config = ("--config", str(processes.config_path), "--bootstrap", processes.bootstrap)
    listed = processes.cli("suspended", "list", "--reason", "rate_limited", "--json", *config).stdout.splitlines()
    assert len(listed) == BURST - 20

    # Each one can be opened (rebuilt from what deskmail read) and released into a ticket, once.
    item = limited[0]
    shown = processes.cli("suspended", "show", str(item.id), "--raw", *config).stdout
    assert "X-Deskmail-Rebuilt: rate_limited" in shown and f"Subject: {item.subject}" in shown
    processes.cli("suspended", "release", str(item.id), "--as", "alice@example.com", *config)
    released = wait_for(lambda: store.get_suspended(item.id).released_ticket, 60, "the release applied")
    assert store.count_tickets() == 21
    assert store.get_ticket(released).summary == item.subject
    # a release is not a mail arriving late: not observed
    assert processes.metric("ticketer", "deskmail_mail_to_ticket_seconds_count", mailbox="support@example.com") == 20
    again = processes.cli("suspended", "release", str(item.id), "--as", "alice@example.com", *config, check=False)
    assert again.returncode == 1 and "released already" in again.stderr

    # An out-of-office reply on a waiting ticket's thread: stored, and the ticket stays waiting.
    # (Which mails of the burst became tickets depends on the order partitions deliver them.)
    store.change_ticket("SUPPORT-1", TicketChange(status="waiting"), actor="alice@example.com", expected_version=None)
    opening = store.get_ticket("SUPPORT-1")
    assert opening is not None
    away = f"Auto-Submitted: auto-replied\r\nIn-Reply-To: <{opening.message_ids[0]}>\r\n"
    stranger = "Auto-Submitted: auto-replied\r\nIn-Reply-To: <never-seen@example.com>\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail("", ["support@example.com"], _mail(900, "ooo@customer.test", away, "Automatic reply: Order"))
        client.sendmail("", ["support@example.com"], _mail(901, "ooo@customer.test", stranger, "Out of office"))
    wait_for(lambda: store.list_suspended(reason_code="auto_reply").items, 60, "the stray auto-reply set aside")
    ticket = wait_for(lambda: (lambda t: t if t is not None and t.thread else None)(store.get_ticket("SUPPORT-1")),
                      60, "the auto-reply stored on its ticket")
    assert ticket.status == "waiting" and ticket.thread[0].automatic
    assert store.count_tickets() == 21
    store.close()
    codes = processes.stop()
    assert codes == {"ticketer": 0, "router": 0, "ingress": 0}, codes
