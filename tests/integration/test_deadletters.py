"""Bad input is set aside with its reason and loses nothing: the router dead-letters what it
cannot read, the partition keeps flowing, and `deskmail deadletters` lists and replays it."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from prometheus_client import REGISTRY

from services.common.codec import codec
from services.common.config import parse_text
from services.common.runtime import Health
from services.router.runner import run_router
from tests.harness.stack import REPO, wait_for


def _inbound(n: int, raw: bytes, mailbox: str = "support@example.com") -> bytes:
    return codec("InboundMail").encode({
        "id": f"imap:{mailbox}:1:{n}", "mailbox": mailbox, "source": "imap", "uidvalidity": 1, "uid": n,
        "received_at": datetime.now(timezone.utc), "size": len(raw), "sha256": hashlib.sha256(raw).hexdigest(),
        "raw": raw, "blob_ref": None,
    })


def _read(bootstrap: str, topic: str, expect: int, timeout: float = 30) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=1000)
    found: list = []
    deadline = time.monotonic() + timeout
    try:
        while len(found) < expect and time.monotonic() < deadline:
            found.extend(consumer)
    finally:
        consumer.close()
    return found


def test_unreadable_mail_is_dead_lettered_with_its_reason_and_can_be_replayed(broker, unique, tmp_path: Path):
    topics = {k: unique(f"dl-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    text = textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("dl")}
          partitions: 1
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          topics: {json.dumps(topics)}
        data_dir: {tmp_path / "data"}
        queues:
          - key: SUPPORT
            mailboxes:
              - {{address: support@example.com, ingress: true, accept_external: true}}
        """)
    config_path = tmp_path / "deskmail.yaml"
    config_path.write_text(text)
    cfg = parse_text(text, str(config_path))
    from services.common.kafka import Kafka

    Kafka(cfg, [broker.bootstrap]).create_topics()

    good = b"From: carol@customer.test\r\nTo: support@example.com\r\nSubject: hi\r\nMessage-ID: <g1@c.test>\r\n\r\nhello\r\n"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for value in (b"not an avro record at all",                      # cannot be decoded
                  _inbound(1, b""),                                   # empty mail
                  _inbound(2, good, mailbox="unknown@example.com"),  # no such mailbox
                  _inbound(3, good)):                                 # fine: must not be held up
        producer.send(topics["inbound"], key=b"support@example.com", value=value).get(timeout=30)
    producer.close()

    before = {c: REGISTRY.get_sample_value("deskmail_bus_deadletters_total", {"stage": "router", "error_class": c}) or 0
              for c in ("CodecError", "MalformedMail", "UnknownMailbox")}
    stop = threading.Event()
    router = threading.Thread(target=run_router, args=(cfg, stop, Health(), [broker.bootstrap]), daemon=True)
    router.start()
    try:
        commands = _read(broker.bootstrap, topics["commands"], 1)
        letters = _read(broker.bootstrap, topics["deadletter"], 3)
    finally:
        stop.set()
        router.join(30)
    assert [codec("TicketCommand").decode(r.value)["message_id"] for r in commands] == ["g1@c.test"]

    decoded = [codec("DeadLetter").decode(r.value) for r in letters]
    assert [(d["stage"], d["topic"], d["offset"], d["error_class"]) for d in decoded] == [
        ("router", topics["inbound"], 0, "CodecError"),
        ("router", topics["inbound"], 1, "MalformedMail"),
        ("router", topics["inbound"], 2, "UnknownMailbox"),
    ]
    assert "bad marker" in decoded[0]["message"]
    assert "empty message" in decoded[1]["message"]
    assert "unknown@example.com is not in the configuration" in decoded[2]["message"]
    assert decoded[0]["value"] == b"not an avro record at all"  # the original bytes, byte for byte
    assert all(r.key == b"support@example.com" for r in letters)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "services.cli", "deadletters", *args, "--config",
                               str(config_path), "--bootstrap", broker.bootstrap],
                              cwd=REPO, capture_output=True, text=True, timeout=120)

    listed = cli("list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["stage"], r["source_offset"], r["error_class"]) for r in rows] == [
        ("router", 0, "CodecError"), ("router", 1, "MalformedMail"), ("router", 2, "UnknownMailbox")]
    only = cli("list", "--json", "--error-class", "UnknownMailbox")
    assert [json.loads(line)["source_offset"] for line in only.stdout.splitlines()] == [2], only.stderr
    # The metric's error_class label tells them apart too (the router ran in this process).
    for error_class in ("CodecError", "MalformedMail", "UnknownMailbox"):
        labels = {"stage": "router", "error_class": error_class}
        assert (REGISTRY.get_sample_value("deskmail_bus_deadletters_total", labels) or 0) - before[error_class] == 1

    # after fixing the cause, replay the router's dead letters: each goes back to its source topic
    replayed = cli("replay", "--yes", "--stage", "router")
    assert replayed.returncode == 0 and "replayed 3 record(s)" in replayed.stdout, replayed.stderr
    back = wait_for(lambda: _read(broker.bootstrap, topics["inbound"], 7, timeout=5)[4:], 30, "replayed records")
    assert [r.value for r in back] == [d["value"] for d in decoded]
