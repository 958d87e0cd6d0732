"""`deskmail suspended list|show|release` in a subprocess, against a real store
and a real broker: rejections and dead letters in one list, the original shown
and written byte for byte, a release on the inbound topic once, refusals as one
line with their exit code."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer

from services.common.blobs import FolderBlobStore
from services.common.codec import codec
from services.common.config import Config, parse_text
from services.common.kafka import Kafka
from services.tickets import TicketStore
from tests.harness.records import T0, command
from tests.harness.stack import REPO
from tests.integration.test_cli_workflow import Cli

pytestmark = pytest.mark.integration

OK, FAILED, USAGE = 0, 1, 2
RAW = (b"From: Mallory <mallory@stranger.test>\r\nTo: support@example.com\r\n"
       b"Subject: =?utf-8?q?Rechnung_=C3=BCber?= \x1b[2J\r\nMessage-ID: <m1@stranger.test>\r\n\r\nhello\x1b]0;x\x07\r\n")
BROKEN = b"From: carol@customer.test\r\nSubject: cut short\r\n"  # the router dead-lettered it


@pytest.fixture
def setup(tmp_path: Path, broker: Any, unique: Any) -> Iterator[tuple[Cli, TicketStore, Config, list[str]]]:
    topics = {k: unique(f"cs-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    text = textwrap.dedent(f"""\
        kafka:
          partitions: 1
          topics: {json.dumps(topics)}
        database: {{url: "sqlite:///{tmp_path}/tickets.db"}}
        data_dir: {tmp_path / "data"}
        organization:
          members:
            - {{email: alice@example.com}}
            - {{email: root@example.com}}
          admins: [root@example.com]
        queues:
          - key: SUPPORT
            mailboxes:
              - {{address: support@example.com, ingress: true}}
          - key: SALES
            mailboxes:
              - {{address: sales@example.com, ingress: true}}
        """)
    path = tmp_path / "deskmail.yaml"
    path.write_text(text)
    config = parse_text(text, str(path))
    Kafka(config, [broker.bootstrap]).create_topics()
    with TicketStore(config.database_url) as store:
        store.migrate()
        ref = FolderBlobStore(config.blob_path).put(RAW)
        store.apply(command(1, action="reject", subject="Rechnung über \x1b[2J", raw_ref=ref,
                            author={"email": "mallory@stranger.test", "name": None, "member": False},
                            reason="external_not_accepted: mallory@stranger.test is not a member"))
        store.apply(command(3, action="reject", queue="SALES", mailbox="sales@example.com", reason="auto_reply"))
        yield Cli(path), store, config, ["--bootstrap", broker.bootstrap]


def dead_letter(config: Config, bootstrap: str) -> None:
    inbound = codec("InboundMail").encode({
        "id": "smtp:support@example.com:x", "mailbox": "support@example.com", "source": "smtp", "uidvalidity": 0,
        "uid": 0, "received_at": T0, "size": len(BROKEN), "sha256": hashlib.sha256(BROKEN).hexdigest(),
        "raw": BROKEN, "blob_ref": None})
    letter = codec("DeadLetter").encode({
        "stage": "router", "topic": config.topics["inbound"], "partition": 0, "offset": 7,
        "key": b"support@example.com", "value": inbound, "error_class": "MalformedMail",
        "message": "no body", "time": datetime(2025, 3, 1, 9, 2, 30, tzinfo=timezone.utc)})
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    producer.send(config.topics["deadletter"], key=b"support@example.com", value=letter).get(timeout=30)
    producer.close()


def inbound_records(config: Config, bootstrap: str) -> list[Any]:
    consumer = KafkaConsumer(config.topics["inbound"], bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        return list(consumer)
    finally:
        consumer.close()


def test_list_show_and_release_suspended_mail(setup: tuple[Cli, TicketStore, Config, list[str]], broker: Any) -> None:
    cli, store, config, bootstrap = setup
    dead_letter(config, broker.bootstrap)
    letter_id = f"dl:{config.topics['deadletter']}:0:0"
    [sales, support] = sorted(store.list_suspended().items, key=lambda i: str(i.queue))

    rows = [json.loads(line) for line in cli.ok("suspended", "list", "--json", *bootstrap).splitlines()]
    assert [(r["id"], r["queue"], r["reason_code"]) for r in rows] == [
        (str(sales.id), "SALES", "auto_reply"), (letter_id, "SUPPORT", "dead_letter"),
        (str(support.id), "SUPPORT", "external_not_accepted")]
    assert set(rows[0]) == {"id", "time", "queue", "mailbox", "sender", "subject", "reason", "reason_code",
                            "released_ticket"}
    assert (rows[1]["sender"], rows[1]["subject"], rows[1]["reason"]) == (
        "carol@customer.test", "cut short", "dead_letter: MalformedMail: no body")
    lines = cli.ok("suspended", "list", "--queue", "SUPPORT", *bootstrap).splitlines()
    assert [line.split()[1] for line in lines] == [letter_id, str(support.id)]
    assert "\x1b" not in lines[1] and lines[1].endswith("Rechnung über \ufffd[2J")
    dead = cli.ok("suspended", "list", "--reason", "dead_letter", "--json", *bootstrap).splitlines()
    assert [json.loads(line)["id"] for line in dead] == [letter_id]
    offline = cli("suspended", "list")  # no broker: the rejections, and a word about the dead letters
    assert offline.returncode == OK and len(offline.stdout.splitlines()) == 2
    assert "dead letters not listed: no Kafka broker" in offline.stderr

    shown = cli.ok("suspended", "show", str(support.id))
    assert "external_not_accepted: mallory@stranger.test is not a member" in shown
    assert "Subject: Rechnung über \ufffd[2J" in shown and "\x1b" not in shown
    raw = subprocess.run([sys.executable, "-m", "services.cli", "suspended", "show", str(support.id), "--raw",
                          "--config", str(cli.config)], cwd=REPO, capture_output=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "DESKMAIL_CONFIG"})
    assert raw.returncode == OK and raw.stdout == RAW  # to a pipe: the exact bytes
    assert "error class: MalformedMail" in cli.ok("suspended", "show", letter_id, *bootstrap)
    assert cli.refused(FAILED, "suspended", "show", str(sales.id), "--raw") == (
        f"Error: suspended mail {sales.id} was recorded before deskmail kept originals: it cannot be opened or "
        "released")

    assert cli.refused(USAGE, "suspended", "release", str(support.id), "--as", "alice@example.com", *bootstrap) == (
        "Error: alice@example.com is not an admin: only organization.admins release suspended mail")
    assert cli.refused(FAILED, "suspended", "release", "424242", "--as", "root@example.com", *bootstrap) == (
        "Error: no suspended mail 424242")
    done = cli.ok("suspended", "release", str(support.id), "--as", "root@example.com", *bootstrap)
    assert done.startswith(f"released suspended mail {support.id} as release:cmd-1")
    [record] = inbound_records(config, broker.bootstrap)
    inbound = codec("InboundMail").decode(record.value)
    assert (record.key, inbound["raw"], inbound["release_of"], inbound["released_by"]) == (
        b"support@example.com", RAW, "cmd-1", "root@example.com")

    # Once the ticketer has applied it (as it does in the same transaction), a second release is refused.
    store.mark_released("cmd-1", "SUPPORT-1", "root@example.com")
    refused = cli.refused(FAILED, "suspended", "release", str(support.id), "--as", "root@example.com", *bootstrap)
    assert refused.startswith(f"Error: suspended mail {support.id} was released already: it became SUPPORT-1")
    assert len(inbound_records(config, broker.bootstrap)) == 1
    listed = cli.ok("suspended", "list", "--queue", "SUPPORT", "--reason", "external_not_accepted")
    assert "(released as SUPPORT-1) Rechnung" in listed

    # A dead letter is replayed to its source topic, as `deskmail deadletters replay` would.
    assert cli.ok("suspended", "release", letter_id, "--as", "root@example.com", *bootstrap).strip() == (
        f"replayed {letter_id} to {config.topics['inbound']}")
    replayed = inbound_records(config, broker.bootstrap)[1]
    assert codec("InboundMail").decode(replayed.value)["raw"] == BROKEN
