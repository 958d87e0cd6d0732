"""deskmail.yaml validation: line numbers, defaults, secrets."""

from __future__ import annotations

import textwrap

import pytest

from services.common.config import ConfigError, HostPort, parse_text

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


# -- listen addresses ------------------------------------------------------------


@pytest.mark.parametrize(("value", "host", "port"), [
    ("127.0.0.1:2525", "127.0.0.1", 2525),
    ("0.0.0.0:8080", "0.0.0.0", 8080),
    ("localhost:65535", "localhost", 65535),
    ("mail.example.com:25", "mail.example.com", 25),
    ("[::1]:2424", "::1", 2424),
    ("[::]:25", "::", 25),
    ("127.0.0.1:0", "127.0.0.1", 0),  # 0: the system picks a free port
    ("  127.0.0.1:2525  ", "127.0.0.1", 2525),
])
def test_listen_address_is_parsed_at_load_time(value: str, host: str, port: int) -> None:
    cfg = parse_text(f"ingress: {{listen: '{value}', lmtp_listen: '{value}'}}\napi: {{listen: '{value}'}}\n")
    for listen in (cfg.ingress.listen, cfg.ingress.lmtp_listen, cfg.api.listen):
        assert listen == HostPort(host, port)
        assert HostPort.parse(str(listen)) == listen  # str() writes it back as HOST:PORT


def test_listen_address_defaults_and_text() -> None:
    cfg = parse_text("{}")
    assert cfg.ingress.listen == HostPort("127.0.0.1", 2525) and cfg.ingress.lmtp_listen is None
    assert cfg.api.listen == HostPort("127.0.0.1", 8080)
    assert str(HostPort("::1", 25)) == "[::1]:25" and str(HostPort("0.0.0.0", 2525)) == "0.0.0.0:2525"


@pytest.mark.parametrize(("value", "message"), [
    ("0.0.0.0", "listen address '0.0.0.0' has no port"),
    ("localhost:http", "listen address 'localhost:http': the port 'http' is not a number"),
    (":99999", "listen address ':99999': the port 99999 is above 65535"),
    (":25", "listen address ':25' has no host"),
    ("localhost:-1", "the port '-1' is not a number"),
    ("localhost:", "the port '' is not a number"),
    ("localhost:２５", "the port '２５' is not a number"),
    ("::1:25", "an IPv6 address goes in brackets"),
    ("[127.0.0.1]:25", "brackets are for an IPv6 address"),
    ("[::1]", "listen address '[::1]' has no port"),
    ("mail host:25", "the host 'mail host' contains a space"),
])
def test_bad_listen_address_names_its_line(value: str, message: str) -> None:
    text = f"organization:\n  name: x\ningress:\n  max_message_bytes: 2048\n  lmtp_listen: '{value}'\n"
    [problem] = _problems(text)
    assert problem.startswith(f"line 5: ingress.lmtp_listen: listen address {value!r}") and message in problem
    [problem] = _problems(f"api:\n  listen: '{value}'\n")
    assert problem.startswith(f"line 2: api.listen: listen address {value!r}") and message in problem


def test_listen_address_must_be_text() -> None:
    assert _problems("ingress:\n  listen: 2525\n") == [
        "line 2: ingress.listen: a listen address is a string HOST:PORT, e.g. 127.0.0.1:2525"]


