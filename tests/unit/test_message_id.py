"""Outgoing Message-IDs carry a token only the key's holder can write; the key is a secret."""

from __future__ import annotations

import re
import stat
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from services.common.config import ConfigError, Secret, message_id_key, parse_text
from services.common.config.secrets import SecretUnavailable
from services.common.mailrules import new_message_id, verify_message_id

KEY = Secret("k3y-that-nobody-else-holds-0123456789", "test")
OTHER_KEY = Secret("another-key-of-another-installation", "test")
NONCE = bytes(range(16))
SHAPE = re.compile(r"deskmail\.out-1\.[0-9a-f]{32}\.[0-9a-f]{32}@example\.com")

CONFIG = textwrap.dedent("""\
    data_dir: {data_dir}
    organization:
      members: [{{email: alice@example.com}}]
    {key}
    queues:
      - key: SUPPORT
        mailboxes:
          - address: support@example.com
            accept_external: true
            ingress: true
    """)


def config(data_dir: Path, key: str = "") -> str:
    return CONFIG.format(data_dir=data_dir, key=key)


def test_the_id_has_a_random_nonce_and_a_mac() -> None:
    first = new_message_id("out-1", "support@example.com", key=KEY, ticket="SUPPORT-1")
    second = new_message_id("out-1", "support@example.com", key=KEY, ticket="SUPPORT-1")
    assert SHAPE.fullmatch(first) and SHAPE.fullmatch(second)
    assert first != second  # the nonce is drawn anew: keep the id with the mail, do not recompute it


def test_the_mac_differs_per_ticket_comment_and_key() -> None:
    def mac(outbound_id: str = "out-1", ticket: str | None = "SUPPORT-1", key: Secret = KEY) -> str:
        message_id = new_message_id(outbound_id, "support@example.com", key=key, ticket=ticket, nonce=NONCE)
        return message_id.partition("@")[0].rsplit(".", 1)[1]

    macs = {mac(), mac(outbound_id="out-2"), mac(ticket="SUPPORT-2"), mac(ticket=None), mac(key=OTHER_KEY)}
    assert len(macs) == 5
    assert mac() == mac()  # the same nonce, ticket, comment and key: the same MAC


def test_verify_accepts_only_what_the_key_wrote_for_that_ticket_and_comment() -> None:
    message_id = new_message_id("out-1", "support@example.com", key=KEY, ticket="SUPPORT-1")
    assert verify_message_id(message_id, key=KEY, ticket="SUPPORT-1", outbound_id="out-1")
    assert verify_message_id(f"<{message_id}>", key=KEY, ticket="SUPPORT-1", outbound_id="out-1")
    assert not verify_message_id(message_id, key=OTHER_KEY, ticket="SUPPORT-1", outbound_id="out-1")
    assert not verify_message_id(message_id, key=KEY, ticket="SUPPORT-2", outbound_id="out-1")
    assert not verify_message_id(message_id, key=KEY, ticket="SUPPORT-1", outbound_id="out-2")


def test_a_forged_or_altered_id_does_not_verify() -> None:
    real = new_message_id("out-1", "support@example.com", key=KEY, ticket="SUPPORT-1")
    local, _, domain = real.partition("@")
    prefix, nonce, mac = local.rsplit(".", 2)
    # Someone who saw one id but has no key: a new nonce with the old MAC, a
    # flipped MAC digit, the same token on another ticket's id, no token at all.
    forgeries = [
        f"{prefix}.{'0' * 32}.{mac}@{domain}",
        f"{prefix}.{nonce}.{mac[:-1]}{'1' if mac[-1] == '0' else '0'}@{domain}",
        f"{prefix}.{nonce}@{domain}",
        f"deskmail.out-1@{domain}",
        f"{prefix}.{nonce}.{mac}.x@{domain}",
        f"{prefix}.zz{nonce[2:]}.{mac}@{domain}",
        "",
    ]
    for forged in forgeries:
        assert not verify_message_id(forged, key=KEY, ticket="SUPPORT-1", outbound_id="out-1"), forged


def test_the_id_never_contains_the_key() -> None:
    message_id = new_message_id("out-1", "support@example.com", key=KEY, ticket="SUPPORT-1")
    assert KEY.reveal() not in message_id
    assert KEY.reveal().encode().hex() not in message_id


