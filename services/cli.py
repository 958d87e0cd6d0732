"""The `deskmail` command line."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click

from services.common import config as config_mod
from services.common.config import Config, ConfigError

log = logging.getLogger("deskmail")
SERVICES = ("fetcher", "router", "ticketer", "sender", "api")


def _load(path: str | None) -> Config:
    if not path:
        raise click.UsageError("no configuration: pass --config FILE or set DESKMAIL_CONFIG")
    try:
        return config_mod.load(path)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(f"{exc.path}: {problem}", err=True)
        raise SystemExit(2) from None
    except OSError as exc:
        raise click.UsageError(f"cannot read {path}: {exc.strerror}") from None


config_option = click.option(
    "--config", "config_path", envvar="DESKMAIL_CONFIG", type=click.Path(dir_okay=False),
    help="deskmail.yaml (or DESKMAIL_CONFIG).",
)
bootstrap_option = click.option(
    "--bootstrap", envvar="DESKMAIL_BOOTSTRAP", default=None,
    help="Kafka bootstrap servers, comma separated; overrides kafka.bootstrap_servers.",
)


def _bootstrap(value: str | None) -> list[str] | None:
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


@click.group()
@click.version_option(package_name="deskmail")
def main() -> None:
    """deskmail: every email sent to a queue's address becomes a ticket."""


# ------------------------------------------------------------------ config


@main.group("config")
def config_group() -> None:
    """Validate configuration."""


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False), required=False, envvar="DESKMAIL_CONFIG")
def config_check(path: str | None) -> None:
    """Validate deskmail.yaml; print each error with its line and exit 2 on errors."""
    cfg = _load(path)
    mailboxes = cfg.mailboxes
    click.echo(
        f"{path}: ok: {len(cfg.queues)} queue(s), {len(mailboxes)} mailbox(es) "
        f"({sum(1 for m in mailboxes if m.imap)} IMAP, {sum(1 for m in mailboxes if m.ingress)} ingress), "
        f"{len(cfg.organization.members)} member(s)"
    )


# ------------------------------------------------------------------ topics


@main.group("topics")
def topics_group() -> None:
    """Kafka topics."""


@topics_group.command("create")
@config_option
@bootstrap_option
@click.option("--partitions", type=int, default=None, help="Partitions per topic (default: kafka.partitions).")
def topics_create(config_path: str | None, bootstrap: str | None, partitions: int | None) -> None:
    """Create every deskmail topic that does not exist yet."""
    from services.common.bus import Kafka

    cfg = _load(config_path)
    created = Kafka(cfg, _bootstrap(bootstrap)).create_topics(partitions)
    for name in cfg.topics.values():
        click.echo(f"{name}: {'created' if name in created else 'exists'}")


REPLAY_INPUTS = {"router": "inbound", "ticketer": "commands"}


@main.command("replay")
@click.argument("stage", type=click.Choice(sorted(REPLAY_INPUTS)))
@config_option
@bootstrap_option
@click.option("--offset", type=int, default=None, help="Rewind every partition to this offset (default: the beginning).")
def replay(stage: str, config_path: str | None, bootstrap: str | None, offset: int | None) -> None:
    """Make a stage reprocess its input topic: stop the stage, run this, start it again.

    Effects are idempotent: replayed mail creates no duplicate tickets or comments.
    """
    from kafka.errors import KafkaError

    from services.common.bus import Kafka

    cfg = _load(config_path)
    topic = cfg.topics[REPLAY_INPUTS[stage]]
    group = f"{cfg.kafka.group_prefix}-{stage}"
    try:
        offsets = Kafka(cfg, _bootstrap(bootstrap)).rewind(group, topic, offset)
    except (KafkaError, ValueError) as exc:
        raise click.ClickException(
            f"cannot rewind {group} on {topic}: {exc} (is the {stage} still running? stop it first)"
        ) from None
    for partition, value in sorted(offsets.items()):
        click.echo(f"{group} {topic}[{partition}] -> {value}")


# ------------------------------------------------------------------ dead letters


@main.group("deadletters")
def deadletters_group() -> None:
    """Inspect and replay what a stage could not process."""


_dl_filters = [
    click.option("--stage", default=None, help="Only this stage (fetcher, router, ticketer, sender)."),
    click.option("--error-class", default=None, help="Only this error class, e.g. BadRecord."),
    click.option("--topic", default=None, help="Only records that came from this topic."),
]


def _with_filters(f: Any) -> Any:
    for option in reversed(_dl_filters):
        f = option(f)
    return f


@deadletters_group.command("list")
@config_option
@bootstrap_option
@_with_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def deadletters_list(config_path: str | None, bootstrap: str | None, stage: str | None,
                     error_class: str | None, topic: str | None, as_json: bool) -> None:
    """List dead letters with the reason each one was set aside."""
    from services import deadletters
    from services.common.bus import Kafka

    cfg = _load(config_path)
    letters = deadletters.select(deadletters.read(Kafka(cfg, _bootstrap(bootstrap))), stage, error_class, topic)
    for d in letters:
        if as_json:
            click.echo(json.dumps(d.summary(), ensure_ascii=False))
        else:
            click.echo(f"{d.time.isoformat()[:19]}  {d.stage:<9} {d.topic or '-'}[{d.source_partition}]@"
                       f"{d.source_offset}  {d.error_class}: {d.message}")
    if not as_json:
        click.echo(f"{len(letters)} dead letter(s)", err=True)


