"""Avro single-object encoding for every record deskmail puts on Kafka.

A record is written as: marker ``C3 01``, the 8-byte little-endian CRC-64-AVRO
fingerprint of the writer schema's parsing canonical form, then the Avro binary
body. A reader finds the writer schema by that fingerprint among every schema
version kept in ``schemas/`` (no registry needed) and resolves it to the current
version of the same record, so old records stay readable after a schema change.

Schema files are named ``<Record>.v<N>.avsc``; the highest N is the current one.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

MARKER = b"\xc3\x01"
HEADER_LEN = 10
_FILE_NAME = re.compile(r"^(?P<name>[A-Za-z]+)\.v(?P<version>\d+)\.avsc$")


class CodecError(Exception):
    """A record could not be encoded or decoded (bad bytes, unknown schema, wrong shape)."""


def schema_dir() -> Path:
    """Where the ``.avsc`` files live: ``DESKMAIL_SCHEMAS`` or ``schemas/`` at the repo root."""
    configured = os.environ.get("DESKMAIL_SCHEMAS")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parents[2] / "schemas"


@dataclass(frozen=True)
class SchemaVersion:
    record: str
    version: int
    parsed: Any  # parsed with fastavro's marker, so encoding and decoding never parse it again
    fingerprint: bytes

    @property
    def header(self) -> bytes:
        return MARKER + self.fingerprint


@dataclass(frozen=True)
class Codec:
    """Encoder/decoder for one record type (e.g. ``InboundMail``), parsed once."""

    record: str
    current: SchemaVersion
    by_fingerprint: dict[bytes, SchemaVersion] = field(repr=False)

    def encode(self, value: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self.current.header)
        try:
            fastavro.schemaless_writer(buf, self.current.parsed, value)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CodecError(f"cannot encode {self.record}: {exc}") from exc
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        if len(data) < HEADER_LEN or data[:2] != MARKER:
            raise CodecError(f"not an Avro single-object {self.record} record (bad marker)")
        writer = self.by_fingerprint.get(data[2:HEADER_LEN])
        if writer is None:
            raise CodecError(
                f"unknown {self.record} schema fingerprint {data[2:HEADER_LEN].hex()}"
            )
        # The body is read in place (a BytesIO over bytes shares them; a slice would
        # copy the raw mail the record carries). A record of the current version needs
        # no resolution: fastavro then skips comparing and resolving the two schemas.
        body = io.BytesIO(data)
        body.seek(HEADER_LEN)
        reader = None if writer is self.current else self.current.parsed
        try:
            result = fastavro.schemaless_reader(body, writer.parsed, reader)
        except Exception as exc:  # fastavro raises a wide range on corrupt bodies
            raise CodecError(f"cannot decode {self.record} v{writer.version}: {exc}") from exc
        if not isinstance(result, dict):
            raise CodecError(f"{self.record} body is not a record")
        return result


def _fingerprint(parsed: Any) -> bytes:
    hex_digest = fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO")
    # The spec writes the fingerprint little-endian; fastavro returns it big-endian hex.
    return struct.pack("<Q", int(hex_digest, 16))


def load_versions(directory: Path | None = None) -> dict[str, list[SchemaVersion]]:
    """Every schema version in the folder, per record, oldest first."""
    folder = directory or schema_dir()
    found: dict[str, list[SchemaVersion]] = {}
    for path in sorted(folder.glob("*.avsc")):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise CodecError(f"{path}: schema files must be named <Record>.v<N>.avsc")
        # fastavro's "__fastavro_parsed" marker (the default _write_hint) tells
        # schemaless_writer/reader that the schema is parsed already: without it they
        # parsed it again at every record (half the cost of encoding a TicketCommand).
        parsed = fastavro.parse_schema(json.loads(path.read_text()))
        version = SchemaVersion(
            record=match["name"],
            version=int(match["version"]),
            parsed=parsed,
            fingerprint=_fingerprint(parsed),
        )
        found.setdefault(version.record, []).append(version)
    for versions in found.values():
        versions.sort(key=lambda v: v.version)
    return found


@cache
def codec(record: str) -> Codec:
    """The codec for one record name, built once per process."""
    versions = load_versions().get(record)
    if not versions:
        raise CodecError(f"no schema for record {record!r} in {schema_dir()}")
    return Codec(
        record=record,
        current=versions[-1],
        by_fingerprint={v.fingerprint: v for v in versions},
    )
