"""Strimzi resources from the topic declaration: a ``KafkaTopic`` per declared topic
and a ``KafkaUser`` per process, with the ACLs that process needs and no more.

Pure: `deskmail topics manifests` prints what ``topics`` and ``users`` return, and
deploy/kubernetes/strimzi/ holds their output for the base's deskmail.yaml (a test
keeps the two equal). Names: a topic's resource is its name in lower case with
every other character a dash (``deskmail.mail.inbound``: ``deskmail-mail-inbound``),
a user is ``<kafka.group_prefix>-<process>``; its password is in the Secret of that
name the User Operator writes (key ``password``).

ACLs (all ``allow``, literal names unless said):

- a topic a process writes (``durability``: the stages' outputs and dead letters,
  ``FETCHER_WRITES``, ``API_WRITES``): Write, Describe, and DescribeConfigs for the
  start check of its durability;
- a topic a process consumes: Read, Describe; its group ``<prefix>-<stage>``: Read;
- the fetcher: the lease topic (Read, Describe) and its group ``<prefix>-fetcher``;
- the api: Describe on every stage's group and input topics (``api/lag.py``) and
  Read on the dead-letter topic (it reads dead letters without a group);
- KEDA's lag triggers log in as the stage they scale (Read implies Describe);
- ops (the CLI: `topics create`, `replay`, `deadletters replay`): All on every
  declared topic and on the groups whose names begin with ``<prefix>-``, and
  Describe, DescribeConfigs on the cluster.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, Literal

import yaml

from services.common import durability, topics
from services.common.config import Config
from services.common.stage import STAGES, group_id

ApiVersion = Literal["v1", "v1beta2"]
API_VERSIONS: tuple[ApiVersion, ...] = ("v1", "v1beta2")
PROCESSES = ("fetcher", "ingress", "router", "ticketer", "sender", "api", "ops")
_ORDER = ("Read", "Write", "Create", "Delete", "Alter", "Describe", "DescribeConfigs", "AlterConfigs",
          "IdempotentWrite", "ClusterAction", "All")

TOPICS_HEADER = """The topics deskmail declares, for the Strimzi Topic Operator.
Written by `deskmail topics manifests --kind topics`: change deskmail.yaml and run it again."""
USERS_HEADER = """A user per deskmail process with the ACLs it needs (scram-sha-512), for the Strimzi
User Operator, which writes each one's password into a Secret of the user's name.
Written by `deskmail topics manifests --kind users`: change deskmail.yaml and run it again."""

Acl = tuple[str, str, str, str]  # resource type, name, pattern type, operation


def resource_name(topic: str) -> str:
    """A Kubernetes name (DNS-1123 label) for a topic name."""
    return re.sub(r"[^a-z0-9]+", "-", topic.lower()).strip("-")[:63].rstrip("-")


def _labels(cluster: str, component: str) -> dict[str, str]:
    return {"strimzi.io/cluster": cluster, "app.kubernetes.io/name": "deskmail",
            "app.kubernetes.io/part-of": "deskmail", "app.kubernetes.io/component": component}


def _metadata(name: str, namespace: str | None, cluster: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    meta["labels"] = _labels(cluster, component)
    return meta


def _value(text: str) -> int | str:
    return int(text) if re.fullmatch(r"-?\d+", text) else text


def topics_resources(config: Config, cluster: str, namespace: str | None = None,
                     api_version: ApiVersion = "v1") -> list[dict[str, Any]]:
    return [{
        "apiVersion": f"kafka.strimzi.io/{api_version}",
        "kind": "KafkaTopic",
        "metadata": _metadata(resource_name(spec.name), namespace, cluster, "topics"),
        "spec": {
            "topicName": spec.name,
            "partitions": spec.partitions,
            "replicas": spec.replication_factor,
            "config": {name: _value(value) for name, value in sorted(spec.configs.items())},
        },
    } for spec in topics.declared(config)]


def acls(config: Config, process: str) -> list[Acl]:
    """The ACLs of ``process`` (one of ``PROCESSES``), one operation each, in no order."""
    t = config.topics
    out: list[Acl] = []

    def on_topics(keys: Iterable[str], *operations: str) -> None:
        out.extend(("topic", t[key], "literal", op) for key in keys for op in operations)

    def on_group(name: str, *operations: str) -> None:
        out.extend(("group", name, "literal", op) for op in operations)

    stages_inputs = [key for spec in STAGES.values() for key in spec.inputs]
    if process in ("fetcher", "ingress"):
        on_topics(durability.FETCHER_WRITES, "Write", "Describe", "DescribeConfigs")
    if process == "fetcher":
        on_topics(["leases"], "Read", "Describe")
        on_group(group_id(config, "fetcher"), "Read")
    if process in STAGES:
        spec = STAGES[process]
        on_topics(spec.inputs, "Read", "Describe")
        on_topics([*spec.outputs, "deadletter"], "Write", "Describe", "DescribeConfigs")
        on_group(group_id(config, process), "Read")
    if process == "api":
        on_topics(durability.API_WRITES, "Write", "Describe", "DescribeConfigs")
        on_topics(["deadletter"], "Read", "Describe")
    if process == "api":
        on_topics(stages_inputs, "Describe")
        for stage in STAGES:
            on_group(group_id(config, stage), "Describe")
    if process == "ops":
        on_topics(t, "All")
        out.append(("group", f"{config.kafka.group_prefix}-", "prefix", "All"))
        out.extend(("cluster", "kafka-cluster", "literal", op) for op in ("Describe", "DescribeConfigs"))
    return out


def _acl_entries(found: list[Acl]) -> list[dict[str, Any]]:
    merged: dict[tuple[str, str, str], set[str]] = {}
    for kind, name, pattern, op in found:
        merged.setdefault((kind, name, pattern), set()).add(op)
    entries = []
    for (kind, name, pattern), ops in sorted(merged.items(), key=lambda item: (
            ("topic", "group", "cluster").index(item[0][0]), item[0][1])):
        resource: dict[str, Any] = {"type": kind}
        if kind != "cluster":
            resource |= {"name": name, "patternType": pattern}
        entries.append({"resource": resource, "operations": sorted(ops, key=_ORDER.index), "type": "allow"})
    return entries


def users_resources(config: Config, cluster: str, namespace: str | None = None,
                    api_version: ApiVersion = "v1") -> list[dict[str, Any]]:
    return [{
        "apiVersion": f"kafka.strimzi.io/{api_version}",
        "kind": "KafkaUser",
        "metadata": _metadata(f"{config.kafka.group_prefix}-{process}", namespace, cluster, "kafka-user"),
        "spec": {
            "authentication": {"type": "scram-sha-512"},
            "authorization": {"type": "simple", "acls": _acl_entries(acls(config, process))},
        },
    } for process in PROCESSES]


def dump(docs: list[dict[str, Any]], header: str) -> str:
    """``docs`` as one YAML stream, ``header`` as comment lines on top."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = "---\n".join(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False) for doc in docs)
    return comment + body
