"""`deskmail up`: every process on one machine, supervised, with embedded defaults.

Starts a local broker (Tansu) when no bootstrap servers are configured, creates the
topics, migrates the database, then runs each service as its own process exactly
as `deskmail run SERVICE` would, restarting any that dies. Ctrl-C or SIGTERM stops
the services (each drains and commits) and then the broker.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import click

from services.common.config import Config
from services.common.retry import Backoff
from services.common.runtime import DEFAULT_PORTS

STACK = ("fetcher", "router", "ticketer")


@dataclasses.dataclass
class Child:
    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0

    def start(self, env: dict[str, str]) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env)
        log.close()
        self.started_at = time.monotonic()


def run_stack(config: Config) -> int:
    from services.common.bus import Kafka
    from services.localbroker import LocalBroker
    from services.ticketer.store import TicketStore

    data = config.data_dir
    data.mkdir(parents=True, exist_ok=True)
    logs = data / "logs"
    logs.mkdir(exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    broker = None
    bootstrap = list(config.kafka.bootstrap_servers)
    if not bootstrap:
        broker = LocalBroker(log_path=logs / "broker.log")
        broker.start()
        bootstrap = [broker.bootstrap]
    children: list[Child] = []
    try:
        Kafka(config, bootstrap).create_topics()
        database_url = config.database_url
        TicketStore(database_url).migrate()

        env = dict(os.environ, DESKMAIL_BOOTSTRAP=",".join(bootstrap))
        for name in STACK:
            port = config.metrics.ports.get(name, DEFAULT_PORTS[name])
            args = [sys.executable, "-m", "services.cli", "run", name, "--config", str(Path(config.path).resolve()),
                    "--metrics-port", str(port)]
            children.append(Child(name, args, logs / f"{name}.log"))
        for child in children:
            child.start(env)

        click.echo("deskmail is running")
        click.echo(f"  broker     {','.join(bootstrap)}{' (local, in memory)' if broker else ''}")
        click.echo(f"  database   {_safe_url(database_url)}")
        click.echo(f"  data       {data}")
        for child in children:
            port = config.metrics.ports.get(child.name, DEFAULT_PORTS[child.name])
            click.echo(f"  {child.name:<10} pid {child.proc.pid if child.proc else '-'}, "
                       f"metrics http://127.0.0.1:{port}/metrics, log {child.log_path}")
        for mailbox in config.mailboxes:
            how = f"IMAP {mailbox.imap.host}:{mailbox.imap.port}" if mailbox.imap else "ingress"
            click.echo(f"  mailbox    {mailbox.address} -> queue {mailbox.queue} ({how})")
        click.echo(f"  tickets    deskmail tickets list --config {config.path}")
        click.echo("Press Ctrl-C to stop.")

        backoff = Backoff(initial=1.0, maximum=30.0)
        while not stop.wait(0.5):
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    code = child.proc.returncode
                    if time.monotonic() - child.started_at > 60:
                        child.restarts = 0
                    delay = backoff.delay(child.restarts)
                    click.echo(f"{child.name} exited with {code}; restarting in {delay:.1f}s (see {child.log_path})",
                               err=True)
                    child.restarts += 1
                    if stop.wait(delay):
                        break
                    child.start(env)
        return 0
    finally:
        click.echo("stopping...")
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                child.proc.terminate()
        for child in children:
            if child.proc is not None:
                try:
                    child.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.proc.kill()
        if broker is not None:
            broker.stop()
        click.echo("stopped")


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
