"""The checks of an OpenID Connect sign-in (authorization code with PKCE), without I/O.

``begin`` makes one sign-in's secrets (state, nonce, PKCE verifier), kept in a
signed cookie (``services.api.session``) until the provider sends the browser
back; ``check_callback`` refuses a callback whose state is not that browser's;
``id_token_claims`` verifies the ID token (signature against the provider's keys,
issuer, audience, expiry, nonce); ``member_email`` takes the member from the
``email`` claim. ``services.api.signin`` does the HTTP around them.

Every refusal is ``SignInRefused`` with the status and a reason fit for the page;
a provider's error text is never copied into it unescaped (the page escapes it).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt  # Authlib's JOSE library (authlib.jose is deprecated in its favour)
from joserfc.errors import JoseError
from joserfc.jwk import KeySet


class SignInRefused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class LoginTransaction:
    """One sign-in in progress: what the callback must match."""

    state: str
    nonce: str
    verifier: str
    next: str  # the local path to return to

    def as_dict(self) -> dict[str, str]:
        return {"state": self.state, "nonce": self.nonce, "verifier": self.verifier, "next": self.next}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LoginTransaction | None:
        if data is None:
            return None
        fields = [data.get(k) for k in ("state", "nonce", "verifier", "next")]
        if not all(isinstance(f, str) and f for f in fields):
            return None
        return cls(*fields)  # type: ignore[arg-type]


def safe_next(path: str | None) -> str:
    """``path`` if it is a path on this site, else "/" (no open redirect via ``//host`` or ``/\\host``)."""
    if not path or not path.startswith("/") or path.startswith(("//", "/\\")) or any(c in path for c in "\r\n\\"):
        return "/"
    return path


def begin(next_path: str | None) -> LoginTransaction:
    # 43+ characters: the PKCE verifier's minimum length (RFC 7636).
    return LoginTransaction(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                            verifier=secrets.token_urlsafe(48), next=safe_next(next_path))


def authorization_url(endpoint: str, client_id: str, redirect_uri: str, scopes: tuple[str, ...],
                      tx: LoginTransaction) -> str:
    query = urlencode({
        "response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": " ".join(scopes),
        "state": tx.state, "nonce": tx.nonce,
        "code_challenge": create_s256_code_challenge(tx.verifier), "code_challenge_method": "S256",
    })
    return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"


def check_callback(tx: LoginTransaction | None, params: Mapping[str, str]) -> str:
    """The authorization code of a callback that belongs to this browser's sign-in.

    Raises SignInRefused: 400 without a (valid, unexpired) sign-in in progress or
    with another state; 403 when the provider refused the sign-in.
    """
    if tx is None:
        raise SignInRefused(400, "no sign-in is in progress in this browser (or it took too long): sign in again")
    state = params.get("state") or ""
    if not secrets.compare_digest(state.encode(), tx.state.encode()):
        raise SignInRefused(400, "the sign-in answer does not belong to this browser's sign-in: sign in again")
    if params.get("error"):
        raise SignInRefused(403, f"the identity provider refused the sign-in: {params['error'][:200]}")
    code = params.get("code")
    if not code:
        raise SignInRefused(400, "the identity provider sent no authorization code: sign in again")
    return code


# Asymmetric only: a provider's public keys can never verify an HS256 token made with them.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")


def id_token_claims(id_token: str, jwks: Mapping[str, Any], *, issuer: str, client_id: str, nonce: str,
                    now: float | None = None) -> dict[str, Any]:
    """The verified claims of an ID token: its signature against the provider's
    keys, ``iss``, ``aud`` (and ``azp`` when there are several audiences), ``exp``,
    ``iat``, ``sub`` and the ``nonce`` of this sign-in.

    Raises SignInRefused(403) when any check fails.
    """
    registry = jwt.JWTClaimsRegistry(
        now=int(now if now is not None else time.time()), leeway=60,
        iss={"essential": True, "value": issuer}, aud={"essential": True, "value": client_id},
        nonce={"essential": True, "value": nonce}, exp={"essential": True}, iat={"essential": True},
        sub={"essential": True},
    )
    try:
        token = jwt.decode(id_token, KeySet.import_key_set(dict(jwks)), algorithms=list(ALGORITHMS))  # type: ignore[arg-type]
        registry.validate(token.claims)
    except (JoseError, ValueError) as exc:
        raise SignInRefused(403, f"the ID token is not valid: {type(exc).__name__}") from None
    claims = dict(token.claims)
    audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    if len(audiences) > 1 and claims.get("azp") != client_id:
        raise SignInRefused(403, "the ID token is not valid: it names several audiences but not this client as azp")
    return claims


def member_email(claims: Mapping[str, Any]) -> str:
    """The signed-in address: the ``email`` claim, lower-cased; refused when the
    provider says it is not verified. Raises SignInRefused(403)."""
    email = claims.get("email")
    if not isinstance(email, str) or "@" not in email:
        raise SignInRefused(403, "the identity provider sent no email address: deskmail needs the email scope")
    if "email_verified" in claims and claims["email_verified"] is not True:
        raise SignInRefused(403, f"the identity provider has not verified {email}")
    return email.strip().lower()
