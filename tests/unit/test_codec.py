"""The Avro single-object codec: exact bytes, fingerprints, every kept schema version."""

from __future__ import annotations

import io
import json
from datetime import datetime, timezone
from pathlib import Path

import fastavro
import pytest

from services.common.codec import HEADER_LEN, MARKER, CodecError, SchemaVersion, codec, load_versions, schema_dir

EXAMPLES = schema_dir() / "examples"


def _example(record: str, version: int) -> dict:
    """Example values are JSON; bytes fields are written as text."""
    data = json.loads((EXAMPLES / f"{record}.v{version}.json").read_text())
    for field in ("raw", "key", "value"):
        if isinstance(data.get(field), str):
            data[field] = data[field].encode()
    return data


def test_every_record_is_encoded_with_the_single_object_header():
    value = _example("DeadLetter", 1)
    encoded = codec("DeadLetter").encode(value)
    assert encoded[:2] == MARKER == b"\xc3\x01"
    # CRC-64-AVRO of the parsing canonical form, little-endian (Avro spec).
    assert encoded[2:10] == bytes.fromhex("bb9501a728f2b4b0")[::-1]


def test_encoding_is_pinned_to_exact_bytes():
    value = {"stage": "router", "topic": None, "partition": -1, "offset": -1, "key": None, "value": b"x",
             "error_class": "E", "message": "m", "time": datetime(2026, 1, 1, tzinfo=timezone.utc)}
    encoded = codec("DeadLetter").encode(value)
    assert encoded.hex() == (
        "c301" "b0b4f228a70195bb"  # header
        "0c726f75746572"  # "router"
        "00" "01" "01" "00"  # topic null, partition -1, offset -1, key null
        "0278" "0245" "026d"  # value b"x", error_class "E", message "m"
        "80a0d5edee66"  # time 2026-01-01T00:00:00Z = 1767225600000 ms, zig-zag varint
    )


@pytest.mark.parametrize("record", ["InboundMail", "TicketCommand", "DeadLetter", "OutboundMail", "DeliveryEvent"])
def test_round_trip(record):
    value = _example(record, codec(record).current.version)
    decoded = codec(record).decode(codec(record).encode(value))
    assert decoded[next(k for k in ("received_at", "time", "created_at") if k in value)] == datetime.fromtimestamp(
        1764400000, tz=timezone.utc)
    for key, expected in value.items():
        if key not in ("received_at", "time", "created_at"):
            assert decoded[key] == expected, key


