"""`deskmail replay` against the real broker: records written in three batches more
than a second apart (the local broker answers offsets_for_times per batch, by
arrival time), a group committed at the end, and a replay from a time between the
first and the second batch. The dry run shows the records of batches 2 and 3 per
partition and changes nothing; the replay sets exactly those offsets; a running
member of the group makes it refuse."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from services.localbroker import free_port
from tests.harness.broker import FAST_CONSUMER
from tests.harness.stack import REPO, wait_for

OK, FAILED, USAGE, UNAVAILABLE = 0, 1, 2, 3
# Partition 0 gets records in all three batches, partition 1 only in the first
# (nothing at or after the time: it stays), partition 2 none.
BATCHES = [{0: 4, 1: 3}, {0: 5}, {0: 2}]


def deskmail(config: Path, bootstrap: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args, "--config", str(config),
                           "--bootstrap", bootstrap], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def rows(output: str) -> dict[tuple[str, int], tuple[str, str, int]]:
    """The plan's table: (topic, partition) -> (committed, new, reprocess)."""
    found = {}
    for line in output.splitlines():
        cells = line.split()
        if len(cells) >= 5 and cells[0] != "total:" and cells[1].isdigit():
            found[(cells[0], int(cells[1]))] = (cells[2], cells[3], int(cells[4]))
    return found


