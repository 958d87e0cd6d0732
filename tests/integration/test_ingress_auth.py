"""The ingress as the receiving server: DKIM, SPF and DMARC against a real local DNS server.

The mail goes over SMTP to the real ingress and the real broker; the stored raw mail
then goes through the router's real ``route``.
"""

from __future__ import annotations

import base64
import smtplib
import re
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from dnslib import QTYPE, RCODE, RR, TXT, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSServer

from services.common.config import parse_text
from services.common.kafka import Kafka
from services.localbroker import LocalBroker, free_port
from services.router.route import route
from tests.integration.test_ingress import Ingress

pytestmark = pytest.mark.integration

AUTHSERV_ID = "deskmail.example.com"
Unique = Callable[[str], str]


class Zone(BaseResolver):  # type: ignore[misc]
    """TXT records by name; any other name is NXDOMAIN, any other type at a known name is empty."""

    def __init__(self, txt: dict[str, str]):
        self.txt = {name.lower(): value for name, value in txt.items()}
        self.asked: list[str] = []

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        self.asked.append(name)
        if name not in self.txt:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype == QTYPE.TXT:
            value = self.txt[name].encode()
            chunks = [value[i:i + 255] for i in range(0, len(value), 255)]  # a DKIM key is longer than one string
            reply.add_answer(RR(name, QTYPE.TXT, rdata=TXT(chunks), ttl=60))
        return reply


