"""Who may hand mail to the ingress: allowed networks and SMTP AUTH, against the real
ingress on the real (Tansu) broker, driven by smtplib."""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.common.config import parse_text
from services.common.kafka import Kafka
from services.localbroker import LocalBroker, free_port
from tests.integration.test_ingress import Ingress, config_text, mail, metric

pytestmark = pytest.mark.integration

Unique = Callable[[str], str]
PASSWORD = "correct horse battery staple"


def refusals(reason: str) -> float:
    return metric("deskmail_fetcher_ingress_refusals_total", reason=reason)


def own_address() -> str:
    """An address of this machine that is not loopback (a route lookup: no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("203.0.113.1", 9))
        except OSError as exc:
            pytest.fail(f"this test needs a non-loopback IPv4 address on the machine: {exc}", pytrace=False)
        address = str(probe.getsockname()[0])
    assert not address.startswith("127."), address
    return address


@pytest.fixture
def start(broker: LocalBroker, unique: Unique, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., tuple[Ingress, str]]]:
    monkeypatch.setenv("INGRESS_TEST_PW", PASSWORD)
    started: list[Ingress] = []

    def make(ingress_yaml: str, listen_host: str = "127.0.0.1") -> tuple[Ingress, str]:
        text, support, _ = config_text(unique, tmp_path / f"data{len(started)}", free_port(), ingress=ingress_yaml)
        text = text.replace("  listen: 127.0.0.1:", f"  listen: {listen_host}:")
        config = parse_text(text, str(tmp_path / "deskmail.yaml"))
        Kafka(config, [broker.bootstrap]).create_topics()
        server = Ingress(config, broker.bootstrap)
        server.start()
        started.append(server)
        return server, support

    yield make
    for server in started:
        server.stop()


def test_a_client_outside_the_allowed_networks_gets_554_at_connect_over_smtp_and_lmtp(start):
    lmtp_port = free_port()
    server, support = start(f"allowed_networks: [10.0.0.0/8]\nlmtp_listen: 127.0.0.1:{lmtp_port}")
    before = refusals("network")
    with pytest.raises(smtplib.SMTPConnectError) as smtp:
        smtplib.SMTP(server.host, server.port, timeout=30)
    assert smtp.value.smtp_code == 554 and smtp.value.smtp_error.startswith(b"5.7.1")
    with pytest.raises(smtplib.SMTPConnectError) as lmtp:
        smtplib.LMTP("127.0.0.1", lmtp_port, timeout=30)
    assert lmtp.value.smtp_code == 554
    assert refusals("network") == before + 2
    assert server.records(1, timeout=2) == []


def test_the_default_networks_admit_loopback_without_auth(start):
    server, support = start("")
    with server.smtp() as client:
        client.ehlo()
        assert not client.has_extn("auth")  # no users: no AUTH at all
        assert client.sendmail("c@customer.test", [support], mail(1, support)) == {}
    assert len(server.records(1)) == 1


def test_with_users_an_outside_client_must_authenticate_before_mail(start):
    """Loopback is outside 10.0.0.0/8 here, and AUTH on loopback needs no TLS."""
    server, support = start("allowed_networks: [10.0.0.0/8]\n"
                            "auth: {users: [{login: relay, password: {env: INGRESS_TEST_PW}}]}")
    required, failed = refusals("auth_required"), refusals("auth_failed")
    with server.smtp() as client:
        client.ehlo()
        assert set(client.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
        code, reply = client.mail("c@customer.test")
        assert (code, reply[:5]) == (530, b"5.7.0")
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            client.login("relay", "not the password")
        assert wrong.value.smtp_code == 535
        client.login("RELAY", PASSWORD)  # the login is matched without regard to case
        assert client.sendmail("c@customer.test", [support], mail(2, support)) == {}
    assert refusals("auth_required") == required + 1 and refusals("auth_failed") >= failed + 1
    [(_, record)] = server.records(1)
    assert record["mailbox"] == support


def test_three_auth_attempts_per_session_then_the_session_is_closed(start):
    server, _ = start("allowed_networks: [10.0.0.0/8]\n"
                      "auth: {users: [{login: relay, password: {env: INGRESS_TEST_PW}}]}")
    with server.smtp() as client:
        client.ehlo()
        for attempt in range(3):
            token = base64.b64encode(f"\0relay\0guess{attempt}".encode()).decode()
            assert client.docmd("AUTH", f"PLAIN {token}")[0] == 535
        code, reply = client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0relay\0{PASSWORD}".encode()).decode())
        assert code == 421, reply  # even the right password: the session is over


def test_auth_from_the_network_only_after_starttls(start, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=localhost", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server, support = start(f"tls_cert: {cert}\ntls_key: {key}\nallowed_networks: [127.0.0.0/8]\n"
                            "auth: {users: [{login: relay, password: {env: INGRESS_TEST_PW}}]}",
                            listen_host="0.0.0.0")
    address = own_address()  # outside the allowed networks, and not loopback
    context = ssl.create_default_context(cafile=str(cert))
    context.check_hostname = False
    with smtplib.SMTP(address, server.port, timeout=30) as client:
        client.ehlo()
        assert not client.has_extn("auth")  # in clear from the network: no AUTH offered
        assert client.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0relay\0{PASSWORD}".encode()).decode())[0] == 538
        assert client.mail("c@customer.test")[0] == 530
        client.rset()
        client.starttls(context=context)
        client.ehlo()
        assert client.has_extn("auth")
        client.login("relay", PASSWORD)
        assert client.sendmail("c@customer.test", [support], mail(3, support)) == {}
    # the loopback client is inside the allowed networks: no AUTH needed
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        assert client.sendmail("c@customer.test", [support], mail(4, support)) == {}
    assert len(server.records(2)) == 2
