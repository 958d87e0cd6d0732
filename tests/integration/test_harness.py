"""The test harness itself: local broker and Dovecot really work."""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from email.message import EmailMessage

import pytest
from imapclient.exceptions import LoginError
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.consumer.fetcher import ConsumerRecord

from services.localbroker import LocalBroker
from tests.harness.broker import FAST_CONSUMER
from tests.harness.dovecot import DovecotServer

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]


# ---------------------------------------------------------------- broker


def test_broker_round_trip(broker: LocalBroker, unique: Unique) -> None:
    topic = unique("topic")
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        assert topic in admin.list_topics()
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    try:
        meta = producer.send(topic, key=b"k1", value=b"hello", headers=[("h", b"v")]).get(timeout=10)
        assert meta.offset == 0
    finally:
        producer.close()

    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=unique("group"), **FAST_CONSUMER)
    try:
        records: list[ConsumerRecord] = []
        deadline = time.monotonic() + 15
        while not records and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        assert [(r.key, r.value, r.headers) for r in records] == [(b"k1", b"hello", [("h", b"v")])]
        consumer.commit()
    finally:
        consumer.close()


def test_broker_port_reusable_after_stop() -> None:
    first = LocalBroker()
    first.start()
    port = first.port
    first.stop()
    assert not first.running
    with LocalBroker(port=port) as second:
        assert second.bootstrap == f"127.0.0.1:{port}"
        assert second.running
    assert not second.running


# ---------------------------------------------------------------- dovecot


@pytest.fixture
def mailbox_user(dovecot: DovecotServer, unique: Unique) -> tuple[str, str]:
    login, password = unique("user"), "pw:" + unique("secret")
    dovecot.add_user(login, password)
    return login, password


def _sample(i: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "Customer <customer@example.net>"
    msg["To"] = "support@example.test"
    msg["Subject"] = f"Help request {i}"
    msg["Message-ID"] = f"<harness-{i}@example.net>"
    msg.set_content(f"Message number {i}\n")
    return msg.as_bytes(policy=msg.policy.clone(linesep="\r\n"))


def test_imaps_login_verified(dovecot: DovecotServer, mailbox_user: tuple[str, str]) -> None:
    ctx = ssl.create_default_context(cafile=dovecot.cafile)
    from imapclient import IMAPClient

    with IMAPClient(dovecot.host, port=dovecot.imaps_port, ssl=True, ssl_context=ctx, timeout=10) as client:
        client.login(*mailbox_user)
        assert b"IDLE" in client.capabilities()
        client.select_folder("INBOX")


def test_imaps_login_unverified(dovecot: DovecotServer, mailbox_user: tuple[str, str]) -> None:
    client = dovecot.connect(*mailbox_user, security="imaps", verify=False)
    client.logout()


def test_starttls_login(dovecot: DovecotServer, mailbox_user: tuple[str, str]) -> None:
    client = dovecot.connect(security="plain")
    assert b"STARTTLS" in client.capabilities()
    client.starttls(dovecot.ssl_context())
    client.login(*mailbox_user)
    assert b"IDLE" in client.capabilities()
    client.logout()


def test_plain_login(dovecot: DovecotServer, mailbox_user: tuple[str, str]) -> None:
    client = dovecot.connect(*mailbox_user, security="plain")
    assert client.select_folder("INBOX")[b"EXISTS"] == 0
    client.logout()


def test_wrong_password_fails_fast(dovecot: DovecotServer, mailbox_user: tuple[str, str]) -> None:
    login, password = mailbox_user
    start = time.monotonic()
    with pytest.raises(LoginError):
        dovecot.connect(login, password + "-wrong", security="imaps")
    assert time.monotonic() - start < 3
    start = time.monotonic()
    dovecot.connect(login, password, security="imaps").logout()
    assert time.monotonic() - start < 1  # no per-IP penalty after the failure


def test_append_many_and_list(dovecot: DovecotServer, mailbox_user: tuple[str, str]) -> None:
    login, password = mailbox_user
    uids = dovecot.append_many(login, password, [_sample(i) for i in range(50)])
    assert len(uids) == 50 and uids == sorted(uids)
    seen_uid = dovecot.append(login, password, _sample(50), flags=[r"\Seen"])
    archived = dovecot.append(login, password, _sample(51), folder="Archive/2024")

    listed = dovecot.messages(login, password)
    assert [uid for uid, _ in listed] == [*uids, seen_uid]
    assert all(flags == () for _, flags in listed[:-1])
    assert listed[-1] == (seen_uid, (r"\Seen",))
    assert dovecot.messages(login, password, "Archive/2024") == [(archived, ())]
