"""Claim-check storage for large mail and attachments, so Kafka records stay small.

References are content addresses (``sha256:<hex>``), so storing the same bytes twice
is a no-op and a replayed record finds its blob again. The default store is a local
folder (shared storage on Kubernetes); anything with ``put``/``get`` can replace it.

Durability is the caller's choice. The raw mail the fetcher stores is the only
copy once the IMAP server has marked it, so it is written with fsync before the
record that refers to it is produced. Attachments the router stores are derived
data: the raw mail stays in the inbound topic, so they skip the fsync, which cost
the router about as much as parsing the mail. A process crash loses nothing (the
written bytes are in the page cache); a machine crash can cut short attachments
written in the seconds before it, and replaying the inbound records of that
window stores them again, since ``put`` rewrites a file of the wrong size.
``get`` checks the digest, so a damaged blob is reported, never served.
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
    def put(self, data: bytes, *, durable: bool = True) -> str: ...

    def get(self, ref: str) -> bytes: ...


def ref_for(data: bytes) -> str:
    return ref_for_sha256(hashlib.sha256(data).hexdigest())


def ref_for_sha256(hexdigest: str) -> str:
    """The reference of the bytes whose SHA-256 is ``hexdigest``, for callers that hashed them already."""
    return "sha256:" + hexdigest


class FolderBlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, ref: str) -> Path:
        scheme, _, digest = ref.partition(":")
        if scheme != "sha256" or len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise BlobMissing(f"not a blob reference: {ref[:80]!r}")
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes, *, durable: bool = True) -> str:
        """Store ``data`` (atomic rename; fsync first when ``durable``) and return the reference.

        Raises OSError when the folder cannot take it.
        """
        ref = ref_for(data)
        path = self._path(ref)
        try:
            if path.stat().st_size == len(data):
                if durable:  # it may have been stored without fsync, as derived data
                    with path.open("rb") as handle:
                        os.fsync(handle.fileno())
                return ref
        except FileNotFoundError:
            pass
        try:
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                if durable:
                    handle.flush()
                    os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return ref

    def get(self, ref: str) -> bytes:
        """The stored bytes; raises BlobMissing when there are none or they do not match ``ref``."""
        try:
            data = self._path(ref).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"blob {ref} is not in {self.root}") from None
        if ref_for(data) != ref:
            raise BlobMissing(f"blob {ref} in {self.root} is damaged (its bytes do not match the reference)")
        return data
