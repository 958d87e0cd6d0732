"""Sign-in with an OpenID Connect provider (``api.auth.mode: oidc``): /login,
/auth/callback, /logout.

/login keeps a new sign-in's state, nonce and PKCE verifier in a signed cookie
(10 minutes) and sends the browser to the provider; /auth/callback checks them
(``services.api.oidc``), exchanges the code, verifies the ID token and, when its
verified ``email`` is a configured member, sets the session cookie: signed with
``api.session_secret``, HttpOnly, SameSite=Lax, Secure when ``api.public_url`` is
https, valid ``api.auth.oidc.session_hours``. /logout (a form post with the CSRF
token) clears it. ``services.api.context`` reads the cookie on every request.

The provider's metadata and keys are fetched on first use, not at start, so the
api starts while the provider is down; a changed signing key is fetched again
once per failed ID token.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.api import oidc, web
from services.api.context import context
from services.api.session import LOGIN_COOKIE, SESSION_COOKIE, SignedValues
from services.common.config import Config, OidcSettings, Secret

LOGIN_SECONDS = 600
CALLBACK = "/auth/callback"

router = APIRouter(include_in_schema=False)


class Provider:
    """The OpenID Connect provider's endpoints and keys, fetched once and kept."""

    def __init__(self, settings: OidcSettings, client_secret: Secret | None, timeout: float = 10.0):
        self.settings = settings
        self._secret = client_secret
        self._timeout = timeout
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._jwks: dict[str, Any] | None = None

    def _get(self, url: str) -> dict[str, Any]:
        response = httpx.get(url, timeout=self._timeout, headers={"accept": "application/json"})
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None:
                data = self._get(f"{self.settings.issuer}/.well-known/openid-configuration")
                if str(data.get("issuer", "")).rstrip("/") != self.settings.issuer:
                    raise HTTPException(502, f"the identity provider names itself {data.get('issuer')!r}, "
                                             f"not api.auth.oidc.issuer {self.settings.issuer!r}")
                self._metadata = data
            return self._metadata

    def jwks(self, refresh: bool = False) -> dict[str, Any]:
        uri = self.metadata()["jwks_uri"]
        with self._lock:
            if self._jwks is None or refresh:
                self._jwks = self._get(uri)
            return self._jwks

    def exchange(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        """The token endpoint's answer for ``code`` (client_secret_basic, or a public client)."""
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
                "code_verifier": verifier}
        auth = None
        if self._secret is not None:
            auth = httpx.BasicAuth(self.settings.client_id, self._secret.reveal())
        else:
            form["client_id"] = self.settings.client_id
        response = httpx.post(self.metadata()["token_endpoint"], data=form, auth=auth, timeout=self._timeout)
        if response.status_code != 200:
            raise oidc.SignInRefused(403, f"the identity provider refused the code ({response.status_code})")
        data: dict[str, Any] = response.json()
        return data

    def userinfo(self, access_token: str) -> dict[str, Any]:
        response = httpx.get(self.metadata()["userinfo_endpoint"], timeout=self._timeout,
                             headers={"authorization": f"Bearer {access_token}"})
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data


class SignIn:
    """What the sign-in routes share: the provider and the two cookie signers."""

    def __init__(self, config: Config):
        settings = config.api.auth.oidc
        assert settings is not None and config.api_session_secret is not None  # the config requires both
        secret = config.api_session_secret.reveal()
        self.provider = Provider(settings, config.api_oidc_client_secret)
        self.sessions = SignedValues(secret, "session")
        self.logins = SignedValues(secret, "login")
        self.redirect_uri = f"{config.api.public_url}{CALLBACK}"
        self.secure = (config.api.public_url or "").startswith("https:")
        self.session_seconds = settings.session_hours * 3600


def _signin(request: Request) -> SignIn:
    signin: SignIn = request.app.state.signin
    return signin


@router.get("/login")
def login(request: Request, next: str = "/") -> Response:
    signin = _signin(request)
    try:
        endpoint = signin.provider.metadata()["authorization_endpoint"]
    except httpx.HTTPError:
        raise HTTPException(502, "the identity provider cannot be reached: try again shortly") from None
    tx = oidc.begin(next)
    settings = signin.provider.settings
    response = RedirectResponse(oidc.authorization_url(endpoint, settings.client_id, signin.redirect_uri,
                                                       settings.scopes, tx), status_code=303)
    response.set_cookie(LOGIN_COOKIE, signin.logins.seal(tx.as_dict(), time.time() + LOGIN_SECONDS),
                        max_age=LOGIN_SECONDS, httponly=True, samesite="lax", secure=signin.secure, path="/auth")
    return response


@router.get(CALLBACK)
def callback(request: Request) -> Response:
    signin = _signin(request)
    config = context(request).config
    tx = oidc.LoginTransaction.from_dict(signin.logins.open(request.cookies.get(LOGIN_COOKIE), time.time()))
    try:
        code = oidc.check_callback(tx, dict(request.query_params))
        assert tx is not None
        claims = _verified_claims(signin, code, tx)
        email = oidc.member_email(claims)
    except oidc.SignInRefused as refused:
        raise HTTPException(refused.status, refused.reason) from None
    except httpx.HTTPError:
        raise HTTPException(502, "the identity provider cannot be reached: try again shortly") from None
    member = config.member(email)
    if member is None:
        raise HTTPException(403, f"{email} is not a member of this deskmail organization")
    response = RedirectResponse(tx.next, status_code=303)
    response.set_cookie(SESSION_COOKIE, signin.sessions.seal({"email": member.email},
                                                             time.time() + signin.session_seconds),
                        max_age=int(signin.session_seconds), httponly=True, samesite="lax", secure=signin.secure,
                        path="/")
    response.delete_cookie(LOGIN_COOKIE, path="/auth")
    return response


def _verified_claims(signin: SignIn, code: str, tx: oidc.LoginTransaction) -> dict[str, Any]:
    provider = signin.provider
    tokens = provider.exchange(code, tx.verifier, signin.redirect_uri)
    id_token = tokens.get("id_token")
    if not isinstance(id_token, str):
        raise oidc.SignInRefused(403, "the identity provider sent no ID token: is the openid scope allowed?")
    def verified(jwks: dict[str, Any]) -> dict[str, Any]:
        return oidc.id_token_claims(id_token, jwks, issuer=provider.settings.issuer,
                                    client_id=provider.settings.client_id, nonce=tx.nonce)

    try:
        claims = verified(provider.jwks())
    except oidc.SignInRefused:
        claims = verified(provider.jwks(refresh=True))  # the provider may have rotated its key
    if "email" not in claims and isinstance(tokens.get("access_token"), str):
        info = provider.userinfo(tokens["access_token"])
        if info.get("sub") == claims.get("sub"):
            claims = {**claims, **{k: info[k] for k in ("email", "email_verified") if k in info}}
    return claims


@router.post("/logout", response_class=HTMLResponse, dependencies=[Depends(web.csrf_protect)])
def logout(request: Request) -> Response:
    response = web.templates.TemplateResponse(request, "error.html", {
        "status": "Signed out", "detail": "You are signed out of deskmail."})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
