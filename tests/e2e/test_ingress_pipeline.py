"""Mail handed to the SMTP ingress becomes tickets, through a real broker and the real processes."""

from __future__ import annotations

import secrets
import smtplib
import textwrap
from pathlib import Path

import pytest

from services.tickets import TicketStore
from tests.harness import mails
from tests.harness.stack import Stack, free_port, wait_for

pytestmark = pytest.mark.e2e


def _config(unique, data: Path, port: int, orders: str, support: str) -> str:
    topics = {k: unique(f"e2e-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("e2e-group")}
          partitions: 2
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {{inbound: {topics["inbound"]}, commands: {topics["commands"]}, outbound: {topics["outbound"]},
                   events: {topics["events"]}, deadletter: {topics["deadletter"]}}}
        data_dir: {data}
        ingress:
          listen: 127.0.0.1:{port}
        organization:
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [sales]}}
        queues:
          - key: ORDERS
            access: [group:sales]
            mailboxes:
              - address: {orders}
                ingress: true
                accept_external: false
                ticket: {{type: task, components: [orders, shipping]}}
          - key: HELP
            access: [group:sales]
            mailboxes:
              - address: {support}
                ingress: true
                accept_external: true
                ticket: {{type: question, components: [general]}}
        """)


def test_mail_to_ingress_addresses_becomes_tickets_with_the_address_defaults(tmp_path, broker, unique):
    # short addresses: the ticketer keeps command ids (here smtp:<address>:<sha256>) up to 128 characters
    orders = f"orders-{secrets.token_hex(4)}@example.com"
    support = f"help-{secrets.token_hex(4)}@example.com"
    port = free_port()
    stack = Stack(_config(unique, tmp_path / "data", port, orders, support), tmp_path, broker.bootstrap)
    try:
        stack.create_topics()
        stack.start("ticketer", "router", "ingress")  # no IMAP mailbox at all: no fetcher

        member_raw, _, member_subject = mails.mixed(0, "alice@example.com", orders)
        outsider_raw, _, _ = mails.mixed(1, "mallory@customer.test", orders)
        customer = [mails.mixed(i, f"customer{i}@customer.test", support) for i in range(2, 7)]
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            assert client.sendmail("alice@example.com", [orders], member_raw) == {}
            assert client.sendmail("mallory@customer.test", [orders], outsider_raw) == {}
            for raw, _, _ in customer:
                assert client.sendmail("<>", [support], raw) == {}
            # the ingress never relays and knows only its own addresses
            with pytest.raises(smtplib.SMTPRecipientsRefused):
                client.sendmail("alice@example.com", ["someone@elsewhere.test"], member_raw)

        store = TicketStore(stack.config.database_url)
        wait_for(lambda: store.count_tickets() >= 6, 60, "6 tickets")
        tickets = store.list_tickets(limit=100)
        by_queue = {q: [t for t in tickets if t.queue == q] for q in ("ORDERS", "HELP")}
        assert [(t.key, t.type, tuple(t.components), t.summary, t.author_email) for t in by_queue["ORDERS"]] == [
            ("ORDERS-1", "task", ("orders", "shipping"), member_subject, "alice@example.com")]
        assert len(by_queue["HELP"]) == 5
        assert {(t.type, tuple(t.components)) for t in by_queue["HELP"]} == {("question", ("general",))}
        assert sorted(t.summary for t in by_queue["HELP"]) == sorted(subject for _, _, subject in customer)

        # a customer's reply over SMTP threads onto the ticket; the same mail delivered twice changes nothing
        first_raw, first_mid, first_subject = customer[0]
        reply_raw, _ = mails.reply(first_mid, "customer2@customer.test", support, first_subject, "Thanks!")
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
            assert client.sendmail("customer2@customer.test", [support], reply_raw) == {}
            assert client.sendmail("customer2@customer.test", [support], reply_raw) == {}
        target = next(t.key for t in by_queue["HELP"] if t.summary == first_subject)
        wait_for(lambda: len(store.get_ticket(target).thread) == 1, 30, "the reply comment")
        wait_for(lambda: stack.metric("ticketer", "deskmail_ticketer_commands_applied_total", outcome="duplicate")
                 >= 1, 30, "the second delivery to be absorbed")
        assert len(store.get_ticket(target).thread) == 1
        assert store.count_tickets() == 6

        assert stack.metric("ingress", "deskmail_fetcher_messages_total", mailbox=support, source="smtp") == 7
        assert stack.metric("ingress", "deskmail_fetcher_messages_total", mailbox=orders, source="smtp") == 2
        assert stack.metric("ingress", "deskmail_fetcher_ingress_sessions_total", outcome="accepted") == 9
        assert stack.metric("ingress", "deskmail_fetcher_ingress_sessions_total", outcome="unknown_recipient") == 1
        assert stack.metric("router", "deskmail_router_rejections_total", reason="external_not_accepted") == 1
    finally:
        codes = stack.stop()
    assert codes == {"ticketer": 0, "router": 0, "ingress": 0}, codes
