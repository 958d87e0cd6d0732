"""The blob stores: content addresses, streaming, damage detected, nothing left behind.

The contract runs against both stores: the folder, and S3 (a real S3-compatible server,
moto in server mode, the ``s3`` fixture). Durability (fsync) is the folder's alone;
multipart uploads and the mapping of the service's failures are S3's.
"""

from __future__ import annotations

import http.server
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from services.common import blobs
from services.common.blobs import (
    BlobMissing,
    BlobStoreUnavailable,
    FolderBlobStore,
    blob_store,
    ref_for,
    ref_for_sha256,
)
from services.common.blobs_s3 import MIN_PART_BYTES, S3BlobStore
from services.common.config import parse_text
from services.localbroker import free_port
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server

PART = MIN_PART_BYTES  # the smallest part S3 takes, so a few parts stay quick


@dataclass
class Backend:
    """A store and the means to look behind it."""

    store: Any
    stored: Callable[[], list[str]]  # every name the backend holds: blobs, temporary files, uploads
    overwrite: Callable[[str, bytes], None]  # replace a blob's bytes behind the store's back

    def name(self, ref: str) -> str:
        digest = ref.split(":", 1)[1]
        if isinstance(self.store, S3BlobStore):
            return f"deskmail/{digest[:2]}/{digest[2:4]}/{digest}"
        return digest


def _folder(tmp_path: Path) -> Backend:
    store = FolderBlobStore(tmp_path / "blobs")  # created on the first write

    def overwrite(ref: str, data: bytes) -> None:
        digest = ref.split(":", 1)[1]
        (store.root / digest[:2] / digest[2:4] / digest).write_bytes(data)

    return Backend(store, lambda: sorted(p.name for p in tmp_path.rglob("*") if p.is_file()), overwrite)


def _s3(server: S3Server) -> Backend:
    bucket = server.bucket()
    store = S3BlobStore(server.settings(bucket), part_bytes=PART)
    raw = server.client()

    def overwrite(ref: str, data: bytes) -> None:
        raw.put_object(Bucket=bucket, Key=store.key(ref), Body=data)

    return Backend(store, lambda: server.keys(bucket) + [f"upload:{k}" for k in server.uploads(bucket)], overwrite)


