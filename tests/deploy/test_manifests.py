"""The deployment files: Kubernetes manifests, Prometheus rules, Grafana dashboard
(the Dockerfile and the lock files: test_image.py).

Real tools, no mocks: ``kubectl kustomize`` renders the base and the example
overlay, ``kubernetes-validate`` checks every rendered object against the
Kubernetes 1.32 schemas in strict mode, ``promtool`` checks and unit-tests the
rules. Metric names in the rules and the dashboard are checked against what
``services.common.metrics`` registers, so renaming a metric (or a label) breaks
this test until the rules and the dashboard follow.

Needs (a missing one fails the test with the package to install, never skips):
``kubectl`` (or a standalone ``kustomize``) on PATH or beside the interpreter
(scripts/install-deps puts one into .venv/bin when there is none), ``promtool``
on PATH (Debian package ``prometheus``), and the PyPI package ``kubernetes-validate``.
All of it is marked ``deploy``.
"""

from __future__ import annotations

import functools
import json
import re
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
RULES = REPO / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "rules_test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "deskmail.json"
OPERATIONS = REPO / "docs" / "operations.md"
KUBERNETES_VERSION = "1.32"

SERVICES = ("fetcher", "ingress", "router", "ticketer", "sender", "api")
CONFIG_MOUNT = "/etc/deskmail"
CONFIG_FILE = f"{CONFIG_MOUNT}/deskmail.yaml"
SECRET_NAME = "deskmail-secrets"
RENDERINGS = {"base": BASE, "overlay": OVERLAY}

# Labels Prometheus adds to every scraped series (scrape job, target, Kubernetes
# discovery relabelling); rules and dashboards may group by them.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "component", "node", "service"}

pytestmark = pytest.mark.deploy


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


# ---------------------------------------------------------------- tools


def _kustomize_command() -> list[str]:
    # PATH first, then the virtualenv's bin folder, where scripts/install-deps puts kubectl.
    search = os.pathsep.join([os.environ.get("PATH", ""), str(Path(sys.executable).parent)])
    kubectl = shutil.which("kubectl", path=search)
    if kubectl:
        return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize", path=search)
    if kustomize:
        return [kustomize, "build"]
    _fail(
        "neither kubectl nor kustomize is on PATH or in the virtualenv: run scripts/install-deps (it puts "
        "kubectl 1.32 into .venv/bin), or install kubectl or a standalone kustomize; Debian's own "
        "`kubernetes-client` 1.20 is too old for the `patches:` field"
    )


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if not promtool:
        _fail("promtool is not on PATH: install the Debian package `prometheus` (apt-get install -y prometheus)")
    return promtool


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        _fail("the PyPI package kubernetes-validate is missing: pip install kubernetes-validate")
    return kubernetes_validate


