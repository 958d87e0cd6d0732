"""`deskmail deadletters list|replay`: what a stage could not process, and putting it back."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from services.cli.common import FAILED, bootstrap_option, broker_errors, config_option, kafka_clients, load_config

_filters = [
    click.option("--stage", default=None, help="Only this stage (fetcher, router, ticketer, sender)."),
    click.option("--error-class", default=None, help="Only this error class, e.g. MalformedMail or UnknownMailbox."),
    click.option("--topic", default=None, help="Only records that came from this topic."),
]


def _with_filters(f: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(_filters):
        f = option(f)
    return f


@click.group("deadletters")
def group() -> None:
    """Inspect and replay what a stage could not process."""


@group.command("list")
@config_option
@bootstrap_option
@_with_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_dead_letters(config_path: str | None, bootstrap: str | None, stage: str | None,
          error_class: str | None, topic: str | None, as_json: bool) -> None:
    """List dead letters with the reason each one was set aside."""
    from services import deadletters

    cfg = load_config(config_path)
    with broker_errors("cannot read the dead letters"):
        letters = deadletters.select(deadletters.read(kafka_clients(cfg, bootstrap)), stage, error_class, topic)
    for d in letters:
        if as_json:
            click.echo(json.dumps(d.summary(), ensure_ascii=False))
        else:
            click.echo(f"{d.time.isoformat()[:19]}  {d.stage:<9} {d.topic or '-'}[{d.source_partition}]@"
                       f"{d.source_offset}  {d.error_class}: {d.message}")
    if not as_json:
        click.echo(f"{len(letters)} dead letter(s)", err=True)


@group.command("replay")
@config_option
@bootstrap_option
@_with_filters
@click.option("--yes", is_flag=True, help="Replay without asking.")
def replay(config_path: str | None, bootstrap: str | None, stage: str | None,
           error_class: str | None, topic: str | None, yes: bool) -> None:
    """Put dead letters' original records back on their source topics (after fixing the cause)."""
    from services import deadletters

    cfg = load_config(config_path)
    with broker_errors("cannot replay the dead letters"):
        kafka = kafka_clients(cfg, bootstrap)
        letters = deadletters.select(deadletters.read(kafka), stage, error_class, topic)
        if not letters:
            click.echo("nothing to replay")
            return
        if not yes and not click.confirm(f"replay {len(letters)} record(s) to their source topics?"):
            raise SystemExit(FAILED)
        producer = kafka.producer()
        try:
            count = deadletters.replay(producer, letters)
        finally:
            producer.close()
    click.echo(f"replayed {count} record(s)")
