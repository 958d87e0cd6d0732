"""Member identity through the running processes: Dovecot -> fetcher -> router -> ticketer.

The mailboxes stand for a hosted IMAP mailbox whose provider, ``mx.provider.test``,
writes Authentication-Results (RFC 8601) for every mail it accepts. deskmail is
told to believe that provider only; every other claim in a mail is the sender's.
"""

from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path

import pytest

from services.tickets import TicketStore
from tests.harness.stack import Stack, wait_for

pytestmark = pytest.mark.e2e

PROVIDER = "mx.provider.test"
HOP = f"Received: from mail.example.com (mail.example.com [192.0.2.10]) by {PROVIDER} with ESMTPS id q1;" \
      " Thu, 03 Dec 2026 10:00:00 +0000\r\n"


def _mail(sender: str, to: str, subject: str, trace: str = "", extra: str = "") -> bytes:
    """``trace``: the header fields above the mail as its author wrote it (newest first)."""
    mid = f"trust-{random.randrange(1 << 40)}@example.com"
    return (f"{trace}From: {sender}\r\nTo: <{to}>\r\n{extra}Subject: {subject}\r\nMessage-ID: <{mid}>\r\n"
            "Date: Thu, 03 Dec 2026 09:59:00 +0000\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\nThe backup job failed again.\r\n").encode()


def _config(unique, dovecot, data: Path, internal: str, support: str) -> str:
    topics = {k: unique(f"e2e-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    imap = (f"{{host: {dovecot.host}, port: {dovecot.imaps_port}, security: ssl, cafile: {dovecot.cafile},"
            " password: {env: E2E_PW}}")
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("e2e-group")}
          partitions: 2
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {{inbound: {topics["inbound"]}, commands: {topics["commands"]}, outbound: {topics["outbound"]},
                   events: {topics["events"]}, deadletter: {topics["deadletter"]}}}
        database: {{url: "sqlite:///{data / 'tickets.db'}"}}
        data_dir: {data}
        fetcher: {{poll_interval_seconds: 1, batch_size: 50, backoff_initial_seconds: 0.5, backoff_max_seconds: 2}}
        organization:
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [ops]}}
          sender_authentication:
            trusted_authserv_ids: [{PROVIDER}]
        queues:
          - key: INTERNAL
            access: [group:ops]
            mailboxes:
              - {{address: {internal}, accept_external: false, imap: {imap}}}
          - key: HELP
            access: [group:ops]
            mailboxes:
              - {{address: {support}, accept_external: true, imap: {imap}}}
        """)


def test_only_mail_the_trusted_provider_vouches_for_gets_member_rights(tmp_path, dovecot, broker, unique):
    internal = f"{unique('internal')}@example.com"
    support = f"{unique('help')}@example.com"
    for address in (internal, support):
        dovecot.add_user(address, "pw-good")
    alice = "Alice Agent <alice@example.com>"
    to_internal = {
        # the provider's results above its own Received field (most servers)
        "verified above the hop": _mail(alice, internal, "verified above the hop", trace=(
            f"Authentication-Results: {PROVIDER}; dkim=pass header.d=example.com;"
            " spf=pass smtp.mailfrom=example.com; dmarc=pass header.from=example.com\r\n" + HOP)),
        # Gmail's order: the Received field, then the results, then the mail as sent
        "aligned dkim below the hop": _mail(alice, internal, "aligned dkim below the hop", trace=(
            HOP + f"Authentication-Results: {PROVIDER}; dkim=pass header.d=example.com; dmarc=none\r\n")),
        "no results": _mail(alice, internal, "no results", trace=HOP),
        "pass from an untrusted server": _mail(alice, internal, "pass from an untrusted server", trace=(
            "Authentication-Results: mx.elsewhere.test; dmarc=pass header.from=example.com\r\n" + HOP)),
        # the provider said fail; the sender's own "pass" and "Received ... by" under it count for nothing
        "forged pass below the real fail": _mail(alice, internal, "forged pass below the real fail", trace=(
            f"Authentication-Results: {PROVIDER}; dkim=none; spf=fail smtp.mailfrom=example.com;"
            " dmarc=fail header.from=example.com\r\n" + HOP
            + f"Authentication-Results: {PROVIDER}; dmarc=pass header.from=example.com\r\n"
            + f"Received: from a by {PROVIDER}; Thu, 03 Dec 2026 09:59:30 +0000\r\n")),
        # a proven outsider who names the member in Sender and Reply-To is still the outsider
        "identity from sender": _mail(
            "Mallory <mallory@customer.test>", internal, "identity from sender",
            trace=f"Authentication-Results: {PROVIDER}; dmarc=pass header.from=customer.test\r\n" + HOP,
            extra="Sender: alice@example.com\r\nReply-To: alice@example.com\r\n"),
    }
    spoofed_help = _mail(alice, support, "spoofed on an open address", trace=HOP)
    dovecot.append_many(internal, "pw-good", list(to_internal.values()))
    dovecot.append_many(support, "pw-good", [spoofed_help])

    stack = Stack(_config(unique, dovecot, tmp_path / "data", internal, support), tmp_path, broker.bootstrap,
                  env={"E2E_PW": "pw-good"})
    try:
        stack.create_topics()
        stack.start("ticketer", "router", "fetcher")
        store = TicketStore(stack.config.database_url)
        wait_for(lambda: store.count_tickets() >= 3 and len(store.list_rejections(limit=100)) >= 4, 90,
                 "3 tickets and 4 rejections")

        tickets = {t.summary: t for t in store.list_tickets(limit=100)}
        assert sorted(tickets) == ["aligned dkim below the hop", "spoofed on an open address", "verified above the hop"]
        for summary in ("verified above the hop", "aligned dkim below the hop"):
            t = store.get_ticket(tickets[summary].key)
            assert (t.queue, t.author_email, t.author_member, t.author_verified) == (
                "INTERNAL", "alice@example.com", True, True), summary
        # on an address that accepts anyone, the unproven member is a customer like any other
        open_one = store.get_ticket(tickets["spoofed on an open address"].key)
        assert (open_one.queue, open_one.author_member, open_one.author_verified) == ("HELP", False, False)

        rejected = {r.subject: r.reason for r in store.list_rejections(limit=100)}
        assert sorted(rejected) == ["forged pass below the real fail", "identity from sender", "no results",
                                    "pass from an untrusted server"]
        for subject in ("forged pass below the real fail", "no results", "pass from an untrusted server"):
            assert rejected[subject].startswith("sender_not_authenticated: "), rejected[subject]
        assert rejected["identity from sender"].startswith("external_not_accepted: ")
        assert stack.metric("router", "deskmail_router_rejections_total", reason="sender_not_authenticated") == 3
        assert stack.metric("router", "deskmail_router_rejections_total", reason="external_not_accepted") == 1

        # the agent reading the ticket sees who was proven
        config = ("--config", str(stack.config_path))
        proven = json.loads(stack.cli("tickets", "show", tickets["verified above the hop"].key, "--json", *config).stdout)
        assert (proven["author"], proven["author_member"], proven["author_verified"]) == (
            "alice@example.com", True, True)
        assert "not verified" not in stack.cli("tickets", "show", tickets["verified above the hop"].key, *config).stdout
    finally:
        codes = stack.stop()
    assert codes == {"ticketer": 0, "router": 0, "fetcher": 0}, codes
