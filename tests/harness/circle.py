"""The configuration of an end-to-end correspondence: one queue whose mailbox reads
a Dovecot account over IMAPS and sends through the test SMTP server with STARTTLS and
AUTH, so an agent's reply reaches the customer's mailbox and the answer comes back."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.harness.smtp import SmtpServer

TOPIC_KEYS = ("inbound", "commands", "outbound", "events", "deadletter")


def circle_config(unique: Callable[[str], str], name: str, dovecot: Any, smtp: SmtpServer, data: Path,
                  support: str, *, env: str, mailbox_extra: str = "") -> tuple[str, dict[str, str]]:
    """The deskmail.yaml text and its topics. ``name`` prefixes the topics and the group;
    the IMAP and SMTP passwords come from ``<env>_IMAP_PW`` and ``<env>_SMTP_PW``;
    ``mailbox_extra`` is more YAML for the mailbox (indented as its keys)."""
    topics = {k: unique(f"{name}-{k}") for k in TOPIC_KEYS}
    extra = textwrap.indent(textwrap.dedent(mailbox_extra), " " * 8) if mailbox_extra else ""
    text = textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique(name)}
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {json.dumps(topics)}
        data_dir: {data}
        fetcher: {{poll_interval_seconds: 1}}
        organization:
          domains: [example.com]
          members:
            - {{email: alice@example.com, name: Alice Agent, groups: [support]}}
        queues:
          - key: SUPPORT
            access: [group:support]
            allow_outbound_mail: true
            mailboxes:
              - address: {support}
                accept_external: true
                imap: {{host: {dovecot.host}, port: {dovecot.imaps_port}, security: ssl, cafile: {dovecot.cafile},
                        password: {{env: {env}_IMAP_PW}}}}
                smtp: {{host: 127.0.0.1, port: {smtp.port}, security: starttls, login: support,
                        cafile: {smtp.cafile}, password: {{env: {env}_SMTP_PW}}}}
        """) + extra
    return text, topics