def _written_by(version: SchemaVersion, value: dict) -> bytes:
    """``value`` as a producer that still has schema ``version`` writes it."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, version.parsed, value)
    return MARKER + version.fingerprint + buf.getvalue()


def _with_defaults(value, schema, named=None):
    """``value`` as written by an older schema, with every field the current ``schema``
    added (at any depth: records, arrays of records) set to its default."""
    named = {} if named is None else named
    if isinstance(schema, str):
        schema = named.get(schema, schema)
    if isinstance(schema, dict) and schema.get("type") == "record":
        named[schema["name"]] = schema
        out = dict(value)
        for f in schema["fields"]:
            out[f["name"]] = _with_defaults(out[f["name"]], f["type"], named) if f["name"] in out else f["default"]
        return out
    if isinstance(schema, dict) and schema.get("type") == "array" and isinstance(value, list):
        return [_with_defaults(v, schema["items"], named) for v in value]
    if isinstance(schema, list) and isinstance(value, dict):  # a union with a record branch
        for branch in schema:
            if isinstance(named.get(branch, branch), dict):
                return _with_defaults(value, branch, named)
    return value


def test_every_kept_version_is_readable_by_the_current_reader():
    versions = load_versions()
    assert {"InboundMail", "TicketCommand", "DeadLetter"} <= set(versions)
    for record, kept in versions.items():
        current = codec(record)
        fields = {f["name"]: f for f in current.current.parsed["fields"]}
        for version in kept:
            example = EXAMPLES / f"{record}.v{version.version}.json"
            assert example.exists(), f"every released schema needs an example: {example.name}"
            data = _written_by(version, _example(record, version.version))
            decoded = current.decode(data)
            # What the old writer wrote, read with its own schema: the current reader
            # must give back exactly that, and each field added since with its default.
            as_written = fastavro.schemaless_reader(io.BytesIO(data[HEADER_LEN:]), version.parsed)
            kept_fields = {k: v for k, v in as_written.items() if k in fields}
            assert decoded == _with_defaults(kept_fields, current.current.parsed), f"{record} v{version.version}"


def test_a_v1_ticket_command_is_not_reply_only():
    """v1 predates ``reply_only``: an old command must not become reply-only (or lose a value)."""
    [v1] = [v for v in load_versions()["TicketCommand"] if v.version == 1]
    example = _example("TicketCommand", 1)
    assert "reply_only" not in example
    decoded = codec("TicketCommand").decode(_written_by(v1, example))
    assert decoded["reply_only"] is False
    assert decoded["received_at"] == datetime.fromtimestamp(1764400000, tz=timezone.utc)
    assert decoded["author"] == {**example["author"], "verified": False}
    added_since = ("reply_only", "quoted_from", "charset_detected", "raw_ref", "bounce", *RULE_FIELDS)
    assert {k: v for k, v in decoded.items() if k not in (*added_since, "received_at", "author")} == {
        k: v for k, v in example.items() if k not in ("received_at", "author")}
    assert (decoded["quoted_from"], decoded["charset_detected"], decoded["raw_ref"], decoded["bounce"]) == (
        None, None, None, None)


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_ticket_command_author_is_not_verified(version):
    """Before v3 no record carried proof of its From: an old author reads as not verified
    (never as proven), and its participants too."""
    [old] = [v for v in load_versions()["TicketCommand"] if v.version == version]
    example = _example("TicketCommand", version)
    assert "verified" not in example["author"]
    decoded = codec("TicketCommand").decode(_written_by(old, example))
    assert decoded["author"]["verified"] is False
    assert all(p["verified"] is False for p in decoded["participants"])


def test_a_v3_ticket_command_keeps_a_proven_author():
    example = _example("TicketCommand", 3)
    decoded = codec("TicketCommand").decode(codec("TicketCommand").encode(example))
    assert decoded["author"] == {"email": "dave@example.com", "name": "Dave", "member": True, "verified": True}
    assert decoded["participants"][0]["verified"] is False


@pytest.mark.parametrize("version", [1, 2, 3])
def test_an_old_ticket_command_keeps_its_text_whole(version):
    """Before v4 nothing was split off a reply, and no rejection kept its original:
    an old command reads as whole, with nothing to release."""
    [old] = [v for v in load_versions()["TicketCommand"] if v.version == version]
    decoded = codec("TicketCommand").decode(_written_by(old, _example("TicketCommand", version)))
    assert decoded["quoted_from"] is None and decoded["charset_detected"] is None
    assert decoded["raw_ref"] is None and decoded["bounce"] is None


def test_a_v4_ticket_command_as_released_reads_with_no_bounce_and_no_rules():
    """v4 was released before bounces and routing rules (v5): it reads as neither."""
    [v4] = [v for v in load_versions()["TicketCommand"] if v.version == 4]
    decoded = codec("TicketCommand").decode(_written_by(v4, _example("TicketCommand", 4)))
    assert decoded["bounce"] is None and decoded["quoted_from"] == _example("TicketCommand", 4)["quoted_from"]


def test_a_ticket_command_carries_where_the_quote_begins():
    example = _example("TicketCommand", 5)
    decoded = codec("TicketCommand").decode(codec("TicketCommand").encode(example))
    assert decoded["text"][decoded["quoted_from"]:].startswith("On Tue, Dec 1, 2026")


def test_a_rejection_carries_the_reference_of_its_original():
    ref = "sha256:" + "ab" * 32
    example = {**_example("TicketCommand", 5), "action": "reject", "reason": "loop: mail from deskmail", "raw_ref": ref}
    assert codec("TicketCommand").decode(codec("TicketCommand").encode(example))["raw_ref"] == ref


def test_a_v5_bounce_carries_what_its_report_says():
    report = {"original_message_id": "deskmail.out-1.00.11@example.com", "recipient": "ghost@customer.test",
              "status": "5.1.1", "diagnostic": "550 5.1.1 User unknown", "permanent": True}
    example = {**_example("TicketCommand", 5), "classification": "bounce", "bounce": report}
    assert codec("TicketCommand").decode(codec("TicketCommand").encode(example))["bounce"] == report
    assert _example("TicketCommand", 5)["bounce"] is None  # a reply reports on nothing


RULE_FIELDS = ("new_ticket_queue", "assignee", "assignee_rule", "priority", "tags", "matched_rules")
NO_RULES = {"new_ticket_queue": None, "assignee": None, "assignee_rule": None, "priority": None, "tags": [],
            "matched_rules": []}


@pytest.mark.parametrize("version", [1, 2, 3, 4])
def test_an_old_ticket_command_matched_no_routing_rule(version):
    """Routing rules came with v5: an old command sets nothing on its ticket."""
    [old] = [v for v in load_versions()["TicketCommand"] if v.version == version]
    decoded = codec("TicketCommand").decode(_written_by(old, _example("TicketCommand", version)))
    assert {k: decoded[k] for k in RULE_FIELDS} == NO_RULES


def test_a_v5_ticket_command_carries_what_the_routing_rules_set():
    example = _example("TicketCommand", 5)
    decoded = codec("TicketCommand").decode(codec("TicketCommand").encode(example))
    assert {k: decoded[k] for k in RULE_FIELDS} == {
        "new_ticket_queue": "BILLING", "assignee": "ann@example.com", "assignee_rule": "invoices",
        "priority": "high", "tags": ["vip", "contract"], "matched_rules": ["vip-customers", "invoices"]}
    # The router writes every field; a command that matched no rule carries the defaults.
    bare = {k: v for k, v in example.items() if k not in RULE_FIELDS}
    assert {k: codec("TicketCommand").decode(codec("TicketCommand").encode({**bare, **NO_RULES}))[k]
            for k in RULE_FIELDS} == NO_RULES


def test_a_v1_inbound_mail_is_no_release():
    """v1 predates releases of suspended mail: an old record is mail as it arrived."""
    [v1] = [v for v in load_versions()["InboundMail"] if v.version == 1]
    decoded = codec("InboundMail").decode(_written_by(v1, _example("InboundMail", 1)))
    assert (decoded["release_of"], decoded["released_by"]) == (None, None)
    assert decoded["raw"] == b"Subject: hi\r\n\r\nhello\r\n"


def test_a_v2_inbound_mail_names_the_rejection_it_releases():
    decoded = codec("InboundMail").decode(codec("InboundMail").encode(_example("InboundMail", 2)))
    assert decoded["release_of"] == "imap:orders@example.com:1700000000:43"
    assert (decoded["id"], decoded["released_by"]) == ("release:" + decoded["release_of"], "alice@example.com")


def test_unknown_fingerprint_and_garbage_are_codec_errors():
    encoded = codec("InboundMail").encode(_example("InboundMail", 1))
    with pytest.raises(CodecError, match="unknown InboundMail schema fingerprint"):
        codec("InboundMail").decode(encoded[:2] + b"\x00" * 8 + encoded[10:])
    with pytest.raises(CodecError, match="bad marker"):
        codec("InboundMail").decode(b"plain text")
    with pytest.raises(CodecError, match="cannot decode"):
        codec("InboundMail").decode(encoded[:14])


def test_encoding_a_wrong_shape_is_a_codec_error():
    with pytest.raises(CodecError, match="cannot encode InboundMail"):
        codec("InboundMail").encode({"id": "x"})


def test_schema_files_follow_the_naming_rule():
    for path in Path(schema_dir()).glob("*.avsc"):
        assert path.name.count(".") == 2 and ".v" in path.name, path.name
