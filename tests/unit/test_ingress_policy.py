"""Who may hand mail to the ingress (services.fetcher.ingress_access) and the config that says so."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError, IngressLogin, parse_text
from services.common.config.schema import DEFAULT_ALLOWED_NETWORKS
from services.common.config.secrets import Secret
from services.fetcher.ingress_access import AccessPolicy, client_address

DEFAULT = AccessPolicy.of(DEFAULT_ALLOWED_NETWORKS, ())
WITH_USERS = AccessPolicy.of(DEFAULT_ALLOWED_NETWORKS, (IngressLogin("mta", Secret("s3cret-pass", "env:X")),))


@pytest.mark.parametrize(("ip", "inside"), [
    ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True),
    ("10.1.2.3", True), ("172.16.0.1", True), ("172.31.255.255", True), ("192.168.1.1", True),
    ("fd12:3456::1", True),
    ("::ffff:10.0.0.7", True),  # a dual-stack socket's IPv4 client
    ("::ffff:8.8.8.8", False),
    ("172.32.0.1", False), ("172.15.255.255", False), ("100.64.0.1", False), ("8.8.8.8", False),
    ("2001:db8::1", False), ("fe80::1%eth0", False),
    ("", False), ("not-an-ip", False), ("10.0.0.1.5", False),
])
def test_default_allowed_networks_are_loopback_and_private_ranges(ip: str, inside: bool) -> None:
    assert DEFAULT.inside(ip) is inside


@pytest.mark.parametrize(("policy", "ip", "dialect", "expected"), [
    (DEFAULT, "10.0.0.5", "smtp", "open"),
    (DEFAULT, "10.0.0.5", "lmtp", "open"),
    (DEFAULT, "203.0.113.9", "smtp", "refused"),
    (DEFAULT, "203.0.113.9", "lmtp", "refused"),
    (WITH_USERS, "10.0.0.5", "smtp", "open"),
    (WITH_USERS, "203.0.113.9", "smtp", "auth"),  # greeting, then MAIL only after AUTH
    (WITH_USERS, "203.0.113.9", "lmtp", "refused"),  # LMTP has no AUTH
    (WITH_USERS, "garbage", "smtp", "auth"),
])
def test_admittance_at_connect(policy: AccessPolicy, ip: str, dialect: str, expected: str) -> None:
    assert policy.admit(ip, dialect) == expected  # type: ignore[arg-type]


def test_auth_is_offered_only_with_users_and_only_over_tls_or_on_loopback() -> None:
    assert not DEFAULT.may_authenticate("127.0.0.1", tls=True)
    assert WITH_USERS.may_authenticate("127.0.0.1", tls=False)
    assert WITH_USERS.may_authenticate("::1", tls=False)
    assert not WITH_USERS.may_authenticate("10.0.0.5", tls=False)
    assert WITH_USERS.may_authenticate("203.0.113.9", tls=True)


def test_check_matches_login_case_insensitively_and_password_exactly() -> None:
    assert WITH_USERS.check(b"mta", b"s3cret-pass") == "mta"
    assert WITH_USERS.check(b"MTA", b"s3cret-pass") == "mta"
    assert WITH_USERS.check(b"mta", b"S3cret-pass") is None
    assert WITH_USERS.check(b"mta", b"s3cret-pass ") is None
    assert WITH_USERS.check(b"other", b"s3cret-pass") is None
    assert WITH_USERS.check(b"", b"") is None
    assert DEFAULT.check(b"mta", b"s3cret-pass") is None


def test_client_address_unmaps_ipv4_and_drops_zones() -> None:
    assert str(client_address("::ffff:192.0.2.1")) == "192.0.2.1"
    assert str(client_address("fe80::1%eth0")) == "fe80::1"
    assert client_address("localhost") is None


# ---------------------------------------------------------------- config


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_text(text)
    return [str(p) for p in caught.value.problems]


def test_ingress_access_defaults() -> None:
    cfg = parse_text("organization: {name: x}\n")
    assert cfg.ingress.allowed_networks == DEFAULT_ALLOWED_NETWORKS
    assert cfg.ingress.drain_seconds == 30 and cfg.ingress_logins == ()


def test_auth_users_resolve_their_passwords_and_never_show_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MTA_PW", "hunter2-hunter2")
    cfg = parse_text("ingress:\n  listen: 127.0.0.1:2525\n  auth:\n    users:\n"
                     "      - {login: relay, password: {env: MTA_PW}}\n")
    [login] = cfg.ingress_logins
    assert login.login == "relay" and login.password.reveal() == "hunter2-hunter2"
    assert "hunter2" not in repr(cfg.ingress_logins) and "hunter2" not in repr(cfg.ingress)


def test_a_missing_password_variable_is_reported_at_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_PW", raising=False)
    problems = _problems("ingress:\n  listen: 127.0.0.1:2525\n  auth:\n    users:\n"
                         "      - {login: relay, password: {env: NO_SUCH_PW}}\n")
    assert len(problems) == 1 and "NO_SUCH_PW is not set" in problems[0]
    assert problems[0].startswith("line 5:")


@pytest.mark.parametrize(("ingress", "message"), [
    ("allowed_networks: [10.0.0.1/8]", "'10.0.0.1/8' is not a network in CIDR notation"),
    ("allowed_networks: [intranet]", "'intranet' is not a network in CIDR notation"),
    ("allowed_networks: []", "nobody could deliver mail"),
    ("drain_seconds: 0", "drain_seconds"),
    ("{listen: 0.0.0.0:2525, auth: {users: [{login: relay, password: {env: HOME}}]}}",
     "ingress.auth needs ingress.tls_cert and tls_key"),
    ("{listen: 127.0.0.1:2525, auth: {users: [{login: relay, password: {env: HOME}},"
     " {login: RELAY, password: {env: HOME}}]}}", "the login 'RELAY' is listed twice"),
    ("{listen: 127.0.0.1:2525, auth: {users: [{login: 'a b', password: {env: HOME}}]}}",
     "without spaces or control characters"),
    ("{listen: 127.0.0.1:2525, auth: {users: [{login: relay, password: plain-text}]}}", "password"),
])
def test_invalid_access_settings_are_refused(ingress: str, message: str) -> None:
    text = f"ingress: {ingress}\n" if ingress.startswith("{") else f"ingress:\n  {ingress}\n"
    problems = _problems(text)
    assert any(message in p for p in problems), problems


def test_only_auth_users_without_networks_is_valid_and_auth_on_loopback_needs_no_tls() -> None:
    cfg = parse_text("ingress:\n  listen: 127.0.0.1:2525\n  allowed_networks: []\n"
                     "  auth: {users: [{login: relay, password: {env: HOME}}]}\n")
    assert cfg.ingress.allowed_networks == () and len(cfg.ingress_logins) == 1