def test_config_check_prints_the_line_of_a_bad_listen_address(tmp_path) -> None:
    from click.testing import CliRunner

    from services.cli import main

    path = tmp_path / "deskmail.yaml"
    path.write_text("ingress:\n  listen: 0.0.0.0\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert f"{path}: line 2: ingress.listen: listen address '0.0.0.0' has no port" in result.output


# -- ingress limits --------------------------------------------------------------


def test_ingress_limits_default_to_16_sessions_and_128_mib_in_flight() -> None:
    cfg = parse_text("{}")
    assert (cfg.ingress.max_sessions, cfg.ingress.max_inflight_bytes) == (16, 128 * 1024 * 1024)
    cfg = parse_text("ingress: {max_sessions: 4, max_inflight_bytes: 30000000, max_message_bytes: 30000000}\n")
    assert (cfg.ingress.max_sessions, cfg.ingress.max_inflight_bytes) == (4, 30_000_000)


def test_the_in_flight_default_grows_with_a_larger_message_limit() -> None:
    cfg = parse_text("ingress: {max_message_bytes: 200000000}\n")
    assert cfg.ingress.max_inflight_bytes == 200_000_000


def test_an_in_flight_budget_below_the_message_limit_is_refused() -> None:
    # a message between the two would be deferred forever
    [problem] = _problems("ingress:\n  max_message_bytes: 4096\n  max_inflight_bytes: 2048\n")
    assert "ingress.max_inflight_bytes must be at least ingress.max_message_bytes" in problem
    [problem] = _problems("ingress:\n  max_sessions: 0\n")
    assert problem.startswith("line 2: ingress.max_sessions")


def test_trusted_authserv_ids_are_host_names_in_lower_case(monkeypatch) -> None:
    monkeypatch.setenv("TEST_SUPPORT_PW", "pw")
    config = parse_text(GOOD.replace("  members:", "  sender_authentication:\n"
                                     "    trusted_authserv_ids: [MX.Google.com., mx.example.com]\n  members:"))
    assert config.organization.sender_authentication.trusted_authserv_ids == ("mx.google.com", "mx.example.com")
    assert parse_text("queues: []\n").organization.sender_authentication.trusted_authserv_ids == ()
    problems = _problems("organization:\n  sender_authentication:\n    trusted_authserv_ids: ['mx example;com']\n")
    assert len(problems) == 1 and problems[0].startswith("line 3:") and "not a host name" in problems[0]


@pytest.mark.parametrize(("trust", "warned"), [("", True), ("  sender_authentication: {trusted_authserv_ids: [mx.example.com]}\n", False)])
def test_config_check_warns_when_member_mail_is_trusted_by_from(tmp_path, trust: str, warned: bool) -> None:
    from click.testing import CliRunner

    from services.cli import main

    path = tmp_path / "deskmail.yaml"
    path.write_text("organization:\n  members: [{email: alice@example.com}]\n" + trust
                    + "queues:\n  - key: OPS\n    mailboxes: [{address: ops@example.com, ingress: true}]\n",
                    encoding="utf-8")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok: 1 queue(s)" in result.stdout
    assert ("warning: member mail is trusted by its From line" in result.stderr) is warned
    assert "warning" not in result.stdout


@pytest.mark.parametrize("field, text", [
    ("queues[0].name", 'queues:\n  - key: S\n    name: "Support\\nBcc: all@example.com"\n'
                       '    mailboxes: [{address: s@example.com, ingress: true}]\n'),
    ("queues[0].mailboxes[0].signatures[0].alias",
     'queues:\n  - key: S\n    mailboxes:\n      - address: s@example.com\n        ingress: true\n'
     '        signatures: [{alias: "Support\\u2028Bcc: all@example.com"}]\n'),
])
def test_names_that_go_into_a_from_header_are_one_line(field: str, text: str) -> None:
    [problem] = _problems(text)
    assert field in problem and "header text must be one line" in problem


def test_workflow_settings_of_a_queue_default_and_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SUPPORT_PW", "s3cret")
    cfg = parse_text(GOOD)
    assert (cfg.queues[0].closed_reply, cfg.queues[0].auto_close_days) == ("follow_up", 7)
    reopening = GOOD.replace("  - key: SUPPORT\n", "  - key: SUPPORT\n    closed_reply: reopen\n    auto_close_days: 0\n")
    assert (parse_text(reopening).queues[0].closed_reply, parse_text(reopening).queues[0].auto_close_days) == (
        "reopen", 0)
    bad = GOOD.replace("  - key: SUPPORT\n", "  - key: SUPPORT\n    closed_reply: ignore\n    auto_close_days: -1\n")
    problems = _problems(bad)
    assert len(problems) == 2 and all(p.startswith("line ") for p in problems), problems
    assert "closed_reply" in problems[0] and "auto_close_days" in problems[1]


def test_suspended_mail_is_kept_30_days_unless_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SUPPORT_PW", "x")
    assert parse_text(GOOD).suspended.retention_days == 30
    assert parse_text("suspended: {retention_days: 0}\n" + GOOD).suspended.retention_days == 0  # forever
    with pytest.raises(ConfigError) as info:
        parse_text("suspended:\n  retention_days: -1\n" + GOOD)
    [problem] = info.value.problems
    assert problem.line == 2 and "retention_days" in str(problem)


# -- routing rules ----------------------------------------------------------------

RULES = textwrap.dedent("""\
    organization:
      admins: [carl@example.com]
      members:
        - {email: ann@example.com, groups: [support]}
        - {email: bob@example.com}
        - {email: carl@example.com}
    queues:
      - key: SUPPORT
        access: [group:support, bob@example.com]
        mailboxes: [{address: support@example.com, ingress: true}]
        rules:
          - name: vip-customers
            match:
              from: "@BigCorp.test"
              subject: {regex: "^(urgent|срочно)"}
              header: {name: X-Priority, value: "1"}
              authenticated: true
            set:
              type: incident
              components: [billing, billing, web]
              assignee: Ann@Example.com
              priority: high
              tags: [vip, contract]
              queue: BILLING
            stop: true
          - name: spam
            match: {header: {name: X-Spam-Flag}}
            drop: true
      - key: BILLING
        access: [group:support]
        mailboxes: [{address: billing@example.com, ingress: true}]
    """)


def test_routing_rules_are_frozen_in_order_with_their_patterns_compiled() -> None:
    queue = parse_text(RULES).queue("SUPPORT")
    assert queue is not None
    vip, spam = queue.rules
    assert (vip.name, vip.stop, vip.drop, spam.name, spam.drop) == ("vip-customers", True, False, "spam", True)
    assert vip.match.sender is not None and vip.match.sender.text == "@bigcorp.test"  # casefolded once
    assert vip.match.subject is not None and vip.match.subject.regex is not None
    assert vip.match.subject.regex.search("СРОЧНО: help") is not None  # case-insensitive, compiled at load
    assert vip.match.header is not None and vip.match.header.name == "x-priority"
    assert vip.match.header.value is not None and vip.match.header.value.text == "1"
    assert vip.match.authenticated is True and vip.match.body is None
    assert spam.match.header is not None and spam.match.header.value is None  # presence only
    actions = vip.actions
    assert (actions.type, actions.components, actions.assignee, actions.priority, actions.tags, actions.queue) == (
        "incident", ("billing", "web"), "ann@example.com", "high", ("vip", "contract"), "BILLING")
    assert parse_text(RULES).queue("BILLING").rules == ()


def _rules_problems(old: str, new: str) -> list[str]:
    assert old in RULES, old
    return _problems(RULES.replace(old, new, 1))


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('subject: {regex: "^(urgent|срочно)"}', 'subject: {regex: "^(urgent"}',
     "line 15: queues[0].rules[0].match.subject.regex: not a valid regular expression: missing ), "
     "unterminated subpattern at position 1"),
    ("priority: high", "priority: extreme",
     "line 22: queues[0].rules[0].set.priority: Input should be 'low', 'normal', 'high' or 'urgent'"),
    ("name: spam", "name: loop",
     "line 26: queues[0].rules[1].name: 'loop' is a reason code deskmail uses itself; name the rule otherwise"),
    ("name: spam", "name: 'spam: all'",
     "line 26: queues[0].rules[1].name: a rule name is 1 to 64 letters, digits, '_', '-' or '.', "
     "starting with a letter or a digit"),
    ("match: {header: {name: X-Spam-Flag}}", "match: {}",
     "line 27: queues[0].rules[1].match: a rule needs at least one condition: from, to, cc, subject, header, "
     "body, authenticated"),
    ("match: {header: {name: X-Spam-Flag}}", 'match: {body: ""}',
     "line 27: queues[0].rules[1].match.body: an empty string would match every mail"),
    ("match: {header: {name: X-Spam-Flag}}", "match: {body: [x]}",
     'line 27: queues[0].rules[1].match.body: a condition is a string or {regex: "..."}'),
    ("match: {header: {name: X-Spam-Flag}}", "match: {header: {name: 'X Spam'}}",
     "line 27: queues[0].rules[1].match.header.name: 'X Spam' is not a header name"),
    ("match: {header: {name: X-Spam-Flag}}", "match: {subjekt: x}",
     "line 27: queues[0].rules[1].match.subjekt: Extra inputs are not permitted"),
    ("tags: [vip, contract]", 'tags: ["vip\\nBcc: x"]',
     "line 23: queues[0].rules[0].set.tags: a tag 'vip\\nBcc: x' contains a line break (U+000A); "
     "header text must be one line"),
])
def test_each_rule_error_names_its_line(old: str, new: str, expected: str) -> None:
    assert _rules_problems(old, new) == [expected]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("queue: BILLING", "queue: SALES", "line 24: queues[0].rules[0].set.queue: no queue SALES is configured"),
    ("assignee: Ann@Example.com", "assignee: eve@example.com",
     "line 21: queues[0].rules[0].set.assignee: 'eve@example.com' is not an organization member"),
    # bob may use SUPPORT, not BILLING, where this rule's tickets open
    ("assignee: Ann@Example.com", "assignee: bob@example.com",
     "line 21: queues[0].rules[0].set.assignee: bob@example.com has no access to queue BILLING"),
    ("name: spam", "name: VIP-Customers",
     "line 26: queues[0].rules[1].name: rule name VIP-Customers is used twice in queue SUPPORT"),
])
def test_rules_are_checked_against_the_other_rules_queues_and_members(old: str, new: str, expected: str) -> None:
    assert _rules_problems(old, new) == [expected]


