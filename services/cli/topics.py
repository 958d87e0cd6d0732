"""`deskmail topics create` and `deskmail replay`: the topics and where a stage reads them."""

from __future__ import annotations

import click

from services.cli.common import bootstrap_option, broker_errors, config_option, fail, kafka_clients, load_config

# The stages whose effects are idempotent, so reprocessing their input changes
# nothing already applied. The sender is not among them: replaying its input
# would send mail again.
REPLAY_INPUTS = {"router": "inbound", "ticketer": "commands"}


@click.group("topics")
def group() -> None:
    """Kafka topics."""


@group.command("create")
@config_option
@bootstrap_option
@click.option("--partitions", type=click.IntRange(min=1), default=None,
              help="Partitions per topic (default: kafka.partitions).")
def create(config_path: str | None, bootstrap: str | None, partitions: int | None) -> None:
    """Create every deskmail topic that does not exist yet."""
    cfg = load_config(config_path)
    with broker_errors("cannot create the topics"):
        created = kafka_clients(cfg, bootstrap).create_topics(partitions)
    for name in cfg.topics.values():
        click.echo(f"{name}: {'created' if name in created else 'exists'}")


@click.command("replay")
@click.argument("stage", type=click.Choice(sorted(REPLAY_INPUTS)))
@config_option
@bootstrap_option
@click.option("--offset", type=click.IntRange(min=0), default=None,
              help="Rewind every partition to this offset (default: the beginning).")
def replay(stage: str, config_path: str | None, bootstrap: str | None, offset: int | None) -> None:
    """Make a stage reprocess its input topic: stop the stage, run this, start it again.

    Effects are idempotent: replayed mail creates no duplicate tickets or comments.
    """
    from kafka.errors import KafkaConnectionError, KafkaError, KafkaTimeoutError

    cfg = load_config(config_path)
    topic = cfg.topics[REPLAY_INPUTS[stage]]
    group_id = f"{cfg.kafka.group_prefix}-{stage}"
    with broker_errors(f"cannot rewind {group_id}"):
        try:
            offsets = kafka_clients(cfg, bootstrap).rewind(group_id, topic, offset)
        except (KafkaConnectionError, KafkaTimeoutError):
            raise  # unreachable, not refused: exit 3 below
        except (KafkaError, ValueError) as exc:
            fail(f"cannot rewind {group_id} on {topic}: {exc} (is the {stage} still running? stop it first)")
    for partition, value in sorted(offsets.items()):
        click.echo(f"{group_id} {topic}[{partition}] -> {value}")
