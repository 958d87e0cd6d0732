"""The sender against the real broker, a real SMTP server (aiosmtpd, STARTTLS + AUTH)
that delivers into the real Dovecot, and the mailbox check against both."""

from __future__ import annotations

import email
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email import policy
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from prometheus_client import REGISTRY

from services.common.bus import Out
from services.common.codec import codec
from services.common.compose import as_bytes, compose
from services.common.config import Config, Secret, parse_text
from services.common.kafka import Kafka
from services.common.mailrules import new_message_id, subject_for
from services.common.runtime import Health
from services.common.smtp import SmtpPool
from services.common.smtp_failures import PermanentFailure
from services.localbroker import LocalBroker
from services.mailcheck import Step, check_mailbox, send_test
from services.sender.runner import run_sender
from tests.harness.dovecot import DovecotServer
from tests.harness.smtp import SmtpServer
from tests.harness.stack import REPO, Stack, wait_for

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]
SMTP_LOGIN = "support-sender"


# ---------------------------------------------------------------- setup


@dataclass
class Env:
    """One test's world: a queue mailbox in Dovecot (IMAP), its SMTP account, a customer."""

    dovecot: DovecotServer
    smtp: SmtpServer
    broker: LocalBroker
    address: str  # the queue's address (an IMAP user in Dovecot)
    imap_password: str
    smtp_password: str
    customer: str  # a Dovecot mailbox the SMTP server delivers into
    env: dict[str, str]
    workdir: Path
    configs: list[Config] = field(default_factory=list)

    def config_text(self, *, allow_outbound: bool = True, imap_password_env: str = "T_IMAP_PW",
                    smtp_password_env: str = "T_SMTP_PW", smtp_port: int | None = None, imap_port: int | None = None,
                    smtp_security: str = "starttls", smtp_cafile: str | None = None,
                    unique: Unique | None = None) -> str:
        assert unique is not None
        topics = {k: unique(f"snd-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
        return textwrap.dedent(f"""\
            kafka:
              bootstrap_servers: ["{self.broker.bootstrap}"]
              group_prefix: {unique("snd-group")}
              partitions: 2
              consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
              topics: {{{", ".join(f"{k}: {v}" for k, v in topics.items())}}}
            data_dir: {self.workdir / "data"}
            sender: {{retry_initial_seconds: 0.2, retry_max_seconds: 0.5, give_up_after_seconds: 60,
                      timeout_seconds: 5}}
            fetcher: {{timeout_seconds: 5}}
            organization:
              domains: [example.com]
              members:
                - {{email: alice@example.com, name: Alice Agent}}
            queues:
              - key: SUPPORT
                allow_outbound_mail: {"true" if allow_outbound else "false"}
                mailboxes:
                  - address: {self.address}
                    accept_external: true
                    imap:
                      host: 127.0.0.1
                      port: {imap_port or self.dovecot.imaps_port}
                      security: ssl
                      cafile: {self.dovecot.cafile}
                      password: {{env: {imap_password_env}}}
                    smtp:
                      host: 127.0.0.1
                      port: {smtp_port or self.smtp.port}
                      security: {smtp_security}
                      login: {SMTP_LOGIN}
                      password: {{env: {smtp_password_env}}}
                      cafile: {smtp_cafile or self.smtp.cafile}
                    signatures:
                      - {{alias: Example support, text: "--\\nExample Inc. customer support"}}
                      - {{alias: Служба поддержки, text: "С уважением,\\nподдержка"}}
            """)

    def config(self, unique: Unique, **kwargs: Any) -> Config:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            cfg = parse_text(self.config_text(unique=unique, **kwargs))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        Kafka(cfg).create_topics()
        self.configs.append(cfg)
        return cfg

    def inbox(self) -> list[email.message.EmailMessage]:
        return [email.message_from_bytes(raw, policy=policy.default)  # type: ignore[misc]
                for raw in self.smtp.inbox(self.customer)]


@pytest.fixture
def world(dovecot: DovecotServer, broker: LocalBroker, unique: Unique, tmp_path: Path) -> Iterator[Env]:
    address = f"{unique('support').lower()}@example.com"
    imap_password, smtp_password = f"imap-{uuid.uuid4().hex}", f"smtp-{uuid.uuid4().hex}"
    dovecot.add_user(address, imap_password)
    server = SmtpServer({SMTP_LOGIN: smtp_password}, dovecot=dovecot).start()
    customer = f"{unique('carol').lower()}@customer.test"
    server.add_mailbox(customer, "customer-pw")
    env = {"T_IMAP_PW": imap_password, "T_SMTP_PW": smtp_password, "T_WRONG_PW": "not-the-password"}
    try:
        yield Env(dovecot, server, broker, address, imap_password, smtp_password, customer, env, tmp_path)
    finally:
        server.close()


@dataclass
class Sender:
    stop: threading.Event
    thread: threading.Thread
    errors: list[BaseException]

    def shutdown(self) -> None:
        self.stop.set()
        self.thread.join(20)
        assert not self.thread.is_alive(), "run_sender did not return after stop"
        assert not self.errors, self.errors


@pytest.fixture
def start_sender() -> Iterator[Callable[[Config], Sender]]:
    started: list[Sender] = []

    def start(cfg: Config) -> Sender:
        stop, health, errors = threading.Event(), Health(), []

        def target() -> None:
            try:
                run_sender(cfg, stop, health)
            except BaseException as exc:  # reported by shutdown()
                errors.append(exc)

        thread = threading.Thread(target=target, name="run_sender", daemon=True)
        thread.start()
        sender = Sender(stop, thread, errors)
        started.append(sender)
        wait_for(lambda: health.ready() or errors, 20, "the sender to be ready")
        assert not errors, errors
        return sender

    yield start
    for sender in started:
        sender.stop.set()
        sender.thread.join(20)


class Events:
    """Reads DeliveryEvents from a config's events topic, from the beginning."""

    def __init__(self, cfg: Config, bootstrap: str):
        self.consumer = KafkaConsumer(
            cfg.topics["events"], bootstrap_servers=bootstrap, group_id=f"watch-{uuid.uuid4().hex}",
            session_timeout_ms=2000, heartbeat_interval_ms=500, auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        self.seen: list[tuple[bytes, dict[str, Any]]] = []

    def until(self, check: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            values = [v for _, v in self.seen]
            if check(values):
                return values
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}; events: "
                                     f"{[(v['id'], v['smtp_reply']) for v in values]}")
            for batch in self.consumer.poll(timeout_ms=200).values():
                self.seen.extend((r.key, codec("DeliveryEvent").decode(r.value)) for r in batch)

    def close(self) -> None:
        self.consumer.close()


@pytest.fixture
def watch(broker: LocalBroker) -> Iterator[Callable[[Config], Events]]:
    opened: list[Events] = []

    def make(cfg: Config) -> Events:
        opened.append(Events(cfg, broker.bootstrap))
        return opened[-1]

    yield make
    for events in opened:
        events.close()


def outbound(env: Env, n: int = 1, **overrides: Any) -> dict[str, Any]:
    out_id = f"out-{uuid.uuid4().hex[:12]}"
    mail: dict[str, Any] = {
        "id": out_id, "kind": "reply", "ticket": f"SUPPORT-{n}", "comment_id": n, "queue": "SUPPORT",
        "mailbox": env.address, "from_address": env.address, "alias": "Example support",
        "signature": "--\nExample Inc. customer support", "to": [{"email": env.customer, "name": "Carol"}],
        "cc": [], "subject": subject_for(f"SUPPORT-{n}", f"Invoice {n}"), "text": f"Here is invoice {n}.",
        "html": None, "message_id": new_message_id(out_id, env.address, key=Secret("k" * 32, "test"), ticket=f"SUPPORT-{n}"), "in_reply_to": f"q{n}@customer.test",
        "references": [f"root{n}@customer.test", f"q{n}@customer.test"], "attachments": [],
        "created_at": datetime.now(timezone.utc),
    }
    mail.update(overrides)
    return mail


def produce(cfg: Config, *mails: dict[str, Any]) -> None:
    producer = Kafka(cfg).producer()
    try:
        producer.send_all([Out(cfg.topics["outbound"], (m["ticket"] or m["id"]).encode(),
                               codec("OutboundMail").encode(m)) for m in mails], "test")
    finally:
        producer.close()


def of(values: list[dict[str, Any]], mail: dict[str, Any], status: str | None = None) -> list[dict[str, Any]]:
    return [v for v in values if v["outbound_id"] == mail["id"] and (status is None or v["status"] == status)]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# ---------------------------------------------------------------- sending


def test_a_reply_reaches_the_customers_mailbox_and_is_reported_sent(world, unique, start_sender, watch):
    cfg = world.config(unique)
    events = watch(cfg)
    sent_before = metric("deskmail_sender_mails_total", outcome="sent")
    sender = start_sender(cfg)
    mail = outbound(world, 12)
    produce(cfg, mail)

    values = events.until(lambda vs: of(vs, mail, "sent"), 30, "the sent event")
    [event] = of(values, mail)
    assert (event["id"], event["status"], event["attempt"], event["smtp_code"], event["smtp_reply"]) == \
        (f"{mail['id']}:1:sent", "sent", 1, 250, "2.0.0 Ok: queued")
    assert (event["ticket"], event["comment_id"], event["message_id"]) == ("SUPPORT-12", 12, mail["message_id"])
    assert [k for k, v in events.seen] == [b"SUPPORT-12"]

    [got] = world.inbox()
    raw = world.smtp.inbox(world.customer)[0].replace(b"\r\n ", b" ")  # unfolded
    assert f'From: "Example support" <{world.address}>'.encode() in raw
    assert got["From"].addresses[0].display_name == "Example support"
    assert str(got["Subject"]) == "Re: [SUPPORT-12] Invoice 12"
    assert got["Message-ID"] == f"<{mail['message_id']}>"
    assert str(got["In-Reply-To"]) == "<q12@customer.test>"
    assert str(got["References"]) == "<root12@customer.test> <q12@customer.test>"
    assert got["X-Deskmail-Ticket"] == "SUPPORT-12"
    assert got.get_content().replace("\r\n", "\n") == "Here is invoice 12.\n\n--\nExample Inc. customer support\n"
    [received] = world.smtp.received()
    assert (received.login, received.mail_from, received.rcpt_tos) == (SMTP_LOGIN, world.address, (world.customer,))
    assert metric("deskmail_sender_mails_total", outcome="sent") == sent_before + 1
    sender.shutdown()


def test_server_down_during_a_send_retries_then_delivers_exactly_once(world, unique, start_sender, watch):
    cfg = world.config(unique)
    events = watch(cfg)
    sender = start_sender(cfg)
    first, second = outbound(world, 1), outbound(world, 2)
    produce(cfg, first)
    events.until(lambda vs: of(vs, first, "sent"), 30, "the first mail sent (opens the pooled session)")

    world.smtp.stop()  # drops the pooled session and refuses new connections
    produce(cfg, second)
    events.until(lambda vs: len(of(vs, second, "retrying")) >= 3, 30, "three retrying events")
    world.smtp.start()
    values = events.until(lambda vs: of(vs, second, "sent"), 30, "the sent event after the server is back")

    retrying = of(values, second, "retrying")
    assert [e["attempt"] for e in retrying] == list(range(1, len(retrying) + 1))
    assert all(e["smtp_code"] is None for e in retrying)
    assert all("127.0.0.1:" in e["smtp_reply"] for e in retrying)
    assert any("connection refused" in e["smtp_reply"] for e in retrying), [e["smtp_reply"] for e in retrying]
    assert world.smtp_password not in " ".join(e["smtp_reply"] for e in retrying)
    [sent] = of(values, second, "sent")
    assert sent["attempt"] == len(retrying) + 1
    assert [str(m["Message-ID"]) for m in world.inbox()] == [f"<{first['message_id']}>", f"<{second['message_id']}>"]
    sender.shutdown()
    assert [str(m["Message-ID"]) for m in world.inbox()] == [f"<{first['message_id']}>", f"<{second['message_id']}>"]


def test_a_5xx_refusal_fails_at_once_and_nothing_is_delivered(world, unique, start_sender, watch):
    cfg = world.config(unique)
    events = watch(cfg)
    world.smtp.refuse(world.customer, "550 5.1.1 mailbox unavailable")
    sender = start_sender(cfg)
    mail = outbound(world, 5)
    produce(cfg, mail)
    values = events.until(lambda vs: of(vs, mail, "failed"), 30, "the failed event")
    [event] = of(values, mail)  # no retrying before it
    assert (event["attempt"], event["smtp_code"]) == (1, 550)
    assert event["smtp_reply"] == f"127.0.0.1 refused every recipient: <{world.customer}> 550 5.1.1 mailbox unavailable"
    assert world.smtp.received() == [] and world.inbox() == []
    sender.shutdown()


def test_partial_refusal_sends_to_the_others_and_lists_the_refused(world, unique, start_sender, watch):
    cfg = world.config(unique)
    events = watch(cfg)
    gone = f"{unique('gone').lower()}@customer.test"
    world.smtp.refuse(gone, "550 5.1.1 no such user")
    sender = start_sender(cfg)
    mail = outbound(world, 6, cc=[{"email": gone, "name": "Gone"}])
    produce(cfg, mail)
    [event] = of(events.until(lambda vs: of(vs, mail), 30, "an event"), mail)
    assert (event["status"], event["smtp_code"]) == ("sent", 250)
    assert event["smtp_reply"] == f"2.0.0 Ok: queued; refused: <{gone}> 550 5.1.1 no such user"
    assert [str(m["Message-ID"]) for m in world.inbox()] == [f"<{mail['message_id']}>"]
    sender.shutdown()


def test_outbound_switch_off_refuses_an_external_recipient_and_sends_nothing(world, unique, start_sender, watch):
    cfg = world.config(unique, allow_outbound=False)
    events = watch(cfg)
    sender = start_sender(cfg)
    mail = outbound(world, 7)
    produce(cfg, mail)
    [event] = of(events.until(lambda vs: of(vs, mail), 30, "the failed event"), mail)
    assert (event["status"], event["attempt"], event["smtp_code"]) == ("failed", 1, None)
    assert event["smtp_reply"] == ("queue SUPPORT does not allow sending mail outside the organization; "
                                   f"not members: {world.customer}")
    assert world.smtp.received() == [] and world.inbox() == []
    sender.shutdown()


def test_a_mail_that_cannot_be_composed_fails_alone_and_the_next_one_is_sent(world, unique, start_sender, watch):
    """A raw non-ASCII reference once crashed the sender on every restart; header
    injection must never reach SMTP. Both fail their mail; the queue behind them moves."""
    cfg = world.config(unique)
    events = watch(cfg)
    sender = start_sender(cfg)
    non_ascii = outbound(world, 13, in_reply_to="пример@example.org",
                         references=["root13@customer.test", "пример@example.org"])
    injected = outbound(world, 13, to=[{"email": world.customer, "name": "Carol\r\nBcc: all@customer.test"}],
                        subject="Re: [SUPPORT-13] x\nBcc: all@customer.test")
    good = outbound(world, 13)  # same ticket, same partition, behind the two
    produce(cfg, non_ascii, injected, good)

    values = events.until(lambda vs: of(vs, good, "sent"), 30, "the good mail sent")
    [first] = of(values, non_ascii)
    assert (first["status"], first["smtp_code"]) == ("failed", None)
    assert first["smtp_reply"] == ("cannot compose the mail: In-Reply-To id 'пример@example.org' is not a msg-id "
                                   "(1-980 printable ASCII characters)")
    [second] = of(values, injected)
    assert second["status"] == "failed" and "contains a line break" in second["smtp_reply"]
    [received] = world.smtp.received()  # nothing of the two reached SMTP
    assert good["message_id"].encode() in received.data
    assert [str(m["Message-ID"]) for m in world.inbox()] == [f"<{good['message_id']}>"]
    sender.shutdown()


def test_implicit_tls_smtps_works(world, unique, start_sender, watch):
    smtps = SmtpServer({SMTP_LOGIN: world.smtp_password}, tls="implicit").start()
    try:
        cfg = world.config(unique, smtp_port=smtps.port, smtp_security="ssl", smtp_cafile=smtps.cafile)
        events = watch(cfg)
        sender = start_sender(cfg)
        mail = outbound(world, 8)
        produce(cfg, mail)
        [event] = of(events.until(lambda vs: of(vs, mail), 30, "the sent event"), mail)
        assert event["status"] == "sent"
        [received] = smtps.received()
        assert received.login == SMTP_LOGIN and mail["message_id"].encode() in received.data
        sender.shutdown()
    finally:
        smtps.close()


def test_the_real_sender_process_sends(world, unique, watch):
    """`deskmail run sender` as a process (what Kubernetes runs), stopped with SIGTERM."""
    text = world.config_text(unique=unique)
    stack = Stack(text, world.workdir / "stack", world.broker.bootstrap, env=world.env)
    Kafka(stack.config).create_topics()
    events = watch(stack.config)
    try:
        stack.start("sender")
        mail = outbound(world, 9)
        produce(stack.config, mail)
        [event] = of(events.until(lambda vs: of(vs, mail), 30, "the sent event"), mail)
        assert event["status"] == "sent"
        assert stack.metric("sender", "deskmail_sender_mails_total", outcome="sent") == 1
    finally:
        codes = stack.stop()
    assert codes == {"sender": 0}
    assert [str(m["Message-ID"]) for m in world.inbox()] == [f"<{mail['message_id']}>"]


@pytest.mark.parametrize("check_after", [0.0, 3600.0], ids=["noop-probe", "no-probe"])
def test_the_pool_reuses_one_session_and_replaces_a_dropped_one(world, unique, check_after):
    """check_after 0: a NOOP before each reuse finds the dead session; 3600: the first
    command does, before anything was sent, and the mail goes through a new session."""
    cfg = world.config(unique)
    mailbox = cfg.mailbox(world.address)
    assert mailbox is not None and mailbox.smtp is not None
    pool = SmtpPool(timeout=5, check_after=check_after)
    mails = [outbound(world, n) for n in range(4)]
    try:
        for mail in mails[:3]:
            result = pool.send(mailbox.smtp, world.address, [world.customer], as_bytes(compose(mail)))
            assert result.code == 250
        assert world.smtp.sessions == 1
        world.smtp.stop()
        world.smtp.start()
        assert pool.send(mailbox.smtp, world.address, [world.customer], as_bytes(compose(mails[3]))).code == 250
        assert world.smtp.sessions == 2
    finally:
        pool.close()
    assert [str(m["Message-ID"]) for m in world.inbox()] == [f"<{m['message_id']}>" for m in mails]


# ---------------------------------------------------------------- mailbox check


def names(steps: list[Step]) -> list[tuple[str, bool]]:
    return [(s.name, s.ok) for s in steps]


def test_mailbox_check_good_wrong_password_and_wrong_port_read_differently(world, unique):
    good = check_mailbox(world.config(unique), world.address)
    assert names(good) == [("dns", True), ("connect", True), ("tls", True), ("login", True), ("select", True),
                           ("smtp-connect", True), ("smtp-tls", True), ("smtp-login", True)]
    assert good[3].detail == f"logged in as {world.address}"
    assert good[7].detail == f"logged in as {SMTP_LOGIN}"

    wrong_password = check_mailbox(
        world.config(unique, imap_password_env="T_WRONG_PW", smtp_password_env="T_WRONG_PW"), world.address)
    assert names(wrong_password) == [("dns", True), ("connect", True), ("tls", True), ("login", False),
                                     ("smtp-connect", True), ("smtp-tls", True), ("smtp-login", False)]
    imap_login, smtp_login = wrong_password[3].detail, wrong_password[6].detail
    assert imap_login.startswith(f"login refused by 127.0.0.1 for {world.address}: ")
    assert imap_login.endswith("— check the login and the password (or app password)")
    assert smtp_login == ("login refused by 127.0.0.1: 535 5.7.8 Authentication credentials invalid — "
                          "check the login and the password (or app password)")

    closed = _closed_port()
    wrong_port = check_mailbox(world.config(unique, imap_port=closed, smtp_port=closed), world.address)
    assert names(wrong_port) == [("dns", True), ("connect", False), ("smtp-connect", False)]
    assert wrong_port[1].detail.startswith(f"connection to the IMAP server failed (127.0.0.1:{closed}): ")
    assert wrong_port[1].detail.endswith("— check host and port")
    assert wrong_port[2].detail == f"cannot connect to 127.0.0.1:{closed}: connection refused — check host and port"

    for steps in (good, wrong_password, wrong_port):
        text = " ".join(s.detail for s in steps)
        assert world.imap_password not in text and world.smtp_password not in text and "not-the-password" not in text


def test_mailbox_check_on_a_plain_port_with_security_ssl_names_the_tls_setting(world, unique):
    steps = check_mailbox(world.config(unique, smtp_security="ssl"), world.address)
    assert names(steps)[-2:] == [("smtp-connect", True), ("smtp-tls", False)]
    assert "check `security:`" in steps[-1].detail


def test_send_test_delivers(world, unique):
    cfg = world.config(unique)
    result = send_test(cfg, world.address, world.customer, "Служба поддержки")
    assert (result.code, result.reply) == (250, "2.0.0 Ok: queued")
    [got] = world.inbox()
    assert str(got["Subject"]) == f"deskmail test email from {world.address}"
    assert got["From"].addresses[0].display_name == "Служба поддержки"
    assert got["X-Deskmail-Ticket"] is None
    assert got.get_content().replace("\r\n", "\n").endswith("\n\nС уважением,\nподдержка\n")


def test_send_test_reports_refusals_and_configuration_problems(world, unique):
    cfg = world.config(unique, allow_outbound=False)
    with pytest.raises(ValueError, match="does not allow sending mail outside"):
        send_test(cfg, world.address, world.customer)
    with pytest.raises(ValueError, match="has no signature 'Nobody'"):
        send_test(cfg, world.address, "alice@example.com", "Nobody")
    with pytest.raises(ValueError, match="is not configured"):
        send_test(cfg, "nobody@example.com", "alice@example.com")
    with pytest.raises(PermanentFailure, match="550 5.1.1"):  # alice has no mailbox in Dovecot
        send_test(cfg, world.address, "alice@example.com")


def test_cli_mailbox_check_and_test_send(world, unique):
    config_path = world.workdir / "deskmail.yaml"

    def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", "mailbox", *args, "--config", str(config_path)],
                              cwd=REPO, env={**os.environ, **world.env, **(env or {})}, text=True,
                              capture_output=True, timeout=60, stdin=subprocess.DEVNULL)

    config_path.write_text(world.config_text(unique=unique))
    ok = cli("check", world.address)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert len(lines) == 8 and all(line.startswith("✓ ") for line in lines)
    assert lines[-1].split() == ["✓", "smtp-login", "logged", "in", "as", SMTP_LOGIN]

    bad = cli("check", world.address, env={"T_SMTP_PW": "nope"})
    assert bad.returncode == 1
    assert bad.stdout.splitlines()[-1].split(None, 2)[:2] == ["✗", "smtp-login"]
    assert bad.stdout.splitlines()[-1].split(None, 2)[2].startswith("login refused by 127.0.0.1: 535")

    sent = cli("test-send", world.address, "--to", world.customer)
    assert sent.returncode == 0, sent.stderr
    assert sent.stdout.strip() == f"✓ sent to {world.customer}: 250 2.0.0 Ok: queued"
    assert [str(m["Subject"]) for m in world.inbox()] == [f"deskmail test email from {world.address}"]

    refused = cli("test-send", world.address, "--to", world.customer, env={"T_SMTP_PW": "nope"})
    assert refused.returncode == 1
    assert refused.stderr.startswith("✗ not sent (permanent failure): login refused by 127.0.0.1: 535")


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
