"""The ingress's drain on stop, session by session, against the real ingress and broker."""

from __future__ import annotations

import smtplib
import socket
import threading
import time

import pytest

from tests.integration.test_ingress import ingress, mail  # noqa: F401 (the fixture)

pytestmark = pytest.mark.integration


def test_stop_closes_the_listener_finishes_transactions_and_says_421_to_the_rest(ingress):
    server, support, _ = ingress(ingress_yaml="drain_seconds: 3")
    idle, busy, stalled = server.smtp(), server.smtp(), server.smtp()
    for client in (idle, busy, stalled):
        client.ehlo()
    assert busy.mail("c@customer.test")[0] == 250 and busy.rcpt(support)[0] == 250
    assert stalled.mail("c@customer.test")[0] == 250

    started = time.monotonic()
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    time.sleep(0.5)
    with pytest.raises(OSError):  # no new connections at once
        socket.create_connection((server.host, server.port), timeout=2).close()
    # idle between transactions: told at once, read as the reply to its next command
    assert idle.noop()[0] == 421
    # a transaction in flight finishes with 250 (after the ack); the next one is refused
    code, reply = busy.data(mail(1, support))
    assert code == 250, reply
    assert busy.mail("c@customer.test")[0] == 421
    # a transaction that does not finish within drain_seconds gets 421 too, never silence
    time.sleep(3)
    assert stalled.rcpt(support)[0] == 421
    stopper.join(timeout=15)
    assert not stopper.is_alive()
    assert time.monotonic() - started < 3 + 5 + 3  # drain_seconds, the goodbye, slack
    for client in (idle, busy, stalled):
        client.close()
    assert len(server.records(1)) == 1
