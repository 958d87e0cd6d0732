"""deskmail.yaml validation: line numbers, defaults, secrets."""

from __future__ import annotations

import textwrap

import pytest

from services.common.config import ConfigError, parse_text

GOOD = textwrap.dedent("""\
    organization:
      domains: [example.com]
      members:
        - {email: Alice@Example.com, name: Alice Agent, groups: [support]}
        - {email: bob@example.com, name: Bob Builder}
    queues:
      - key: SUPPORT
        name: Customer support
        access: [group:support, bob@example.com]
        allow_outbound_mail: true
        mailboxes:
          - address: support@example.com
            accept_external: true
            ticket: {type: question, components: [billing, web]}
            imap:
              host: imap.example.com
              password: {env: TEST_SUPPORT_PW}
          - address: orders@example.com
            ingress: true
            ticket: {type: task, components: [orders]}
    """)


def test_good_config_resolves_defaults_and_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("TEST_SUPPORT_PW", "hunter2")
    cfg = parse_text(GOOD)
    support = cfg.mailbox("SUPPORT@example.com")
    assert support is not None and support.imap is not None
    assert support.imap.login == "support@example.com"  # login defaults to the address
    assert support.imap.port == 993 and support.imap.security == "ssl"
    assert support.imap.password.reveal() == "hunter2"
    assert "hunter2" not in repr(support) and "hunter2" not in str(cfg)
    assert support.components == ("billing", "web") and support.ticket_type == "question"
    assert cfg.mailbox("orders@example.com").ingress is True
    assert cfg.member("alice@example.com").groups == ("support",)
    assert cfg.topics["inbound"] == "deskmail.mail.inbound"
    assert cfg.database_url.startswith("sqlite:///") and cfg.database_url.endswith("deskmail.db")


def test_file_secret(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    cfg = parse_text(GOOD.replace("{env: TEST_SUPPORT_PW}", f"{{file: {secret}}}"))
    assert cfg.mailbox("support@example.com").imap.password.reveal() == "s3cret"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_text(text)
    return [str(p) for p in info.value.problems]


def test_each_error_names_its_line():
    bad = GOOD.replace("        ingress: true\n", "        ingress: true\n        bogus: 1\n")
    bad = bad.replace("port: 993", "").replace("host: imap.example.com", "host: imap.example.com\n          security: tls")
    assert _problems(bad) == [
        "line 17: queues[0].mailboxes[0].imap.security: Input should be 'ssl', 'starttls' or 'none'",
        "line 21: queues[0].mailboxes[1].bogus: Extra inputs are not permitted",
    ]


def test_secret_must_be_a_reference_not_a_literal():
    import traceback

    literal = "pl41n-t3xt-Passw0rd"  # what a leak would show, as pydantic's own messages do (input_value=...)
    for value in (literal, f"{{env: TEST_SUPPORT_PW, value: {literal}}}"):
        with pytest.raises(ConfigError) as info:
            parse_text(GOOD.replace("{env: TEST_SUPPORT_PW}", value))
        problems = [str(p) for p in info.value.problems]
        assert len(problems) == 1 and problems[0].startswith("line 17: queues[0].mailboxes[0].imap.password"), problems
        rendered = [str(info.value), repr(info.value), *problems, *(repr(p) for p in info.value.problems),
                    "".join(traceback.format_exception(info.value))]
        assert not [text for text in rendered if literal in text]


def test_missing_env_secret_names_line(monkeypatch):
    monkeypatch.delenv("TEST_SUPPORT_PW", raising=False)
    assert _problems(GOOD) == [
        "line 17: queues[0].mailboxes[0].imap.password: environment variable TEST_SUPPORT_PW is not set"]


def test_semantic_errors(monkeypatch):
    monkeypatch.setenv("TEST_SUPPORT_PW", "x")
    bad = GOOD.replace("access: [group:support, bob@example.com]", "access: [group:sales, eve@example.com]")
    bad = bad.replace("address: orders@example.com", "address: support@example.com")
    assert _problems(bad) == [
        "line 9: queues[0].access[0]: no member is in group 'sales'",
        "line 9: queues[0].access[1]: 'eve@example.com' is not an organization member, a group:NAME, 'members' or 'everyone'",
        "line 18: queues[0].mailboxes[1].address: address support@example.com is configured twice",
    ]


def test_mailbox_needs_exactly_one_inbound_path():
    bad = GOOD.replace("        ingress: true\n", "")
    assert _problems(bad) == ["line 18: queues[0].mailboxes[1]: a mailbox needs `imap:` settings or `ingress: true`"]


def test_yaml_syntax_error_names_line():
    assert _problems("queues:\n  - key: [unclosed\n") [0].startswith("line 3: not valid YAML")
