"""The checks of an OpenID Connect sign-in: the callback's state, the ID token,
the email claim, the signed cookies, and the config that oidc mode needs."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from services.api import oidc
from services.api.session import SignedValues
from services.common.config import ConfigError, parse_text

ISSUER = "https://id.example.com"
CLIENT = "deskmail"
NOW = 1_900_000_000.0


@pytest.mark.parametrize("path, expected", [
    ("/tickets/SUPPORT-1", "/tickets/SUPPORT-1"), ("/queues/X?page=2", "/queues/X?page=2"),
    (None, "/"), ("", "/"), ("https://evil.test/", "/"), ("//evil.test/", "/"), ("/\\evil.test", "/"),
    ("/ok\r\nSet-Cookie: x=1", "/"), ("tickets", "/"),
])
def test_only_local_paths_are_returned_to(path: str | None, expected: str) -> None:
    assert oidc.safe_next(path) == expected


def test_a_sign_in_has_fresh_secrets_and_a_pkce_challenge() -> None:
    a, b = oidc.begin("/x"), oidc.begin("/x")
    assert len({a.state, a.nonce, a.verifier, b.state}) == 4 and len(a.verifier) >= 43
    url = oidc.authorization_url("https://id.example.com/authorize", CLIENT, "https://desk/auth/callback",
                                 ("openid", "email"), a)
    assert "code_challenge_method=S256" in url and f"state={a.state}" in url and a.verifier not in url
    assert oidc.LoginTransaction.from_dict(a.as_dict()) == a
    assert oidc.LoginTransaction.from_dict({**a.as_dict(), "nonce": ""}) is None
    assert oidc.LoginTransaction.from_dict(None) is None


@pytest.mark.parametrize("params, status, words", [
    ({"state": "other", "code": "c"}, 400, "does not belong"),
    ({"code": "c"}, 400, "does not belong"),
    ({"state": "S", "error": "access_denied"}, 403, "refused the sign-in: access_denied"),
    ({"state": "S"}, 400, "no authorization code"),
])
def test_a_callback_must_match_this_browsers_sign_in(params: dict[str, str], status: int, words: str) -> None:
    tx = oidc.LoginTransaction("S", "N", "V" * 43, "/")
    with pytest.raises(oidc.SignInRefused) as refused:
        oidc.check_callback(tx, params)
    assert refused.value.status == status and words in refused.value.reason
    assert oidc.check_callback(tx, {"state": "S", "code": "the-code"}) == "the-code"


def test_a_callback_without_a_sign_in_in_progress_is_refused() -> None:
    with pytest.raises(oidc.SignInRefused) as refused:
        oidc.check_callback(None, {"state": "S", "code": "c"})
    assert refused.value.status == 400 and "sign in again" in refused.value.reason


KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
JWKS = {"keys": [KEY.as_dict(private=False)]}


def id_token(key: Any = KEY, **overrides: Any) -> str:
    claims = {"iss": ISSUER, "aud": CLIENT, "sub": "u1", "iat": int(NOW), "exp": int(NOW) + 300, "nonce": "N",
              "email": "Alice@Example.com", "email_verified": True, **overrides}
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)


def verify(token: str) -> dict[str, Any]:
    return oidc.id_token_claims(token, JWKS, issuer=ISSUER, client_id=CLIENT, nonce="N", now=NOW)


def test_a_good_id_token_gives_its_claims() -> None:
    claims = verify(id_token())
    assert claims["sub"] == "u1" and oidc.member_email(claims) == "alice@example.com"


@pytest.mark.parametrize("token", [
    pytest.param(lambda: id_token(nonce="replayed"), id="other nonce"),
    pytest.param(lambda: id_token(nonce=None), id="no nonce"),
    pytest.param(lambda: id_token(aud="another-client"), id="other audience"),
    pytest.param(lambda: id_token(iss="https://evil.test"), id="other issuer"),
    pytest.param(lambda: id_token(exp=int(NOW) - 3600), id="expired"),
    pytest.param(lambda: id_token(OTHER_KEY), id="signed by another key"),
    pytest.param(lambda: id_token()[:-4] + "AAAA", id="altered signature"),
    pytest.param(lambda: "not.a.jwt", id="garbage"),
    pytest.param(lambda: id_token(aud=[CLIENT, "another-client"]), id="several audiences, no azp"),
    pytest.param(lambda: id_token(iat=None), id="no iat"),
])
def test_a_bad_id_token_is_refused(token: Any) -> None:
    with pytest.raises(oidc.SignInRefused) as refused:
        verify(token())
    assert refused.value.status == 403


@pytest.mark.parametrize("claims, words", [
    ({"email": "a@example.com", "email_verified": False}, "not verified"),
    ({"email": "a@example.com", "email_verified": "true"}, "not verified"),
    ({"sub": "u1"}, "no email"),
    ({"email": "not-an-address"}, "no email"),
])
def test_the_member_is_a_verified_email(claims: dict[str, Any], words: str) -> None:
    with pytest.raises(oidc.SignInRefused) as refused:
        oidc.member_email(claims)
    assert refused.value.status == 403 and words in refused.value.reason
    assert oidc.member_email({"email": " Bob@Example.com"}) == "bob@example.com"  # no email_verified: trusted


def test_signed_values_cannot_be_altered_prolonged_or_reused_for_another_purpose() -> None:
    sessions = SignedValues("s" * 32, "session")
    value = sessions.seal({"email": "alice@example.com"}, time.time() + 60)
    assert sessions.open(value, time.time()) == {"email": "alice@example.com", "exp": int(time.time() + 60)}
    assert sessions.open(value, time.time() + 120) is None  # expired
    body, _, mac = value.partition(".")
    forged = SignedValues("s" * 32, "session").seal({"email": "carol@example.com"}, time.time() + 60)
    assert sessions.open(f"{forged.partition('.')[0]}.{mac}", time.time()) is None
    assert SignedValues("s" * 32, "login").open(value, time.time()) is None
    assert SignedValues("t" * 32, "session").open(value, time.time()) is None
    for junk in (None, "", "x", "a.b", "é.é"):
        assert sessions.open(junk, time.time()) is None


OIDC = """\
api:
  auth:
    mode: oidc
{rest}"""


@pytest.mark.parametrize("rest, missing", [
    ("", "api.auth.oidc, api.public_url, api.session_secret"),
    ("    oidc: {issuer: 'https://id.example.com', client_id: d}\n  public_url: https://desk.example.com\n",
     "api.session_secret"),
    ("    oidc: {issuer: 'https://id.example.com', client_id: d}\n  session_secret: {env: HOME}\n",
     "api.public_url"),
])
def test_oidc_mode_needs_the_provider_the_public_url_and_a_session_secret(rest: str, missing: str) -> None:
    with pytest.raises(ConfigError) as error:
        parse_text(OIDC.format(rest=rest))
    assert f"api.auth.mode oidc needs {missing}" in str(error.value)


def test_an_oidc_config_resolves_its_client_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DM_OIDC_SECRET", "client-secret-value")
    monkeypatch.setenv("DM_SESSION", "x" * 40)
    config = parse_text(OIDC.format(rest=(
        "    oidc: {issuer: 'https://id.example.com/', client_id: desk, client_secret: {env: DM_OIDC_SECRET}}\n"
        "  public_url: https://desk.example.com\n  session_secret: {env: DM_SESSION}\n")))
    assert config.api_oidc_client_secret is not None
    assert config.api_oidc_client_secret.reveal() == "client-secret-value"
    assert config.api.auth.oidc is not None and config.api.auth.oidc.issuer == "https://id.example.com"
    assert config.api.auth.oidc.scopes == ("openid", "email", "profile")
    assert "client-secret-value" not in repr(config)
