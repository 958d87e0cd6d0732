"""Claim-check storage for large mail and attachments, so Kafka records stay small.

References are content addresses (``sha256:<hex>``), so storing the same bytes twice
is a no-op and a replayed record finds its blob again. The default store is a local
folder (shared storage on Kubernetes); anything with ``put``/``get`` can replace it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Protocol


class BlobMissing(Exception):
    """A reference points at nothing in the store."""


class BlobStore(Protocol):
    def put(self, data: bytes) -> str: ...

    def get(self, ref: str) -> bytes: ...


def ref_for(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FolderBlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, ref: str) -> Path:
        scheme, _, digest = ref.partition(":")
        if scheme != "sha256" or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise BlobMissing(f"not a blob reference: {ref[:80]!r}")
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes) -> str:
        """Store durably (fsync, atomic rename) and return the reference."""
        ref = ref_for(data)
        path = self._path(ref)
        if path.exists():
            return ref
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    def get(self, ref: str) -> bytes:
        try:
            return self._path(ref).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"blob {ref} is not in {self.root}") from None