def test_an_assignee_is_checked_against_the_rules_own_queue_without_a_move() -> None:
    stay = RULES.replace("          queue: BILLING\n", "")
    assert parse_text(stay.replace("assignee: Ann@Example.com", "assignee: bob@example.com")).queue(
        "SUPPORT").rules[0].actions.assignee == "bob@example.com"
    # an admin sees every queue, so may be assigned anywhere
    assert parse_text(RULES.replace("assignee: Ann@Example.com", "assignee: carl@example.com")).queue(
        "SUPPORT").rules[0].actions.assignee == "carl@example.com"


def test_every_rule_error_is_reported_at_once() -> None:
    bad = RULES.replace("queue: BILLING", "queue: SALES").replace("name: spam", "name: vip-customers")
    bad = bad.replace("assignee: Ann@Example.com", "assignee: eve@example.com")
    assert _problems(bad) == [
        "line 24: queues[0].rules[0].set.queue: no queue SALES is configured",
        "line 21: queues[0].rules[0].set.assignee: 'eve@example.com' is not an organization member",
        "line 26: queues[0].rules[1].name: rule name vip-customers is used twice in queue SUPPORT",
    ]


def test_config_check_names_the_file_and_line_of_a_bad_regex(tmp_path) -> None:
    from click.testing import CliRunner

    from services.cli import main

    path = tmp_path / "deskmail.yaml"
    path.write_text(RULES.replace('{regex: "^(urgent|срочно)"}', '{regex: "[a-"}'), encoding="utf-8")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert (f"{path}: line 15: queues[0].rules[0].match.subject.regex: not a valid regular expression: "
            "unterminated character set at position 0") in result.output


