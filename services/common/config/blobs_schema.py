"""The `blobs:` section of deskmail.yaml: where large mail and attachments are stored.

``backend: folder`` (the default) keeps blobs in a folder (``path``, shared storage on
Kubernetes); ``backend: s3`` in a bucket of any S3-compatible service (``s3:``).
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from services.common.config.base import Section as _Model
from services.common.config.secrets import SecretRef

# AWS's rule for bucket names (MinIO and Ceph follow it): 3-63 characters, lower case.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_PREFIX_PART = re.compile(r"^[A-Za-z0-9._-]+$")


class S3Settings(_Model):
    """A bucket of an S3-compatible service (AWS S3, MinIO, Ceph RGW...) for ``backend: s3``."""

    bucket: str
    prefix: str = "deskmail"  # every key is <prefix>/ab/cd/<sha256 hex>; "" for the bucket's root
    endpoint_url: str | None = None  # unset: AWS S3; e.g. http://minio.storage:9000
    region: str | None = None  # unset: the default chain (AWS_REGION, the profile)
    # Both or neither; neither: the default credential chain (environment, web identity, instance role).
    access_key_id: SecretRef | None = None
    secret_access_key: SecretRef | None = None
    # Unset: virtual on AWS S3, path with an endpoint_url (MinIO and Ceph serve buckets by path).
    addressing_style: Literal["path", "virtual"] | None = None

    @field_validator("bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not _BUCKET.match(v) or ".." in v:
            raise ValueError(f"{v!r} is not a bucket name (3-63 lower-case letters, digits, '.' and '-')")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        v = v.strip("/")
        if v and not all(_PREFIX_PART.match(part) and part not in (".", "..") for part in v.split("/")):
            raise ValueError(f"{v!r} is not a key prefix (parts of letters, digits, '.', '_' and '-' joined by '/')")
        return v

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is None:
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        if parts.username or parts.password:  # the URL is shown in logs and `config check`
            raise ValueError("the endpoint URL must not hold credentials: set access_key_id and secret_access_key")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"{v!r}: endpoint_url is scheme://host[:port] only (the bucket is `bucket`)")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _key_pair(self) -> S3Settings:
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("blobs.s3 needs both access_key_id and secret_access_key, or neither "
                             "(then the default credential chain is used)")
        return self


class BlobSettings(_Model):
    backend: Literal["folder", "s3"] = "folder"
    path: str | None = None  # backend folder; unset: <data_dir>/blobs
    s3: S3Settings | None = None  # backend s3
    inline_max_bytes: int = Field(512 * 1024, ge=0)

    @model_validator(mode="after")
    def _one_backend(self) -> BlobSettings:
        # Settings of the other backend would be ignored, and mail written where nobody looks.
        if self.backend == "s3" and self.s3 is None:
            raise ValueError("blobs.backend s3 needs blobs.s3 with at least a bucket")
        if self.backend == "s3" and self.path is not None:
            raise ValueError("blobs.path is set but blobs.backend is s3: remove blobs.path")
        if self.backend == "folder" and self.s3 is not None:
            raise ValueError("blobs.s3 is set but blobs.backend is folder: set blobs.backend: s3 (or remove blobs.s3)")
        return self
