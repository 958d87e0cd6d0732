"""The `api:` section of deskmail.yaml: where the ticket page listens and how agents sign in."""

from __future__ import annotations

import ipaddress
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from services.common.config.base import Section as _Model
from services.common.config.hostport import HostPort, ListenAddress
from services.common.config.secrets import SecretRef


class OidcSettings(_Model):
    """An OpenID Connect provider for ``api.auth.mode: oidc`` (services.api.signin).

    The provider's endpoints come from ``issuer`` + /.well-known/openid-configuration;
    the redirect URI registered there is ``api.public_url`` + /auth/callback.
    """

    issuer: str
    client_id: str
    client_secret: SecretRef | None = None  # None: a public client (PKCE only)
    scopes: tuple[str, ...] = ("openid", "email", "profile")
    session_hours: float = Field(8, gt=0, le=24 * 30)  # a sign-in lasts this long

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        return v.rstrip("/")

    @field_validator("scopes")
    @classmethod
    def _openid(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "openid" not in v or "email" not in v:
            raise ValueError("scopes must include openid and email: the member is the email claim")
        return v


class AuthSettings(_Model):
    """Who may use the ticket page and the JSON API (services.api.context).

    ``none``: no sign-in; allowed only while the api listens on loopback.
    ``proxy``: an authenticating proxy names the agent in ``api.user_header``;
    the header counts only on connections from ``trusted_proxies``.
    ``oidc``: deskmail signs agents in with the OpenID Connect provider ``oidc``.
    API tokens (``Authorization: Bearer``) are accepted in every mode.
    """

    mode: Literal["none", "proxy", "oidc"] = "none"
    # A sidecar proxy (oauth2-proxy in the same pod) connects over loopback.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32", "::1/128")
    oidc: OidcSettings | None = None

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for entry in v:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8)") from None
        return v


class ApiSettings(_Model):
    listen: ListenAddress = HostPort("127.0.0.1", 8080)
    user_header: str | None = None  # e.g. X-Forwarded-Email, set by an authenticating proxy (auth.mode proxy)
    # Where agents' browsers reach the page (https://desk.example.com): the only Host
    # and Origin accepted besides loopback. Unset: the listen address and loopback only.
    public_url: str | None = None
    session_secret: SecretRef | None = None  # signs form tokens; unset: a random key per start
    auth: AuthSettings = AuthSettings()

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        if v is None:
            return None
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{v!r} is not an http:// or https:// URL")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"{v!r}: public_url is scheme://host[:port] only (deskmail serves from the root)")
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        default = {"http": 80, "https": 443}[parts.scheme]
        port = "" if parts.port in (None, default) else f":{parts.port}"
        return f"{parts.scheme}://{host}{port}"  # as a browser writes it in Origin

    @model_validator(mode="after")
    def _mode_and_header(self) -> ApiSettings:
        if self.auth.mode == "proxy" and not self.user_header:
            raise ValueError("api.auth.mode proxy needs api.user_header: the header the proxy names the agent in")
        if self.auth.mode == "none" and self.user_header:
            # Silently ignoring the header would let anyone act as anyone.
            raise ValueError("api.user_header is set but api.auth.mode is none: set api.auth.mode: proxy")
        if self.auth.mode == "oidc":
            missing = [name for name, value in (("api.auth.oidc", self.auth.oidc), ("api.public_url", self.public_url),
                                                ("api.session_secret", self.session_secret)) if value is None]
            if missing:
                raise ValueError(f"api.auth.mode oidc needs {', '.join(missing)}: the provider, the redirect URI's "
                                 "base and the key that signs the session cookie")
            if self.user_header:
                raise ValueError("api.user_header is set but api.auth.mode is oidc: the header would be ignored")
        return self
