"""Topics as code against the real broker: `deskmail topics diff` finds what is
missing, `create` makes it as declared, and then `diff` and `describe` agree."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

from tests.harness.stack import REPO

OK, FAILED = 0, 1


def deskmail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_diff_create_diff_describe(tmp_path: Path, broker: Any, unique: Callable[[str], str]) -> None:
    topics = {k: unique(f"decl-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter", "leases")}
    data = {k: v for k, v in topics.items() if k != "leases"}
    config = tmp_path / "deskmail.yaml"
    config.write_text(textwrap.dedent(f"""\
        kafka:
          bootstrap_servers: ["{broker.bootstrap}"]
          partitions: 3
          retention_days: {{inbound: 14, deadletter: 0}}
          topics: {json.dumps(topics)}
        data_dir: {tmp_path / "data"}
        """))
    before = deskmail("topics", "diff", "--config", str(config))
    assert before.returncode == FAILED, before.stderr
    assert sorted(before.stdout.splitlines()) == sorted(
        [f"{name}: missing (declared: 3 partitions, replication 1)" for name in data.values()]
        + [f"{topics['leases']}: missing (declared: 16 partitions, replication 1)"])

    # topics made with too few partitions: create leaves them, diff names them (--partitions
    # leaves the lease topic alone: it keeps fetcher.lease_partitions)
    made = deskmail("topics", "create", "--config", str(config), "--partitions", "1")
    assert made.returncode == OK and made.stdout.count(": created") == 6
    config.write_text(config.read_text().replace("partitions: 3", "partitions: 4"))
    short = deskmail("topics", "diff", "--config", str(config))
    assert short.returncode == FAILED
    assert sorted(short.stdout.splitlines()) == sorted(f"{name}: 1 partitions, declared 4" for name in data.values())
    assert "configs were not" in short.stderr  # the local broker reports no topic configs
    assert deskmail("topics", "create", "--config", str(config)).stdout.count(": exists") == 6

    config.write_text(config.read_text().replace("partitions: 4", "partitions: 1"))
    same = deskmail("topics", "diff", "--config", str(config))
    assert (same.returncode, same.stdout.strip()) == (OK, "the topics match their declaration"), same.stderr

    described = [json.loads(line) for line in deskmail("topics", "describe", "--json", "--config",
                                                       str(config)).stdout.splitlines()]
    by_topic = {d["topic"]: d for d in described}
    assert by_topic["inbound"]["declared"]["configs"] == {
        "cleanup.policy": "delete", "retention.ms": str(14 * 86_400_000), "min.insync.replicas": "1",
        "max.message.bytes": str(8 * 1024 * 1024)}
    assert by_topic["deadletter"]["declared"]["configs"]["retention.ms"] == "-1"  # 0 days: forever
    assert by_topic["commands"]["actual"] == {"partitions": 1, "replication_factor": 1, "configs": None}
    assert by_topic["leases"]["declared"]["partitions"] == by_topic["leases"]["actual"]["partitions"] == 16
    assert by_topic["leases"]["declared"]["configs"]["retention.ms"] == str(3_600_000)
    assert all(d["differences"] == [] for d in described)
