"""Working a ticket end to end: mail in, Take, "send and set waiting", the customer's
answer reopening the ticket on the open page without a reload.

The real processes (`deskmail run` ticketer, router, fetcher with the SMTP
ingress, api, sender), a real SMTP server (aiosmtpd with STARTTLS and AUTH) and
headless Chromium. The agent is named by the authenticating proxy's header,
which Chromium sends with every request (the api trusts loopback as its proxy).
"""

from __future__ import annotations

import email
import re
import smtplib
import textwrap
from collections.abc import Callable, Iterator
from email import policy
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from services.tickets import TicketStore
from tests.harness import mails
from tests.harness.smtp import SmtpServer
from tests.harness.stack import REPO, Stack, free_port, wait_for

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "artifacts"
SMTP_PASSWORD = "e2e-workflow-Pw-5521"
ALICE = {"X-Forwarded-Email": "alice@example.com"}
WORD = "flibbertigibbet"  # one word of the customer's mail, for the search


def _config(unique: Callable[[str], str], db_url: str, data: Path, ingress_port: int, smtp: SmtpServer) -> str:
    topics = {k: unique(f"flow-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("flow-group")}
          partitions: 2
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {{inbound: {topics["inbound"]}, commands: {topics["commands"]}, outbound: {topics["outbound"]},
                   events: {topics["events"]}, deadletter: {topics["deadletter"]}}}
        database: {{url: "{db_url}"}}
        data_dir: {data}
        ingress: {{listen: "127.0.0.1:{ingress_port}"}}
        api: {{user_header: X-Forwarded-Email, auth: {{mode: proxy}}}}
        sender: {{retry_initial_seconds: 0.5, retry_max_seconds: 1, give_up_after_seconds: 60, timeout_seconds: 10}}
        organization:
          name: Example Inc.
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [support]}}
            - {{email: dave@example.com, name: Dave Desk, groups: [support]}}
        queues:
          - key: SUPPORT
            name: Customer support
            access: [group:support]
            allow_outbound_mail: true
            mailboxes:
              - address: support@example.com
                accept_external: true
                ingress: true
                ticket: {{type: question, components: [printers]}}
                smtp: {{host: 127.0.0.1, port: {smtp.port}, security: starttls, login: support,
                        cafile: {smtp.cafile}, password: {{env: E2E_SMTP_PW}}}}
                signatures:
                  - {{alias: Example support, text: "--\\nExample Inc. customer support"}}
        """)


def _customer_mail() -> tuple[bytes, str]:
    mid = "flow-first@customer.test"
    raw = (f"From: Carol Customer <carol@customer.test>\r\nTo: <support@example.com>\r\n"
           f"Date: Tue, 01 Dec 2026 09:00:00 +0000\r\nMessage-ID: <{mid}>\r\nSubject: Printer jams\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           f"Hello,\r\n\r\nthe printer jams with a {WORD} noise.\r\n\r\nCarol\r\n").encode()
    return raw, mid


def _deliver(port: int, sender: str, raw: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        assert client.sendmail(sender, ["support@example.com"], raw) == {}


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer({"support": SMTP_PASSWORD}) as server:
        yield server


@pytest.fixture
def stack(tmp_path: Path, broker: Any, unique: Callable[[str], str], smtp: SmtpServer) -> Iterator[tuple[Stack, int]]:
    port = free_port()
    text = _config(unique, f"sqlite:///{tmp_path / 'tickets.db'}", tmp_path / "data", port, smtp)
    instance = Stack(text, tmp_path, broker.bootstrap, env={"E2E_SMTP_PW": SMTP_PASSWORD})
    instance.create_topics()
    yield instance, port
    instance.stop()


def test_take_reply_and_set_waiting_then_the_customer_reopens_it_live(
    stack: tuple[Stack, int], smtp: SmtpServer, page: Page
) -> None:
    processes, ingress = stack
    store = TicketStore(processes.config.database_url)
    processes.start("ticketer", "router", "ingress", "api", "sender")
    raw, _ = _customer_mail()
    _deliver(ingress, "carol@customer.test", raw)
    wait_for(lambda: store.get_ticket("SUPPORT-1"), 60, "the customer's ticket")
    base = f"http://127.0.0.1:{processes.ports['api']}"
    page.set_extra_http_headers(ALICE)  # the proxy's header, on every request the page makes

    # the queue view lists the ticket; the agent opens it and takes it
    page.goto(f"{base}/queues/SUPPORT")
    row = page.locator('tr[data-key="SUPPORT-1"]')
    expect(row).to_contain_text("Printer jams")
    expect(row).to_contain_text("unassigned")
    expect(page.locator('#status-tabs a[data-status="open"] .count')).to_have_text("1")
    row.locator("a", has_text="SUPPORT-1").click()
    page.wait_for_url(f"{base}/tickets/SUPPORT-1")
    expect(page.locator("#ticket-status")).to_have_text("open")
    page.click("#take")
    page.wait_for_url(f"{base}/tickets/SUPPORT-1")
    expect(page.locator("#ticket-status")).to_have_text("in progress")
    expect(page.locator("#ticket-assignee")).to_have_text("Alice Agent")
    expect(page.locator("#take")).to_have_count(0)
    expect(page.locator("#thread-entries")).to_contain_text("Alice Agent changed assignee unassigned → Alice Agent")

    # "send and set waiting": the mail goes out, the ticket waits for the customer
    expect(page.locator("#to")).to_have_value("Carol Customer <carol@customer.test>")
    page.fill("#text", "Hello Carol,\n\nplease send us a photo of the jam.")
    page.select_option("#set_status", "waiting")
    page.click("#send")
    page.wait_for_url(re.compile(r"/tickets/SUPPORT-1#c\d+$"))
    expect(page.locator("#ticket-status")).to_have_text("waiting")
    expect(page.locator("#thread-entries")).to_contain_text("Alice Agent changed status in progress → waiting")
    (received,) = wait_for(lambda: smtp.received(), 60, "the reply at the SMTP server")
    sent = email.message_from_bytes(received.data, policy=policy.default)
    assert received.rcpt_tos == ("carol@customer.test",)
    assert sent["Subject"] == "Re: [SUPPORT-1] Printer jams" and "photo of the jam" in sent.get_content()
    message_id = sent["Message-ID"].strip("<>")
    badge = page.locator("#thread-entries .badge[data-status]").last
    expect(badge).to_have_text("sent", timeout=30_000)  # the delivery badge still updates live

    # the agent starts typing; the customer's answer arrives meanwhile
    draft = "Thanks, I will look at the photo as soon as it"
    page.fill("#text", draft)
    page.evaluate("window.__notReloaded = true")
    url = page.url
    answer, _ = mails.reply(message_id, "carol@customer.test", "support@example.com", "Printer jams",
                            "Here is the photo you asked for.")
    _deliver(ingress, "carol@customer.test", answer)

    expect(page.locator("#ticket-status")).to_have_text("open", timeout=30_000)
    assert page.evaluate("window.__notReloaded") is True and page.url == url  # updated in place
    expect(page.locator("#text")).to_have_value(draft)
    expect(page.locator("#thread-entries .entry.mail_in").last).to_contain_text("Here is the photo you asked for.")
    expect(page.locator("#thread-entries")).to_contain_text("deskmail: reopened by customer reply")
    expect(page.locator("#detail-status")).to_have_text("open")
    expect(page.locator("#ticket-head")).to_contain_text("customer waits for an answer")
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(ARTIFACTS / "workflow-ticket.png"), full_page=True)

    # the queue view: "mine" finds it, "unassigned" does not
    page.goto(f"{base}/queues/SUPPORT")
    page.select_option("#f-assignee", "me")
    page.click("#apply-filters")
    page.wait_for_url(re.compile(r"assignee=me"))
    expect(page.locator('tr[data-key="SUPPORT-1"]')).to_contain_text("alice@example.com")
    expect(page.locator("#view-count")).to_have_text("1 ticket")
    page.goto(f"{base}/queues/SUPPORT?assignee=none")
    expect(page.locator('tr[data-key="SUPPORT-1"]')).to_have_count(0)
    page.screenshot(path=str(ARTIFACTS / "workflow-queue.png"), full_page=True)
    # a word of the customer's mail finds the ticket, marked in its snippet
    page.goto(f"{base}/queues/SUPPORT")
    page.fill("#q", WORD)
    page.click("#search-button")
    hit = page.locator('ol.hits li[data-key="SUPPORT-1"]')
    expect(hit).to_be_visible()
    expect(hit.locator("mark")).to_have_text(WORD)
    # the api's /metrics: the gauge from the kept counts, the first response observed once
    assert processes.metric("api", "deskmail_tickets", queue="SUPPORT", status="open") == 1
    assert processes.metric("api", "deskmail_tickets", queue="SUPPORT", status="waiting") == 0
    assert processes.metric("api", "deskmail_ticket_first_response_seconds_count", queue="SUPPORT") == 1
    codes = processes.stop()
    assert set(codes.values()) == {0}, codes
