"""One child process of `deskmail up`: started, tied to its parent, and probed for liveness.

Each child runs in its own process group, so a Ctrl-C in the terminal reaches
only `deskmail up`, which then stops the children in order; the parent-death
signal stops them if `deskmail up` itself is killed. ``probe`` kills a child
whose /healthz has been stale too long, as Kubernetes' liveness probe would; the
supervisor's loop (``services.local.run_stack``) then restarts it.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import click

from services.common.retry import Backoff, Retry

PROBE_INTERVAL_SECONDS = 10.0
UNHEALTHY_GRACE_SECONDS = 60.0


@dataclasses.dataclass
class Child:
    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    # Restarts back off on the one retry policy; a child that ran a minute starts over.
    restarts: Retry = dataclasses.field(default_factory=lambda: Retry(Backoff(initial=1.0, maximum=30.0)))
    started_at: float = 0.0
    health_url: str | None = None  # /healthz, probed like a Kubernetes liveness probe
    unhealthy_since: float | None = None

    def start(self, env: dict[str, str]) -> None:
        log = open(self.log_path, "ab")
        # Own process group: a Ctrl-C in the terminal reaches only `deskmail up`, which then stops
        # the children in order. The parent-death signal stops them if `deskmail up` is killed.
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                                     process_group=0, preexec_fn=_die_with_parent)
        log.close()
        self.started_at = time.monotonic()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: `deskmail up` still stops its children on Ctrl-C and SIGTERM
        pass


def probe(child: Child) -> None:
    """Kill a child whose /healthz says its main loop is stuck; the supervisor restarts it.

    A stuck client call (a lost wakeup in the Kafka client, a hung socket) leaves the
    process alive but doing nothing; its health goes stale and this treats it as
    Kubernetes' liveness probe would.
    """
    if child.proc is None or child.proc.poll() is not None or child.health_url is None:
        return
    try:
        with urllib.request.urlopen(child.health_url, timeout=5) as response:
            healthy = response.status == 200
    except urllib.error.HTTPError:
        healthy = False
    except OSError:
        return  # not listening yet, or busy: only an answered "stale" counts
    if healthy:
        child.unhealthy_since = None
        return
    now = time.monotonic()
    if child.unhealthy_since is None:
        child.unhealthy_since = now
    elif now - child.unhealthy_since >= UNHEALTHY_GRACE_SECONDS:
        click.echo(f"{child.name} is stuck (/healthz stale for {now - child.unhealthy_since:.0f}s); "
                   "killing it to restart", err=True)
        child.unhealthy_since = None
        child.proc.kill()
