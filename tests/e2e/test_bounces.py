"""A bounce of an agent's mail, with real parts: the agent answers through the API, the
sender hands the mail to the SMTP server, and later a delivery status notification
naming that mail's Message-ID (and nothing else to thread by) lands in the queue's
Dovecot mailbox. The reply becomes ``bounced`` with the diagnostic in the API, on the
page and in `deskmail tickets show`; the report is kept on the ticket as an automatic
comment, no ticket is opened and nothing is sent."""

from __future__ import annotations

import json
from datetime import datetime, timezone
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from services.tickets import TicketStore
from tests.harness import mails
from tests.harness.circle import circle_config
from tests.harness.smtp import SmtpServer
from tests.harness.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

SMTP_PASSWORD = "smtp-secret-b0unce"
DIAGNOSTIC = "550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table"


def _dsn(support: str, rcpt: str, original_id: str, ticket: str, subject: str) -> bytes:
    """A Postfix bounce as a relay sends it some minutes after it took the mail: the
    original's headers as text/rfc822-headers, no In-Reply-To, no References."""
    boundary = "4Q2kFz1rWvz9sWK.1796292962/relay.example.com"
    diagnostic = DIAGNOSTIC.format(rcpt=rcpt)
    return textwrap.dedent(f"""\
        Return-Path: <>
        Date: Thu,  3 Dec 2026 10:16:02 +0000 (UTC)
        From: MAILER-DAEMON@relay.example.com (Mail Delivery System)
        Subject: Undelivered Mail Returned to Sender
        To: {support}
        Auto-Submitted: auto-replied
        MIME-Version: 1.0
        Content-Type: multipart/report; report-type=delivery-status;
        \tboundary="{boundary}"
        Message-Id: <20261203101602.4Q2kFz1rWvz9sWK@relay.example.com>

        --{boundary}
        Content-Type: text/plain; charset=us-ascii

        This is the mail system at host relay.example.com.

        I'm sorry to have to inform you that your message could not
        be delivered to one or more recipients.

        <{rcpt}>: host mx.customer.test[192.0.2.25] said: {diagnostic}

        --{boundary}
        Content-Type: message/delivery-status

        Reporting-MTA: dns; relay.example.com

        Final-Recipient: rfc822; {rcpt}
        Action: failed
        Status: 5.1.1
        Diagnostic-Code: smtp; {diagnostic}

        --{boundary}
        Content-Type: text/rfc822-headers

        From: Example Support <{support}>
        To: {rcpt}
        Subject: {subject}
        Message-ID: <{original_id}>
        X-Deskmail-Ticket: {ticket}

        --{boundary}--
        """).replace("\n", "\r\n").encode()


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return json.loads(response.read())


def test_a_bounce_of_an_agents_mail_marks_it_bounced(tmp_path, dovecot, broker, unique):
    support = f"{unique('help')}@example.com"
    customer = f"{unique('dora')}@customer.test"
    dovecot.add_user(support, "imap-pw")
    with SmtpServer({"support": SMTP_PASSWORD}, dovecot=dovecot) as smtp:
        smtp.add_mailbox(customer, "customer-pw")
        text, topics = circle_config(unique, "bounce", dovecot, smtp, tmp_path / "data", support, env="BOUNCE")
        stack = Stack(text, tmp_path, broker.bootstrap, env={"BOUNCE_IMAP_PW": "imap-pw", "BOUNCE_SMTP_PW": SMTP_PASSWORD})
        stack.create_topics()
        try:
            stack.start("ticketer", "router", "fetcher", "sender", "api")
            api = f"http://127.0.0.1:{stack.ports['api']}/api/v1"

            # the customer's mail opens a ticket, and the agent answers it by mail
            first, _, subject = mails.mixed(0, customer, support)
            dovecot.append(support, "imap-pw", first)
            store = TicketStore(stack.config.database_url)
            wait_for(lambda: store.count_tickets(queue="SUPPORT") == 1, 60, "the ticket")
            key = store.list_tickets(queue="SUPPORT")[0].key
            reply = _post(f"{api}/tickets/{key}/replies", {"text": "Your invoice is attached.",
                                                            "author": "alice@example.com"})
            wait_for(lambda: _get(f"{api}/tickets/{key}")["thread"][-1]["delivery"]["status"] == "sent", 60,
                     "delivery status 'sent'")
            assert len(smtp.messages) == 1
            before = _get(f"{api}/tickets/{key}")

            # later the relay bounces it: the report names the mail only in its attached headers
            dsn = _dsn(support, customer, reply["message_id"], key, f"Re: [{key}] {subject}")
            dovecot.append(support, "imap-pw", dsn)

            def bounced() -> dict | None:
                thread = _get(f"{api}/tickets/{key}")["thread"]
                return thread[0]["delivery"] if thread[0]["delivery"]["status"] == "bounced" else None

            delivery = wait_for(bounced, 60, "delivery status 'bounced'")
            assert delivery["detail"] == f"5.1.1 {customer}: {DIAGNOSTIC.format(rcpt=customer)}"
            ticket = _get(f"{api}/tickets/{key}")
            assert [(e["kind"], e["automatic"]) for e in ticket["thread"]] == [("mail_out", False), ("mail_in", True)]
            assert ticket["thread"][1]["author"] == "mailer-daemon@relay.example.com"
            # the report changed nothing else, opened nothing and sent nothing
            assert {k: ticket[k] for k in ("status", "awaiting_reply", "updated_at", "version", "events")} == {
                k: before[k] for k in ("status", "awaiting_reply", "updated_at", "version", "events")}
            assert store.count_tickets() == 1 and store.list_rejections() == []
            assert stack.metric("ticketer", "deskmail_ticketer_bounces_total", result="bounced") == 1
            time.sleep(2)  # anything the bounce might have sent would be on its way by now
            assert len(smtp.messages) == 1
            assert _get(f"{api}/tickets/{key}/deliveries")[0]["status"] == "bounced"

            # the page and the command line say so too
            with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports['api']}/tickets/{key}", timeout=10) as r:
                page = r.read().decode()
            assert 'class="badge status-bounced"' in page and 'class="bounce-notice"' in page
            assert "Recipient address rejected: User unknown in virtual mailbox table" in page
            shown = stack.cli("tickets", "show", key, "--config", str(stack.config_path)).stdout
            assert "delivery: BOUNCED " in shown and f"5.1.1 {customer}: 550 5.1.1" in shown

            # a late "sent" event for the same mail (a replay of the events topic) changes nothing
            assert store.record_delivery({"id": "late", "outbound_id": delivery["outbound_id"], "ticket": key,
                                          "comment_id": delivery["comment_id"], "status": "sent", "attempt": 1,
                                          "smtp_code": 250, "smtp_reply": "2.0.0 Ok",
                                          "message_id": reply["message_id"],
                                          "time": datetime.now(timezone.utc)}) is False
            assert stack.stop() == {n: 0 for n in ("ticketer", "router", "fetcher", "sender", "api")}
        finally:
            stack.stop()

