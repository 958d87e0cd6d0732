"""`deskmail up`: every process on one machine, supervised, with embedded defaults.

Starts a local broker (Tansu) when no bootstrap servers are configured, creates the
topics, migrates the database, then runs each service as its own process exactly
as `deskmail run SERVICE` would, restarting any that dies. Ctrl-C or SIGTERM stops
the services (each drains and commits) and then the broker.

Without a configuration (`run_demo`) it first writes a demo configuration into a
data folder: one queue with an own-domain address served by the SMTP ingress, and
outgoing mail going to a local mail sink (`services.devsink`) that saves each
message as a file, so the whole round trip works on a machine with no mail server.
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
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click

from services.common import config as config_mod
from services.common.config import Config
from services.common.retry import Backoff
from services.common.runtime import DEFAULT_PORTS

if TYPE_CHECKING:
    from services.localbroker import LocalBroker

STACK = ("fetcher", "router", "ticketer", "sender", "api")
STOP_TIMEOUT_SECONDS = 30.0


@dataclasses.dataclass
class Child:
    name: str
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
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


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: `deskmail up` still stops its children on Ctrl-C and SIGTERM
        pass


# ------------------------------------------------------------------ ports


def stack_ports(config: Config, sink: Sink | None = None) -> list[Port]:
    """Every TCP port the stack will listen on (the local broker picks a free one itself)."""
    ports = []
    for name in STACK:
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


def run_stack(config: Config, sink: Sink | None = None) -> int:
    """Run the stack until SIGINT/SIGTERM; returns the exit code.

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
        for name in STACK:
            port = config.metrics.ports.get(name, DEFAULT_PORTS[name])
            args = [sys.executable, "-m", "services.cli", "run", name, "--config", str(Path(config.path).resolve()),
                    "--metrics-port", str(port)]
            children.append(Child(name, args, logs / f"{name}.log",
                                  health_url=f"http://127.0.0.1:{port}/healthz"))
        for child in children:
            child.start(env)

        _describe(config, bootstrap, broker, children, sink)

        backoff = Backoff(initial=1.0, maximum=30.0)
        next_probe = time.monotonic() + PROBE_INTERVAL_SECONDS
        while not stop.wait(0.5):
            if time.monotonic() >= next_probe:
                next_probe = time.monotonic() + PROBE_INTERVAL_SECONDS
                for child in children:
                    _probe(child)
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
                    child.proc.wait(timeout=STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    click.echo(f"{child.name} did not stop in {STOP_TIMEOUT_SECONDS:.0f}s; killing it", err=True)
                    child.proc.kill()
                    child.proc.wait()
        if broker is not None:
            broker.stop()
        click.echo("stopped")


PROBE_INTERVAL_SECONDS = 10.0
UNHEALTHY_GRACE_SECONDS = 60.0


def _probe(child: Child) -> None:
    """Kill a child whose /healthz says its main loop is stuck; the loop above restarts it.

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


def _describe(config: Config, bootstrap: list[str], broker: "LocalBroker | None", children: list[Child],
              sink: Sink | None) -> None:
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
        else:
            where = f"metrics http://127.0.0.1:{config.metrics.ports.get(child.name, DEFAULT_PORTS[child.name])}/metrics"
        click.echo(f"  {child.name:<10} pid {pid}, {where}, log {child.log_path}")
    for mailbox in config.mailboxes:
        how = f"IMAP {mailbox.imap.host}:{mailbox.imap.port}" if mailbox.imap else f"ingress smtp://{config.ingress.listen}"
        click.echo(f"  mailbox    {mailbox.address} -> queue {mailbox.queue} ({how})")
    click.echo(f"  tickets    deskmail tickets list --config {config.path}")
    if sink is not None:
        _describe_demo(config, sink)
    click.echo("Press Ctrl-C to stop.")


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ------------------------------------------------------------------ the demo

DEMO_ADDRESS = "support@example.com"
DEMO_CUSTOMER = "customer@example.org"


@dataclasses.dataclass(frozen=True)
class DemoPorts:
    """The demo's ports: the usual ones, or seven in a row from ``--demo-ports-base``."""

    ingress: int = 2525
    sink: int = 2526
    web: int = 8080
    fetcher: int = DEFAULT_PORTS["fetcher"]
    router: int = DEFAULT_PORTS["router"]
    ticketer: int = DEFAULT_PORTS["ticketer"]
    sender: int = DEFAULT_PORTS["sender"]

    @classmethod
    def from_base(cls, base: int | None) -> "DemoPorts":
        if base is None:
            return cls()
        return cls(*range(base, base + 7))


def demo_config(ports: DemoPorts) -> str:
    """The demo deskmail.yaml: one queue, an ingress address, outgoing mail into the sink."""
    return f"""\
# deskmail demo configuration, written by `deskmail up` (run without --config).
# It is used as it is from now on: edit it freely, or delete it to get the demo back.
data_dir: .                       # database, blobs, logs and sent mail live next to this file
kafka:
  consumer: {{session_timeout_ms: 6000, heartbeat_interval_ms: 2000}}   # quick group joins on the local broker
ingress:
  listen: 127.0.0.1:{ports.ingress}         # SMTP ingress for own-domain addresses
api:
  listen: 127.0.0.1:{ports.web}
metrics:
  host: 127.0.0.1
  ports: {{fetcher: {ports.fetcher}, router: {ports.router}, ticketer: {ports.ticketer}, sender: {ports.sender}, api: {ports.web}}}
organization:
  name: Example
  domains: [example.com]
  members:
    - {{email: agent@example.com, name: Demo Agent, groups: [support]}}
queues:
  - key: SUPPORT
    name: Customer support
    access: [group:support]
    allow_outbound_mail: true
    mailboxes:
      - address: {DEMO_ADDRESS}
        ingress: true                  # mail comes in through the SMTP ingress above
        accept_external: true
        ticket: {{type: question, components: [general]}}
        smtp:                          # outgoing: the local mail sink, which saves every message as a file
          host: 127.0.0.1
          port: {ports.sink}
          security: none
        signatures:
          - {{alias: Demo support, text: "--\\nDemo support team"}}
"""


def send_command(host: str, port: int, address: str) -> str:
    """A one-line shell command that mails ``address`` through ``host:port``."""
    raw = (f"From: {DEMO_CUSTOMER}\\r\\nTo: {address}\\r\\nSubject: My printer is on fire\\r\\n\\r\\n"
           "Hello, my printer is on fire. What should I do?\\r\\n")
    return (f"python3 -c \"import smtplib; smtplib.SMTP('{host}', {port}).sendmail("
            f"'{DEMO_CUSTOMER}', ['{address}'], b'{raw}')\"")


def run_demo(data: Path, ports_base: int | None) -> int:
    """`deskmail up` without a configuration: write (or reuse) the demo config in ``data`` and run it.

    A new demo configuration is written only once its ports are known to be free,
    so after a refusal ``--demo-ports-base`` still takes effect.
    """
    from services.common.config import ConfigError

    data = data.resolve()
    path = data / "deskmail.yaml"
    existing = path.exists()
    text = path.read_text(encoding="utf-8") if existing else demo_config(DemoPorts.from_base(ports_base))
    try:
        config = config_mod.parse_text(text, str(path))
    except ConfigError as exc:
        raise click.ClickException("\n".join(f"{path}: {p}" for p in exc.problems)) from None
    mailbox = next((m for m in config.mailboxes if m.ingress and m.smtp is not None), None)
    sink = None
    if mailbox is not None and mailbox.smtp is not None and mailbox.smtp.host in ("127.0.0.1", "localhost"):
        sink = Sink(mailbox.smtp.host, mailbox.smtp.port, data / "sent-mail")
    if existing:
        if ports_base is not None:
            click.echo(f"--demo-ports-base is ignored: the ports are set in {path}", err=True)
        check_ports(config, sink, f"edit the ports in {path}, or delete it and use --demo-ports-base N")
        click.echo(f"using the demo configuration in {path} (delete it to get the defaults back)")
    else:
        check_ports(config, sink, "move every demo port with --demo-ports-base N")
        data.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        click.echo(f"wrote a demo configuration to {path}")
    return run_stack(config, sink=sink)


def _describe_demo(config: Config, sink: Sink) -> None:
    host, port = config.ingress.listen.host, config.ingress.listen.port
    web = f"http://127.0.0.1:{config.metrics.ports.get('api', DEFAULT_PORTS['api'])}"
    mailbox = next((m for m in config.mailboxes if m.ingress), None)
    if mailbox is None:
        return
    click.echo("")
    click.echo(f"Demo: mail to {mailbox.address} becomes a ticket in queue {mailbox.queue}.")
    click.echo("  send one:   " + send_command(host, port, mailbox.address))
    click.echo(f"  tickets:    {web}/queues/{mailbox.queue}  (the first one: {web}/tickets/{mailbox.queue}-1)")
    click.echo(f"  sent mail:  replies from the ticket page land in {sink.folder}/ as .eml files")
    click.echo("")
