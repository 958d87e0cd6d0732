"""The fetcher against the real Dovecot and the real (Tansu) broker."""

from __future__ import annotations

import hashlib
import logging
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from prometheus_client import REGISTRY

from services.common.blobs import FolderBlobStore
from services.common.codec import codec
from services.common.config import Config, parse_text
from services.common.kafka import Kafka
from services.common.runtime import Health
from services.fetcher import worker
from services.fetcher.imap import connect
from services.fetcher.runner import run_fetcher
from services.localbroker import LocalBroker
from tests.harness.dovecot import DovecotServer

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]
KEYWORD = "$Deskmail"


# ---------------------------------------------------------------- helpers


@dataclass
class Account:
    login: str
    password: str
    env: str

    @property
    def address(self) -> str:
        return f"{self.login.lower()}@example.com"


@dataclass
class Fetcher:
    config: Config
    stop: threading.Event
    health: Health
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    def shutdown(self, timeout: float = 10.0) -> float:
        started = time.monotonic()
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run_fetcher did not return after stop"
        assert not self.errors, self.errors
        return time.monotonic() - started


def mail(n: int, size: int = 0, tag: str = "") -> bytes:
    head = (f"From: Customer {n} <c{n}@customer.test>\r\nTo: <support@example.com>\r\n"
            f"Subject: question {n} {tag}\r\nMessage-ID: <{tag}-{n}@customer.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode()
    body = f"Hello, this is message {n}.\r\n".encode()
    if size > len(head) + len(body):
        body += (b"x" * 76 + b"\r\n") * ((size - len(head) - len(body)) // 78)
    return head + body


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def metric(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.fixture
def account(dovecot: DovecotServer, unique: Unique, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Account]:
    def make(password: str | None = None) -> Account:
        login = unique("u")
        secret = unique("pw")
        dovecot.add_user(login, secret)
        env = "DESKMAIL_TEST_" + unique("env").upper().replace("-", "_").replace(".", "_")
        monkeypatch.setenv(env, password if password is not None else secret)
        return Account(login, secret, env)

    return make


@pytest.fixture
def make_config(dovecot: DovecotServer, broker: LocalBroker, unique: Unique, tmp_path: Path) -> Callable[..., Config]:
    topics = {name: unique(name) for name in ("inbound", "commands", "outbound", "events", "deadletter", "leases")}
    group_prefix = unique("fetcher-group")

    def make(accounts: list[Account], security: str = "ssl", mark: str = "mode: keyword",
             fetcher: str = "", trust: bool = True) -> Config:
        port = dovecot.imaps_port if security == "ssl" else dovecot.imap_port
        boxes = "".join(
            f"""
              - address: {a.address}
                imap:
                  host: {dovecot.host}
                  port: {port}
                  security: {security}
                  login: {a.login}
                  password: {{env: {a.env}}}
                  {"cafile: " + dovecot.cafile if trust else ""}
            """
            for a in accounts
        )
        text = textwrap.dedent(f"""\
            kafka:
              bootstrap_servers: ["{broker.bootstrap}"]
              partitions: 2
              group_prefix: {group_prefix}
              topics: {{{", ".join(f"{k}: {v}" for k, v in topics.items())}}}
              consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
            data_dir: {tmp_path / "data"}
            blobs: {{path: {tmp_path / "blobs"}, inline_max_bytes: 20000}}
            fetcher:
              idle: true
              poll_interval_seconds: 1
              backoff_initial_seconds: 0.2
              backoff_max_seconds: 1
              timeout_seconds: 10
              mark: {{{mark}}}
            """) + textwrap.indent(fetcher, "  ") + textwrap.dedent("""\
            queues:
              - key: SUPPORT
                mailboxes:""") + textwrap.indent(textwrap.dedent(boxes), "      ")
        config = parse_text(text)
        Kafka(config).create_topics()
        return config

    return make


@pytest.fixture
def start() -> Iterator[Callable[[Config], Fetcher]]:
    started: list[Fetcher] = []

    def run(config: Config) -> Fetcher:
        stop, health = threading.Event(), Health()
        errors: list[BaseException] = []

        def target() -> None:
            try:
                run_fetcher(config, stop, health)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target, name="run_fetcher", daemon=True)
        fetcher = Fetcher(config, stop, health, thread, errors)
        thread.start()
        started.append(fetcher)
        wait_for(health.ready, 10, "the fetcher to be ready")
        return fetcher

    yield run
    for fetcher in started:
        fetcher.stop.set()
        fetcher.thread.join(15)


@pytest.fixture
def consume(broker: LocalBroker, unique: Unique) -> Iterator[Callable[..., list[Any]]]:
    consumers: dict[str, KafkaConsumer] = {}

    def poll(config: Config, count: int, timeout: float = 20.0, settle: float = 0.0) -> list[Any]:
        """Wait until at least ``count`` records arrived (from the start of the topic); return them all.

        With ``settle``, go on polling the broker that many seconds more, so that
        records produced after the first ``count`` are counted too.
        """
        topic = config.topics["inbound"]
        if topic not in consumers:
            consumers[topic] = KafkaConsumer(
                topic, bootstrap_servers=broker.bootstrap, group_id=unique("group"),
                session_timeout_ms=2000, heartbeat_interval_ms=500,
                auto_offset_reset="earliest", enable_auto_commit=False,
            )
        consumer = consumers[topic]
        records = seen.setdefault(topic, [])
        deadline = time.monotonic() + timeout
        while len(records) < count and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        assert len(records) >= count, f"{len(records)} of {count} records arrived within {timeout} s"
        settled = time.monotonic() + settle
        while time.monotonic() < settled:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
        return records

    seen: dict[str, list[Any]] = {}
    yield poll
    for consumer in consumers.values():
        consumer.close()


def decode(records: list[Any]) -> list[dict[str, Any]]:
    return [codec("InboundMail").decode(r.value) for r in records]


def flagged(dovecot: DovecotServer, a: Account, flag: str, folder: str = "INBOX") -> bool:
    messages = dovecot.messages(a.login, a.password, folder)
    return bool(messages) and all(flag in flags for _, flags in messages)


# ---------------------------------------------------------------- cases


def test_thirty_messages_arrive_in_uid_order_keyed_by_mailbox_then_are_flagged(
    dovecot, account, make_config, start, consume
):
    a = account()
    raws = [mail(n, tag=a.login) for n in range(30)]
    uids = dovecot.append_many(a.login, a.password, raws)
    config = make_config([a])
    fetcher = start(config)

    records = consume(config, 30)
    values = decode(records)
    assert len(records) == 30
    assert [v["uid"] for v in values] == uids
    assert [v["raw"] for v in values] == raws
    assert {r.key for r in records} == {a.address.encode()}
    assert len({r.partition for r in records}) == 1
    assert [r.offset for r in records] == sorted(r.offset for r in records)
    uidvalidity = values[0]["uidvalidity"]
    assert [v["id"] for v in values] == [f"imap:{a.address}:{uidvalidity}:{uid}" for uid in uids]
    assert all(v["source"] == "imap" and v["mailbox"] == a.address and v["blob_ref"] is None for v in values)

    wait_for(lambda: flagged(dovecot, a, KEYWORD), 10, "all 30 messages flagged $Deskmail")
    # fetching used BODY.PEEK[]: nothing was marked read
    assert not any("\\Seen" in flags for _, flags in dovecot.messages(a.login, a.password))
    assert metric("deskmail_fetcher_messages_total", mailbox=a.address, source="imap") == 30
    assert metric("deskmail_fetcher_mailbox_up", mailbox=a.address) == 1
    fetcher.shutdown()


def test_a_records_arrival_is_the_servers_internaldate(dovecot, account, make_config, start, consume):
    from datetime import datetime, timedelta, timezone

    a = account()
    arrived = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=2)
    dovecot.append(a.login, a.password, mail(0, tag=a.login), arrived=arrived)
    config = make_config([a])
    fetcher = start(config)
    [value] = decode(consume(config, 1))
    # not when the fetcher read it, two hours later: the end of INTERNALDATE's second
    assert value["received_at"] == arrived.replace(microsecond=999_000)  # timestamp-millis
    fetcher.shutdown()


def test_large_messages_are_fetched_in_pieces_straight_into_the_blob_store(
    dovecot, account, make_config, start, consume, monkeypatch
):
    monkeypatch.setattr(worker, "STREAM_BYTES", 30000)  # pieces of 30,000 bytes
    a = account()

    def sized(n: int, size: int) -> bytes:
        head = mail(n, tag=a.login)
        return head + b"x" * (size - len(head) - 2) + b"\r\n"

    # inline, batched with small ones, exactly two pieces, a piece and a bit, many pieces
    raws = [mail(0, tag=a.login), sized(1, 25000), sized(2, 60000), mail(3, tag=a.login), sized(4, 30001),
            sized(5, 400000)]
    assert [len(r) for r in raws[1:3]] == [25000, 60000]
    uids = dovecot.append_many(a.login, a.password, raws)
    config = make_config([a])
    fetcher = start(config)
    values = decode(consume(config, len(raws)))
    assert [v["uid"] for v in values] == uids
    blobs = FolderBlobStore(config.blob_path)
    got = [v["raw"] if v["raw"] is not None else blobs.get(v["blob_ref"]) for v in values]
    assert got == raws
    assert [v["size"] for v in values] == [len(r) for r in raws]
    assert [v["sha256"] for v in values] == [hashlib.sha256(r).hexdigest() for r in raws]
    assert [v["blob_ref"] is None for v in values] == [True, False, False, True, False, False]
    assert not list(config.blob_path.glob(".tmp-*")), "a piece's temporary file was left behind"
    wait_for(lambda: flagged(dovecot, a, KEYWORD), 10, "all messages flagged")
    fetcher.shutdown()


@pytest.mark.parametrize("security", ["ssl", "starttls", "none"])
def test_each_transport_security_works(dovecot, account, make_config, start, consume, security):
    a = account()
    dovecot.append(a.login, a.password, mail(1, tag=a.login))
    dovecot.append(a.login, a.password, mail(2, size=50_000, tag=a.login))  # over inline_max_bytes
    config = make_config([a], security=security)
    fetcher = start(config)
    small, big = decode(consume(config, 2))
    assert small["raw"] == mail(1, tag=a.login)
    assert big["raw"] is None and big["blob_ref"]
    assert (config.blob_path / big["blob_ref"][7:9] / big["blob_ref"][9:11] / big["blob_ref"][7:]).read_bytes() == \
        mail(2, size=50_000, tag=a.login)
    wait_for(lambda: flagged(dovecot, a, KEYWORD), 10, "both messages flagged")
    fetcher.shutdown()


def test_untrusted_certificate_is_reason_tls(dovecot, account, make_config, start):
    a = account()
    dovecot.append(a.login, a.password, mail(1, tag=a.login))
    fetcher = start(make_config([a], security="ssl", trust=False))  # self-signed, no cafile
    wait_for(lambda: (metric("deskmail_fetcher_mailbox_errors_total", mailbox=a.address, reason="tls") or 0) >= 1,
             10, "a TLS error counted")
    assert metric("deskmail_fetcher_mailbox_up", mailbox=a.address) == 0
    fetcher.shutdown()
    assert dovecot.messages(a.login, a.password) == [(1, ())]


def test_mode_seen_skips_read_mail_and_marks_seen(dovecot, account, make_config, start, consume):
    a = account()
    dovecot.append(a.login, a.password, mail(1, tag=a.login), flags=["\\Seen"])
    dovecot.append_many(a.login, a.password, [mail(2, tag=a.login), mail(3, tag=a.login)])
    config = make_config([a], mark="mode: seen")
    fetcher = start(config)
    values = decode(consume(config, 2))
    assert [v["raw"] for v in values] == [mail(2, tag=a.login), mail(3, tag=a.login)]
    wait_for(lambda: flagged(dovecot, a, "\\Seen"), 10, "all messages \\Seen")
    fetcher.shutdown()

    # No re-delivery of what is marked: a new fetcher searches the mailbox again
    # and must find nothing to produce.
    restarted_at = time.time()
    fetcher = start(config)
    wait_for(lambda: (metric("deskmail_fetcher_mailbox_last_success_timestamp_seconds", mailbox=a.address) or 0)
             > restarted_at, 10, "the second fetcher to search the mailbox")
    assert len(consume(config, 2, settle=2.0)) == 2
    assert metric("deskmail_fetcher_messages_total", mailbox=a.address, source="imap") == 2
    assert not any(KEYWORD in flags for _, flags in dovecot.messages(a.login, a.password))
    fetcher.shutdown()


def test_mode_move_moves_delivered_mail_to_the_processed_folder(dovecot, account, make_config, start, consume):
    a = account()
    raws = [mail(n, tag=a.login) for n in range(3)]
    dovecot.append_many(a.login, a.password, raws)
    config = make_config([a], mark="mode: move, folder: Deskmail/Processed")
    fetcher = start(config)
    assert [v["raw"] for v in decode(consume(config, 3))] == raws
    wait_for(lambda: not dovecot.messages(a.login, a.password, "INBOX"), 10, "INBOX emptied")
    assert len(dovecot.messages(a.login, a.password, "Deskmail/Processed")) == 3
    fetcher.shutdown()


def test_mail_arriving_during_idle_is_fetched_within_seconds(dovecot, account, make_config, start, consume):
    a = account()
    dovecot.append(a.login, a.password, mail(1, tag=a.login))
    config = make_config([a], fetcher="idle_seconds: 600\npoll_interval_seconds: 300\n")
    fetcher = start(config)
    consume(config, 1)
    wait_for(lambda: flagged(dovecot, a, KEYWORD), 10, "the first message flagged")
    time.sleep(1.0)  # the worker is in IDLE now (polling would wait 300 s)
    appended = time.monotonic()
    dovecot.append(a.login, a.password, mail(2, tag=a.login))
    records = consume(config, 2, timeout=10)
    latency = time.monotonic() - appended
    assert decode(records)[1]["raw"] == mail(2, tag=a.login)
    assert latency < 5, f"new mail took {latency:.1f} s to arrive"
    fetcher.shutdown()


def test_wrong_password_fails_alone_and_never_reaches_the_log(
    dovecot, account, make_config, start, consume, caplog
):
    good = account()
    bad = account(password="definitely-wrong-Secret-42")
    for a in (good, bad):
        dovecot.append(a.login, a.password, mail(1, tag=a.login))
    config = make_config([bad, good])
    with caplog.at_level(logging.DEBUG):
        fetcher = start(config)
        values = decode(consume(config, 1))
        assert values[0]["mailbox"] == good.address
        wait_for(lambda: (metric("deskmail_fetcher_mailbox_errors_total", mailbox=bad.address, reason="login")
                          or 0) >= 1, 10, "a login error counted for the bad mailbox")
        assert metric("deskmail_fetcher_mailbox_up", mailbox=bad.address) == 0
        assert metric("deskmail_fetcher_mailbox_up", mailbox=good.address) == 1
        fetcher.shutdown()
    assert "definitely-wrong-Secret-42" not in caplog.text
    assert good.password not in caplog.text and bad.password not in caplog.text
    failures = [r for r in caplog.records if r.getMessage() == "mailbox session failed"]
    assert failures and {r.mailbox for r in failures} == {bad.address}
    assert {r.reason for r in failures} == {"login"}
    assert not any(KEYWORD in flags for _, flags in dovecot.messages(bad.login, bad.password))


def test_stop_makes_run_fetcher_return_within_seconds(dovecot, account, make_config, start, consume):
    a, b = account(), account()
    dovecot.append(a.login, a.password, mail(1, tag=a.login))
    config = make_config([a, b], fetcher="idle_seconds: 600\n")
    fetcher = start(config)
    consume(config, 1)
    time.sleep(1.0)  # both workers idle
    assert fetcher.health.ready()
    took = fetcher.shutdown()
    assert took < 5, f"run_fetcher took {took:.1f} s to return"
    assert not fetcher.health.ready()


def test_a_session_skips_idle_when_mail_came_in_after_its_search(dovecot, account, make_config):
    """Dovecot announces a change in IDLE half a second late, and one made after the last
    SEARCH but before IDLE not at all: the session from ``connect`` looks itself."""
    a = account()
    dovecot.append(a.login, a.password, mail(1, tag=a.login))
    client = connect(make_config([a]).mailboxes[0].imap, 10.0)
    try:
        client.select_folder("INBOX")
        assert len(client.search("ALL")) == 1
        client.idle()
        assert client.idle_check(timeout=0.3) == []  # nothing new
        client.idle_done()

        dovecot.append(a.login, a.password, mail(2, tag=a.login))  # after the SEARCH, before the IDLE
        started = time.monotonic()
        client.idle()
        assert worker.announces_new_mail(client.idle_check(timeout=5.0))
        assert time.monotonic() - started < 0.4
        client.idle_done()

        client.select_folder("INBOX")
        assert len(client.search("ALL")) == 2
        client.idle()
        appended: list[float] = []
        later = threading.Timer(0.1, lambda: appended.append(
            dovecot.append(a.login, a.password, mail(3, tag=a.login)) and time.monotonic()))
        later.start()
        assert worker.announces_new_mail(client.idle_check(timeout=5.0))  # during the check: looked for
        noticed = time.monotonic()
        later.join()
        assert noticed - appended[0] < 0.3  # Dovecot's own notice comes after 0.5 s
        client.idle_done()
    finally:
        client.logout()