def test_a_configured_key_is_a_secret(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TEST_MESSAGE_ID_KEY", KEY.reveal())
    cfg = parse_text(config(tmp_path, "  message_id_key: {env: TEST_MESSAGE_ID_KEY}"))
    assert message_id_key(cfg) == KEY
    assert KEY.reveal() not in repr(cfg) and KEY.reveal() not in str(message_id_key(cfg))
    assert repr(message_id_key(cfg)) == "Secret(env:TEST_MESSAGE_ID_KEY)"
    assert not (tmp_path / "message-id.key").exists()  # a configured key writes no file


def test_a_configured_key_from_a_file(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text(KEY.reveal() + "\n")
    cfg = parse_text(config(tmp_path, f"  message_id_key: {{file: {path}}}"))
    assert message_id_key(cfg).reveal() == KEY.reveal()


def test_a_missing_or_short_configured_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("TEST_MESSAGE_ID_KEY", raising=False)
    with pytest.raises(ConfigError) as missing:
        parse_text(config(tmp_path, "  message_id_key: {env: TEST_MESSAGE_ID_KEY}"))
    assert [str(p) for p in missing.value.problems] == [
        "line 4: organization.message_id_key: environment variable TEST_MESSAGE_ID_KEY is not set"
    ]
    monkeypatch.setenv("TEST_MESSAGE_ID_KEY", "short-s3cret")
    with pytest.raises(ConfigError) as short:
        parse_text(config(tmp_path, "  message_id_key: {env: TEST_MESSAGE_ID_KEY}"))
    assert [str(p) for p in short.value.problems] == [
        "line 4: organization.message_id_key: the key from env:TEST_MESSAGE_ID_KEY is shorter than 16 characters"
    ]
    assert "short-s3cret" not in str(short.value)
    with pytest.raises(ConfigError) as literal:
        parse_text(config(tmp_path, "  message_id_key: literal-k3y-in-the-file"))
    assert str(literal.value.problems[0]).startswith("line 4: organization.message_id_key: ")
    assert "literal-k3y-in-the-file" not in str(literal.value)


def test_without_a_configured_key_one_is_made_once_in_the_data_folder(tmp_path: Path) -> None:
    cfg = parse_text(config(tmp_path / "data"))
    key = message_id_key(cfg)
    path = tmp_path / "data" / "message-id.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key.reveal()) >= 32 and key.reveal() not in repr(key)
    assert message_id_key(cfg) == key  # kept, not made again
    assert message_id_key(replace(cfg)) == key
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["message-id.key"]  # no temporary file left
    other = parse_text(config(tmp_path / "elsewhere"))
    assert message_id_key(other) != key  # random per installation


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    cfg = parse_text(config(tmp_path))
    key = message_id_key(cfg)
    (tmp_path / "message-id.key").chmod(0o644)
    with pytest.raises(SecretUnavailable, match="chmod 600") as refused:
        message_id_key(cfg)
    assert key.reveal() not in str(refused.value)


def test_an_empty_key_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "message-id.key"
    path.write_text("\n")
    path.chmod(0o600)
    with pytest.raises(SecretUnavailable, match="holds no key"):
        message_id_key(parse_text(config(tmp_path)))


def test_deskmails_own_mail_is_recognised_by_its_signed_message_id() -> None:
    from services.common.mailrules import sent_by_deskmail

    mid = new_message_id("out-7.x/ä", "support@example.com", key=KEY, ticket="SUPPORT-3")
    assert sent_by_deskmail(mid, "SUPPORT-3", key=KEY)
    assert sent_by_deskmail(f"<{mid}>", "SUPPORT-3", key=KEY)
    assert not sent_by_deskmail(mid, "SUPPORT-4", key=KEY)  # another ticket's header
    assert not sent_by_deskmail(mid, None, key=KEY)  # no X-Deskmail-Ticket
    assert not sent_by_deskmail("deskmail.out-7.00.00@example.com", "SUPPORT-3", key=KEY)  # a guess
    assert not sent_by_deskmail("deskmail.=FF.00.00@example.com", "SUPPORT-3", key=KEY)
