"""The optional parts of the Kubernetes deployment (deploy/kubernetes/components, which
the example overlay includes): Strimzi topics and users generated from the topic
declaration, KEDA autoscaling, Prometheus Operator monitoring, the Grafana dashboard,
network policies. Rendering and schema validation (the CRDs kept in tests/deploy/crds)
are in test_manifests.py; this checks what the resources say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from tests.deploy.test_manifests import BASE, DASHBOARD, K8S, OVERLAY, REPO, RULES, _load_yaml, _of_kind, _render

pytestmark = pytest.mark.deploy

STRIMZI = K8S / "strimzi"
PROMETHEUS_RULE = K8S / "components" / "monitoring" / "prometheusrule.yaml"
STAGES = ("router", "ticketer", "sender")


def _config(path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    from services.common.config import load

    for key in _load_yaml(BASE / "secret.example.yaml")["stringData"]:
        monkeypatch.setenv(key, "not-a-real-secret")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "deskmail-test")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "not-a-real-secret")
    return load(path)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In", expression
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def _pod_labels(dep: dict[str, Any]) -> dict[str, str]:
    return dict(dep["spec"]["template"]["metadata"]["labels"])


# ---------------------------------------------------------------- generated files


@pytest.mark.parametrize("kind", ["topics", "users"])
def test_the_checked_in_strimzi_files_are_what_the_command_prints(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.cli import main

    _config(BASE / "deskmail.yaml", monkeypatch)
    done = CliRunner().invoke(main, ["topics", "manifests", "--config", str(BASE / "deskmail.yaml"), "--kind", kind])
    assert done.exit_code == 0, done.output
    assert done.output == (STRIMZI / f"{kind}.yaml").read_text(encoding="utf-8"), (
        f"deploy/kubernetes/strimzi/{kind}.yaml is out of date: run scripts/generate-manifests")


def test_every_generated_file_is_up_to_date() -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "generate-manifests"), "--check"],
                          capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert done.returncode == 0, done.stderr


def test_the_prometheus_rule_holds_exactly_the_groups_promtool_tests() -> None:
    rule = _load_yaml(PROMETHEUS_RULE)
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == _load_yaml(RULES)["groups"]
    [rendered] = _of_kind(_render("overlay"), "PrometheusRule").values()
    assert rendered["spec"]["groups"] == _load_yaml(RULES)["groups"]


def test_the_overlay_has_every_kind_of_resource() -> None:
    kinds = {d["kind"] for d in _render("overlay")}
    assert {"KafkaTopic", "KafkaUser", "ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule",
            "NetworkPolicy", "ServiceAccount"} <= kinds
    assert "deskmail-topics-create" not in _of_kind(_render("overlay"), "Job"), "Strimzi makes the topics"


# ---------------------------------------------------------------- Strimzi


def test_kafka_topics_are_the_declared_topics_of_the_overlay(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.topics import declared

    config = _config(OVERLAY / "deskmail.yaml", monkeypatch)
    topics = {d["spec"]["topicName"]: d["spec"] for d in _of_kind(_render("overlay"), "KafkaTopic").values()}
    assert topics.keys() == {spec.name for spec in declared(config)}
    for spec in declared(config):
        have = topics[spec.name]
        assert (have["partitions"], have["replicas"]) == (spec.partitions, spec.replication_factor)
        assert {k: str(v) for k, v in have["config"].items()} == dict(spec.configs)


def test_every_deployment_logs_in_as_its_own_kafka_user_with_the_operators_secret() -> None:
    docs = _render("overlay")
    users = _of_kind(docs, "KafkaUser")
    for spec in users.values():
        assert spec["spec"]["authentication"] == {"type": "scram-sha-512"}
    for name, dep in _of_kind(docs, "Deployment").items():
        env = {e["name"]: e for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
        user = env["KAFKA_SASL_USERNAME"]["value"]
        assert user == name and user in users, f"{name} logs in as {user}"
        assert env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": user, "key": "password"}
    assert {"deskmail-ingress", "deskmail-ops"} <= users.keys()


def _operations(user: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    return {(a["resource"]["type"], a["resource"].get("name", "")): set(a["operations"])
            for a in user["spec"]["authorization"]["acls"]}


def test_users_get_what_their_process_produces_and_consumes_and_nothing_else() -> None:
    users = _of_kind(_render("overlay"), "KafkaUser")
    router = _operations(users["deskmail-router"])
    assert router == {("topic", "deskmail.mail.inbound"): {"Read", "Describe"},
                      ("topic", "deskmail.ticket.commands"): {"Write", "Describe", "DescribeConfigs"},
                      ("topic", "deskmail.deadletter"): {"Write", "Describe", "DescribeConfigs"},
                      ("group", "deskmail-router"): {"Read"}}
    fetcher = _operations(users["deskmail-fetcher"])
    assert fetcher[("topic", "deskmail.fetcher.leases")] == {"Read", "Describe"}
    assert fetcher[("group", "deskmail-fetcher")] == {"Read"}
    api = _operations(users["deskmail-api"])
    for stage in STAGES:
        assert api[("group", f"deskmail-{stage}")] == {"Describe"}
    assert {"Write"} <= api[("topic", "deskmail.mail.outbound")] and {"Write"} <= api[("topic", "deskmail.mail.inbound")]
    assert "Read" in api[("topic", "deskmail.deadletter")]
    assert ("topic", "deskmail.ticket.commands") in api and "Write" not in api[("topic", "deskmail.ticket.commands")]
    assert _operations(users["deskmail-ingress"]) == {("topic", "deskmail.mail.inbound"):
                                                      {"Write", "Describe", "DescribeConfigs"}}


# ---------------------------------------------------------------- KEDA


def test_scaled_objects_follow_each_stages_group_and_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.common.stage import STAGES as SPECS, group_id

    config = _config(OVERLAY / "deskmail.yaml", monkeypatch)
    docs = _render("overlay")
    scaled = _of_kind(docs, "ScaledObject")
    auths = _of_kind(docs, "TriggerAuthentication")
    deployments = _of_kind(docs, "Deployment")
    assert scaled.keys() == {f"deskmail-{s}" for s in STAGES}
    for stage in STAGES:
        spec = scaled[f"deskmail-{stage}"]["spec"]
        assert spec["scaleTargetRef"]["name"] in deployments
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= config.kafka.partitions
        triggers = spec["triggers"]
        assert {t["metadata"]["topic"] for t in triggers} == {config.topics[k] for k in SPECS[stage].inputs}
        for trigger in triggers:
            meta = trigger["metadata"]
            assert trigger["type"] == "kafka"
            assert meta["consumerGroup"] == group_id(config, stage)
            assert meta["bootstrapServers"].split(",") == list(config.kafka.bootstrap_servers)
            assert meta["sasl"] == "scram_sha512" and meta["tls"] == "enable"
            assert int(meta["lagThreshold"]) > 0
            auth = auths[trigger["authenticationRef"]["name"]]["spec"]
            refs = {r["parameter"]: r for r in auth["secretTargetRef"]}
            assert refs["password"]["name"] == f"deskmail-{stage}" and refs["password"]["key"] == "password"
            [username] = auth["env"]
            assert username["parameter"] == "username" and username["name"] == "KAFKA_SASL_USERNAME"


# ---------------------------------------------------------------- monitoring


def test_the_service_monitor_scrapes_every_service_on_its_metrics_port() -> None:
    docs = _render("overlay")
    [monitor] = _of_kind(docs, "ServiceMonitor").values()
    endpoints = {e["port"] for e in monitor["spec"]["endpoints"]}
    for name, service in _of_kind(docs, "Service").items():
        assert _selects(monitor["spec"]["selector"], service["metadata"]["labels"]), f"{name} is not scraped"
        ports = {p["name"] for p in service["spec"]["ports"]}
        assert ports & endpoints, f"{name}: no port named {sorted(endpoints)}"


def test_the_dashboard_is_a_config_map_for_grafanas_sidecar() -> None:
    maps = [d for d in _render("overlay") if d["kind"] == "ConfigMap"
            and d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    assert [m["metadata"]["name"] for m in maps] == ["deskmail-dashboard"]
    assert json.loads(maps[0]["data"]["deskmail.json"]) == json.loads(DASHBOARD.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- network policies


def _policies() -> dict[str, dict[str, Any]]:
    return _of_kind(_render("overlay"), "NetworkPolicy")


def _selected(policy: dict[str, Any]) -> set[str]:
    return {name for name, dep in _of_kind(_render("overlay"), "Deployment").items()
            if _selects(policy["spec"]["podSelector"], _pod_labels(dep))}


def test_everything_is_denied_unless_a_policy_allows_it() -> None:
    deny = _policies()["deskmail-default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    for name, policy in _policies().items():
        assert policy["spec"]["policyTypes"] == ["Ingress"], f"{name} restricts egress"


def test_the_api_is_reachable_only_from_the_ingress_controllers_namespace() -> None:
    policy = _policies()["deskmail-api-from-ingress-controller"]
    assert _selected(policy) == {"deskmail-api"}
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    assert set(source) == {"namespaceSelector"}
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_smtp_is_reachable_only_from_the_mta_on_2525() -> None:
    policy = _policies()["deskmail-smtp-from-mta"]
    assert _selected(policy) == {"deskmail-ingress"}  # the SMTP/LMTP ingress alone
    assert _selects(policy["spec"]["podSelector"],
                    {"app.kubernetes.io/name": "deskmail", "app.kubernetes.io/component": "ingress"})
    [rule] = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 2525, "protocol": "TCP"}] and rule["from"]
    for dep in _of_kind(_render("overlay"), "Deployment").values():
        ports = {p["containerPort"] for c in dep["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
        if 2525 in ports:
            assert _selects(policy["spec"]["podSelector"], _pod_labels(dep))


def test_every_metrics_port_is_open_to_prometheus_only() -> None:
    policy = _policies()["deskmail-metrics-from-prometheus"]
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    assert set(source) == {"namespaceSelector"}
    allowed = {p["port"] for p in rule["ports"]}
    for name, dep in _of_kind(_render("overlay"), "Deployment").items():
        assert _selects(policy["spec"]["podSelector"], _pod_labels(dep)), name
        probe_port = dep["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"]
        assert probe_port in allowed, f"{name}: its metrics port {probe_port} is not open to Prometheus"
