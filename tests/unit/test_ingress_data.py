"""The ingress's DATA buffer: memory up to the inline size, the blob store beyond, nothing left behind."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from services.common.blobs import FolderBlobStore, ref_for
from services.fetcher.ingress_data import CHUNK_BYTES, Message


def files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_a_message_up_to_the_inline_size_stays_in_memory(tmp_path: Path) -> None:
    message = Message(FolderBlobStore(tmp_path), inline_max_bytes=100)
    message.add(b"x" * 100)
    assert not message.spill_due(final=True)
    assert message.raw == b"x" * 100 and message.writer is None
    message.discard()
    assert files(tmp_path) == []


def test_a_larger_message_is_spilled_in_chunks_and_committed_by_digest(tmp_path: Path) -> None:
    store = FolderBlobStore(tmp_path)
    message = Message(store, inline_max_bytes=10)
    line = b"y" * 998 + b"\r\n"
    data = b""
    while not message.spill_due():
        message.add(line)
        data += line
    assert message.size >= CHUNK_BYTES
    message.spill()
    message.add(b"end\r\n")
    assert message.spill_due(final=True) and not message.spill_due()
    message.spill()
    assert message.writer is not None
    ref = message.writer.commit()
    message.discard()  # after the commit: nothing to remove
    assert ref == ref_for(data + b"end\r\n") and store.get(ref) == data + b"end\r\n"


def test_discard_waits_for_the_operation_still_running_on_the_file(tmp_path: Path) -> None:
    message = Message(FolderBlobStore(tmp_path), inline_max_bytes=0)
    message.add(b"z" * 10)
    pending: concurrent.futures.Future[None] = concurrent.futures.Future()
    message.guard(pending)
    message.spill()
    message.discard()
    assert len(files(tmp_path)) == 1  # the temporary file is still in use
    pending.set_result(None)
    assert files(tmp_path) == []
