"""`deskmail topics create|describe|diff|manifests`: the topics.

The topics are declared once (services/common/topics.py): ``create`` makes the
missing ones with their configs, ``describe`` shows the declaration beside what
the cluster has, ``diff`` exits 1 when the cluster differs (for CI or a
deploy pipeline's check), and ``manifests`` prints them (and a user per process)
as Strimzi resources (services/common/strimzi.py), without a broker."""

from __future__ import annotations

import json

import click

from services.cli.common import FAILED, bootstrap_option, broker_errors, config_option, kafka_clients, load_config


@click.group("topics")
def group() -> None:
    """Kafka topics."""


@group.command("create")
@config_option
@bootstrap_option
@click.option("--partitions", type=click.IntRange(min=1), default=None,
              help="Partitions per topic (default: kafka.partitions).")
def create(config_path: str | None, bootstrap: str | None, partitions: int | None) -> None:
    """Create every declared topic that does not exist yet, with its configs."""
    cfg = load_config(config_path)
    with broker_errors("cannot create the topics"):
        created = kafka_clients(cfg, bootstrap).create_topics(partitions)
    for name in cfg.topics.values():
        click.echo(f"{name}: {'created' if name in created else 'exists'}")


@group.command("describe")
@config_option
@bootstrap_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per topic.")
def describe(config_path: str | None, bootstrap: str | None, as_json: bool) -> None:
    """Each declared topic beside what the cluster has."""
    from services.common import topics

    cfg = load_config(config_path)
    specs = topics.declared(cfg)
    with broker_errors("cannot describe the topics"):
        actual = kafka_clients(cfg, bootstrap).describe_topics([s.name for s in specs])
    for spec in specs:
        have = actual.get(spec.name)
        if as_json:
            click.echo(json.dumps({
                "topic": spec.key, "name": spec.name, "purpose": spec.purpose,
                "declared": {"partitions": spec.partitions, "replication_factor": spec.replication_factor,
                             "configs": dict(spec.configs)},
                "actual": None if have is None else {"partitions": have.partitions,
                                                     "replication_factor": have.replication_factor,
                                                     "configs": dict(have.configs) or None},
                "differences": topics.differences(spec, have),
            }))
            continue
        state = "missing" if have is None else f"{have.partitions} partitions, replication {have.replication_factor}"
        click.echo(f"{spec.name} ({spec.purpose}): {state}")
        for name, value in spec.configs.items():
            found = "" if have is None else (have.configs.get(name) if have.configs else "not reported")
            click.echo(f"  {name} = {value}" + (f" (cluster: {found})" if have is not None and found != value else ""))


@group.command("diff")
@config_option
@bootstrap_option
def diff(config_path: str | None, bootstrap: str | None) -> None:
    """Compare the cluster's topics with their declaration; exit 1 when they differ."""
    from services.common import topics

    cfg = load_config(config_path)
    specs = topics.declared(cfg)
    with broker_errors("cannot describe the topics"):
        actual = kafka_clients(cfg, bootstrap).describe_topics([s.name for s in specs])
    found = [line for spec in specs for line in topics.differences(spec, actual.get(spec.name))]
    unreported = [s.name for s in specs if s.name in actual and not actual[s.name].configs]
    for line in found:
        click.echo(line)
    if unreported:
        click.echo(f"the broker reports no topic configs for {', '.join(unreported)}: "
                   "partitions and replication were compared, configs were not", err=True)
    if found:
        raise SystemExit(FAILED)
    click.echo("the topics match their declaration")


@group.command("manifests")
@config_option
@click.option("--namespace", default=None, help="metadata.namespace of every resource (default: none, so "
              "kubectl or kustomize sets it).")
@click.option("--cluster", default="my-cluster", show_default=True,
              help="The Strimzi Kafka resource's name (the label strimzi.io/cluster).")
@click.option("--kind", "what", type=click.Choice(["all", "topics", "users"]), default="all", show_default=True,
              help="KafkaTopics, KafkaUsers, or both.")
@click.option("--api-version", type=click.Choice(["v1", "v1beta2"]), default="v1", show_default=True,
              help="kafka.strimzi.io version: v1 for Strimzi 0.49 and later (1.x serves only it), v1beta2 before.")
def manifests(config_path: str | None, namespace: str | None, cluster: str, what: str, api_version: str) -> None:
    """Print KafkaTopic and KafkaUser resources for the Strimzi operators."""
    from services.common import strimzi

    cfg = load_config(config_path)
    version: strimzi.ApiVersion = "v1beta2" if api_version == "v1beta2" else "v1"
    if what in ("all", "topics"):
        click.echo(strimzi.dump(strimzi.topics_resources(cfg, cluster, namespace, version), strimzi.TOPICS_HEADER),
                   nl=False)
    if what == "all":
        click.echo("---")
    if what in ("all", "users"):
        click.echo(strimzi.dump(strimzi.users_resources(cfg, cluster, namespace, version), strimzi.USERS_HEADER),
                   nl=False)