@deadletters_group.command("replay")
@config_option
@bootstrap_option
@_with_filters
@click.option("--yes", is_flag=True, help="Replay without asking.")
def deadletters_replay(config_path: str | None, bootstrap: str | None, stage: str | None,
                       error_class: str | None, topic: str | None, yes: bool) -> None:
    """Put dead letters' original records back on their source topics (after fixing the cause)."""
    from services import deadletters
    from services.common.bus import Kafka

    cfg = _load(config_path)
    kafka = Kafka(cfg, _bootstrap(bootstrap))
    letters = deadletters.select(deadletters.read(kafka), stage, error_class, topic)
    if not letters:
        click.echo("nothing to replay")
        return
    if not yes and not click.confirm(f"replay {len(letters)} record(s) to their source topics?"):
        raise SystemExit(1)
    producer = kafka.producer()
    try:
        count = deadletters.replay(producer, letters)
    finally:
        producer.close()
    click.echo(f"replayed {count} record(s)")


# ------------------------------------------------------------------ run


@main.command("run")
@click.argument("service", type=click.Choice(SERVICES))
@config_option
@bootstrap_option
@click.option("--metrics-port", type=int, default=None, help="Port for /metrics, /healthz, /readyz (0: any free).")
@click.option("--log-level", default="INFO", show_default=True)
def run(service: str, config_path: str | None, bootstrap: str | None, metrics_port: int | None, log_level: str) -> None:
    """Run one deskmail process (as one Kubernetes Deployment does)."""
    from services.common.runtime import DEFAULT_PORTS, Health, serve_http, setup_logging, stop_on_signals

    setup_logging(log_level.upper())
    cfg = _load(config_path)
    stop = stop_on_signals()
    health = Health()
    servers = _bootstrap(bootstrap)
    if service == "api":  # the web server serves /metrics, /healthz and /readyz itself
        from services.api.app import run_api

        run_api(cfg, stop, health, servers, port=metrics_port)
        log.info("stopped", extra={"stage": service})
        return
    port = metrics_port if metrics_port is not None else cfg.metrics.ports.get(service, DEFAULT_PORTS[service])
    server = serve_http(cfg.metrics.host, port, health)
    log.info("started", extra={"stage": service, "url": f"http://{cfg.metrics.host}:{server.server_port}/metrics"})
    if service == "fetcher":
        from services.fetcher.runner import run_fetcher

        run_fetcher(cfg, stop, health, servers)
    elif service == "router":
        from services.router.runner import run_router

        run_router(cfg, stop, health, servers)
    elif service == "ticketer":
        from services.ticketer.runner import run_ticketer

        run_ticketer(cfg, stop, health, servers)
    elif service == "sender":
        from services.sender.runner import run_sender

        run_sender(cfg, stop, health, servers)
    server.shutdown()
    log.info("stopped", extra={"stage": service})


# ------------------------------------------------------------------ up


@main.command("up")
@config_option
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default="deskmail-data", show_default=True,
              help="Without --config: the folder for the demo configuration, database, logs and sent mail.")
@click.option("--demo-ports-base", type=click.IntRange(1024, 65528), envvar="DESKMAIL_DEMO_PORTS_BASE", default=None,
              help="Without --config: use ports N..N+6 (ingress, mail sink, web, then the fetcher, router, ticketer "
                   "and sender metrics) instead of 2525, 2526, 8080 and 9101-9104. Or DESKMAIL_DEMO_PORTS_BASE.")
def up(config_path: str | None, data_dir: str, demo_ports_base: int | None) -> None:
    """Run the whole stack on this machine (local broker and SQLite unless configured).

    Without --config (and DESKMAIL_CONFIG) it runs a ready demo: it writes a demo
    configuration into --data (once; later runs reuse it), with an own-domain
    address served by the SMTP ingress and a local mail sink for outgoing mail.
    """
    from pathlib import Path

    from services.local import run_stack
    from services.localdemo import run_demo

    if config_path is None:
        raise SystemExit(run_demo(Path(data_dir), demo_ports_base))
    raise SystemExit(run_stack(_load(config_path)))


# ------------------------------------------------------------------ db


@main.group("db")
def db_group() -> None:
    """The tickets database."""


@db_group.command("migrate")
@config_option
def db_migrate(config_path: str | None) -> None:
    """Create or upgrade the tickets database schema."""
    from services.ticketer.store import TicketStore

    TicketStore(_load(config_path).database_url).migrate()
    click.echo("database is up to date")


# ------------------------------------------------------------------ tickets


@main.group("tickets")
def tickets_group() -> None:
    """Look at tickets."""


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


@tickets_group.command("list")
@config_option
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--limit", type=int, default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def tickets_list(config_path: str | None, queue: str | None, limit: int, as_json: bool) -> None:
    """List tickets, newest first."""
    from services.ticketer.store import TicketStore

    store = TicketStore(_load(config_path).database_url)
    store.migrate()
    tickets = store.list_tickets(queue=queue, limit=limit)
    for t in tickets:
        if as_json:
            click.echo(json.dumps({
                "key": t.key, "queue": t.queue, "type": t.type, "components": list(t.components),
                "summary": t.summary, "author": t.author_email, "author_name": t.author_name,
                "created": _iso(t.created_at), "comments": t.comment_count,
            }, ensure_ascii=False))
        else:
            click.echo(f"{t.key:<14} {_iso(t.created_at)[:19]}  {t.author_email:<30} {t.comment_count:>3}  {t.summary}")
    if not as_json and not tickets:
        click.echo("no tickets", err=True)


def _register_service_commands() -> None:
    """Command groups that live with their service."""
    from services.api.cli import tickets_extra
    from services.sender.cli import mailbox

    main.add_command(mailbox)
    for command in tickets_extra.commands.values():
        tickets_group.add_command(command)


_register_service_commands()

if __name__ == "__main__":
    sys.exit(main())
