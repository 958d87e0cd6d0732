"""Runs real deskmail processes (`deskmail run SERVICE`) for end-to-end tests."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from services.common.config import Config, parse_text
from services.localbroker import free_port

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]


def wait_for(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class Stack:
    """The deskmail processes for one test, each a subprocess with its own log file."""

    def __init__(self, config_text: str, workdir: Path, bootstrap: str, env: dict[str, str] | None = None):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "deskmail.yaml"
        self.config_path.write_text(config_text)
        self.bootstrap = bootstrap
        self.env = {**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"}
        self.config: Config = self._parse(config_text)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def _parse(self, text: str) -> Config:
        saved = dict(os.environ)
        os.environ.update(self.env)
        try:
            cfg = parse_text(text, str(self.config_path))
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return cfg

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "services.cli", *args], cwd=REPO, env=self.env, text=True,
            capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"deskmail {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def create_topics(self) -> None:
        self.cli("topics", "create", "--config", str(self.config_path), "--bootstrap", self.bootstrap)

    def migrate(self) -> None:
        """`deskmail db migrate`, as the migrate Job does before the processes start."""
        self.cli("db", "migrate", "--config", str(self.config_path))

    def start(self, *services: str) -> None:
        """Start ``services`` and wait until each is ready. The ticketer and the api
        wait for the schema, so the database is migrated first."""
        if {"ticketer", "api"} & set(services):
            self.migrate()
        for name in services:
            self.launch(name)
        for name in services:
            self.wait_ready(name)

    def launch(self, name: str, service: str | None = None, python_args: Sequence[str] = ()) -> None:
        """Start `deskmail run SERVICE` under ``name`` (default: the service's own), with its
        own metrics port and log file, so one service can run as several replicas.
        ``python_args`` go to the interpreter before ``-m services.cli`` (a profiler:
        ``("-m", "cProfile", "-o", FILE)``)."""
        self.ports.setdefault(name, free_port())
        log = open(self.log_path(name), "ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, *python_args, "-m", "services.cli", "run", service or name,
             "--config", str(self.config_path), "--bootstrap", self.bootstrap, "--metrics-port", str(self.ports[name])],
            cwd=REPO, env=self.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
        )
        log.close()

    def wait_ready(self, name: str) -> None:
        wait_for(lambda: self._ready(name), 60, f"{name} to be ready\n{self.log(name)[-3000:]}")

    def _ready(self, name: str) -> bool:
        proc = self.procs[name]
        if proc.poll() is not None:
            raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def log_path(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    def log(self, name: str) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace") if path.exists() else ""

    def metric(self, name: str, metric: str, **labels: str) -> float:
        """Sum of one metric's samples on a service's /metrics whose labels include ``labels``."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports[name]}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            match = re.match(rf"^{re.escape(metric)}(\{{(.*)\}})? (\S+)$", line)
            if not match:
                continue
            found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                total += float(match.group(3))
        return total

    def signal(self, name: str, sig: int) -> int:
        proc = self.procs[name]
        proc.send_signal(sig)
        return proc.wait(timeout=60)

    def stop(self) -> dict[str, int]:
        codes: dict[str, int] = {}
        for name, proc in self.procs.items():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        self.procs.clear()
        return codes