@functools.cache
def _render(name: str) -> tuple[dict[str, Any], ...]:
    command = _kustomize_command() + [str(RENDERINGS[name])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        _fail(f"{' '.join(command)} failed (rc {done.returncode}):\n{done.stderr}")
    docs = tuple(d for d in yaml.safe_load_all(done.stdout) if d)
    assert docs, f"{' '.join(command)} rendered nothing"
    return docs


def _of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _component(doc: dict[str, Any]) -> str:
    return doc["metadata"]["labels"]["app.kubernetes.io/component"]


def _all_containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec["containers"]


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- kustomize + schemas


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_kustomize_renders(name: str) -> None:
    kinds = sorted({d["kind"] for d in _render(name)})
    assert {"Deployment", "Service", "ConfigMap", "Job", "PersistentVolumeClaim", "PodDisruptionBudget"} <= set(kinds)


CRDS = Path(__file__).resolve().parent / "crds"


@functools.cache
def _crd_schemas() -> dict[str, dict[str, Any]]:
    """The custom resources' schemas kept in tests/deploy/crds (index.json: release and
    source of each), by "group/version/Kind"."""
    index = json.loads((CRDS / "index.json").read_text(encoding="utf-8"))
    return {key: json.loads((CRDS / entry["file"]).read_text(encoding="utf-8")) for key, entry in index.items()}


def _crd_problems(doc: dict[str, Any]) -> list[str] | None:
    """What a custom resource breaks of its CRD's schema; None when it is no custom resource we keep.

    The API server prunes unknown fields where the schema does not preserve them, so
    such a field would be dropped silently: the check refuses it, like strict mode."""
    import jsonschema

    schema = _crd_schemas().get(f"{doc['apiVersion']}/{doc['kind']}")
    if schema is None:
        return None
    strict = _closed(schema)
    validator = jsonschema.Draft7Validator(strict)
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _closed(schema: Any) -> Any:
    """The schema with additionalProperties false wherever it lists properties and does not
    preserve unknown fields (what the API server would prune)."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get(
                "x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_every_rendered_object_validates_strictly(name: str) -> None:
    kv = _kubernetes_validate()
    problems = []
    for doc in _render(name):
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        custom = _crd_problems(doc)
        if custom is not None:
            problems.extend(f"{where}: {p}" for p in custom)
            continue
        try:
            kv.validate(doc, KUBERNETES_VERSION, strict=True)
        except kv.utils.SchemaNotFoundError:
            # kubernetes-validate skips unknown kinds (a typo in `kind:` included): fail instead.
            problems.append(f"{where}: no Kubernetes {KUBERNETES_VERSION} schema for {doc.get('apiVersion')}")
        except kv.ValidationError as exc:
            problems.append(f"{where}: {'.'.join(map(str, exc.absolute_path))}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_secret_template_validates_and_holds_no_values() -> None:
    kv = _kubernetes_validate()
    secret = _load_yaml(BASE / "secret.example.yaml")
    kv.validate(secret, KUBERNETES_VERSION, strict=True)
    assert secret["kind"] == "Secret" and secret["metadata"]["name"] == SECRET_NAME
    assert "data" not in secret
    assert all(value == "" for value in secret["stringData"].values()), "the template must not carry values"
    rendered = {(d["kind"], d["metadata"]["name"]) for d in _render("base")}
    assert ("Secret", SECRET_NAME) not in rendered, "real secrets must not be part of the kustomization"


# ---------------------------------------------------------------- what the base contains


def test_base_has_a_deployment_and_service_per_process() -> None:
    docs = _render("base")
    deployments = _of_kind(docs, "Deployment")
    service_docs = _of_kind(docs, "Service")
    assert set(deployments) == {f"deskmail-{s}" for s in SERVICES}
    for name, deployment in deployments.items():
        template_labels = deployment["spec"]["template"]["metadata"]["labels"]
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= template_labels.items(), f"{name}: selector does not match its pods"
        service = service_docs.get(name)
        assert service, f"no Service {name}"
        assert service["spec"]["selector"] == selector, f"Service {name} does not select the pods of {name}"
        main = deployment["spec"]["template"]["spec"]["containers"][0]
        container_ports = {p["name"]: p["containerPort"] for p in main["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"Service {name}: no container port {port['targetPort']}"
    api_ports = {p["name"]: p["port"] for p in service_docs["deskmail-api"]["spec"]["ports"]}
    assert api_ports.get("http") == 8080
    # the MTA delivers to the ingress's Service; the fetcher is IMAP only
    ingress_ports = {p["name"]: p["port"] for p in service_docs["deskmail-ingress"]["spec"]["ports"]}
    assert ingress_ports == {"smtp": 2525, "metrics": 9105}
    assert {p["name"] for p in service_docs["deskmail-fetcher"]["spec"]["ports"]} == {"metrics"}
    fetcher = deployments["deskmail-fetcher"]["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"] for p in fetcher["ports"]} == {"metrics"}


def test_base_is_namespace_agnostic_and_uses_the_deskmail_image() -> None:
    docs = _render("base")
    assert [d["metadata"]["name"] for d in docs if "namespace" in d["metadata"]] == []
    images = {
        c["image"]
        for d in docs if d["kind"] in ("Deployment", "Job")
        for c in _all_containers(d["spec"]["template"]["spec"])
    }
    tags = {i["newTag"] for i in _load_yaml(BASE / "kustomization.yaml")["images"] if i["name"] == "deskmail"}
    assert len(tags) == 1 and images == {f"deskmail:{tags.pop()}"}


def test_config_map_is_generated_from_the_example_config() -> None:
    docs = _render("base")
    maps = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("deskmail-config-")]
    assert len(maps) == 1, "one hashed ConfigMap deskmail-config-<hash>"
    assert maps[0]["data"]["deskmail.yaml"] == (BASE / "deskmail.yaml").read_text(encoding="utf-8")
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            names = [v["configMap"]["name"] for v in d["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
            assert names == [maps[0]["metadata"]["name"]], f"{d['metadata']['name']} mounts {names}"


def test_topics_job_migrate_job_and_blob_volume() -> None:
    docs = _render("base")
    jobs = _of_kind(docs, "Job")
    assert sorted(jobs) == ["deskmail-db-migrate", "deskmail-topics-create"]
    container = jobs["deskmail-topics-create"]["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["topics", "create"] and CONFIG_FILE in container["args"]
    migrate = jobs["deskmail-db-migrate"]["spec"]
    container = migrate["template"]["spec"]["containers"][0]
    assert container["args"][:2] == ["db", "migrate"] and CONFIG_FILE in container["args"]
    # A configuration error (2) or a database newer than the image (4) fails the Job at once.
    [rule] = migrate["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["containerName"] == container["name"]
    assert rule["onExitCodes"]["operator"] == "In" and sorted(rule["onExitCodes"]["values"]) == [2, 4]
    assert migrate["template"]["spec"]["restartPolicy"] == "Never", "podFailurePolicy needs restartPolicy Never"
    pvc = _of_kind(docs, "PersistentVolumeClaim")["deskmail-blobs"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "every process on any node shares the blob folder"


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_only_the_migrate_job_migrates(name: str) -> None:
    """The Deployments never change the schema: their pods wait for the Job."""
    for dep_name, dep in _of_kind(_render(name), "Deployment").items():
        spec = dep["spec"]["template"]["spec"]
        assert not spec.get("initContainers"), f"{dep_name} has init containers"
        for container in _all_containers(spec):
            assert "migrate" not in container.get("args", []), f"{dep_name}: {container['name']} migrates"


def test_an_upgrade_can_apply_config_topics_and_migration_first() -> None:
    """docs/operations.md "Upgrade" applies these by component label before the Deployments."""
    docs = _render("overlay")
    first = {d["kind"] for d in docs if _component_label(d) in ("config", "topics", "db-migrate")}
    assert first == {"ConfigMap", "Job", "KafkaTopic"}  # Strimzi makes the topics: no topics Job there
    for process in SERVICES:
        kinds = {d["kind"] for d in docs if _component_label(d) == process}
        assert "Deployment" in kinds, f"no Deployment labelled {process}"
    assert "app.kubernetes.io/component in (config,topics,db-migrate)" in OPERATIONS.read_text(encoding="utf-8")


def _component_label(doc: dict[str, Any]) -> str | None:
    return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")


def test_disruption_budgets_cover_every_scaled_process_and_keep_a_fetcher_and_an_ingress() -> None:
    docs = _render("base")
    deployments = _of_kind(docs, "Deployment")
    covered = {}
    for name, pdb in _of_kind(docs, "PodDisruptionBudget").items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [d for d, dep in deployments.items()
                   if selector.items() <= dep["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matched) == 1, f"PodDisruptionBudget {name} selects {matched}"
        covered[matched[0]] = pdb["spec"]
    assert covered.keys() == {f"deskmail-{s}" for s in SERVICES}
    # the fetcher's mailboxes move to the replica left, and the MTA needs an ingress: never drain the last one
    kept = ("deskmail-fetcher", "deskmail-ingress")
    for name in kept:
        assert covered[name] == {"minAvailable": 1, "selector": covered[name]["selector"]}, name
    assert all(spec.get("maxUnavailable") == 1 for d, spec in covered.items() if d not in kept)


# ---------------------------------------------------------------- every Deployment


def _pod_problems(spec: dict[str, Any]) -> list[str]:
    """What a deskmail pod (Deployment or Job) lacks: non-root, resources, a locked-down container."""
    problems = []
    pod_security = spec.get("securityContext", {})
    if pod_security.get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot is not true")
    if pod_security.get("runAsUser", 0) == 0:
        problems.append("pod runs as uid 0")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for container in _all_containers(spec):
        name = container["name"]
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(section, {}):
                    problems.append(f"{name}: no resources.{section}.{resource}")
        security = container.get("securityContext", {})
        if security.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{name}: root filesystem is writable")
        if security.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in security.get("capabilities", {}).get("drop", []):
            problems.append(f"{name}: capabilities not dropped (ALL)")
        if security.get("runAsNonRoot", pod_security.get("runAsNonRoot")) is not True:
            problems.append(f"{name}: may run as root")
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
            problems.append(f"{name}: no emptyDir on /tmp (the root filesystem is read-only)")
        if "configMap" not in volumes.get(mounts.get(CONFIG_MOUNT, ""), {}):
            problems.append(f"{name}: config not mounted at {CONFIG_MOUNT}")
        if {"secretRef": {"name": SECRET_NAME}} not in container.get("envFrom", []):
            problems.append(f"{name}: does not load the Secret {SECRET_NAME}")
        args = container.get("args", [])
        if "--config" not in args or args[args.index("--config") + 1] != CONFIG_FILE:
            problems.append(f"{name}: no --config {CONFIG_FILE}")
    return problems


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_jobs_are_locked_down(name: str) -> None:
    jobs = _of_kind(_render(name), "Job")
    problems = [f"{job}: {p}" for job, doc in jobs.items() for p in _pod_problems(doc["spec"]["template"]["spec"])]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_deployments_have_probes_resources_and_security(name: str) -> None:
    from services.common.runtime import DEFAULT_PORTS

    problems: list[str] = []
    for dep_name, dep in _of_kind(_render(name), "Deployment").items():
        service = _component(dep)
        port = DEFAULT_PORTS[service]
        template = dep["spec"]["template"]
        spec = template["spec"]

        def check(ok: bool, what: str) -> None:
            if not ok:
                problems.append(f"{dep_name}: {what}")

        problems.extend(f"{dep_name}: {p}" for p in _pod_problems(spec))
        check(spec.get("terminationGracePeriodSeconds", 30) >= 60,
              "terminationGracePeriodSeconds < 60 (SIGTERM drains)")
        annotations = template["metadata"].get("annotations", {})
        check(annotations.get("prometheus.io/scrape") == "true", "no prometheus.io/scrape annotation")
        check(annotations.get("prometheus.io/port") == str(port), f"prometheus.io/port is not {port}")
        check(annotations.get("prometheus.io/path") == "/metrics", "prometheus.io/path is not /metrics")

        main = spec["containers"][0]
        args = main["args"]
        check(args[:2] == ["run", service], f"args {args} do not run `deskmail run {service}`")
        check("--metrics-port" in args and args[args.index("--metrics-port") + 1] == str(port),
              f"--metrics-port is not {port}")
        ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
        check(spec.get("serviceAccountName") == "deskmail", "does not run as the ServiceAccount deskmail")
        check(spec.get("automountServiceAccountToken") is False, "mounts a ServiceAccount token")
        spread = {c["topologyKey"]: c for c in spec.get("topologySpreadConstraints", [])}
        check({"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= spread.keys(),
              "no topology spread over nodes and zones (it may run more than one replica)")
        for constraint in spread.values():
            check(constraint["labelSelector"]["matchLabels"].items() <= template["metadata"]["labels"].items(),
                  "a topology spread constraint does not select its own pods")
        for probe_name, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz"),
                                 ("startupProbe", "/healthz")):
            probe = main.get(probe_name, {}).get("httpGet")
            if not probe:
                check(False, f"no {probe_name}")
                continue
            check(probe["path"] == path, f"{probe_name} path is {probe['path']}, not {path}")
            check(ports.get(probe["port"], probe["port"]) == port, f"{probe_name} does not probe port {port}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_fetcher_runs_two_replicas_rolled_with_a_surge_and_spread_over_nodes(name: str) -> None:
    fetcher = _of_kind(_render(name), "Deployment")["deskmail-fetcher"]
    assert fetcher["spec"]["replicas"] == 2
    # the new pod joins the lease group before an old one gives its mailboxes back
    assert fetcher["spec"]["strategy"] == {"type": "RollingUpdate",
                                           "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pods = fetcher["spec"]["template"]
    spread = {c["topologyKey"]: c for c in pods["spec"]["topologySpreadConstraints"]}
    assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= spread.keys()
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1 and constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"]["matchLabels"].items() <= pods["metadata"]["labels"].items()
    # SIGTERM drains every mailbox's batch: twice the IMAP timeout, the ack wait, then leaving the group
    from services.common.config import FetcherSettings
    from services.fetcher.worker import stop_seconds

    settings = FetcherSettings(**_load_yaml(BASE / "deskmail.yaml").get("fetcher", {}))
    assert pods["spec"]["terminationGracePeriodSeconds"] > stop_seconds(settings)


@pytest.mark.parametrize("name", sorted(RENDERINGS))
def test_ingress_runs_two_replicas_that_drain_before_the_kubelet_kills_them(name: str) -> None:
    ingress = _of_kind(_render(name), "Deployment")["deskmail-ingress"]
    assert ingress["spec"]["replicas"] == 2
    assert ingress["spec"]["strategy"] == {"type": "RollingUpdate",
                                           "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pods = ingress["spec"]["template"]
    spread = {c["topologyKey"]: c for c in pods["spec"]["topologySpreadConstraints"]}
    assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= spread.keys()
    for constraint in spread.values():
        assert constraint["labelSelector"]["matchLabels"].items() <= pods["metadata"]["labels"].items()
    main = pods["spec"]["containers"][0]
    # the endpoint goes first (preStop), then SIGTERM drains within drain_seconds and the goodbye
    pre_stop = main["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pre_stop >= 5
    from services.common.config import IngressSettings
    from services.fetcher.ingress_data import GOODBYE_SECONDS

    settings = IngressSettings(**_load_yaml(BASE / "deskmail.yaml").get("ingress", {}))
    assert pods["spec"]["terminationGracePeriodSeconds"] > pre_stop + settings.drain_seconds + GOODBYE_SECONDS
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports["smtp"] == settings.listen.port
    # STARTTLS: the certificate comes from a Secret, mounted read-only
    volumes = {v["name"]: v for v in pods["spec"]["volumes"]}
    mounts = {m["name"]: m for m in main["volumeMounts"]}
    tls = next(v for v in volumes.values() if v.get("secret", {}).get("secretName") == "deskmail-ingress-tls")
    assert mounts[tls["name"]]["readOnly"] is True
    assert f"tls_cert: {mounts[tls['name']]['mountPath']}/tls.crt" in (BASE / "deskmail.yaml").read_text()


def test_processes_mount_the_blob_folder_of_the_config() -> None:
    blob_path = _load_yaml(BASE / "deskmail.yaml")["blobs"]["path"]
    for name, dep in _of_kind(_render("base"), "Deployment").items():
        spec = dep["spec"]["template"]["spec"]
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"]
                  for v in spec["volumes"] if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in spec["containers"][0]["volumeMounts"]}
        assert claims.get(mounts.get(blob_path, "")) == "deskmail-blobs", f"{name} does not mount blobs at {blob_path}"


# ---------------------------------------------------------------- the example overlay


def test_overlay_sets_namespace_image_replicas_and_config() -> None:
    docs = _render("overlay")
    namespace = _load_yaml(OVERLAY / "kustomization.yaml")["namespace"]
    assert _of_kind(docs, "Namespace").keys() == {namespace}
    for d in docs:
        if d["kind"] != "Namespace":
            where = f"{d['kind']}/{d['metadata']['name']}"
            assert d["metadata"].get("namespace") == namespace, f"{where} is not in {namespace}"
    image = next(i for i in _load_yaml(OVERLAY / "kustomization.yaml")["images"] if i["name"] == "deskmail")
    deployments = _of_kind(docs, "Deployment")
    for dep in deployments.values():
        for container in _all_containers(dep["spec"]["template"]["spec"]):
            assert container["image"] == f"{image['newName']}:{image['newTag']}"
    assert deployments["deskmail-router"]["spec"]["replicas"] == 2
    assert deployments["deskmail-ticketer"]["spec"]["replicas"] == 2
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("deskmail-config-"))
    assert config["data"]["deskmail.yaml"] == (OVERLAY / "deskmail.yaml").read_text(encoding="utf-8")
    base_config = next(d for d in _render("base") if d["kind"] == "ConfigMap")
    assert config["metadata"]["name"] != base_config["metadata"]["name"], "a new config must roll the pods"


# ---------------------------------------------------------------- the example configs


def _env_refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        if set(node) == {"env"}:
            return {node["env"]}
        return set().union(*(_env_refs(v) for v in node.values())) if node else set()
    if isinstance(node, list):
        return set().union(*(_env_refs(v) for v in node)) if node else set()
    return set()


@pytest.mark.parametrize("path", [BASE / "deskmail.yaml", OVERLAY / "deskmail.yaml"], ids=["base", "overlay"])
def test_example_config_is_valid_and_its_secrets_are_in_the_template(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.common.config import ConfigError, parse_text

    secret_keys = set(_load_yaml(BASE / "secret.example.yaml")["stringData"])
    # Variables a rendering sets itself (components/strimzi: each process's Kafka user).
    rendering = "base" if path.parent == BASE else "overlay"
    own = {e["name"] for d in _of_kind(_render(rendering), "Deployment").values()
           for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
    refs = _env_refs(_load_yaml(path))
    assert refs, "the example should show {env: NAME} secret references"
    assert refs <= secret_keys | own, (f"{path.name} needs {sorted(refs - secret_keys - own)}, missing from "
                                       "secret.example.yaml")
    for key in secret_keys | own:
        monkeypatch.setenv(key, "not-a-real-secret")
    try:
        cfg = parse_text(path.read_text(encoding="utf-8"), str(path))
    except ConfigError as exc:
        _fail("\n".join(f"{path}: {p}" for p in exc.problems))
    assert cfg.database_url.startswith("postgresql"), "Kubernetes runs on PostgreSQL"
    assert cfg.kafka.bootstrap_servers, "Kubernetes needs kafka.bootstrap_servers"
    assert str(cfg.blob_path) == "/var/lib/deskmail/blobs"
    assert cfg.metrics.host == "0.0.0.0" and cfg.ingress.listen.host == "0.0.0.0"
    # The Deployments pass --metrics-port; a metrics.ports entry would be ignored there.
    assert not cfg.metrics.ports
    # Published beyond loopback, the api needs sign-in: `deskmail run api` refuses mode none there.
    from services.api.context import auth_refusal

    assert cfg.api.auth.mode != "none" and auth_refusal(cfg) is None


# ---------------------------------------------------------------- Prometheus rules


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass() -> None:
    done = subprocess.run([_promtool(), "test", "rules", str(RULES_TEST)], capture_output=True, text=True,
                          timeout=120, cwd=RULES_TEST.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(RULES)["groups"] for rule in group["rules"]]


REQUIRED_ALERTS = {
    "DeskmailProcessDown", "DeskmailMailboxDown", "DeskmailMailboxStale", "DeskmailDeadLetters",
    "DeskmailConsumerLagHigh", "DeskmailConsumerLagGrowing", "DeskmailStageRetrying", "DeskmailRejectionSpike",
    "DeskmailOutgoingMailFailing", "DeskmailOutgoingMailRetrying", "DeskmailIngressDeferring",
}


def test_every_alert_is_tested_firing_and_not_firing_and_has_a_runbook() -> None:
    alerts = {r["alert"]: r for r in _rules() if "alert" in r}
    assert REQUIRED_ALERTS <= alerts.keys()
    fired: set[str] = set()
    silent: set[str] = set()
    for case in _load_yaml(RULES_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alerts.keys() - fired == set(), "alerts never tested firing"
    assert alerts.keys() - silent == set(), "alerts never tested staying silent"
    headings = {m.group(1) for m in re.finditer(r"^#+\s+(\w+)\s*$", OPERATIONS.read_text(encoding="utf-8"), re.M)}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert {"summary", "description", "runbook"} <= rule["annotations"].keys(), name
        assert f"docs/operations.md#{name.lower()}" in rule["annotations"]["runbook"], name
        assert name in headings, f"docs/operations.md has no section `{name}`"


def _heading_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown text (fenced code skipped)."""
    anchors: set[str] = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else re.match(r"#{1,6}\s+(.*?)\s*$", line)
        if match:
            slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
            anchor, n = slug, 0
            while anchor in anchors:
                n += 1
                anchor = f"{slug}-{n}"
            anchors.add(anchor)
    return anchors


def test_runbook_and_document_links_point_to_headings() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    anchors = _heading_anchors(text)
    links = {(f"rules.yml ({r.get('alert') or r.get('record')})", a)
             for r in _rules() for value in r.get("annotations", {}).values()
             for a in re.findall(r"docs/operations\.md#([\w-]+)", value)}
    links |= {("docs/operations.md", a) for a in re.findall(r"\]\(#([\w-]+)\)", text)}
    assert links
    missing = sorted(f"{where}: #{anchor}" for where, anchor in links if anchor not in anchors)
    assert not missing, "links to no heading of docs/operations.md:\n" + "\n".join(missing)


# ---------------------------------------------------------------- metric names


@functools.cache
def _exported() -> dict[str, frozenset[str]]:
    """Every series name services.common.metrics exposes, with the labels it carries."""
    from prometheus_client.metrics import MetricWrapperBase

    import services.common.metrics as metrics

    suffixes = {
        "counter": ("_total", "_created"),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
    }
    names: dict[str, frozenset[str]] = {}
    for obj in vars(metrics).values():
        if isinstance(obj, MetricWrapperBase):
            for suffix in suffixes[str(obj._type)]:
                extra = {"le"} if suffix == "_bucket" else set()
                names[obj._name + suffix] = frozenset(obj._labelnames) | extra
    assert names, "services.common.metrics registers no metric"
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENT = re.compile(r"(?<![\w:.$])[A-Za-z_:][\w:]*")
_SELECTOR = re.compile(r"(?<![\w:])([A-Za-z_:][\w:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")


def _check_promql(expr: str, where: str, recorded: set[str]) -> list[str]:
    """Names and labels a PromQL expression uses that deskmail does not export."""
    exported = _exported()
    all_labels = set().union(*exported.values()) | TARGET_LABELS
    problems = []
    plain = _VARIABLE.sub("", _STRING.sub('""', expr))
    for ident in _IDENT.findall(plain):
        if ":" in ident and ident not in recorded:
            problems.append(f"{where}: {ident} is not a recording rule in rules.yml")
        elif ident.startswith("deskmail_") and ident not in exported:
            problems.append(f"{where}: {ident} is not exported by services.common.metrics")
    for metric, matchers in _SELECTOR.findall(_STRING.sub('""', expr)):
        if metric in exported:
            for label in _MATCHER.findall(matchers):
                if label not in exported[metric] | TARGET_LABELS:
                    problems.append(f"{where}: {metric} has no label {label}")
    for group in _GROUPING.findall(plain):
        for label in filter(None, (part.strip() for part in group.split(","))):
            if label not in all_labels:
                problems.append(f"{where}: no deskmail metric has a label {label}")
    return problems


def _recorded() -> set[str]:
    return {r["record"] for r in _rules() if "record" in r}


def test_rules_use_only_exported_metrics_and_labels() -> None:
    recorded = _recorded()
    problems = []
    for rule in _rules():
        problems += _check_promql(rule["expr"], str(rule.get("alert") or rule.get("record")), recorded)
    for name in recorded:
        # level:metric:operations, the metric without its _total/_bucket suffix
        metric = name.split(":")[1]
        if not any(metric + suffix in _exported() for suffix in ("", "_total", "_bucket")):
            problems.append(f"recording rule {name}: {metric} is not a deskmail metric")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- Grafana dashboard


@functools.cache
def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _panels() -> list[dict[str, Any]]:
    panels = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows keep their panels inside
    return panels


def _targets() -> list[tuple[str, dict[str, Any]]]:
    return [(p["title"], t) for p in _panels() for t in p.get("targets", [])]


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    rows = [p["title"] for p in _panels() if p["type"] == "row"]
    assert rows == ["Intake", "Pipeline", "Outcomes", "Outgoing"]
    ids = [p["id"] for p in _panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels():
        if panel["type"] == "row":
            continue
        assert panel.get("targets"), f"panel {panel['title']} has no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, f"panel {panel['title']} is wider than the dashboard"
    cells = set()
    for panel in _panels():
        pos = panel["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']} overlaps another"
                cells.add((x, y))


def test_dashboard_uses_only_exported_metrics_and_labels() -> None:
    problems = []
    used: set[str] = set()
    for title, target in _targets():
        expr = target["expr"]
        problems += _check_promql(expr, f"panel {title!r}", set())
        used |= set(_IDENT.findall(_VARIABLE.sub("", expr)))
        grouped = {label.strip() for group in _GROUPING.findall(expr) for label in group.split(",")}
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            if label not in grouped:
                problems.append(f"panel {title!r}: legend uses {label}, which the query aggregates away")
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((\w+)(?:\{.*\})?,\s*(\w+)\)", query)
            assert match, f"variable {variable['name']}: {query}"
            metric, label = match.groups()
            if metric not in _exported():
                problems.append(f"variable {variable['name']}: {metric} is not exported")
            elif label not in _exported()[metric] | TARGET_LABELS:
                problems.append(f"variable {variable['name']}: {metric} has no label {label}")
    assert not problems, "\n".join(problems)
    wanted = {
        "deskmail_fetcher_messages_total", "deskmail_fetcher_mailbox_up", "deskmail_fetcher_bytes_total",
        "deskmail_bus_records_processed_total", "deskmail_bus_batch_seconds_bucket",
        "deskmail_consumer_group_lag_records", "deskmail_bus_retries_total", "deskmail_bus_deadletters_total",
        "deskmail_mail_to_ticket_seconds_bucket",
        "deskmail_bus_paused",
        "deskmail_router_commands_total", "deskmail_router_rejections_total",
        "deskmail_ticketer_commands_applied_total", "deskmail_ticketer_apply_seconds_bucket",
        "deskmail_fetcher_ingress_sessions_total", "deskmail_sender_mails_total",
        "deskmail_sender_send_seconds_bucket", "deskmail_sender_smtp_errors_total",
    }
    assert wanted - used == set(), "the dashboard lost a panel"


def test_dashboard_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses every panel query (variables filled in as Grafana would)."""
    values = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
    rules = []
    for index, (title, target) in enumerate(_targets()):
        expr = target["expr"]
        for variable, value in values.items():
            expr = expr.replace(variable, value)
        expr = _VARIABLE.sub(".*", expr)
        rules.append({"record": f"dashboard:panel_{index}:query", "expr": expr, "labels": {"panel": title}})
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    done = subprocess.run([_promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
