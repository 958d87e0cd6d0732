"""Claim-check storage for large mail and attachments, so Kafka records stay small.

References are content addresses (``sha256:<hex>``), so storing the same bytes twice
is a no-op and a replayed record finds its blob again. The default store is a local
folder (``FolderBlobStore``, shared storage on Kubernetes); ``blobs.backend: s3`` puts
them in a bucket of an S3-compatible service instead (``S3BlobStore`` in
``services.common.blobs_s3``, with the same contracts). Every process builds its store
with ``blob_store(config)``.

Errors: ``BlobMissing`` when a reference points at nothing (or at damaged bytes);
``OSError`` when the store cannot be reached or refuses the operation (a full or
read-only folder; an S3 connection error, throttling or a 5xx, raised as
``BlobStoreUnavailable``), which every caller treats as transient.

The folder store: every write goes to a temporary file in the folder and is renamed into place
(``os.replace``), so a reader sees a whole blob or none, never a partial one. Mail too
large to hold in memory is streamed with ``writer()``: chunks go to the temporary file
and the digest is computed on the way, so the reference is known only at ``commit``.

Durability is the caller's choice. The raw mail the fetcher stores is the only
copy once the IMAP server has marked it (or the ingress has answered 250), so it is
written durably before the record that refers to it is produced: the file is fsynced
before the rename and its folder after it, so neither the bytes nor the name can be
lost to a machine crash. Attachments the router stores are derived data: the raw mail
stays in the inbound topic, so they skip the fsyncs, which cost the router about as
much as parsing the mail. A process crash loses nothing (the written bytes are in the
page cache); a machine crash can cut short attachments written in the seconds before
it, and replaying the inbound records of that window stores them again, since ``put``
rewrites a file of the wrong size. ``get`` checks the digest, so a damaged blob is
reported, never served. A process killed in the middle of a write leaves a
``.tmp-*`` file behind, which no reference points at; it is safe to delete. (On S3
an acknowledged write is durable, so ``durable`` changes nothing there.)
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol, Self

if TYPE_CHECKING:
    from services.common.config import Config

TEMP_PREFIX = ".tmp-"
_HEX = frozenset("0123456789abcdef")


class BlobMissing(Exception):
    """A reference points at nothing in the store."""


class BlobStoreUnavailable(OSError):
    """A remote store failed (connection, timeout, throttling, a 5xx, refused access).

    An ``OSError``, so every caller treats it as it treats a folder it cannot write:
    transient. The message names the operation and the key, never a credential.
    """


class BlobWriter(Protocol):
    """One blob being written in chunks: ``write`` any number of times, then ``commit`` or ``abort``.

    ``size`` and ``sha256`` describe the bytes written so far. Blocking: disk I/O.
    """

    size: int

    @property
    def sha256(self) -> str: ...

    def write(self, chunk: bytes) -> None: ...

    def commit(self, *, durable: bool = True) -> str: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    def put(self, data: bytes, *, durable: bool = True) -> str: ...

    def writer(self) -> BlobWriter: ...

    def get(self, ref: str) -> bytes: ...

    def delete(self, ref: str) -> bool: ...


def ref_for(data: bytes) -> str:
    return ref_for_sha256(hashlib.sha256(data).hexdigest())


def ref_for_sha256(hexdigest: str) -> str:
    """The reference of the bytes whose SHA-256 is ``hexdigest``, for callers that hashed them already."""
    return "sha256:" + hexdigest


def digest_of(ref: str) -> str:
    """The hex digest a reference names; BlobMissing for anything that is not a reference
    (a hostile record's ``../..`` never becomes a path or a key)."""
    scheme, _, digest = ref.partition(":")
    if scheme != "sha256" or len(digest) != 64 or not _HEX.issuperset(digest):
        raise BlobMissing(f"not a blob reference: {ref[:80]!r}")
    return digest


def blob_store(config: Config) -> BlobStore:
    """The store ``blobs.backend`` names: the folder (``blobs.path``) or the S3 bucket (``blobs.s3``)."""
    if config.blob_s3 is not None:
        from services.common.blobs_s3 import S3BlobStore  # boto3 is imported only where S3 is used

        return S3BlobStore(config.blob_s3)
    return FolderBlobStore(config.blob_path)


def _sync_folder(folder: Path) -> None:
    """Make a rename into ``folder`` durable (POSIX: the name lives in the folder's data)."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderBlobStore:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _path(self, ref: str) -> Path:
        digest = digest_of(ref)
        return self.root / digest[:2] / digest[2:4] / digest

    def put(self, data: bytes, *, durable: bool = True) -> str:
        """Store ``data`` (atomic rename; fsync of the file and its folder when ``durable``); return the reference.

        Raises OSError when the folder cannot take it.
        """
        digest = hashlib.sha256(data).hexdigest()
        ref = ref_for_sha256(digest)
        if self._present(self._path(ref), len(data), durable):
            return ref
        with FolderBlobWriter(self, digest) as writer:  # hashed already: not hashed again on the way
            writer.write(data)
            return writer.commit(durable=durable)

    def writer(self) -> FolderBlobWriter:
        """A writer streaming one blob into a temporary file of this folder. Raises OSError."""
        return FolderBlobWriter(self)

    def get(self, ref: str) -> bytes:
        """The stored bytes; raises BlobMissing when there are none or they do not match ``ref``."""
        try:
            data = self._path(ref).read_bytes()
        except FileNotFoundError:
            raise BlobMissing(f"blob {ref} is not in {self.root}") from None
        if ref_for(data) != ref:
            raise BlobMissing(f"blob {ref} in {self.root} is damaged (its bytes do not match the reference)")
        return data

    def delete(self, ref: str) -> bool:
        """Remove a blob (only the ticketer's retention of suspended mail does, for
        blobs nothing refers to any more); False when there was none. Not synced:
        a machine crash may bring the name back, which only keeps an unused blob.
        Raises OSError."""
        try:
            self._path(ref).unlink()
        except FileNotFoundError:
            return False
        return True

    def _present(self, path: Path, size: int, durable: bool) -> bool:
        """True when ``path`` holds a blob of ``size`` bytes (synced now if ``durable``: it may be derived data)."""
        try:
            if path.stat().st_size != size:
                return False  # cut short by a machine crash: written again
        except FileNotFoundError:
            return False
        if durable:
            with path.open("rb") as handle:
                os.fsync(handle.fileno())
            _sync_folder(path.parent)
        return True

    def _install(self, tmp: Path, ref: str, size: int, durable: bool) -> None:
        """Rename the finished temporary file ``tmp`` into place (or drop it: the blob is there already)."""
        path = self._path(ref)
        if self._present(path, size, durable):
            tmp.unlink(missing_ok=True)
            return
        try:
            os.replace(tmp, path)
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, path)
        if durable:
            _sync_folder(path.parent)


class FolderBlobWriter:
    """Streams one blob to ``<root>/.tmp-*``, hashing on the way; ``commit`` renames it to its address.

    Use it as a context manager (or call ``abort``): a writer left without ``commit``
    removes its temporary file. Blocking: every call does disk I/O.
    """

    def __init__(self, store: FolderBlobStore, known_sha256: str | None = None):
        """``known_sha256``: the digest of everything that will be written (``put``
        hashed it), so the bytes are not hashed a second time."""
        self._store = store
        self._known = known_sha256
        try:
            fd, tmp = tempfile.mkstemp(dir=store.root, prefix=TEMP_PREFIX)
        except FileNotFoundError:
            store.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=store.root, prefix=TEMP_PREFIX)
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._hash = hashlib.sha256() if known_sha256 is None else None
        self._done = False
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest() if self._hash is not None else str(self._known)

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        if self._hash is not None:
            self._hash.update(chunk)  # hashlib releases the GIL for large chunks
        self.size += len(chunk)

    def commit(self, *, durable: bool = True) -> str:
        """Finish the blob (fsync first when ``durable``) and return its reference. Raises OSError."""
        if self._done:
            raise RuntimeError("blob writer already finished")
        self._done = True
        ref = ref_for_sha256(self.sha256)
        try:
            self._file.flush()
            if durable:
                os.fsync(self._file.fileno())
            self._file.close()
            self._store._install(self._tmp, ref, self.size, durable)
        except BaseException:
            self._file.close()
            self._tmp.unlink(missing_ok=True)
            raise
        return ref

    def abort(self) -> None:
        """Drop what was written. Idempotent, and a no-op after ``commit``."""
        if self._done:
            return
        self._done = True
        self._file.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()
