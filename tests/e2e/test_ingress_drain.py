"""Two `deskmail run ingress` processes under a flood of mail, one stopped with SIGTERM
mid-flood: no transaction goes unanswered, and every 250 is exactly one ticket.

The clients behave as an MTA does: a 4xx (or a refused connection) means "try again",
here on the other ingress; a 5xx or a connection lost without a reply would be mail
lost or bounced, and fails the test.
"""

from __future__ import annotations

import secrets
import signal
import smtplib
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.tickets import TicketStore
from tests.harness import mails
from tests.harness.stack import Stack, free_port, wait_for

pytestmark = pytest.mark.e2e

MAILS = 300
THREADS = 6
DRAIN_SECONDS = 10


def _config(unique, data: Path, port: int, support: str, topics: dict[str, str], group: str) -> str:
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {group}
          partitions: 2
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {{inbound: {topics["inbound"]}, commands: {topics["commands"]}, outbound: {topics["outbound"]},
                   events: {topics["events"]}, deadletter: {topics["deadletter"]}}}
        data_dir: {data}
        ingress:
          listen: 127.0.0.1:{port}
          drain_seconds: {DRAIN_SECONDS}
          max_sessions: 64
        organization:
          domains: [example.com]
        queues:
          - key: HELP
            access: [everyone]
            mailboxes:
              - {{address: {support}, ingress: true, accept_external: true}}
        """)


@dataclass
class Outcomes:
    """What the clients saw, shared by their threads."""

    accepted: dict[int, int] = field(default_factory=dict)  # mail -> the port that said 250
    retried: list[tuple[int, int, str]] = field(default_factory=list)  # 4xx or refused connections
    failures: list[str] = field(default_factory=list)  # 5xx, or no reply: never allowed
    lock: threading.Lock = field(default_factory=threading.Lock)


def _client(port: int, outcomes: Outcomes, n: int) -> smtplib.SMTP | None:
    """A new session on ``port``, or None when it refused (a connection error or 4xx before
    any transaction: the MTA tries elsewhere)."""
    try:
        return smtplib.SMTP("127.0.0.1", port, timeout=60)
    except smtplib.SMTPConnectError as exc:
        with outcomes.lock:
            if 400 <= exc.smtp_code < 500:
                outcomes.retried.append((n, port, f"connect {exc.smtp_code}"))
            else:
                outcomes.failures.append(f"mail {n}: greeting {exc.smtp_code} on {port}")
    except (ConnectionError, smtplib.SMTPServerDisconnected) as exc:  # the listener is gone
        with outcomes.lock:
            outcomes.retried.append((n, port, type(exc).__name__))
    return None


def _flood(numbers: list[int], ports: tuple[int, int], support: str, outcomes: Outcomes) -> None:
    """Send each mail, alternating ports, keeping a session per port open between mails."""
    sessions: dict[int, smtplib.SMTP] = {}
    for index, n in enumerate(numbers):
        raw, _, _ = mails.mixed(n, f"customer{n}@customer.test", support)
        port = ports[index % 2]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            client = sessions.pop(port, None) or _client(port, outcomes, n)
            if client is None:
                port = ports[1 - ports.index(port)]
                time.sleep(0.05)
                continue
            try:
                client.sendmail(f"customer{n}@customer.test", [support], raw)
            except smtplib.SMTPResponseException as exc:  # SenderRefused, DataError, ...
                code = exc.smtp_code
                client.close()
                with outcomes.lock:
                    if 400 <= code < 500:
                        outcomes.retried.append((n, port, str(code)))
                    else:
                        outcomes.failures.append(f"mail {n}: {code} {exc.smtp_error!r} on {port}")
                        break
                port = ports[1 - ports.index(port)]
                continue
            except smtplib.SMTPRecipientsRefused as exc:
                client.close()
                codes = [code for code, _ in exc.recipients.values()]
                with outcomes.lock:
                    if all(400 <= c < 500 for c in codes):
                        outcomes.retried.append((n, port, f"rcpt {codes}"))
                    else:
                        outcomes.failures.append(f"mail {n}: RCPT {codes} on {port}")
                        break
                port = ports[1 - ports.index(port)]
                continue
            except (OSError, smtplib.SMTPServerDisconnected) as exc:  # lost without a reply
                client.close()
                with outcomes.lock:
                    outcomes.failures.append(f"mail {n}: {type(exc).__name__}: {exc} on {port}")
                break
            sessions[port] = client
            with outcomes.lock:
                outcomes.accepted[n] = port
            break
        else:
            with outcomes.lock:
                outcomes.failures.append(f"mail {n}: not accepted within 120 s")
    for client in sessions.values():
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()


def test_sigterm_on_one_ingress_mid_flood_loses_and_duplicates_nothing(tmp_path, broker, unique):
    support = f"help-{secrets.token_hex(4)}@example.com"
    topics = {k: unique(f"e2e-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    group = unique("e2e-group")
    port_a, port_b = free_port(), free_port()
    data = tmp_path / "data"
    first = Stack(_config(unique, data, port_a, support, topics, group), tmp_path / "a", broker.bootstrap)
    second = Stack(_config(unique, data, port_b, support, topics, group), tmp_path / "b", broker.bootstrap)
    outcomes = Outcomes()
    try:
        first.create_topics()
        first.start("ticketer", "router", "ingress")
        second.start("ingress")

        numbers = list(range(MAILS))
        threads = [threading.Thread(target=_flood, args=(numbers[i::THREADS], (port_a, port_b), support, outcomes),
                                    name=f"client-{i}", daemon=True) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(outcomes.accepted) >= MAILS // 3, 120, "a third of the mails answered 250")
        began = time.monotonic()
        code = first.signal("ingress", signal.SIGTERM)
        took = time.monotonic() - began
        for thread in threads:
            thread.join(timeout=180)
        assert not any(t.is_alive() for t in threads), "a client thread did not finish"

        assert outcomes.failures == [], outcomes.failures[:20]
        assert code == 0, first.log("ingress")[-3000:]
        assert took < DRAIN_SECONDS + 5 + 5, f"the ingress took {took:.1f} s to stop"  # drain, goodbye, slack
        assert len(outcomes.accepted) == MAILS
        assert {port_a, port_b} <= set(outcomes.accepted.values())  # both took mail
        assert any(port == port_a for _, port, _ in outcomes.retried), "the drain was never seen by a client"
        assert "ingress draining" in first.log("ingress")

        store = TicketStore(first.config.database_url)
        wait_for(lambda: store.count_tickets() >= MAILS, 120, f"{MAILS} tickets")
        time.sleep(2)  # a duplicate would arrive now, after the last new one
        tickets = store.list_tickets(limit=MAILS + 50)
        assert store.count_tickets() == MAILS == len(tickets)
        expected = sorted(mails.mixed(n, f"customer{n}@customer.test", support)[2] for n in range(MAILS))
        assert sorted(t.summary for t in tickets) == expected
    finally:
        codes = {**first.stop(), **{f"second {k}": v for k, v in second.stop().items()}}
    assert codes == {"ticketer": 0, "router": 0, "ingress": 0, "second ingress": 0}, codes
