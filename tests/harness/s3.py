"""A real S3-compatible server for tests: moto's server mode in its own process.

:class:`S3Server` runs ``python -m moto.server`` on a free loopback port and waits
until it answers. Buckets are fresh per test (:meth:`S3Server.bucket`); moto takes
any access key, so the tests use :data:`ACCESS_KEY` / :data:`SECRET_KEY` and the
config reads them from the environment like real credentials. Without moto (the
``test`` extra installs ``moto[server]``) :meth:`S3Server.start` raises
:class:`S3StartError` naming the package: a test that needs S3 fails, never skips.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from services.common.config import S3Blobs, Secret
from services.localbroker import free_port

ACCESS_KEY = "deskmail-test-key"
SECRET_KEY = "deskmail-test-secret-Qv93-never-shown"
REGION = "us-east-1"
START_SECONDS = 30.0


class S3StartError(RuntimeError):
    """The server could not be started (moto missing, or it did not answer)."""


class S3Server:
    """One moto server: ``start()``, ``bucket()``, ``client()``, ``settings()``, ``stop()``."""

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: Any = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if importlib.util.find_spec("moto") is None or importlib.util.find_spec("flask") is None:
            raise S3StartError("moto's server is not installed: pip install 'moto[server]' "
                               "(the test extra of pyproject.toml has it)")
        self.port = free_port()
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        finally:
            log.close()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise S3StartError(f"moto exited with {self._proc.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return
            except urllib.error.HTTPError:
                return  # it answers
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise S3StartError(f"moto did not answer on port {self.port} within {START_SECONDS:.0f} s: {self._log_tail()}")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def client(self) -> Any:
        """A boto3 client of this server, for the tests' own looks at the bucket."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            self._client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=REGION,
                                        aws_access_key_id=ACCESS_KEY, aws_secret_access_key=SECRET_KEY,
                                        config=Config(s3={"addressing_style": "path"}))
        return self._client

    def bucket(self) -> str:
        """A new, empty bucket."""
        name = f"t-{uuid.uuid4().hex}"
        self.client().create_bucket(Bucket=name)
        return name

    def settings(self, bucket: str, prefix: str = "deskmail") -> S3Blobs:
        """The resolved ``blobs.s3`` of a config that points at ``bucket`` here."""
        return S3Blobs(bucket=bucket, prefix=prefix, endpoint_url=self.endpoint_url, region=REGION,
                       access_key_id=Secret(ACCESS_KEY, "env:TEST_S3_KEY"),
                       secret_access_key=Secret(SECRET_KEY, "env:TEST_S3_SECRET"), addressing_style="path")

    def config_yaml(self, bucket: str) -> str:
        """The ``blobs:`` section for a deskmail.yaml (credentials from the environment: :meth:`env`)."""
        return (f"blobs:\n  backend: s3\n  s3:\n    bucket: {bucket}\n    endpoint_url: {self.endpoint_url}\n"
                f"    region: {REGION}\n    access_key_id: {{env: TEST_S3_KEY}}\n"
                "    secret_access_key: {env: TEST_S3_SECRET}\n")

    @staticmethod
    def env() -> dict[str, str]:
        return {"TEST_S3_KEY": ACCESS_KEY, "TEST_S3_SECRET": SECRET_KEY}

    def keys(self, bucket: str) -> list[str]:
        """Every key in ``bucket``."""
        listed = self.client().list_objects_v2(Bucket=bucket)
        return sorted(item["Key"] for item in listed.get("Contents", []))

    def uploads(self, bucket: str) -> list[str]:
        """The keys of the multipart uploads in progress in ``bucket``."""
        listed = self.client().list_multipart_uploads(Bucket=bucket)
        return sorted(item["Key"] for item in listed.get("Uploads", []))

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"
