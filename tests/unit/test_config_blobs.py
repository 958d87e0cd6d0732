"""The `blobs:` section: the folder by default, an S3 bucket checked and resolved, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from services.cli import main
from services.common.config import ConfigError, parse_text

S3 = """\
blobs:
  backend: s3
  s3:
    bucket: deskmail-blobs
    access_key_id: {env: TEST_S3_KEY}
    secret_access_key: {file: SECRET_FILE}
"""
SECRET = "s3-secret-Kx72-never-shown"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_text(text)
    return [str(p) for p in info.value.problems]


@pytest.fixture
def secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TEST_S3_KEY", "AKIAEXAMPLE")
    path = tmp_path / "s3-secret"
    path.write_text(SECRET + "\n")
    return path


def test_the_folder_is_the_default(tmp_path: Path) -> None:
    config = parse_text("{}", str(tmp_path / "deskmail.yaml"))
    assert (config.blobs.backend, config.blob_s3, config.blob_path) == ("folder", None, tmp_path / "deskmail-data/blobs")


def test_an_s3_backend_is_resolved_with_its_secrets(secret_file: Path) -> None:
    config = parse_text(S3.replace("SECRET_FILE", str(secret_file)))
    s3 = config.blob_s3
    assert s3 is not None
    assert (s3.bucket, s3.prefix, s3.endpoint_url, s3.region, s3.addressing_style) == (
        "deskmail-blobs", "deskmail", None, None, "virtual")
    assert s3.access_key_id is not None and s3.access_key_id.reveal() == "AKIAEXAMPLE"
    assert s3.secret_access_key is not None and s3.secret_access_key.reveal() == SECRET
    assert SECRET not in repr(s3) and SECRET not in s3.describe()
    assert s3.describe() == (f"s3://deskmail-blobs/deskmail/ (virtual addressing, keys from env:TEST_S3_KEY)")


def test_an_endpoint_means_path_addressing_unless_told_otherwise() -> None:
    base = "blobs:\n  backend: s3\n  s3: {bucket: mail, endpoint_url: 'http://minio.storage:9000/', prefix: ''"
    config = parse_text(base + "}\n")
    assert config.blob_s3 is not None
    assert (config.blob_s3.endpoint_url, config.blob_s3.addressing_style, config.blob_s3.prefix) == (
        "http://minio.storage:9000", "path", "")
    assert config.blob_s3.describe() == "s3://mail/ at http://minio.storage:9000 (path addressing, the default credential chain)"
    virtual = parse_text(base + ", addressing_style: virtual}\n").blob_s3
    assert virtual is not None and virtual.addressing_style == "virtual"


@pytest.mark.parametrize(("text", "message"), [
    ("blobs:\n  backend: s3\n", "line 1: blobs: blobs.backend s3 needs blobs.s3 with at least a bucket"),
    ("blobs:\n  backend: s3\n  s3: {region: eu-west-1}\n", "line 3: blobs.s3.bucket: Field required"),
    ("blobs:\n  s3: {bucket: mail}\n", "blobs.s3 is set but blobs.backend is folder"),
    ("blobs:\n  backend: s3\n  path: /var/lib/deskmail/blobs\n  s3: {bucket: mail}\n",
     "blobs.path is set but blobs.backend is s3"),
    ("blobs:\n  backend: bucket\n", "line 2: blobs.backend: Input should be 'folder' or 's3'"),
    ("blobs:\n  backend: s3\n  s3:\n    bucket: My_Bucket\n", "line 4: blobs.s3.bucket: 'My_Bucket' is not a bucket name"),
    ("blobs:\n  backend: s3\n  s3:\n    bucket: mail\n    prefix: a/../b\n", "line 5: blobs.s3.prefix: 'a/../b'"),
    ("blobs:\n  backend: s3\n  s3:\n    bucket: mail\n    endpoint_url: minio:9000\n",
     "line 5: blobs.s3.endpoint_url: 'minio:9000' is not an http:// or https:// URL"),
    ("blobs:\n  backend: s3\n  s3:\n    bucket: mail\n    endpoint_url: http://minio:9000/mail\n",
     "endpoint_url is scheme://host[:port] only"),
    ("blobs:\n  backend: s3\n  s3:\n    bucket: mail\n    addressing_style: auto\n",
     "line 5: blobs.s3.addressing_style: Input should be 'path' or 'virtual'"),
    ("blobs:\n  backend: s3\n  s3:\n    bucket: mail\n    access_key_id: {env: TEST_S3_KEY}\n",
     "line 3: blobs.s3: blobs.s3 needs both access_key_id and secret_access_key, or neither"),
    ("blobs:\n  backend: s3\n  s3:\n    bucket: mail\n    secret_access_key: plain-text\n",
     "line 5: blobs.s3.secret_access_key"),
])
def test_bad_blob_settings_name_their_line(text: str, message: str) -> None:
    problems = _problems(text)
    assert any(message in p for p in problems), problems


def test_credentials_in_the_endpoint_url_are_refused_without_showing_them() -> None:
    [problem] = _problems("blobs:\n  backend: s3\n  s3:\n    bucket: mail\n"
                          f"    endpoint_url: http://minio:{SECRET}@minio:9000\n")
    assert "must not hold credentials" in problem and SECRET not in problem


def test_an_unset_secret_is_reported_at_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_S3_KEY", raising=False)
    problems = _problems(S3.replace("{file: SECRET_FILE}", "{env: TEST_S3_KEY}"))
    assert problems == ["line 5: blobs.s3.access_key_id: environment variable TEST_S3_KEY is not set",
                        "line 6: blobs.s3.secret_access_key: environment variable TEST_S3_KEY is not set"]


def test_config_check_reports_the_backend_never_a_secret(tmp_path: Path, secret_file: Path) -> None:
    path = tmp_path / "deskmail.yaml"
    path.write_text(S3.replace("SECRET_FILE", str(secret_file)), encoding="utf-8")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert (f"{path}: blobs: s3 s3://deskmail-blobs/deskmail/ (virtual addressing, keys from env:TEST_S3_KEY)"
            in result.stdout)
    assert SECRET not in result.output and "AKIAEXAMPLE" not in result.output
    path.write_text("{}\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert f"{path}: blobs: folder {tmp_path / 'deskmail-data' / 'blobs'}" in result.stdout
