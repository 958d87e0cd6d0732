"""`deskmail up`: every process on one machine, supervised, with embedded defaults.

Starts a local broker (Tansu) when no bootstrap servers are configured, creates the
topics, migrates the database, then runs each service as its own process exactly
as `deskmail run SERVICE` would, restarting any that dies. Ctrl-C or SIGTERM stops
the services (each drains and commits) and then the broker.

Each child process is a ``services.localchild.Child``; without a configuration,
``services.localdemo.run_demo`` writes a demo configuration and runs it here.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from services.common.config import Config
from services.common.runtime import DEFAULT_PORTS
from services.localchild import PROBE_INTERVAL_SECONDS, Child, probe

if TYPE_CHECKING:
    from services.localbroker import LocalBroker

STACK = ("fetcher", "ingress", "router", "ticketer", "sender", "api")
STOP_TIMEOUT_SECONDS = 30.0


@dataclasses.dataclass(frozen=True)
class Sink:
    """The local SMTP sink that stands in for the outgoing mail server in the demo."""

    host: str
    port: int
    folder: Path


@dataclasses.dataclass(frozen=True)
class Port:
    host: str
    port: int
    owner: str


# ------------------------------------------------------------------ ports


def stack(config: Config) -> tuple[str, ...]:
    """The processes `deskmail up` runs: the ingress only when a mailbox has ``ingress: true``."""
    return tuple(name for name in STACK if name != "ingress" or any(m.ingress for m in config.mailboxes))


def stack_ports(config: Config, sink: Sink | None = None) -> list[Port]:
    """Every TCP port the stack will listen on (the local broker picks a free one itself)."""
    ports = []
    for name in stack(config):
        port = config.metrics.ports.get(name, DEFAULT_PORTS[name])
        if name == "api":  # `deskmail run api --metrics-port P` serves the web pages on 127.0.0.1:P
            ports.append(Port("127.0.0.1", port, "web"))
        else:
            ports.append(Port(config.metrics.host, port, f"{name} metrics"))
    if any(m.ingress for m in config.mailboxes):
        host, port = config.ingress.listen.host, config.ingress.listen.port
        ports.append(Port(host, port, "SMTP ingress"))
        if config.ingress.lmtp_listen:
            host, port = config.ingress.lmtp_listen.host, config.ingress.lmtp_listen.port
            ports.append(Port(host, port, "LMTP ingress"))
    if sink is not None:
        ports.append(Port(sink.host, sink.port, "mail sink"))
    return ports


def busy_ports(ports: Sequence[Port]) -> list[str]:
    """What is wrong with ``ports``: each one taken by another program, or claimed twice."""
    problems = []
    seen: dict[int, str] = {}
    for item in ports:
        if item.port == 0:  # any free port
            continue
        if item.port in seen:
            problems.append(f"port {item.port} is configured for both {seen[item.port]} and {item.owner}")
            continue
        seen[item.port] = item.owner
        with socket.socket(socket.AF_INET6 if ":" in item.host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers do
            try:
                probe.bind((item.host, item.port))
            except OSError as exc:
                why = "is in use by another program" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc.strerror})"
                problems.append(f"port {item.port} on {item.host} ({item.owner}) {why}")
    return problems


# ------------------------------------------------------------------ the stack


def check_ports(config: Config, sink: Sink | None, hint: str) -> None:
    """Raises ``click.ClickException`` naming every port of the stack that is not free."""
    problems = busy_ports(stack_ports(config, sink))
    if problems:
        raise click.ClickException("cannot start: " + "; ".join(problems) + f" (stop that program, or {hint})")


def run_stack(config: Config, sink: Sink | None = None, *, notes: Sequence[str] = ()) -> int:
    """Run the stack until SIGINT/SIGTERM; returns the exit code.

    ``notes`` are printed after the description of the running stack.

    Raises ``click.ClickException`` before starting anything when a port is busy.
    """
    from services.common.kafka import Kafka
    from services.localbroker import LocalBroker
    from services.tickets import TicketStore

    check_ports(config, sink, "change the ports in the configuration")
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
        if sink is not None:
            children.append(Child("mail sink", [sys.executable, "-m", "services.devsink", "--listen",
                                                f"{sink.host}:{sink.port}", "--dir", str(sink.folder)],
                                  logs / "devsink.log"))
        for name in stack(config):
            port = config.metrics.ports.get(name, DEFAULT_PORTS[name])
            args = [sys.executable, "-m", "services.cli", "run", name, "--config", str(Path(config.path).resolve()),
                    "--metrics-port", str(port)]
            children.append(Child(name, args, logs / f"{name}.log",
                                  health_url=f"http://127.0.0.1:{port}/healthz"))
        for child in children:
            child.start(env)

        _describe(config, bootstrap, broker, children, sink, notes)

        next_probe = time.monotonic() + PROBE_INTERVAL_SECONDS
        while not stop.wait(0.5):
            if time.monotonic() >= next_probe:
                next_probe = time.monotonic() + PROBE_INTERVAL_SECONDS
                for child in children:
                    probe(child)
            for child in children:
                if child.proc is not None and child.proc.poll() is not None:
                    code = child.proc.returncode
                    if time.monotonic() - child.started_at > 60:
                        child.restarts.reset()
                    delay = child.restarts.delay()
                    click.echo(f"{child.name} exited with {code}; restarting in {delay:.1f}s (see {child.log_path})",
                               err=True)
                    if child.restarts.sleep(stop, delay=delay) == "stopped":
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
                # the ingress drains its sessions for up to ingress.drain_seconds, then says goodbye
                timeout = max(STOP_TIMEOUT_SECONDS, config.ingress.drain_seconds + 10) if child.name == "ingress" \
                    else STOP_TIMEOUT_SECONDS
                try:
                    child.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    click.echo(f"{child.name} did not stop in {timeout:.0f}s; killing it", err=True)
                    child.proc.kill()
                    child.proc.wait()
        if broker is not None:
            broker.stop()
        click.echo("stopped")


def _describe(config: Config, bootstrap: list[str], broker: "LocalBroker | None", children: list[Child],
              sink: Sink | None, notes: Sequence[str]) -> None:
    click.echo("deskmail is running")
    local = f" (local, in memory, pid {broker.pid})" if broker is not None else ""
    click.echo(f"  broker     {','.join(bootstrap)}{local}")
    click.echo(f"  database   {_safe_url(config.database_url)}")
    click.echo(f"  data       {config.data_dir}")
    for child in children:
        pid = child.proc.pid if child.proc else "-"
        if child.name == "mail sink" and sink is not None:
            where = f"smtp://{sink.host}:{sink.port}"
        elif child.name == "api":
            where = f"web http://127.0.0.1:{config.metrics.ports.get('api', DEFAULT_PORTS['api'])}/"
        elif child.name == "ingress":
            port = config.metrics.ports.get("ingress", DEFAULT_PORTS["ingress"])
            where = f"smtp://{config.ingress.listen}, metrics http://127.0.0.1:{port}/metrics"
        else:
            where = f"metrics http://127.0.0.1:{config.metrics.ports.get(child.name, DEFAULT_PORTS[child.name])}/metrics"
        click.echo(f"  {child.name:<10} pid {pid}, {where}, log {child.log_path}")
    for mailbox in config.mailboxes:
        how = f"IMAP {mailbox.imap.host}:{mailbox.imap.port}" if mailbox.imap else f"ingress smtp://{config.ingress.listen}"
        click.echo(f"  mailbox    {mailbox.address} -> queue {mailbox.queue} ({how})")
    click.echo(f"  tickets    deskmail tickets list --config {config.path}")
    for line in notes:
        click.echo(line)
    click.echo("Press Ctrl-C to stop.")


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
