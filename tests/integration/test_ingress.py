"""The SMTP/LMTP ingress against the real (Tansu) broker, driven by smtplib."""

from __future__ import annotations

import hashlib
import re
import smtplib
import ssl
import subprocess
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer
from prometheus_client import REGISTRY

from services.common.blobs import FolderBlobStore, blob_store
from services.common.codec import codec
from services.common.config import Config, parse_text
from services.common.kafka import Kafka, Producer
from services.fetcher.ingress import IngressServer, build_ingress
from services.fetcher.ingress_runner import start_ingress
from services.fetcher.records import inline_max_bytes
from services.localbroker import LocalBroker, free_port
from tests.harness.s3 import S3Server

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


def mail(n: int, to: str, size: int = 0) -> bytes:
    """A message with CRLF line ends, 8-bit UTF-8 and a line that starts with a dot."""
    head = (f"From: Customer {n} <c{n}@customer.test>\r\nTo: <{to}>\r\nSubject: question {n}\r\n"
            f"Message-ID: <ingress-{n}-{time.time_ns()}@customer.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n").encode()
    body = f"Hello {n}, Привет.\r\n.a line with a leading dot\r\n..two dots\r\n".encode()
    if size > len(head) + len(body):
        body += (b"x" * 76 + b"\r\n") * ((size - len(head) - len(body)) // 78)
    return head + body


# deskmail's own verdict on top of every stored mail (services/fetcher/mailauth.py)
OWN_TRACE = re.compile(rb"Authentication-Results: [^\r\n]+(?:\r\n [^\r\n]+)*\r\nReceived: [^\r\n]+\r\n [^\r\n]+\r\n")


def as_sent(stored: bytes) -> bytes:
    """The stored mail without deskmail's Authentication-Results and Received fields: the bytes the client sent."""
    match = OWN_TRACE.match(stored)
    assert match, stored[:400]
    return stored[match.end():]


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def records(config: Config, bootstrap: str, expect: int, timeout: float = 10.0) -> list[tuple[bytes, dict[str, Any]]]:
    """Every InboundMail on the config's inbound topic, once ``expect`` arrived (or the timeout)."""
    consumer = KafkaConsumer(config.topics["inbound"], bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=1000)
    found: list[tuple[bytes, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expect and time.monotonic() < deadline:
            for record in consumer:
                found.append((record.key, codec("InboundMail").decode(record.value)))
        return found
    finally:
        consumer.close()


class Ingress:
    """One ingress (through the ingress runner's ``start_ingress``) with its own topics and producer."""

    def __init__(self, config: Config, bootstrap: str):
        self.config = config
        self.bootstrap = bootstrap
        self.producer: Producer = Kafka(config, [bootstrap]).producer()
        self.blobs: Any = blob_store(config)
        self.host, self.port = config.ingress.listen.host, config.ingress.listen.port
        self.server: IngressServer | None = None

    def start(self) -> None:
        self.server = start_ingress(self.config, self.producer, self.blobs)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        self.producer.close(timeout=2)

    def smtp(self) -> smtplib.SMTP:
        return smtplib.SMTP(self.host, self.port, timeout=60)

    def records(self, expect: int, timeout: float = 10.0) -> list[tuple[bytes, dict[str, Any]]]:
        return records(self.config, self.bootstrap, expect, timeout)


def config_text(unique: Unique, data: Path, port: int, extra: str = "", ingress: str = "") -> tuple[str, str, str]:
    support = f"{unique('support')}@example.com".lower()
    orders = f"{unique('orders')}@example.com".lower()
    topics = {k: unique(k) for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    ingress_lines = "".join(f"  {line}\n" for line in ingress.splitlines())
    text = textwrap.dedent(f"""\
        kafka:
          partitions: 1
          topics: {{inbound: {topics["inbound"]}, commands: {topics["commands"]}, outbound: {topics["outbound"]},
                   events: {topics["events"]}, deadletter: {topics["deadletter"]}}}
        data_dir: {data}
        queues:
          - key: SUPPORT
            access: [everyone]
            mailboxes:
              - {{address: {support}, ingress: true, accept_external: true}}
              - {{address: {orders}, ingress: true}}
              - address: imap-only@example.com
                imap: {{host: imap.invalid, password: {{env: HOME}}}}
        ingress:
          listen: 127.0.0.1:{port}
        """) + ingress_lines + extra + "\n"
    return text, support, orders


@pytest.fixture
def ingress(broker: LocalBroker, unique: Unique, tmp_path: Path) -> Iterator[Callable[..., tuple[Ingress, str, str]]]:
    started: list[Ingress] = []

    def make(ingress_yaml: str = "", extra: str = "") -> tuple[Ingress, str, str]:
        text, support, orders = config_text(unique, tmp_path / "data", free_port(), extra, ingress_yaml)
        config = parse_text(text, str(tmp_path / "deskmail.yaml"))
        Kafka(config, [broker.bootstrap]).create_topics()
        server = Ingress(config, broker.bootstrap)
        server.start()
        started.append(server)
        return server, support, orders

    yield make
    for server in started:
        server.stop()


# ---------------------------------------------------------------- SMTP


def test_mail_for_an_ingress_address_is_on_the_topic_with_the_exact_bytes_when_250_comes(ingress):
    server, support, orders = ingress()
    raw = mail(1, support)
    accepted = metric("deskmail_fetcher_ingress_sessions_total", outcome="accepted")
    with server.smtp() as client:
        client.ehlo("mta.customer.test")
        assert client.mail("bounce-1@customer.test")[0] == 250
        assert client.rcpt(support.upper())[0] == 250  # addresses are matched case-insensitively
        code, reply = client.data(raw)
    assert code == 250, reply
    found = server.records(1, timeout=5)  # already acknowledged: no waiting for it to arrive
    assert len(found) == 1
    key, record = found[0]
    sha = hashlib.sha256(raw).hexdigest()
    assert key == support.encode()
    assert as_sent(record["raw"]) == raw
    assert record["id"] == f"smtp:{support}:{sha}"
    assert (record["source"], record["uidvalidity"], record["uid"]) == ("smtp", 0, 0)
    stored = record["raw"]
    assert (record["size"], record["sha256"], record["blob_ref"]) == (len(stored), hashlib.sha256(stored).hexdigest(), None)
    assert record["mailbox"] == support
    assert record["envelope_from"] == "bounce-1@customer.test"
    assert record["envelope_to"] == [support.upper()]
    assert metric("deskmail_fetcher_ingress_sessions_total", outcome="accepted") == accepted + 1
    assert metric("deskmail_fetcher_messages_total", mailbox=support, source="smtp") == 1


def test_one_record_per_accepted_mailbox_and_a_bounce_keeps_its_null_sender(ingress):
    server, support, orders = ingress()
    raw = mail(2, support)
    with server.smtp() as client:
        refused = client.sendmail("<>", [support, orders, f"Other-{orders}"], raw)
    assert set(refused) == {f"Other-{orders}"} and refused[f"Other-{orders}"][0] == 550
    found = server.records(2)
    assert sorted(key for key, _ in found) == sorted([support.encode(), orders.encode()])
    assert {as_sent(r["raw"]) for _, r in found} == {raw}
    assert {r["envelope_from"] for _, r in found} == {""}
    assert {r["id"] for _, r in found} == {f"smtp:{m}:{hashlib.sha256(raw).hexdigest()}" for m in (support, orders)}


def test_an_address_that_is_not_an_ingress_mailbox_is_refused_with_550(ingress):
    server, support, _ = ingress()
    refused = metric("deskmail_fetcher_ingress_sessions_total", outcome="unknown_recipient")
    with server.smtp() as client:
        client.ehlo()
        client.mail("c@customer.test")
        for address in ("nobody@example.com", "imap-only@example.com", "relay@elsewhere.test"):
            code, reply = client.rcpt(address)
            assert code == 550 and reply.startswith(b"5.1.1"), (address, code, reply)
        client.rset()
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refusal:
            client.sendmail("c@customer.test", ["nobody@example.com"], mail(3, "nobody@example.com"))
    assert refusal.value.recipients["nobody@example.com"][0] == 550
    assert metric("deskmail_fetcher_ingress_sessions_total", outcome="unknown_recipient") == refused + 4
    assert server.records(1, timeout=2) == []


def test_oversize_mail_is_refused_with_552_whether_announced_or_not(ingress):
    server, support, _ = ingress(ingress_yaml="max_message_bytes: 4096")
    too_big = metric("deskmail_fetcher_ingress_sessions_total", outcome="too_big")
    with server.smtp() as client:
        client.ehlo()
        assert client.has_extn("size") and client.esmtp_features["size"] == "4096"
        # announced with MAIL FROM ... SIZE=: refused before the data is sent
        with pytest.raises(smtplib.SMTPSenderRefused) as refusal:
            client.sendmail("c@customer.test", [support], mail(4, support, size=5000))
        assert refusal.value.smtp_code == 552
        client.rset()
        # not announced: refused after the data
        client.mail("c@customer.test")
        client.rcpt(support)
        code, reply = client.data(mail(5, support, size=5000))
        assert code == 552 and reply.startswith(b"5.3.4"), reply
        # the session goes on: a small mail still gets through
        small = mail(6, support)
        assert client.sendmail("c@customer.test", [support], small) == {}
    assert metric("deskmail_fetcher_ingress_sessions_total", outcome="too_big") == too_big + 2
    assert [as_sent(r["raw"]) for _, r in server.records(1)] == [small]


def test_mail_above_the_inline_limit_goes_to_the_blob_store(ingress):
    server, support, _ = ingress(extra="blobs: {inline_max_bytes: 1024}")
    raw = mail(7, support, size=50_000)
    with server.smtp() as client:
        assert client.sendmail("c@customer.test", [support], raw) == {}
    [(_, record)] = server.records(1)
    stored = server.blobs.get(record["blob_ref"])
    assert record["raw"] is None and record["size"] == len(stored)
    assert as_sent(stored) == raw


def test_broker_down_answers_451_and_the_retried_mail_is_not_lost(unique, tmp_path):
    port = free_port()
    broker = LocalBroker(port=port, log_path=tmp_path / "broker-1.log")
    broker.start()
    text, support, _ = config_text(unique, tmp_path / "data", free_port())
    # The restarted local broker has forgotten every producer id: an idempotent producer
    # would fail for good (UnknownProducerIdError), so this one is not.
    text = text.replace("kafka:\n", "kafka:\n  producer: {idempotence: false}\n", 1)
    config = parse_text(text, str(tmp_path / "deskmail.yaml"))
    assert not config.kafka.producer.idempotence
    Kafka(config, [broker.bootstrap]).create_topics()
    producer = Kafka(config, [broker.bootstrap]).producer()
    server = build_ingress(config, producer, FolderBlobStore(config.blob_path), inline_max_bytes(config),
                           ack_timeout=3.0)
    assert isinstance(server, IngressServer)
    server.start()
    host, smtp_port = config.ingress.listen.host, config.ingress.listen.port
    try:
        first, second = mail(8, support), mail(9, support)
        with smtplib.SMTP(host, smtp_port, timeout=60) as client:
            assert client.sendmail("c@customer.test", [support], first) == {}
        broker.stop()
        deferred = metric("deskmail_fetcher_ingress_sessions_total", outcome="deferred")
        started = time.monotonic()
        with smtplib.SMTP(host, smtp_port, timeout=60) as client:
            with pytest.raises(smtplib.SMTPDataError) as refusal:
                client.sendmail("c@customer.test", [support], second)
        assert refusal.value.smtp_code == 451 and refusal.value.smtp_error.startswith(b"4.3.0")
        assert time.monotonic() - started < 10
        assert metric("deskmail_fetcher_ingress_sessions_total", outcome="deferred") == deferred + 1

        # the broker is back (memory storage: empty, so the topics are created again); the MTA retries
        broker = LocalBroker(port=port, log_path=tmp_path / "broker-2.log")
        broker.start()
        Kafka(config, [broker.bootstrap]).create_topics()

        def retry() -> bool:
            try:
                with smtplib.SMTP(host, smtp_port, timeout=60) as client:
                    return client.sendmail("c@customer.test", [support], second) == {}
            except smtplib.SMTPDataError as exc:
                assert exc.smtp_code == 451
                return False

        deadline = time.monotonic() + 60
        while not retry():
            assert time.monotonic() < deadline, "the ingress never accepted the mail again"
        found = records(config, broker.bootstrap, 1)
        assert found and {as_sent(r["raw"]) for _, r in found} == {second}
        assert {r["id"] for _, r in found} == {f"smtp:{support}:{hashlib.sha256(second).hexdigest()}"}
    finally:
        server.stop()
        producer.close(timeout=2)
        broker.stop()


# ---------------------------------------------------------------- LMTP and STARTTLS


def test_lmtp_answers_data_once_per_recipient(ingress):
    lmtp_port = free_port()
    server, support, orders = ingress(ingress_yaml=f"lmtp_listen: 127.0.0.1:{lmtp_port}")
    raw = mail(10, support)
    with smtplib.LMTP("127.0.0.1", lmtp_port, timeout=60) as client:
        code, _ = client.ehlo()  # smtplib.LMTP sends LHLO
        assert code == 250
        client.mail("c@customer.test")
        assert client.rcpt(support)[0] == 250
        assert client.rcpt("nobody@example.com")[0] == 550
        assert client.rcpt(orders)[0] == 250
        first = client.data(raw)
        second = client.getreply()
        assert (first[0], second[0]) == (250, 250), (first, second)
        assert client.noop()[0] == 250  # nothing left unread: the replies were exactly two
    found = server.records(2)
    assert sorted(key for key, _ in found) == sorted([support.encode(), orders.encode()])
    assert {r["raw"] for _, r in found} == {raw}  # LMTP: the MTA before deskmail was the receiving server


def test_starttls_is_offered_when_a_certificate_is_configured(ingress, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server, support, _ = ingress(ingress_yaml=f"tls_cert: {cert}\ntls_key: {key}")
    raw = mail(11, support)
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with server.smtp() as client:
        client.ehlo()
        assert client.has_extn("starttls")
        client.starttls(context=context)
        client.ehlo()
        assert client.sendmail("c@customer.test", [support], raw) == {}
    [(_, record)] = server.records(1)
    assert as_sent(record["raw"]) == raw


# ---------------------------------------------------------------- limits and streaming


def lines(size: int) -> bytes:
    """``size`` bytes of 78-byte lines that need no dot-stuffing, to send as raw DATA."""
    return (b"y" * 76 + b"\r\n") * (size // 78)


def wait_until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def temp_files(server: Ingress) -> list[Path]:
    return list(server.blobs.root.rglob(".tmp-*")) if server.blobs.root.exists() else []


def start_data(client: smtplib.SMTP, sender: str, rcpt: str) -> None:
    """MAIL, RCPT and DATA up to the 354, so the caller can send the message in parts."""
    client.ehlo()
    assert client.mail(sender)[0] == 250
    assert client.rcpt(rcpt)[0] == 250
    client.putcmd("data")
    assert client.getreply()[0] == 354


def test_a_session_beyond_max_sessions_gets_421_and_is_accepted_when_retried(ingress):
    server, support, _ = ingress(ingress_yaml="max_sessions: 2")
    refused = metric("deskmail_fetcher_ingress_deferrals_total", reason="sessions")
    first, second = server.smtp(), server.smtp()
    try:
        assert first.ehlo()[0] == 250 and second.ehlo()[0] == 250
        assert metric("deskmail_fetcher_ingress_open_sessions") == 2
        with pytest.raises(smtplib.SMTPConnectError) as refusal:
            server.smtp()
        assert refusal.value.smtp_code == 421 and refusal.value.smtp_error.startswith(b"4.3.2")
        assert metric("deskmail_fetcher_ingress_deferrals_total", reason="sessions") == refused + 1
        # the open sessions still work
        raw = mail(20, support)
        assert first.sendmail("c@customer.test", [support], raw) == {}
    finally:
        first.quit()
    wait_until(lambda: metric("deskmail_fetcher_ingress_open_sessions") == 1, "the session to close")
    retried = mail(21, support)
    with server.smtp() as client:  # the MTA's retry
        assert client.sendmail("c@customer.test", [support], retried) == {}
    second.quit()
    assert sorted(as_sent(r["raw"]) for _, r in server.records(2)) == sorted([raw, retried])


def test_a_message_beyond_the_in_flight_budget_gets_451_and_is_accepted_when_retried(ingress):
    server, support, _ = ingress(ingress_yaml="max_message_bytes: 200000\nmax_inflight_bytes: 300000")
    busy = metric("deskmail_fetcher_ingress_deferrals_total", reason="inflight_bytes")
    held = lines(200_000)
    other = mail(22, support, size=150_000)
    with server.smtp() as holder, server.smtp() as client:
        start_data(holder, "c@customer.test", support)
        holder.send(held[:-780])
        wait_until(lambda: metric("deskmail_fetcher_ingress_inflight_bytes") >= 3 * 65536, "the first message")
        # announced with SIZE: refused at MAIL, before the data is sent
        with pytest.raises(smtplib.SMTPSenderRefused) as refusal:
            client.sendmail("c@customer.test", [support], other)
        assert refusal.value.smtp_code == 451 and refusal.value.smtp_error.startswith(b"4.3.2")
        client.rset()
        # not announced: read to its end, then refused
        client.mail("c@customer.test")
        client.rcpt(support)
        code, reply = client.data(other)
        assert (code, reply[:5]) == (451, b"4.3.2"), reply
        assert metric("deskmail_fetcher_ingress_deferrals_total", reason="inflight_bytes") == busy + 2
        # the first message completes; the budget is free again and the retry is accepted
        holder.send(held[-780:] + b".\r\n")
        assert holder.getreply()[0] == 250
        wait_until(lambda: metric("deskmail_fetcher_ingress_inflight_bytes") == 0, "the budget to be released")
        assert client.sendmail("c@customer.test", [support], other) == {}
    found = server.records(2)
    assert sorted(len(as_sent(r["raw"])) for _, r in found) == sorted([len(held), len(other)])


def test_an_announced_size_is_reserved_until_the_transaction_ends(ingress):
    server, support, _ = ingress(ingress_yaml="max_message_bytes: 200000\nmax_inflight_bytes: 300000")

    def inflight() -> float:
        return metric("deskmail_fetcher_ingress_inflight_bytes")

    with server.smtp() as first, server.smtp() as second:
        first.ehlo()
        second.ehlo()
        assert first.mail("c@customer.test", ["SIZE=200000"])[0] == 250
        assert inflight() == 200_000
        code, reply = second.mail("c@customer.test", ["SIZE=150000"])
        assert (code, reply[:5]) == (451, b"4.3.2")
        first.rset()
        wait_until(lambda: inflight() == 0, "RSET to return the reservation")
        assert second.mail("c@customer.test", ["SIZE=150000"])[0] == 250
        raw = mail(26, support, size=5000)  # smaller than announced: the rest is given back
        second.rcpt(support)
        assert second.data(raw)[0] == 250
        wait_until(lambda: inflight() == 0, "DATA to return the reservation")
        assert first.mail("c@customer.test", ["SIZE=200000"])[0] == 250
    wait_until(lambda: inflight() == 0, "the closed session to return its reservation")
    assert [as_sent(r["raw"]) for _, r in server.records(1)] == [raw]


def test_a_large_message_is_streamed_to_the_blob_store_byte_for_byte(ingress):
    server, support, orders = ingress(extra="blobs: {inline_max_bytes: 65536}")
    raw = mail(23, support, size=3_000_000)
    sha = hashlib.sha256(raw).hexdigest()
    with server.smtp() as client:
        assert client.sendmail("c@customer.test", [support, orders], raw) == {}
    found = server.records(2)
    assert sorted(key for key, _ in found) == sorted([support.encode(), orders.encode()])
    for _, record in found:
        stored = server.blobs.get(record["blob_ref"])
        assert record["raw"] is None and as_sent(stored) == raw
        assert (record["size"], record["sha256"]) == (len(stored), hashlib.sha256(stored).hexdigest())
        assert record["id"] == f"smtp:{record['mailbox']}:{sha}"  # the id is of the bytes as sent
    assert temp_files(server) == []
    wait_until(lambda: metric("deskmail_fetcher_ingress_inflight_bytes") == 0, "the budget to be released")


def test_a_streamed_message_over_the_size_limit_gets_552_and_leaves_nothing(ingress):
    server, support, _ = ingress(ingress_yaml="max_message_bytes: 200000", extra="blobs: {inline_max_bytes: 1024}")
    too_big = metric("deskmail_fetcher_ingress_sessions_total", outcome="too_big")
    with server.smtp() as client:
        client.ehlo()
        client.mail("c@customer.test")
        client.rcpt(support)
        code, reply = client.data(mail(24, support, size=300_000))
        assert code == 552 and reply.startswith(b"5.3.4"), reply
        small = mail(25, support, size=5000)  # above the inline size: streamed too
        assert client.sendmail("c@customer.test", [support], small) == {}
    assert metric("deskmail_fetcher_ingress_sessions_total", outcome="too_big") == too_big + 1
    [(_, record)] = server.records(1)
    assert as_sent(server.blobs.get(record["blob_ref"])) == small
    assert temp_files(server) == []
    wait_until(lambda: metric("deskmail_fetcher_ingress_inflight_bytes") == 0, "the budget to be released")


def test_a_connection_dropped_in_the_middle_of_data_leaves_no_blob_and_frees_the_budget(ingress):
    server, support, _ = ingress(extra="blobs: {inline_max_bytes: 1024}")
    client = server.smtp()
    start_data(client, "c@customer.test", support)
    client.send(lines(500_000))
    wait_until(lambda: bool(temp_files(server)), "the message to be streamed to a temporary file")
    client.sock.close()
    client.close()
    wait_until(lambda: temp_files(server) == [] and metric("deskmail_fetcher_ingress_inflight_bytes") == 0
               and metric("deskmail_fetcher_ingress_open_sessions") == 0, "the session to be cleaned up")
    assert server.records(1, timeout=2) == []


# ---------------------------------------------------------------- into an S3 bucket


@pytest.fixture
def bucket(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> str:
    for name, value in S3Server.env().items():
        monkeypatch.setenv(name, value)
    return s3.bucket()


def test_a_large_message_is_streamed_to_an_s3_bucket_in_parts(ingress, s3: S3Server, bucket: str):
    server, support, _ = ingress(extra=s3.config_yaml(bucket) + "  inline_max_bytes: 65536")
    raw = mail(30, support, size=12_000_000)  # more than one part of 8 MiB
    with server.smtp() as client:
        assert client.sendmail("c@customer.test", [support], raw) == {}
    [(_, record)] = server.records(1)
    stored = server.blobs.get(record["blob_ref"])
    assert record["raw"] is None and as_sent(stored) == raw
    assert (record["size"], record["sha256"]) == (len(stored), hashlib.sha256(stored).hexdigest())
    digest = record["sha256"]
    # the message as sent, and as stored with deskmail's Authentication-Results on top
    assert f"deskmail/{digest[:2]}/{digest[2:4]}/{digest}" in s3.keys(bucket) and len(s3.keys(bucket)) == 2
    assert s3.uploads(bucket) == []  # no upload left open, no temporary object
    assert not server.config.blob_path.exists()


def test_a_connection_dropped_in_the_middle_of_data_aborts_its_s3_upload(ingress, s3: S3Server, bucket: str):
    server, support, _ = ingress(extra=s3.config_yaml(bucket) + "  inline_max_bytes: 1024")
    client = server.smtp()
    start_data(client, "c@customer.test", support)
    client.send(lines(9_000_000))  # a part is sent: the multipart upload is open
    wait_until(lambda: bool(s3.uploads(bucket)), "the first part to be uploaded", timeout=30)
    client.sock.close()
    client.close()
    wait_until(lambda: s3.uploads(bucket) == [] and metric("deskmail_fetcher_ingress_inflight_bytes") == 0
               and metric("deskmail_fetcher_ingress_open_sessions") == 0, "the upload to be aborted")
    assert s3.keys(bucket) == [] and server.records(1, timeout=2) == []
