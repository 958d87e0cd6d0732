"""Out-of-office replies to an agent's mail, with real parts: the agent answers a
customer through the API (SMTP with STARTTLS and AUTH, delivered into Dovecot), the
customer's mail server answers that mail automatically, in the ways Exchange, Gmail
and Yandex do, and none of it opens a ticket, changes the ticket or sends mail."""

from __future__ import annotations

import json
import textwrap
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable

import pytest

from services.tickets import TicketStore
from tests.harness import mails
from tests.harness.circle import circle_config
from tests.harness.smtp import SmtpServer
from tests.harness.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

SMTP_PASSWORD = "smtp-secret-ooo"


def _away(kind: str, customer: str, support: str, agent_mid: str, key: str) -> bytes:
    """An automatic answer to the agent's mail, as the customer's server writes it."""
    mid = f"<ooo-{uuid.uuid4().hex}@customer.test>"
    if kind == "exchange":  # no Auto-Submitted, a Dutch subject: only Exchange's own marks tell
        head = (f"Subject: Automatisch antwoord: Re: [{key}] Invoice\r\nX-Auto-Response-Suppress: All\r\n"
                f"X-MS-Exchange-Inbox-Rules-Loop: {customer}\r\nIn-Reply-To: <{agent_mid}>\r\n"
                f"Thread-Topic: Invoice\r\n")
        text = "I am out of the office until 14 December with limited access to email."
    elif kind == "gmail":  # a vacation responder: threaded by References, Auto-Submitted set
        head = (f"Subject: Re: [{key}] Invoice\r\nAuto-Submitted: auto-replied\r\n"
                f"References: <{agent_mid}>\r\nIn-Reply-To: <{agent_mid}>\r\nPrecedence: bulk\r\n")
        text = "Thanks for your email. I'm on vacation and will reply when I'm back."
    else:  # Yandex: Russian subject, a null Return-Path, the ticket key only in the subject
        head = (f"Subject: =?utf-8?B?0JDQstGC0L7QvtGC0LLQtdGCOg==?= [{key}] Invoice\r\n"
                "Return-Path: <>\r\nAuto-Submitted: auto-replied\r\n")
        text = "Здравствуйте! Я в отпуске до 14 декабря."
    return (f"From: Carol <{customer}>\r\nTo: <{support}>\r\nDate: Wed, 02 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: {mid}\r\n{head}MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"\r\n{text}\r\n").encode()


def _api(url: str, body: dict | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_out_of_office_replies_to_an_agents_mail_open_nothing_and_send_nothing(
        tmp_path: Path, dovecot: Any, broker: Any, unique: Callable[[str], str]) -> None:
    support = f"{unique('ooo')}@example.com"
    customer = f"{unique('carol')}@customer.test"
    dovecot.add_user(support, "imap-pw")
    with SmtpServer({"support": SMTP_PASSWORD}, dovecot=dovecot) as smtp:
        smtp.add_mailbox(customer, "customer-pw")
        text, _ = circle_config(unique, "ooo", dovecot, smtp, tmp_path / "data", support, env="OOO")
        stack = Stack(text, tmp_path, broker.bootstrap, env={"OOO_IMAP_PW": "imap-pw", "OOO_SMTP_PW": SMTP_PASSWORD})
        stack.create_topics()
        try:
            stack.start("ticketer", "router", "fetcher", "sender", "api")
            api = f"http://127.0.0.1:{stack.ports['api']}/api/v1"
            store = TicketStore(stack.config.database_url)
            first, _, _ = mails.mixed(0, customer, support)
            dovecot.append(support, "imap-pw", first)
            wait_for(lambda: store.count_tickets(queue="SUPPORT") == 1, 60, "the ticket")
            key = store.list_tickets(queue="SUPPORT")[0].key

            # the agent answers and sets the ticket waiting for the customer, as the page's button does
            reply = _api(f"{api}/tickets/{key}/replies", {"text": "Which invoice number?",
                                                           "author": "alice@example.com", "set_status": "waiting"})
            wait_for(lambda: _api(f"{api}/tickets/{key}")["thread"][-1]["delivery"]["status"] == "sent", 60,
                     "the agent's mail sent")
            before = _api(f"{api}/tickets/{key}")
            assert (before["status"], before["awaiting_reply"]) == ("waiting", False)
            assert len(smtp.received()) == 1

            for kind in ("exchange", "gmail", "yandex"):
                dovecot.append(support, "imap-pw", _away(kind, customer, support, reply["message_id"], key))
            ticket = wait_for(lambda: (lambda t: t if len(t["thread"]) == 4 else None)(_api(f"{api}/tickets/{key}")),
                              60, "the three automatic answers on the ticket")

            auto = ticket["thread"][1:]
            assert [e["author"] for e in auto] == [customer] * 3
            assert all(e["automatic"] for e in auto), auto
            texts = " ".join(e["text"] for e in auto)  # the Yandex one has its own partition: any order
            assert all(words in texts for words in ("out of the office", "on vacation", "в отпуске"))
            # nothing changed: still waiting, not "customer replied", same version, no ticket of its own
            assert (ticket["status"], ticket["awaiting_reply"], ticket["version"]) == (
                "waiting", False, before["version"])
            assert store.count_tickets() == 1
            assert store.list_suspended().items == ()
            # and nothing was sent: no acknowledgement, no answer to the machine
            assert len(smtp.received()) == 1
            assert len(dovecot.messages(customer, "customer-pw")) == 1
            store.close()
            assert stack.stop() == {n: 0 for n in ("ticketer", "router", "fetcher", "sender", "api")}
        finally:
            stack.stop()
