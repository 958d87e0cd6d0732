"""`deskmail up` without a configuration: the demo configuration and how to try it.

``run_demo`` writes a demo configuration into a data folder (once; later runs
reuse it): one queue with an own-domain address served by the SMTP ingress, and
outgoing mail going to a local mail sink (`services.devsink`) that saves each
message as a file, so the whole round trip works on a machine with no mail
server. It then runs the stack as ``services.local.run_stack`` does for any
configuration.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from services.common import config as config_mod
from services.common.config import Config
from services.common.runtime import DEFAULT_PORTS
from services.local import Sink, check_ports, run_stack


DEMO_ADDRESS = "support@example.com"
DEMO_CUSTOMER = "customer@example.org"


@dataclasses.dataclass(frozen=True)
class DemoPorts:
    """The demo's ports: the usual ones, or eight in a row from ``--demo-ports-base``."""

    ingress: int = 2525
    sink: int = 2526
    web: int = 8080
    fetcher: int = DEFAULT_PORTS["fetcher"]
    router: int = DEFAULT_PORTS["router"]
    ticketer: int = DEFAULT_PORTS["ticketer"]
    sender: int = DEFAULT_PORTS["sender"]
    ingress_metrics: int = DEFAULT_PORTS["ingress"]

    @classmethod
    def from_base(cls, base: int | None) -> "DemoPorts":
        if base is None:
            return cls()
        return cls(*range(base, base + 8))


def demo_config(ports: DemoPorts) -> str:
    """The demo deskmail.yaml: one queue, an ingress address, outgoing mail into the sink."""
    return f"""\
# deskmail demo configuration, written by `deskmail up` (run without --config).
# It is used as it is from now on: edit it freely, or delete it to get the demo back.
data_dir: .                       # database, blobs, logs and sent mail live next to this file
kafka:
  consumer: {{session_timeout_ms: 6000, heartbeat_interval_ms: 2000}}   # quick group joins on the local broker
  producer: {{idempotence: false}}  # the local broker forgets producer ids when it restarts
ingress:
  listen: 127.0.0.1:{ports.ingress}         # SMTP ingress for own-domain addresses
api:
  listen: 127.0.0.1:{ports.web}
metrics:
  host: 127.0.0.1
  ports: {{fetcher: {ports.fetcher}, router: {ports.router}, ticketer: {ports.ticketer}, sender: {ports.sender},
          ingress: {ports.ingress_metrics}, api: {ports.web}}}
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
    notes = demo_notes(config, sink) if sink is not None else []
    return run_stack(config, sink=sink, notes=notes)


def demo_notes(config: Config, sink: Sink) -> list[str]:
    """The lines that tell how to try the demo, printed after the stack's description."""
    host, port = config.ingress.listen.host, config.ingress.listen.port
    web = f"http://127.0.0.1:{config.metrics.ports.get('api', DEFAULT_PORTS['api'])}"
    mailbox = next((m for m in config.mailboxes if m.ingress), None)
    if mailbox is None:
        return []
    return [
        "",
        f"Demo: mail to {mailbox.address} becomes a ticket in queue {mailbox.queue}.",
        "  send one:   " + send_command(host, port, mailbox.address),
        f"  tickets:    {web}/queues/{mailbox.queue}  (the first one: {web}/tickets/{mailbox.queue}-1)",
        f"  sent mail:  replies from the ticket page land in {sink.folder}/ as .eml files",
        "",
    ]