@pytest.fixture(params=[pytest.param("folder", id="folder"),
                        pytest.param("s3", id="s3", marks=pytest.mark.integration)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "folder":
        return _folder(tmp_path)
    return _s3(request.getfixturevalue("s3"))


# ------------------------------------------------------------------ the contract, on both


def test_put_returns_the_content_address_and_get_reads_it_back(backend: Backend) -> None:
    store = backend.store
    ref = store.put(b"attachment")
    assert ref == ref_for(b"attachment") == ref_for_sha256(ref.split(":", 1)[1])
    assert store.get(ref) == b"attachment"
    assert store.put(b"attachment", durable=False) == ref
    assert backend.stored() == [backend.name(ref)]  # one copy, no temporary leftovers


def test_put_rewrites_a_blob_cut_short(backend: Backend) -> None:
    store = backend.store
    ref = store.put(b"0123456789", durable=False)
    backend.overwrite(ref, b"")  # what a machine crash can leave of an unsynced file
    with pytest.raises(BlobMissing, match="damaged"):
        store.get(ref)
    assert store.put(b"0123456789", durable=False) == ref
    assert store.get(ref) == b"0123456789"


def test_get_reports_missing_and_damaged_blobs(backend: Backend) -> None:
    store = backend.store
    with pytest.raises(BlobMissing, match="is not in"):
        store.get(ref_for(b"never stored"))
    for hostile in ("sha256:../../etc/passwd", "sha256:" + "A" * 64, "md5:" + "a" * 64, ""):
        with pytest.raises(BlobMissing, match="not a blob reference"):
            store.get(hostile)
    ref = store.put(b"abcd")
    backend.overwrite(ref, b"abce")
    with pytest.raises(BlobMissing, match="damaged"):
        store.get(ref)


def test_delete_removes_a_blob_once(backend: Backend) -> None:
    store = backend.store
    ref = store.put(b"expired raw mail")
    assert store.delete(ref) is True
    assert store.delete(ref) is False
    with pytest.raises(BlobMissing):
        store.get(ref)
    assert backend.stored() == []


def test_a_streamed_blob_is_stored_under_the_digest_of_its_bytes(backend: Backend) -> None:
    store = backend.store
    chunks = [b"x" * 70_000, b"", b"tail\r\n"]
    with store.writer() as writer:
        for chunk in chunks:
            writer.write(chunk)
        assert writer.size == sum(map(len, chunks))
        ref = writer.commit()
    data = b"".join(chunks)
    assert ref == ref_for(data) and writer.sha256 == ref.split(":", 1)[1]
    assert store.get(ref) == data
    assert backend.stored() == [backend.name(ref)]


def test_a_stream_of_several_parts_is_stored_whole(backend: Backend) -> None:
    store = backend.store
    piece = os.urandom(1024 * 1024 + 7)  # pieces that do not divide a part
    with store.writer() as writer:
        for _ in range(12):  # over two parts of 5 MiB
            writer.write(piece)
        ref = writer.commit()
    assert store.get(ref) == piece * 12
    assert backend.stored() == [backend.name(ref)]  # on S3: no upload open, no temporary object


def test_a_stream_of_bytes_already_stored_leaves_one_copy(backend: Backend) -> None:
    store = backend.store
    small = store.put(b"same mail", durable=False)
    writer = store.writer()
    writer.write(b"same mail")
    assert writer.commit() == small
    with pytest.raises(RuntimeError):
        writer.commit()
    large = os.urandom(PART + 10)
    first = store.writer()
    first.write(large)
    ref = first.commit()
    again = store.writer()
    again.write(large[:PART])
    again.write(large[PART:])
    assert again.commit() == ref
    assert store.get(small) == b"same mail" and store.get(ref) == large
    assert backend.stored() == sorted([backend.name(small), backend.name(ref)])


def test_an_aborted_or_abandoned_stream_leaves_nothing(backend: Backend) -> None:
    store = backend.store
    writer = store.writer()
    writer.write(b"half a message")
    writer.abort()
    writer.abort()
    with pytest.raises(ValueError):
        with store.writer() as other:
            other.write(os.urandom(PART + 1))  # on S3 a part is sent: the upload is open
            raise ValueError("the client went away")
    assert backend.stored() == []


def test_an_empty_stream_is_a_blob_too(backend: Backend) -> None:
    store = backend.store
    with store.writer() as writer:
        ref = writer.commit(durable=False)
    assert ref == ref_for(b"") and store.get(ref) == b""


# ------------------------------------------------------------------ the folder's durability


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(blobs.os, "fsync", counting)
    return calls


def test_only_durable_puts_fsync(tmp_path: Path, fsyncs: list[int]) -> None:
    store = FolderBlobStore(tmp_path)
    store.put(b"derived", durable=False)
    assert fsyncs == []
    store.put(b"raw mail")
    assert len(fsyncs) == 2  # the file before the rename, its folder after it


def test_durable_put_of_bytes_stored_without_fsync_syncs_them(tmp_path: Path, fsyncs: list[int]) -> None:
    store = FolderBlobStore(tmp_path)
    store.put(b"same bytes", durable=False)
    store.put(b"same bytes")
    assert len(fsyncs) == 2


def test_a_durable_stream_fsyncs_file_and_folder(tmp_path: Path, fsyncs: list[int]) -> None:
    store = FolderBlobStore(tmp_path)
    with store.writer() as writer:
        writer.write(b"raw mail")
        writer.commit()
    assert len(fsyncs) == 2


def test_only_durable_streams_fsync(tmp_path: Path, fsyncs: list[int]) -> None:
    store = FolderBlobStore(tmp_path)
    with store.writer() as writer:
        writer.write(b"derived")
        writer.commit(durable=False)
    assert fsyncs == []


# ------------------------------------------------------------------ S3: parts, keys, failures


@pytest.mark.integration
def test_a_stream_sends_full_parts_while_it_is_written(s3: S3Server) -> None:
    bucket = s3.bucket()
    store = S3BlobStore(s3.settings(bucket), part_bytes=PART)
    writer = store.writer()
    writer.write(b"a" * (PART - 1))
    assert s3.uploads(bucket) == []  # less than a part: nothing sent yet
    writer.write(b"b" * 2)
    [upload] = s3.uploads(bucket)
    assert upload.startswith("deskmail/uploads/")  # a temporary key: the digest is not known yet
    raw = s3.client()
    [listed] = raw.list_multipart_uploads(Bucket=bucket)["Uploads"]
    parts = raw.list_parts(Bucket=bucket, Key=upload, UploadId=listed["UploadId"])["Parts"]
    assert [p["Size"] for p in parts] == [PART + 1]
    writer.write(b"c" * 3)
    ref = writer.commit()
    assert store.get(ref) == b"a" * (PART - 1) + b"b" * 2 + b"c" * 3
    digest = ref.split(":", 1)[1]
    assert s3.keys(bucket) == [f"deskmail/{digest[:2]}/{digest[2:4]}/{digest}"]
    assert s3.uploads(bucket) == []


@pytest.mark.integration
def test_keys_live_under_the_prefix_or_at_the_root(s3: S3Server) -> None:
    bucket = s3.bucket()
    digest = ref_for(b"x").split(":", 1)[1]
    S3BlobStore(s3.settings(bucket, prefix="mail/prod")).put(b"x")
    S3BlobStore(s3.settings(bucket, prefix="")).put(b"x")
    assert s3.keys(bucket) == [f"{digest[:2]}/{digest[2:4]}/{digest}", f"mail/prod/{digest[:2]}/{digest[2:4]}/{digest}"]


@pytest.mark.integration
def test_a_missing_bucket_is_the_stores_failure_not_a_missing_blob(s3: S3Server) -> None:
    store = S3BlobStore(s3.settings("t-no-such-bucket"), part_bytes=PART)
    with pytest.raises(BlobStoreUnavailable, match="NoSuchBucket"):
        store.get(ref_for(b"x"))
    with pytest.raises(BlobStoreUnavailable, match="NoSuchBucket"):
        store.put(b"x")
    writer = store.writer()
    with pytest.raises(BlobStoreUnavailable):
        writer.write(os.urandom(PART))
    with pytest.raises(RuntimeError):  # a part may be lost: the writer cannot make a blob any more
        writer.commit()
    writer.abort()  # never raises: what it cannot remove is left to the lifecycle rule


@pytest.mark.integration
def test_an_unreachable_service_raises_oserror_without_its_credentials(s3: S3Server) -> None:
    settings = s3.settings("t-any-bucket")
    store = S3BlobStore(type(settings)(**{**settings.__dict__, "endpoint_url": f"http://127.0.0.1:{free_port()}"}))
    for call in (lambda: store.put(b"x"), lambda: store.get(ref_for(b"x"))):
        with pytest.raises(OSError) as caught:
            call()
        assert isinstance(caught.value, BlobStoreUnavailable)
        assert "EndpointConnectionError" in str(caught.value)
        assert SECRET_KEY not in str(caught.value) and ACCESS_KEY not in str(caught.value)


class _Throttling(http.server.BaseHTTPRequestHandler):
    """An S3 endpoint that answers every request 503 SlowDown, as S3 does under load."""

    requests = 0

    def _slow_down(self) -> None:
        type(self).requests += 1
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _slow_down

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def throttling() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Throttling)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.integration
def test_throttling_is_retried_then_raised_as_oserror(s3: S3Server, throttling: str) -> None:
    settings = s3.settings("t-any-bucket")
    store = S3BlobStore(type(settings)(**{**settings.__dict__, "endpoint_url": throttling}))
    _Throttling.requests = 0
    with pytest.raises(BlobStoreUnavailable, match=r"GetObject .* SlowDown \(HTTP 503\)"):
        store.get(ref_for(b"x"))
    assert _Throttling.requests == 3  # botocore's standard retries, then the caller's Transient


def test_the_factory_builds_the_configured_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(blob_store(parse_text("{}", str(tmp_path / "deskmail.yaml"))), FolderBlobStore)
    monkeypatch.setenv("TEST_S3_KEY", ACCESS_KEY)
    monkeypatch.setenv("TEST_S3_SECRET", SECRET_KEY)
    config = parse_text("blobs:\n  backend: s3\n  s3:\n    bucket: deskmail-blobs\n    prefix: /prod/\n"
                        "    endpoint_url: http://127.0.0.1:9/\n    region: us-east-1\n"
                        "    access_key_id: {env: TEST_S3_KEY}\n    secret_access_key: {env: TEST_S3_SECRET}\n")
    store = blob_store(config)  # builds a client; connects only when used
    assert isinstance(store, S3BlobStore)
    assert (store.bucket, store.where) == ("deskmail-blobs", "s3://deskmail-blobs/prod/")
    assert SECRET_KEY not in repr(config.blob_s3) and SECRET_KEY not in config.blob_s3.describe()  # type: ignore[union-attr]