@pytest.fixture
def setup(tmp_path: Path, broker: Any, unique: Callable[[str], str]) -> tuple[Path, dict[str, str], str]:
    topics = {k: unique(f"rp-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    prefix = unique("rp-group")
    config = tmp_path / "deskmail.yaml"
    config.write_text(textwrap.dedent(f"""\
        kafka:
          group_prefix: {prefix}
          partitions: 3
          topics: {json.dumps(topics)}
        data_dir: {tmp_path / "data"}
        """))
    assert deskmail(config, broker.bootstrap, "topics", "create").returncode == OK
    return config, topics, f"{prefix}-router"


def committed(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        found = admin.list_group_offsets({group: [TopicPartition(topic, p) for p in range(3)]})[group]
    finally:
        admin.close()
    return {tp.partition: value.offset for tp, value in found.items() if value is not None and value.offset >= 0}


def test_replay_from_a_time_moves_back_exactly_the_later_batches(setup: Any, broker: Any) -> None:
    config, topics, group = setup
    inbound = topics["inbound"]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    between = 0.0
    for n, batch in enumerate(BATCHES):
        for partition, count in batch.items():
            for i in range(count):
                producer.send(inbound, key=b"k", value=f"{n}-{i}".encode(), partition=partition)
        producer.flush()
        if n == 0:
            time.sleep(1.2)
            between = time.time()
        time.sleep(1.2)
    producer.close()
    written = {p: sum(b.get(p, 0) for b in BATCHES) for p in (0, 1)}
    after = {0: BATCHES[1][0] + BATCHES[2][0], 1: 0}

    # the stage has processed everything: its group committed the end of each partition it read
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.alter_group_offsets(group, {TopicPartition(inbound, p): OffsetAndMetadata(n, "", None)
                                      for p, n in written.items()})
    admin.close()
    since = datetime.fromtimestamp(between, timezone.utc).isoformat()

    dry = deskmail(config, broker.bootstrap, "replay", "router", "--from", since, "--dry-run")
    assert dry.returncode == OK, dry.stderr
    plan = rows(dry.stdout)
    assert plan == {
        (inbound, 0): (str(written[0]), str(written[0] - after[0]), after[0]),
        (inbound, 1): (str(written[1]), str(written[1]), 0),
        (inbound, 2): ("-", "-", 0),
    }, dry.stdout
    assert "no record at or after that time" in dry.stdout and "no committed offset" in dry.stdout
    assert f"total: {after[0]} records to reprocess" in dry.stdout
    assert "dry run: nothing changed" in dry.stdout
    assert committed(broker.bootstrap, group, inbound) == written

    # a span back from now reaches all three batches
    everything = rows(deskmail(config, broker.bootstrap, "replay", "router", "--from", "1h", "--dry-run").stdout)
    assert everything[(inbound, 0)] == (str(written[0]), "0", written[0])
    assert everything[(inbound, 1)] == (str(written[1]), "0", written[1])

    # without a terminal and without --yes nothing moves
    unconfirmed = deskmail(config, broker.bootstrap, "replay", "router", "--from", since)
    assert unconfirmed.returncode == USAGE and unconfirmed.stderr.strip().count("\n") == 0
    assert "pass --yes" in unconfirmed.stderr and unconfirmed.stdout == ""

    done = deskmail(config, broker.bootstrap, "replay", "router", "--from", since, "--yes")
    assert done.returncode == OK, done.stderr
    assert rows(done.stdout) == plan
    assert committed(broker.bootstrap, group, inbound) == {0: written[0] - after[0], 1: written[1]}
    assert f"reprocesses {after[0]} records" in done.stdout

    # --follow counts the stage's commits up to the highwater of now
    follow = subprocess.Popen([sys.executable, "-m", "services.cli", "replay", "router", "--follow",
                               "--config", str(config), "--bootstrap", broker.bootstrap],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              stdin=subprocess.DEVNULL)
    try:
        assert follow.stdout is not None
        first = follow.stdout.readline()
        assert first.startswith(f"0 of {after[0]} records (0%)"), first
        stage = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        stage.alter_group_offsets(group, {TopicPartition(inbound, 0): OffsetAndMetadata(written[0], "", None)})
        stage.close()
        out, err = follow.communicate(timeout=60)
    finally:
        if follow.poll() is None:
            follow.kill()
    assert follow.returncode == OK, err
    assert out.strip().splitlines()[-1] == f"{after[0]} of {after[0]} records (100%), caught up"


def test_replay_refuses_while_the_stage_runs_and_for_the_sender(setup: Any, broker: Any) -> None:
    config, topics, group = setup
    inbound = topics["inbound"]
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for partition in range(3):
        producer.send(inbound, value=b"x", partition=partition).get(timeout=30)
    producer.close()
    # The group stands at the end of every partition (committed without joining it) ...
    committer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=group, enable_auto_commit=False)
    try:
        tps = [TopicPartition(inbound, p) for p in range(3)]
        committer.assign(tps)
        committer.commit({tp: OffsetAndMetadata(1, None, -1) for tp in tps})
    finally:
        committer.close(autocommit=False)
    # ... and then has a live member. A longer session than FAST_CONSUMER's: the member
    # must stay in the group while the commands below run, on a loaded machine too.
    running = KafkaConsumer(inbound, bootstrap_servers=broker.bootstrap, group_id=group,
                            **{**FAST_CONSUMER, "session_timeout_ms": 10000,
                               "heartbeat_interval_ms": 1000})  # type: ignore[arg-type]
    try:
        def joined() -> bool:
            running.poll(timeout_ms=200)
            return bool(running.assignment())

        wait_for(joined, 90, "the member to join the group")
        before = committed(broker.bootstrap, group, inbound)
        assert before == {0: 1, 1: 1, 2: 1}
        for target in (["--to-beginning"], ["--offset", "0"], ["--from", "1h"]):
            refused = deskmail(config, broker.bootstrap, "replay", "router", *target, "--yes")
            assert refused.returncode == FAILED, refused.stdout + refused.stderr
            lines = refused.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: stop the router first: "), refused.stderr
            assert group in lines[0] and "Traceback" not in refused.stderr
        assert committed(broker.bootstrap, group, inbound) == before
        # a dry run still shows the plan
        assert rows(deskmail(config, broker.bootstrap, "replay", "router", "--to-beginning",
                             "--dry-run").stdout)[(inbound, 0)] == ("1", "0", 1)
    finally:
        running.close(autocommit=False)
    # once the member left, the same command moves the group
    moved = deskmail(config, broker.bootstrap, "replay", "router", "--to-beginning", "--yes")
    assert moved.returncode == OK, moved.stderr
    assert committed(broker.bootstrap, group, inbound) == {0: 0, 1: 0, 2: 0}

    sender = deskmail(config, broker.bootstrap, "replay", "sender", "--to-beginning", "--yes")
    assert sender.returncode == USAGE and "would send mail again" in sender.stderr
    assert "deskmail tickets reply" in sender.stderr and len(sender.stderr.strip().splitlines()) == 1


def test_replay_of_the_ticketer_moves_both_inputs_and_one_partition_only(setup: Any, broker: Any) -> None:
    config, topics, router_group = setup
    group = router_group.removesuffix("-router") + "-ticketer"
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, acks="all")
    for name in ("commands", "events"):
        for partition in range(3):
            for _ in range(2):
                producer.send(topics[name], value=b"x", partition=partition)
    producer.close()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.alter_group_offsets(group, {TopicPartition(topics[name], p): OffsetAndMetadata(2, "", None)
                                      for name in ("commands", "events") for p in range(3)})
    admin.close()
    result = deskmail(config, broker.bootstrap, "replay", "ticketer", "--offset", "1", "--partition", "2", "--yes")
    assert result.returncode == OK, result.stderr
    assert rows(result.stdout) == {(topics["commands"], 2): ("2", "1", 1), (topics["events"], 2): ("2", "1", 1)}
    assert committed(broker.bootstrap, group, topics["commands"]) == {0: 2, 1: 2, 2: 1}
    assert committed(broker.bootstrap, group, topics["events"]) == {0: 2, 1: 2, 2: 1}
    missing = deskmail(config, broker.bootstrap, "replay", "ticketer", "--offset", "1", "--partition", "7", "--yes")
    assert missing.returncode == USAGE and "has partitions 0-2" in missing.stderr


def test_an_unreachable_broker_is_exit_3(setup: Any) -> None:
    config, _, _ = setup
    result = deskmail(config, f"127.0.0.1:{free_port()}", "replay", "router", "--to-beginning", "--dry-run",
                      timeout=150)
    assert result.returncode == UNAVAILABLE, result.stderr
    assert "unreachable" in result.stderr.strip().splitlines()[-1] and "Traceback" not in result.stderr
