"""Readiness is "can do work", not "holds partitions": two `deskmail run router` on a
one-partition topic are both ready (one consumes, the other waits in the group), and
each logged that the local broker reports no topic configs, so only replication was
checked at start. A router whose declaration asks for more replicas than the topics
have refuses to start with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.stack import Stack, wait_for

pytestmark = pytest.mark.e2e


def _config(unique: Callable[[str], str], data: Path, replication: int = 1) -> str:
    topics = {k: unique(f"idle-{k}") for k in ("inbound", "commands", "outbound", "events", "deadletter")}
    return textwrap.dedent(f"""\
        kafka:
          group_prefix: {unique("idle-group")}
          partitions: 1
          replication_factor: {replication}
          consumer: {{session_timeout_ms: 2000, heartbeat_interval_ms: 500}}
          producer: {{idempotence: false}}
          topics: {json.dumps(topics)}
        data_dir: {data}
        organization:
          domains: [example.com]
        queues:
          - key: SUPPORT
            mailboxes:
              - {{address: support@example.com, ingress: true, accept_external: true}}
        """)


@pytest.fixture
def stack(tmp_path: Path, broker: Any, unique: Callable[[str], str]) -> Iterator[Stack]:
    instance = Stack(_config(unique, tmp_path / "data"), tmp_path, broker.bootstrap)
    instance.create_topics()
    yield instance
    instance.stop()


def _readyz(stack: Stack, name: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports[name]}/readyz", timeout=2) as r:
            return r.status, r.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode().strip()


def test_a_router_without_a_partition_is_ready_and_idle(stack: Stack) -> None:
    for name in ("router-a", "router-b"):
        stack.launch(name, "router")
    for name in ("router-a", "router-b"):
        stack.wait_ready(name)
    # Both stay ready once the group settled: the one without the partition is idle, not unready.
    wait_for(lambda: all(_readyz(stack, n) == (200, "ready") for n in ("router-a", "router-b")), 20,
             "both routers ready together")
    for name in ("router-a", "router-b"):
        log = stack.log(name)
        assert "the broker reports no topic configs" in log, log[-2000:]
        assert "kafka.producer.idempotence is false" in log


def test_a_topic_with_fewer_replicas_than_declared_is_refused(tmp_path: Path, stack: Stack,
                                                               unique: Callable[[str], str]) -> None:
    declared = stack.config_path.read_text().replace("replication_factor: 1", "replication_factor: 3")
    path = tmp_path / "replicated.yaml"
    path.write_text(declared)
    done = subprocess.run([sys.executable, "-m", "services.cli", "run", "router", "--config", str(path),
                           "--bootstrap", stack.bootstrap, "--metrics-port", "0"],
                          cwd=Path(__file__).resolve().parents[2], env=stack.env, capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 2, done.stderr[-2000:]
    [line] = [json.loads(line) for line in done.stderr.splitlines() if '"refused to start"' in line]
    assert "replication factor 1, declared 3" in line["reason"]
