"""The folder blob store: content addresses, durability on request, damage detected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from services.common import blobs
from services.common.blobs import BlobMissing, FolderBlobStore, ref_for, ref_for_sha256


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(blobs.os, "fsync", counting)
    return calls


def _file(store: FolderBlobStore, ref: str) -> Path:
    digest = ref.split(":", 1)[1]
    return store.root / digest[:2] / digest[2:4] / digest


def test_put_returns_the_content_address_and_get_reads_it_back(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    ref = store.put(b"attachment")
    assert ref == ref_for(b"attachment") == ref_for_sha256(ref.split(":", 1)[1])
    assert store.get(ref) == b"attachment"
    assert store.put(b"attachment", durable=False) == ref
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [ref.split(":", 1)[1]]  # no temp files left


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


def test_put_rewrites_a_blob_cut_short(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    ref = store.put(b"0123456789", durable=False)
    _file(store, ref).write_bytes(b"")  # what a machine crash can leave of an unsynced file
    with pytest.raises(BlobMissing, match="damaged"):
        store.get(ref)
    assert store.put(b"0123456789", durable=False) == ref
    assert store.get(ref) == b"0123456789"


def test_get_reports_missing_and_damaged_blobs(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    with pytest.raises(BlobMissing, match="is not in"):
        store.get(ref_for(b"never stored"))
    with pytest.raises(BlobMissing, match="not a blob reference"):
        store.get("sha256:../../etc/passwd")
    ref = store.put(b"abcd")
    _file(store, ref).write_bytes(b"abce")
    with pytest.raises(BlobMissing, match="damaged"):
        store.get(ref)


def test_a_streamed_blob_is_stored_under_the_digest_of_its_bytes(tmp_path: Path, fsyncs: list[int]) -> None:
    store = FolderBlobStore(tmp_path)
    chunks = [b"x" * 70_000, b"", b"tail\r\n"]
    with store.writer() as writer:
        for chunk in chunks:
            writer.write(chunk)
        assert writer.size == sum(map(len, chunks))
        ref = writer.commit()
    data = b"".join(chunks)
    assert ref == ref_for(data) and writer.sha256 == ref.split(":", 1)[1]
    assert store.get(ref) == data
    assert len(fsyncs) == 2
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [ref.split(":", 1)[1]]


def test_a_stream_of_bytes_already_stored_leaves_one_copy(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    ref = store.put(b"same mail", durable=False)
    writer = store.writer()
    writer.write(b"same mail")
    assert writer.commit() == ref
    assert store.get(ref) == b"same mail"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [ref.split(":", 1)[1]]
    with pytest.raises(RuntimeError):
        writer.commit()


def test_an_aborted_or_abandoned_stream_leaves_nothing(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path / "blobs")  # created on the first write
    writer = store.writer()
    writer.write(b"half a message")
    writer.abort()
    writer.abort()
    with pytest.raises(ValueError):
        with store.writer() as other:
            other.write(b"the connection dropped")
            raise ValueError("the client went away")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_only_durable_streams_fsync(tmp_path: Path, fsyncs: list[int]) -> None:
    store = FolderBlobStore(tmp_path)
    with store.writer() as writer:
        writer.write(b"derived")
        writer.commit(durable=False)
    assert fsyncs == []