@pytest.fixture
def keys() -> tuple[bytes, str]:
    """An RSA key as PEM for dkim.sign and its public half as the p= of a DKIM key record."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(public).decode()


@pytest.fixture
def dns_server(keys: tuple[bytes, str]) -> Iterator[tuple[int, Zone]]:
    zone = Zone({
        "sel._domainkey.example.org": f"v=DKIM1; k=rsa; p={keys[1]}",
        "example.org": "v=spf1 ip4:127.0.0.1 -all",
        "_dmarc.example.org": "v=DMARC1; p=reject",
    })
    port = free_port()
    server = DNSServer(zone, port=port, address="127.0.0.1")
    server.start_thread()
    try:
        yield port, zone
    finally:
        server.stop()


@pytest.fixture
def server(broker: LocalBroker, unique: Unique, tmp_path: Path, dns_server: tuple[int, Zone]) -> Iterator[Ingress]:
    ops = f"{unique('ops')}@example.com".lower()
    topics = {k: unique(k) for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    config = parse_text(textwrap.dedent(f"""\
        kafka:
          partitions: 1
          topics: {{inbound: {topics["inbound"]}, commands: {topics["commands"]}, outbound: {topics["outbound"]},
                   events: {topics["events"]}, deadletter: {topics["deadletter"]}}}
        data_dir: {tmp_path / "data"}
        organization:
          members:
            - {{email: alice@example.org, name: Alice, groups: [ops]}}
          sender_authentication:
            trusted_authserv_ids: [mx.upstream.test]
        queues:
          - key: OPS
            access: [group:ops]
            mailboxes:
              - {{address: {ops}, ingress: true}}
        ingress:
          listen: 127.0.0.1:{free_port()}
          lmtp_listen: 127.0.0.1:{free_port()}
          authserv_id: {AUTHSERV_ID}
          dns_servers: ["127.0.0.1:{dns_server[0]}"]
          dns_timeout_seconds: 2
        """), str(tmp_path / "deskmail.yaml"))
    Kafka(config, [broker.bootstrap]).create_topics()
    ingress = Ingress(config, broker.bootstrap)
    ingress.start()
    try:
        yield ingress
    finally:
        ingress.stop()


def signed_mail(pem: bytes, to: str, extra: str = "") -> bytes:
    raw = (f"{extra}From: Alice <alice@example.org>\r\nTo: <{to}>\r\nSubject: Disk full\r\n"
           f"Message-ID: <disk-{threading.get_ident()}@example.org>\r\n\r\nPlease look at db1.\r\n").encode()
    signature = dkim.sign(raw, b"sel", b"example.org", pem, include_headers=[b"from", b"to", b"subject"])
    return signature + raw


def deliver(server: Ingress, raw: bytes, sender: str = "alice@example.org") -> tuple[bytes, dict[str, Any]]:
    ops = server.config.queues[0].mailboxes[0].address
    with server.smtp() as client:
        client.ehlo("mail.example.org")
        assert client.sendmail(sender, [ops], raw) == {}
    [(_, record)] = server.records(1)
    stored = record["raw"] if record["raw"] is not None else server.blobs.get(record["blob_ref"])
    return stored, record


def test_a_signed_mail_from_an_allowed_ip_passes_and_the_member_gets_member_rights(server, keys):
    raw = signed_mail(keys[0], "ops")
    stored, record = deliver(server, raw)
    head, _, _ = stored.partition(b"\r\nReceived: ")
    assert head.startswith(f"Authentication-Results: {AUTHSERV_ID};".encode())
    assert b"dkim=pass header.d=example.org header.s=sel" in head
    assert b"spf=pass smtp.mailfrom=alice@example.org" in head
    assert b"dmarc=pass header.from=example.org policy.dmarc=reject" in head
    assert stored.endswith(raw)  # deskmail's two fields on top of the mail exactly as sent, nothing else
    assert re.fullmatch(rb"Authentication-Results: [^\r\n]+(\r\n [^\r\n]+)*\r\n"
                        rb"Received: from mail\.example\.org \(\[127\.0\.0\.1\]\)\r\n"
                        rb" by deskmail\.example\.com with ESMTP; [^\r\n]+\r\n", stored[:-len(raw)])
    c = route(record, stored, server.config).command
    assert (c["action"], c["queue"], c["author"]["member"], c["reason"]) == ("create", "OPS", True, None)


def test_an_altered_body_fails_dkim_and_dmarc_and_the_member_is_rejected(server, keys):
    raw = signed_mail(keys[0], "ops").replace(b"db1", b"db2")
    stored, record = deliver(server, raw, sender="bounce@elsewhere.test")  # SPF cannot align either
    assert b"dkim=fail header.d=example.org" in stored
    assert b"dmarc=fail header.from=example.org" in stored
    c = route(record, stored, server.config).command
    assert c["action"] == "reject"
    assert c["reason"].startswith("sender_not_authenticated")


def test_a_forged_result_under_deskmails_id_is_renamed_and_proves_nothing(server, keys):
    forged = f"Authentication-Results: {AUTHSERV_ID}; dkim=pass header.d=example.org; dmarc=pass\r\n"
    raw = signed_mail(keys[0], "ops", extra=forged).replace(b"db1", b"db2")
    stored, record = deliver(server, raw, sender="bounce@elsewhere.test")
    assert f"X-Deskmail-Removed-Authentication-Results: {AUTHSERV_ID}; dkim=pass".encode() in stored
    assert stored.count(f"Authentication-Results: {AUTHSERV_ID};".encode()) == 2  # deskmail's and the renamed
    assert route(record, stored, server.config).command["action"] == "reject"


def test_over_lmtp_the_mta_checked_the_mail_and_only_forged_claims_are_renamed(server, keys, dns_server):
    upstream = ("Authentication-Results: mx.upstream.test; dmarc=pass header.from=example.org\r\n"
                "Received: from mail.example.org by mx.upstream.test with ESMTPS; Thu, 3 Dec 2026 10:00:00 +0000\r\n")
    forged = f"Authentication-Results: {AUTHSERV_ID}; dmarc=pass header.from=example.org\r\n"
    raw = signed_mail(keys[0], "ops", extra=upstream + forged)
    assert server.config.ingress.lmtp_listen is not None
    with smtplib.LMTP(server.config.ingress.lmtp_listen.host, server.config.ingress.lmtp_listen.port) as client:
        client.ehlo()
        assert client.sendmail("alice@example.org", [server.config.queues[0].mailboxes[0].address], raw) == {}
    [(_, record)] = server.records(1)
    stored = record["raw"]
    assert stored == raw.replace(b"Authentication-Results: " + AUTHSERV_ID.encode(),
                                 b"X-Deskmail-Removed-Authentication-Results: " + AUTHSERV_ID.encode())
    assert dns_server[1].asked == []  # nothing looked up: deskmail is not the receiving server here
    c = route(record, stored, server.config).command  # the upstream's result counts, as before
    assert (c["action"], c["author"]["member"]) == ("create", True)


def test_a_dns_server_that_does_not_answer_gives_temperror_and_the_mail_is_kept(broker, unique, tmp_path, keys):
    silent = free_port()  # nothing listens there: every lookup times out
    config = parse_text(textwrap.dedent(f"""\
        kafka:
          partitions: 1
          topics: {{inbound: {unique("inbound")}, commands: {unique("commands")}, outbound: {unique("outbound")},
                   events: {unique("events")}, deadletter: {unique("deadletter")}}}
        data_dir: {tmp_path / "data"}
        queues:
          - key: OPS
            mailboxes: [{{address: ops@example.com, ingress: true}}]
        ingress:
          listen: 127.0.0.1:{free_port()}
          authserv_id: {AUTHSERV_ID}
          dns_servers: ["127.0.0.1:{silent}"]
          dns_timeout_seconds: 0.5
        """), str(tmp_path / "deskmail.yaml"))
    Kafka(config, [broker.bootstrap]).create_topics()
    ingress = Ingress(config, broker.bootstrap)
    ingress.start()
    try:
        stored, _ = deliver(ingress, signed_mail(keys[0], "ops@example.com"))
    finally:
        ingress.stop()
    assert b"dkim=temperror" in stored and b"spf=temperror" in stored and b"dmarc=temperror" in stored
