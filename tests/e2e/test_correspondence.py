"""The whole circle with real parts: a customer's mail becomes a ticket, the agent answers
through the API, the answer lands in the customer's mailbox (SMTP with STARTTLS and AUTH,
delivered into Dovecot), and the customer's reply comes back as a comment on the ticket."""

from __future__ import annotations

import email
import json
import re
import stat
import textwrap
import urllib.request
import uuid
from email import policy
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from services.common import build
from services.tickets import TicketStore
from tests.harness import mails
from tests.harness.circle import circle_config
from tests.harness.smtp import SmtpServer
from tests.harness.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

SMTP_PASSWORD = "smtp-secret-9f3"


def _keyed_mail(sender: str, to: str, subject: str, text: str) -> bytes:
    """A mail that names a ticket only by the key in its subject: no In-Reply-To, no References."""
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nDate: Sun, 01 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <keyed-{uuid.uuid4().hex}@customer.test>\r\nSubject: {subject}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n").encode()


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 201
        return json.loads(response.read())


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def test_customer_mail_agent_reply_and_customer_answer(tmp_path, dovecot, broker, unique):
    support = f"{unique('help')}@example.com"
    customer = f"{unique('carol')}@customer.test"
    dovecot.add_user(support, "imap-pw")
    with SmtpServer({"support": SMTP_PASSWORD}, dovecot=dovecot) as smtp:
        smtp.add_mailbox(customer, "customer-pw")
        text, topics = circle_config(unique, "circle", dovecot, smtp, tmp_path / "data", support, env="CIRCLE",
                                     mailbox_extra="""\
                                         ticket: {type: question, components: [billing]}
                                         signatures:
                                           - {alias: Поддержка Example, text: "--\\nExample Inc. customer support"}
                                         """)
        stack = Stack(text, tmp_path, broker.bootstrap,
                      env={"CIRCLE_IMAP_PW": "imap-pw", "CIRCLE_SMTP_PW": SMTP_PASSWORD,
                           "DESKMAIL_REVISION": "0123abcdef"})
        stack.create_topics()
        try:
            stack.start("ticketer", "router", "fetcher", "sender", "api")
            api = f"http://127.0.0.1:{stack.ports['api']}/api/v1"

            # 1. the customer writes to the queue's mailbox
            first, first_mid, subject = mails.mixed(3, customer, support)
            dovecot.append(support, "imap-pw", first)
            store = TicketStore(stack.config.database_url)
            wait_for(lambda: store.count_tickets(queue="SUPPORT") == 1, 60, "the ticket")
            key = store.list_tickets(queue="SUPPORT")[0].key

            # 2. the agent answers through the API, as the ticket page does
            reply = _post(f"{api}/tickets/{key}/replies",
                          {"text": "Hello Carol,\nthe invoice is corrected.", "author": "alice@example.com"})
            assert [r["email"] for r in reply["to"]] == [customer]
            wait_for(lambda: _get(f"{api}/tickets/{key}")["thread"][-1]["delivery"]["status"] == "sent", 60,
                     "delivery status 'sent'")

            # 3. the customer's mailbox has it: alias in From, signature, key in subject, threading
            inbox = wait_for(lambda: dovecot.messages(customer, "customer-pw"), 30, "the mail in the customer's INBOX")
            assert len(inbox) == 1
            client = dovecot.connect(customer, "customer-pw", security="imaps")
            client.select_folder("INBOX", readonly=True)
            raw = client.fetch([inbox[0][0]], ["BODY.PEEK[]"])[inbox[0][0]][b"BODY[]"]
            client.logout()
            received = email.message_from_bytes(raw, policy=policy.default)
            assert received["From"].addresses[0].display_name == "Поддержка Example"
            assert received["From"].addresses[0].addr_spec == support
            assert received["Subject"] == f"Re: [{key}] {subject}"
            assert received["In-Reply-To"] == f"<{first_mid}>"
            assert f"<{first_mid}>" in received["References"]
            body = received.get_body(("plain",)).get_content()
            assert "the invoice is corrected." in body and "Example Inc. customer support" in body
            agent_mid = received["Message-ID"].strip("<>")
            assert agent_mid == reply["message_id"]

            # 4. the customer answers that mail (by its Message-ID only: no ticket key in the subject)
            answer, _ = mails.reply(agent_mid, customer, support, "Thanks", "Got it, thank you!")
            dovecot.append(support, "imap-pw", answer)
            wait_for(lambda: len(_get(f"{api}/tickets/{key}")["thread"]) == 2, 60, "the customer's answer")
            thread = _get(f"{api}/tickets/{key}")["thread"]
            assert [(e["kind"], e["author"]) for e in thread] == [("mail_out", "alice@example.com"),
                                                                  ("mail_in", customer)]
            assert "Got it, thank you!" in thread[1]["text"]
            assert store.count_tickets(queue="SUPPORT") == 1

            # 5. only participants write by ticket key: a stranger's "Re: [KEY]" without
            # threading headers opens a ticket of its own; the customer's still threads
            stranger = f"{unique('mallory')}@elsewhere.test"
            dovecot.append(support, "imap-pw", _keyed_mail(stranger, support, f"Re: [{key}] {subject}", "mine now"))
            wait_for(lambda: store.count_tickets(queue="SUPPORT") == 2, 60, "the stranger's own ticket")
            dovecot.append(support, "imap-pw", _keyed_mail(customer, support, f"Re: [{key}] {subject}", "one more"))
            wait_for(lambda: len(_get(f"{api}/tickets/{key}")["thread"]) == 3, 60, "the customer's keyed answer")
            ticket = _get(f"{api}/tickets/{key}")
            assert [e["author"] for e in ticket["thread"]] == ["alice@example.com", customer, customer]
            assert stranger not in json.dumps(ticket)

            # the Message-ID carries a token signed with a key made once in the data folder
            assert re.fullmatch(r"deskmail\.out-[0-9a-f]+\.[0-9a-f]{32}\.[0-9a-f]{32}@example\.com", agent_mid)
            key_file = tmp_path / "data" / "message-id.key"
            assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
            message_id_key = key_file.read_text().strip()

            # an API token works, and is the last line `tokens create` prints
            made = stack.cli("tokens", "create", "--as", "alice@example.com", "--name", "leak check",
                             "--config", str(stack.config_path))
            token = made.stdout.strip().splitlines()[-1]
            signed = urllib.request.Request(f"{api}/tickets/{key}", headers={"Authorization": f"Bearer {token}"})
            with urllib.request.urlopen(signed, timeout=10) as response:
                assert json.load(response)["key"] == key

            # no secret reaches what the processes wrote, serve or sent on: logs, /metrics,
            # every topic's records, the pages and the API
            secrets = {"smtp password": SMTP_PASSWORD, "imap password": "imap-pw",
                       "message-id key": message_id_key, "api token": token}
            exposed = {f"{name} log": stack.log(name) for name in ("fetcher", "router", "ticketer", "sender", "api")}
            web = f"http://127.0.0.1:{stack.ports['api']}"
            for name, port in stack.ports.items():
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
                    exposed[f"{name} /metrics"] = response.read().decode()
                # every process says which release and revision it runs (the image sets DESKMAIL_REVISION)
                assert stack.metric(name, "deskmail_build_info", version=build.version(), revision="0123abcdef") == 1
            for path in ("/", "/queues/SUPPORT", f"/tickets/{key}", "/api/v1/tickets", f"/api/v1/tickets/{key}",
                         "/openapi.json"):
                with urllib.request.urlopen(web + path, timeout=10) as response:
                    exposed[path] = response.read().decode()
            reader = KafkaConsumer(*topics.values(), bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest",
                                   enable_auto_commit=False, consumer_timeout_ms=3000)
            try:
                records = [(r.key or b"") + b"\0" + (r.value or b"") for r in reader]
            finally:
                reader.close()
            assert records, "the topics were read"
            exposed["topics"] = b"\n".join(records).decode("latin-1")
            for what, secret in secrets.items():
                leaks = [where for where, text in exposed.items() if secret in text]
                assert not leaks, f"the {what} appears in {leaks}"
            assert stack.stop() == {n: 0 for n in ("ticketer", "router", "fetcher", "sender", "api")}
        finally:
            stack.stop()
