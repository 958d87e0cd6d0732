"""An agent answers from the ticket page, through the real processes.

broker + ticketer + api + sender as `deskmail run` subprocesses, a real SMTP
server (aiosmtpd with STARTTLS and AUTH), headless Chromium driving the page.
The reply goes page -> comment + outbox (one transaction) -> relay -> outbound
topic -> sender -> SMTP -> DeliveryEvent -> ticketer -> the page's badge, which
turns from "queued" to "sent" without a reload. Then the same through the CLI.
"""

from __future__ import annotations

import email
import json
import re
import signal
import textwrap
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email import policy
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from playwright.sync_api import Page, expect

from services.common.codec import codec
from services.tickets import TicketStore
from tests.harness.records import command
from tests.harness.smtp import SmtpServer
from tests.harness.stack import REPO, Stack, wait_for

pytestmark = pytest.mark.e2e

ARTIFACTS = REPO / "artifacts"
SMTP_PASSWORD = "e2e-smtp-Pw-0423"


def _config(unique: Callable[[str], str], db_url: str, data: Path, smtp: SmtpServer) -> str:
    topics = {k: unique(f"page-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("page-group")}
          partitions: 2
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {{inbound: {topics["inbound"]}, commands: {topics["commands"]}, outbound: {topics["outbound"]},
                   events: {topics["events"]}, deadletter: {topics["deadletter"]}}}
        database: {{url: "{db_url}"}}
        data_dir: {data}
        sender: {{retry_initial_seconds: 0.5, retry_max_seconds: 1, give_up_after_seconds: 60, timeout_seconds: 10}}
        organization:
          name: Example Inc.
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [support]}}
        queues:
          - key: SUPPORT
            name: Customer support
            access: [group:support]
            allow_outbound_mail: true
            mailboxes:
              - address: support@example.com
                accept_external: true
                ingress: true
                ticket: {{type: question, components: [billing]}}
                smtp: {{host: 127.0.0.1, port: {smtp.port}, security: starttls, login: support,
                        cafile: {smtp.cafile}, password: {{env: E2E_SMTP_PW}}}}
                signatures:
                  - {{alias: Example support, text: "--\\nExample Inc. customer support"}}
        """)


def _command(n: int, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "id": f"page-cmd-{n}", "components": ["billing"],
        "author": {"email": "carol@customer.test", "name": "Carol Customer", "member": False},
        "subject": "Invoice 7 is wrong", "text": "Hello,\n\nthe total on invoice 7 is wrong.\n\nCarol",
        "attachments": [{"filename": "invoice-7.pdf", "content_type": "application/pdf", "size": 48213,
                         "sha256": "ab" * 32, "blob_ref": None}],
        "message_id": f"page-{n}@customer.test", "thread_key": f"page-{n}@customer.test",
        "source_uidvalidity": 0, "source_uid": 0, "received_at": datetime.now(timezone.utc),
    }
    return command(n, **{**fields, **overrides})


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer({"support": SMTP_PASSWORD}) as server:
        yield server


@pytest.fixture
def stack(tmp_path: Path, broker: Any, unique: Callable[[str], str], smtp: SmtpServer) -> Iterator[Stack]:
    text = _config(unique, f"sqlite:///{tmp_path / 'tickets.db'}", tmp_path / "data", smtp)
    instance = Stack(text, tmp_path, broker.bootstrap, env={"E2E_SMTP_PW": SMTP_PASSWORD})
    instance.create_topics()
    yield instance
    instance.stop()


def _produce(stack: Stack, command: dict[str, Any]) -> None:
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")
    try:
        producer.send(stack.config.topics["commands"], key=command["thread_key"].encode(),
                      value=codec("TicketCommand").encode(command)).get(timeout=30)
    finally:
        producer.close()


def _outbound(stack: Stack) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(stack.config.topics["outbound"], bootstrap_servers=stack.bootstrap,
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=2000)
    try:
        return [codec("OutboundMail").decode(r.value) | {"_key": r.key} for r in consumer]
    finally:
        consumer.close()


def _status(store: TicketStore, comment_id: int) -> str | None:
    detail = store.get_ticket("SUPPORT-1")
    assert detail is not None
    return next(e.delivery_status for e in detail.thread if e.id == comment_id)


def test_reply_from_the_ticket_page_is_sent_and_its_status_updates(
    stack: Stack, smtp: SmtpServer, page: Page
) -> None:
    store = TicketStore(stack.config.database_url)
    stack.start("ticketer", "api")  # the sender comes later: first the mail must wait, queued
    _produce(stack, _command(1))
    wait_for(lambda: store.get_ticket("SUPPORT-1"), 30, "the ticket")
    base = f"http://127.0.0.1:{stack.ports['api']}"

    page.goto(f"{base}/tickets/SUPPORT-1")
    expect(page.locator("h1")).to_contain_text("Invoice 7 is wrong")
    expect(page.locator("#opening .body")).to_contain_text("the total on invoice 7 is wrong")
    expect(page.locator("#opening")).to_contain_text("invoice-7.pdf")
    expect(page.locator("#to")).to_have_value("Carol Customer <carol@customer.test>")
    expect(page.locator("#send_email")).to_be_checked()
    page.select_option("#author", "alice@example.com")
    page.fill("#cc", "Dan <dan@customer.test>")
    page.fill("#text", "Hello Carol,\n\nwe corrected invoice 7; the new one is on its way.")
    page.click("#send")

    page.wait_for_url(re.compile(r"/tickets/SUPPORT-1#c\d+$"))
    comment_id = int(page.url.rsplit("#c", 1)[1])
    entry = page.locator(f"#c{comment_id}")
    expect(entry).to_contain_text("we corrected invoice 7")
    expect(entry).to_contain_text("carol@customer.test")
    expect(entry).to_contain_text("dan@customer.test")
    badge = page.locator(f"#status-{comment_id}")
    expect(badge).to_have_text("queued")

    # the relay put exactly one OutboundMail on the topic, keyed by the ticket
    (mail,) = wait_for(lambda: _outbound(stack), 30, "the OutboundMail on the outbound topic")
    assert mail["_key"] == b"SUPPORT-1" and mail["comment_id"] == comment_id
    assert mail["subject"] == "Re: [SUPPORT-1] Invoice 7 is wrong"
    assert [r["email"] for r in mail["to"]] == ["carol@customer.test"]
    assert mail["in_reply_to"] == "page-1@customer.test"

    stack.start("sender")
    # the page polls: the badge turns to "sent" without a reload
    expect(badge).to_have_text("sent", timeout=30_000)
    expect(badge).to_have_attribute("title", re.compile(r"^250 "))
    assert page.locator(f"#detail-{comment_id}").inner_text().startswith("250")

    (received,) = smtp.received()
    assert sorted(received.rcpt_tos) == ["carol@customer.test", "dan@customer.test"]
    sent = email.message_from_bytes(received.data, policy=policy.default)
    assert sent["Subject"] == "Re: [SUPPORT-1] Invoice 7 is wrong"
    assert sent["From"] == "Example support <support@example.com>"
    assert sent["In-Reply-To"] == "<page-1@customer.test>"
    message_id = sent["Message-ID"].strip("<>")
    assert message_id == mail["message_id"]

    # the customer's answer to that mail threads back onto the ticket
    _produce(stack, _command(2, action="comment", classification="reply", subject="Re: something",
                             in_reply_to=message_id, references=["page-1@customer.test", message_id],
                             text="Thank you!", attachments=[]))
    wait_for(lambda: len(store.get_ticket("SUPPORT-1").thread) == 2, 30, "the customer's answer")  # type: ignore[union-attr]
    page.goto(f"{base}/tickets/SUPPORT-1")
    expect(page.locator(".entry.mail_in").last).to_contain_text("Thank you!")

    # a temporary refusal shows "retrying" with the server's reply, then "sent"
    smtp.refuse("erin@customer.test", "451 4.7.1 greylisted, try again later")
    expect(page.locator("#author")).to_have_value("alice@example.com")  # remembered by this browser
    page.fill("#to", "erin@customer.test")
    page.fill("#text", "Erin, see above.")
    page.click("#send")
    page.wait_for_url(re.compile(r"/tickets/SUPPORT-1#c\d+$"))
    second = int(page.url.rsplit("#c", 1)[1])
    badge2 = page.locator(f"#status-{second}")
    expect(badge2).to_have_text("retrying", timeout=30_000)
    expect(badge2).to_have_attribute("title", re.compile("greylisted"))
    smtp.accept("erin@customer.test")
    expect(badge2).to_have_text("sent", timeout=30_000)
    ARTIFACTS.mkdir(exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(ARTIFACTS / "ticket-page.png"), full_page=True)

    # the queue's settings: "Check connection" logs in to the SMTP server, "Send a test email" sends one
    page.goto(f"{base}/queues/SUPPORT/settings")
    expect(page.locator("body")).to_contain_text("password: set from environment variable E2E_SMTP_PW")
    page.get_by_role("button", name="Check connection").click()
    steps = page.locator("ul.steps li")
    expect(steps).to_have_count(3)
    expect(steps).to_have_text([re.compile(r"^✓ smtp-connect"), re.compile(r"^✓ smtp-tls"),
                                re.compile(r"^✓ smtp-login")])
    page.fill("input[name=to]", "carol@customer.test")
    page.get_by_role("button", name="Send a test email").click()
    expect(page.locator("p.ok")).to_contain_text("carol@customer.test: 250")
    page.screenshot(path=str(ARTIFACTS / "settings-page.png"), full_page=True)
    assert SMTP_PASSWORD not in page.content()
    assert smtp.received()[-1].rcpt_tos == ("carol@customer.test",)

    assert SMTP_PASSWORD not in stack.log("api") + stack.log("sender")
    codes = stack.stop()
    assert codes == {"ticketer": 0, "api": 0, "sender": 0}, codes


def test_tickets_show_and_reply_on_the_command_line(stack: Stack, smtp: SmtpServer) -> None:
    store = TicketStore(stack.config.database_url)
    stack.start("ticketer", "sender")
    _produce(stack, _command(1))
    wait_for(lambda: store.get_ticket("SUPPORT-1"), 30, "the ticket")
    config = ["--config", str(stack.config_path)]

    # no api runs: --relay-now hands the mail to the broker from the CLI itself
    replied = stack.cli("tickets", "reply", "SUPPORT-1", "--text", "Fixed on our side.", "--as", "alice@example.com",
                        "--cc", "dan@customer.test", "--relay-now", "--bootstrap", stack.bootstrap, *config)
    assert re.match(r"SUPPORT-1: reply \d+ queued: to Carol Customer <carol@customer.test>; cc dan@customer.test "
                    r"\(outbound out-[0-9a-f]{32}\)\n", replied.stdout), replied.stdout
    assert f"relayed 1 outgoing mail(s) to {stack.config.topics['outbound']}" in replied.stdout
    comment_id = int(replied.stdout.split()[2])
    wait_for(lambda: _status(store, comment_id) == "sent", 30, "the CLI's reply to be sent")
    assert len(smtp.received()) == 1

    note = stack.cli("tickets", "reply", "SUPPORT-1", "--text", "Called Carol too.", "--internal",
                     "--as", "alice@example.com", *config)
    assert re.match(r"SUPPORT-1: internal comment \d+ stored\n", note.stdout)

    refused = stack.cli("tickets", "reply", "SUPPORT-1", "--text", "x", "--as", "eve@customer.test", *config,
                        check=False)
    assert refused.returncode == 1 and "'eve@customer.test' is not an organization member" in refused.stderr

    shown = stack.cli("tickets", "show", "SUPPORT-1", *config).stdout
    assert shown.startswith("SUPPORT-1  Invoice 7 is wrong\n")
    assert "--- mail from Carol Customer <carol@customer.test>" in shown and "attachments: invoice-7.pdf" in shown
    assert "--- reply by mail from Alice Agent <alice@example.com>" in shown
    assert "to: Carol Customer <carol@customer.test>; cc: dan@customer.test" in shown
    assert re.search(r"delivery: sent \(250 .*\)\nFixed on our side\.", shown)
    assert "--- internal comment by Alice Agent <alice@example.com>" in shown

    data = json.loads(stack.cli("tickets", "show", "SUPPORT-1", "--json", *config).stdout)
    assert [e["kind"] for e in data["thread"]] == ["mail_out", "note"]
    assert data["thread"][0]["delivery"]["status"] == "sent" and data["attachments"] == ["invoice-7.pdf"]

    missing = stack.cli("tickets", "show", "SUPPORT-9", *config, check=False)
    assert missing.returncode == 1 and "no ticket SUPPORT-9" in missing.stderr

    # with an api running, a plain `tickets reply` is relayed by the api's relay
    stack.start("api")
    later = stack.cli("tickets", "reply", "SUPPORT-1", "--text", "One more thing.", "--as", "alice@example.com",
                      *config)
    later_id = int(later.stdout.split()[2])
    wait_for(lambda: _status(store, later_id) == "sent", 30, "the api to relay the CLI's reply")
    assert stack.signal("api", signal.SIGTERM) == 0
