"""Blobs in a bucket of an S3-compatible service (AWS S3, MinIO, Ceph RGW): the one module that imports boto3.

The same contracts as the folder store (``services.common.blobs``): a blob's key is its
content address, ``<prefix>/ab/cd/<sha256 hex>``, so ``put`` of bytes already stored is
one HEAD; ``get`` checks the digest, so damaged bytes are reported (``BlobMissing``),
never served; a reader sees a whole object or none, since S3 makes an object visible
only once its upload has finished.

``durable`` changes nothing here: S3 acknowledges a PUT (and the completion of a
multipart upload) only once the object is stored durably, so every write is what a
durable write is to the folder store.

Streaming (``writer()``): the key is known only when the last byte has been hashed,
so the bytes go under a temporary key, ``<prefix>/uploads/<random>``. Chunks are
buffered up to ``part_bytes`` (8 MiB) and each full buffer is sent as one part of a
multipart upload, so memory stays at one part whatever the blob's size and the upload
runs while the mail arrives. ``commit`` sends the last part, completes the upload and
copies the object to its content key on the server (CopyObject: no byte passes through
deskmail again), then deletes the temporary object. A blob that never filled one part
is sent with one PUT to its content key at ``commit``, with no temporary key at all.
``abort`` aborts the multipart upload (or deletes the temporary object). A process
killed in the middle leaves an incomplete multipart upload or an object under
``uploads/``, which no reference points at: a lifecycle rule of the bucket removes them
(docs/operations.md, "Blobs in S3").

Errors: a missing key is ``BlobMissing``; anything else the service or the network does
(connection refused, timeouts, throttling, 5xx, refused access, a missing bucket) is
``BlobStoreUnavailable``, an ``OSError``, which every caller treats as transient.
botocore retries each call itself first (standard mode: 3 attempts with backoff, which
absorbs S3's SlowDown), and every attempt is bounded by ``CONNECT_TIMEOUT`` and
``READ_TIMEOUT``, so a call never blocks longer than about a minute. Messages name
the operation, the bucket and the key, never a credential.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import boto3
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError

from services.common.blobs import BlobMissing, BlobStoreUnavailable, digest_of, ref_for, ref_for_sha256
from services.common.config import S3Blobs

log = logging.getLogger("deskmail.blobs")

PART_BYTES = 8 * 1024 * 1024
MIN_PART_BYTES = 5 * 1024 * 1024  # S3 refuses a smaller part, unless it is the last
UPLOADS = "uploads"  # the folder of temporary keys, under the prefix
CONNECT_TIMEOUT = 5.0  # seconds, per attempt
READ_TIMEOUT = 20.0  # seconds without a byte from the service, per attempt
ATTEMPTS = 3  # per call, botocore's own retries included
CONNECTIONS = 20  # the api serves downloads from a pool of threads


def client(settings: S3Blobs) -> Any:
    """The boto3 S3 client for ``blobs.s3`` (thread-safe; one per store)."""
    session = boto3.session.Session(
        aws_access_key_id=settings.access_key_id.reveal() if settings.access_key_id else None,
        aws_secret_access_key=settings.secret_access_key.reveal() if settings.secret_access_key else None,
        region_name=settings.region,
    )
    return session.client("s3", endpoint_url=settings.endpoint_url, config=BotoConfig(
        s3={"addressing_style": settings.addressing_style},
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        retries={"mode": "standard", "total_max_attempts": ATTEMPTS},
        max_pool_connections=CONNECTIONS,
        # Checksums only where S3 requires them: get() checks the SHA-256 itself, and
        # MinIO and Ceph releases differ in which of the newer checksum headers they take.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    ))


class S3BlobStore:
    """The blob store in ``s3://<bucket>/<prefix>``; see the module docstring.

    Every method blocks on the network; none holds more than one part (writer) or one
    blob (``get``) in memory.
    """

    def __init__(self, settings: S3Blobs, *, part_bytes: int = PART_BYTES):
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"a part is at least {MIN_PART_BYTES} bytes")
        self.bucket = settings.bucket
        self.prefix = f"{settings.prefix}/" if settings.prefix else ""
        self.part_bytes = part_bytes
        self.s3 = client(settings)

    @property
    def where(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def key(self, ref: str) -> str:
        """The key of ``ref``; BlobMissing when ``ref`` is not a reference."""
        digest = digest_of(ref)
        return f"{self.prefix}{digest[:2]}/{digest[2:4]}/{digest}"

    def put(self, data: bytes, *, durable: bool = True) -> str:
        """Store ``data`` unless an object of its size is at its key; return the reference.

        ``durable`` is moot (every acknowledged PUT is durable). Raises BlobStoreUnavailable.
        """
        ref = ref_for(data)
        key = self.key(ref)
        if self.size_of(key) != len(data):
            self.put_object(key, data)
        return ref

    def writer(self) -> S3BlobWriter:
        """A writer streaming one blob in parts; nothing is sent before the first part is full."""
        return S3BlobWriter(self)

    def get(self, ref: str) -> bytes:
        """The stored bytes; BlobMissing when there are none or they do not match ``ref``.

        Raises BlobStoreUnavailable.
        """
        key = self.key(ref)
        with self.calling("GetObject", key):
            try:
                response = self.s3.get_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                # 404 NoSuchKey; a missing bucket is 404 too, but that is the store's failure
                if _status(exc) == 404 and _code(exc) != "NoSuchBucket":
                    raise BlobMissing(f"blob {ref} is not in {self.where}") from None
                raise
            data: bytes = response["Body"].read()
        if ref_for(data) != ref:
            raise BlobMissing(f"blob {ref} in {self.where} is damaged (its bytes do not match the reference)")
        return data

    def delete(self, ref: str) -> bool:
        """Remove a blob (only the ticketer's retention of suspended mail does); False
        when there was none. Raises BlobStoreUnavailable."""
        key = self.key(ref)
        if self.size_of(key) is None:
            return False
        self.delete_key(key)
        return True

    # ------------------------------------------------------------ one call each

    def size_of(self, key: str) -> int | None:
        """The size of the object at ``key``; None when there is none (HEAD)."""
        with self.calling("HeadObject", key):
            try:
                head = self.s3.head_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if _status(exc) == 404:  # HEAD has no body: a missing bucket is found by the PUT
                    return None
                raise
        return int(head["ContentLength"])

    def put_object(self, key: str, data: bytes | bytearray) -> None:
        with self.calling("PutObject", key):
            self.s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType="application/octet-stream")

    def delete_key(self, key: str) -> None:
        with self.calling("DeleteObject", key):
            self.s3.delete_object(Bucket=self.bucket, Key=key)

    def upload_key(self) -> str:
        return f"{self.prefix}{UPLOADS}/{secrets.token_hex(16)}"

    @contextmanager
    def calling(self, operation: str, key: str) -> Iterator[None]:
        """Turn the service's and the network's failures into BlobStoreUnavailable."""
        try:
            yield
        except ClientError as exc:
            raise BlobStoreUnavailable(
                f"{operation} s3://{self.bucket}/{key} failed: {_code(exc)} (HTTP {_status(exc)})") from exc
        except BotoCoreError as exc:  # connection, timeout, credentials, a stream cut short
            raise BlobStoreUnavailable(f"{operation} s3://{self.bucket}/{key} failed: {type(exc).__name__}: {exc}") \
                from exc


class S3BlobWriter:
    """Streams one blob to S3, hashing on the way; see the module docstring.

    Use it as a context manager (or call ``abort``): a writer left without ``commit``
    aborts its upload. Blocking: ``write`` sends a part whenever one is full.
    """

    def __init__(self, store: S3BlobStore):
        self._store = store
        self._hash = hashlib.sha256()
        self._buffer = bytearray()
        self._upload: _Upload | None = None
        self._done = False
        self.size = 0

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def write(self, chunk: bytes) -> None:
        """Add ``chunk``; a full part goes to the service now. Raises BlobStoreUnavailable,
        after which the writer is finished: a part may be lost, so the blob cannot be."""
        if self._done:
            raise RuntimeError("blob writer already finished")
        self._buffer += chunk
        self._hash.update(chunk)
        self.size += len(chunk)
        if len(self._buffer) < self._store.part_bytes:
            return
        part, self._buffer = self._buffer, bytearray()
        try:
            if self._upload is None:
                self._upload = _Upload.start(self._store)
            self._upload.send(part)
        except BaseException:
            self._done = True
            self._discard()
            raise

    def commit(self, *, durable: bool = True) -> str:
        """Finish the blob under its content key and return its reference (``durable``
        is moot). Raises BlobStoreUnavailable; what was sent is removed then."""
        if self._done:
            raise RuntimeError("blob writer already finished")
        self._done = True
        ref = ref_for_sha256(self.sha256)
        key = self._store.key(ref)
        part, self._buffer = self._buffer, bytearray()
        try:
            if self._store.size_of(key) == self.size:  # stored already: a re-fetched mail
                self._discard()
            elif self._upload is None:
                self._store.put_object(key, part)
            else:
                if part:
                    self._upload.send(part)
                self._upload.finish(key)
        except BaseException:
            self._discard()
            raise
        return ref

    def abort(self) -> None:
        """Drop what was written. Idempotent, a no-op after ``commit``, and it never
        raises: what it cannot remove is left to the bucket's lifecycle rule (logged)."""
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        self._discard()

    def _discard(self) -> None:
        upload, self._upload = self._upload, None
        if upload is not None:
            upload.discard()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.abort()


class _Upload:
    """One multipart upload to a temporary key: parts, completion, the copy to the content key."""

    def __init__(self, store: S3BlobStore, key: str, upload_id: str):
        self.store = store
        self.key = key
        self.upload_id = upload_id
        self.parts: list[dict[str, Any]] = []
        self.completed = False

    @classmethod
    def start(cls, store: S3BlobStore) -> _Upload:
        key = store.upload_key()
        with store.calling("CreateMultipartUpload", key):
            created = store.s3.create_multipart_upload(Bucket=store.bucket, Key=key,
                                                       ContentType="application/octet-stream")
        return cls(store, key, created["UploadId"])

    def send(self, part: bytearray) -> None:
        number = len(self.parts) + 1  # at most 10,000: 80 GB of 8 MiB parts, far beyond any mail
        with self.store.calling("UploadPart", self.key):
            sent = self.store.s3.upload_part(Bucket=self.store.bucket, Key=self.key, UploadId=self.upload_id,
                                             PartNumber=number, Body=part)
        self.parts.append({"PartNumber": number, "ETag": sent["ETag"]})

    def finish(self, key: str) -> None:
        """Complete the upload and copy the object to ``key`` (CopyObject takes up to 5 GB)."""
        store = self.store
        with store.calling("CompleteMultipartUpload", self.key):
            store.s3.complete_multipart_upload(Bucket=store.bucket, Key=self.key, UploadId=self.upload_id,
                                               MultipartUpload={"Parts": self.parts})
        self.completed = True
        with store.calling("CopyObject", key):
            store.s3.copy_object(Bucket=store.bucket, Key=key, CopySource={"Bucket": store.bucket, "Key": self.key})
        self.discard()  # the blob is in place: a temporary object left behind only costs space

    def discard(self) -> None:
        """Abort the upload, or delete the temporary object once it is complete. Never raises."""
        store = self.store
        try:
            if self.completed:
                store.delete_key(self.key)
            else:
                with store.calling("AbortMultipartUpload", self.key):
                    store.s3.abort_multipart_upload(Bucket=store.bucket, Key=self.key, UploadId=self.upload_id)
        except BlobStoreUnavailable as exc:
            log.warning("temporary upload left for the bucket's lifecycle rule",
                        extra={"error": str(exc)})


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "unknown")