def test_config_check_counts_rules_and_warns_about_rules_that_cannot_work(tmp_path) -> None:
    from click.testing import CliRunner

    from services.cli import main

    path = tmp_path / "deskmail.yaml"
    path.write_text(RULES, encoding="utf-8")
    result = CliRunner().invoke(main, ["config", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "2 routing rule(s)" in result.stdout
    assert (f"{path}: warning: rule vip-customers of queue SUPPORT matches `authenticated: true`, but without "
            "organization.sender_authentication.trusted_authserv_ids no mail proves its From") in result.stderr
    assert (f"{path}: warning: rule vip-customers of queue SUPPORT moves tickets to BILLING, which has no "
            "mailbox with SMTP settings: its agents cannot answer them by mail") in result.stderr


def test_lease_timeouts_default_to_the_consumers_and_can_be_set_apart() -> None:
    default = parse_text("{}")
    assert (default.fetcher.lease.session_timeout_ms, default.fetcher.lease.heartbeat_interval_ms) == (10000, 3000)
    assert default.fetcher.lease_partitions == 16
    assert default.topics["leases"] == "deskmail.fetcher.leases"
    fast = parse_text("kafka: {consumer: {session_timeout_ms: 2000, heartbeat_interval_ms: 500}}")
    assert (fast.fetcher.lease.session_timeout_ms, fast.fetcher.lease.heartbeat_interval_ms) == (2000, 500)
    own = parse_text("kafka: {consumer: {session_timeout_ms: 2000}}\nfetcher: {lease: {session_timeout_ms: 30000}}")
    assert (own.fetcher.lease.session_timeout_ms, own.fetcher.lease.heartbeat_interval_ms) == (30000, 3000)


def test_a_lease_heartbeat_not_below_its_session_timeout_names_its_line() -> None:
    text = "kafka:\n  partitions: 2\nfetcher:\n  lease: {session_timeout_ms: 3000, heartbeat_interval_ms: 3000}\n"
    with pytest.raises(ConfigError) as err:
        parse_text(text)
    assert "line 4: fetcher.lease: heartbeat_interval_ms 3000 must be below session_timeout_ms 3000" in str(err.value)


def test_a_short_consumer_session_alone_gives_the_lease_a_fitting_heartbeat() -> None:
    """Only the session written: the heartbeat nobody wrote follows it (a third)."""
    lease = parse_text("kafka: {consumer: {session_timeout_ms: 2000}}").fetcher.lease
    assert (lease.session_timeout_ms, lease.heartbeat_interval_ms) == (2000, 666)
    with pytest.raises(ConfigError, match="heartbeat_interval_ms 2500 must be below session_timeout_ms 2000"):
        parse_text("kafka: {consumer: {session_timeout_ms: 2000, heartbeat_interval_ms: 2500}}")
