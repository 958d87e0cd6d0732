"""The sender's batches against the real broker and SMTP server: a mix of outcomes in
one batch, a 4xx mail waiting without holding up the others, and a kill -9 mid-batch."""

from __future__ import annotations

import re
import signal
import textwrap
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2

from services.common.config import Config
from services.common.kafka import Kafka
from services.localbroker import LocalBroker
from test_sender import Env, of, outbound, produce, start_sender, watch, world  # noqa: F401 (fixtures)
from tests.harness.smtp import SmtpServer
from tests.harness.stack import Stack, wait_for

pytestmark = pytest.mark.integration


def partition_of(key: str, partitions: int = 2) -> int:
    """The partition kafka-python's default partitioner gives ``key``."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def tickets_in(partition: int, count: int, start: int = 100) -> list[int]:
    found: list[int] = []
    n = start
    while len(found) < count:
        if partition_of(f"SUPPORT-{n}") == partition:
            found.append(n)
        n += 1
    return found


def test_a_batch_with_250_4xx_and_5xx_gives_each_mail_its_outcome_and_the_4xx_waits_alone(
        world: Env, unique, start_sender, watch):  # noqa: F811
    cfg = world.config(unique)
    events = watch(cfg)
    greylisted = f"{unique('grey').lower()}@customer.test"
    gone = f"{unique('gone').lower()}@customer.test"
    world.smtp.add_mailbox(greylisted, "grey-pw")
    world.smtp.refuse(greylisted, "451 4.7.1 greylisted, try again later")
    world.smtp.refuse(gone, "550 5.1.1 no such user")
    [waiting_ticket] = tickets_in(0, 1)
    ok_ticket, refused_ticket = tickets_in(1, 2)
    waiting = outbound(world, waiting_ticket, to=[{"email": greylisted, "name": None}])
    behind = outbound(world, waiting_ticket)  # same ticket, same partition: goes out after the waiting one
    ok = outbound(world, ok_ticket)
    refused = outbound(world, refused_ticket, to=[{"email": gone, "name": None}])
    produce(cfg, waiting, behind, ok, refused)  # on the topic before the sender starts: one batch
    sender = start_sender(cfg)

    values = events.until(lambda vs: of(vs, ok, "sent") and of(vs, refused, "failed")
                          and len(of(vs, waiting, "retrying")) >= 2, 30, "the other partition's outcomes")
    [failed] = of(values, refused)
    assert (failed["attempt"], failed["smtp_code"]) == (1, 550)
    assert of(values, ok)[0]["attempt"] == 1
    assert not of(values, waiting, "sent") and not of(values, behind)  # the partition waits at the 4xx mail
    assert [str(m["Message-ID"]) for m in world.inbox()] == [f"<{ok['message_id']}>"]

    world.smtp.accept(greylisted)
    values = events.until(lambda vs: of(vs, waiting, "sent") and of(vs, behind, "sent"), 30, "the waiting mail sent")
    retrying = of(values, waiting, "retrying")
    assert [e["attempt"] for e in retrying] == list(range(1, len(retrying) + 1))
    assert all(e["smtp_code"] == 451 for e in retrying)
    [sent] = of(values, waiting, "sent")
    assert sent["attempt"] == len(retrying) + 1
    assert [e["status"] for e in of(values, behind)] == ["sent"]
    assert of(values, behind)[0]["time"] >= sent["time"]  # a ticket's mails in order
    sender.shutdown()
    ids = [m.data for m in world.smtp.received()]
    for mail in (waiting, behind, ok):
        assert sum(mail["message_id"].encode() in data for data in ids) == 1
    assert not any(refused["message_id"].encode() in data for data in ids)


MESSAGE_ID = re.compile(rb"^Message-ID: <([^>]+)>", re.MULTILINE | re.IGNORECASE)


def delivered(smtp: SmtpServer) -> set[bytes]:
    return {match.group(1) for r in smtp.received() if (match := MESSAGE_ID.search(r.data))}


def committed(cfg: Config, bootstrap: str, group: str, partitions: int) -> dict[int, int]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        topic = cfg.topics["outbound"]
        return {p: consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)}
    finally:
        consumer.close()


def test_kill_9_mid_batch_then_restart_sends_no_committed_mail_twice(broker: LocalBroker, unique, tmp_path: Path):
    password = uuid.uuid4().hex
    n, partitions = 600, 2
    with SmtpServer({"support": password}) as smtp:
        text = textwrap.dedent(f"""\
            kafka:
              bootstrap_servers: ["{broker.bootstrap}"]
              group_prefix: {unique("kill-group")}
              partitions: {partitions}
              consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
              topics: {{outbound: {unique("kill-out")}, events: {unique("kill-events")}}}
            data_dir: {tmp_path / "data"}
            sender: {{timeout_seconds: 5}}
            queues:
              - key: SUPPORT
                allow_outbound_mail: true
                mailboxes:
                  - address: support@example.com
                    ingress: true
                    smtp: {{host: 127.0.0.1, port: {smtp.port}, security: starttls, login: support,
                            password: {{env: T_SMTP_PW}}, cafile: {smtp.cafile}}}
                    signatures: [{{alias: Example support}}]
            """)
        stack = Stack(text, tmp_path / "stack", broker.bootstrap, env={"T_SMTP_PW": password})
        Kafka(stack.config).create_topics()
        env = Env(None, smtp, broker, "support@example.com", "", password, "c@customer.test", {}, tmp_path)  # type: ignore[arg-type]
        mails = [outbound(env, i) for i in range(n)]
        produce(stack.config, *mails)
        topic_records = {p: [m for m in mails if partition_of(m["ticket"]) == p] for p in range(partitions)}
        try:
            stack.start("sender")
            wait_for(lambda: len(smtp.received()) >= 150, 60, "150 mails at the SMTP server", 0.01)
            assert stack.signal("sender", signal.SIGKILL) == -signal.SIGKILL
            done = committed(stack.config, broker.bootstrap, f"{stack.config.kafka.group_prefix}-sender", partitions)
            assert 0 < sum(done.values()) < n  # killed mid-way, with outcomes committed
            stack.start("sender")
            wait_for(lambda: len(delivered(smtp)) >= n, 120, "every mail at the SMTP server", 0.2)
        finally:
            stack.stop()
    by_message_id = {m["message_id"]: m["id"] for m in mails}
    counts: dict[str, int] = {}
    for message_id in [MESSAGE_ID.search(r.data).group(1).decode() for r in smtp.received()]:  # type: ignore[union-attr]
        counts[by_message_id[message_id]] = counts.get(by_message_id[message_id], 0) + 1
    assert len(counts) == n
    for p, records in topic_records.items():
        # kafka-python's partitioner and the order produced: offset = index within the partition
        for offset, mail in enumerate(records):
            if offset < done[p]:
                assert counts[mail["id"]] == 1, f"{mail['id']} (partition {p}, offset {offset}) sent twice"
    repeated = sum(c - 1 for c in counts.values())
    assert repeated <= 100 * partitions  # at most the uncommitted batch in flight per partition


def test_several_sessions_at_once_and_one_dropped_mid_batch_every_mail_once_in_ticket_order(
        world: Env, unique, start_sender, watch):  # noqa: F811
    """30 mails over sender.smtp_sessions (3) sessions; the session carrying one of them
    is dropped at the end of its DATA. That mail is retried and sent once, the mail of
    its ticket behind it goes out after it, and every other mail is sent once."""
    cfg = world.config(unique)
    assert cfg.sender.smtp_sessions == 3
    events = watch(cfg)
    dropped_to = f"{unique('dropped').lower()}@customer.test"
    world.smtp.add_mailbox(dropped_to, "dropped-pw")
    world.smtp.drop_at_data(dropped_to)
    victim = outbound(world, 5, to=[{"email": dropped_to, "name": None}])
    behind = outbound(world, 5)  # the same ticket: must go out after the victim
    mails = [outbound(world, n) for n in range(10, 20)] + [victim] + [outbound(world, n) for n in range(20, 38)]
    mails.insert(15, behind)
    produce(cfg, *mails)  # on the topic before the sender starts: full batches
    sender = start_sender(cfg)

    values = events.until(lambda vs: all(of(vs, m, "sent") for m in mails), 60, "every mail sent")
    sender.shutdown()
    retrying = of(values, victim, "retrying")
    assert [e["attempt"] for e in retrying] == [1]
    assert "the server may have taken it" in retrying[0]["smtp_reply"]
    [sent] = of(values, victim, "sent")
    assert sent["attempt"] == 2
    assert of(values, behind, "sent")[0]["time"] >= sent["time"]  # a ticket's mails in order
    for mail in mails:
        assert [e["status"] for e in of(values, mail) if e["status"] != "retrying"] == ["sent"], mail["id"]
    datas = [r.data for r in world.smtp.received()]
    for mail in mails:
        assert sum(mail["message_id"].encode() in data for data in datas) == 1, mail["id"]
    # Three sessions at once, plus the one that replaced the dropped session.
    assert 3 <= world.smtp.sessions <= 4


def test_the_pool_opens_at_most_its_sessions_per_server_however_many_send(world: Env, unique):  # noqa: F811
    from concurrent.futures import ThreadPoolExecutor

    from services.common.compose import as_bytes, compose
    from services.common.smtp import SmtpPool

    cfg = world.config(unique)
    mailbox = cfg.mailbox(world.address)
    assert mailbox is not None and mailbox.smtp is not None
    smtp = mailbox.smtp
    pool = SmtpPool(timeout=5, sessions=3)
    mails = [outbound(world, n) for n in range(24)]
    try:
        with ThreadPoolExecutor(8) as threads:
            codes = list(threads.map(lambda m: pool.send(smtp, world.address, [world.customer],
                                                         as_bytes(compose(m))).code, mails))
    finally:
        pool.close()
    assert codes == [250] * len(mails)
    assert world.smtp.sessions == 3
    datas = [r.data for r in world.smtp.received()]
    assert all(sum(m["message_id"].encode() in d for d in datas) == 1 for m in mails)
