"""What every request handler of the api shares: the config, the store, the relay,
the releaser of suspended mail, and who the agent is."""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import HTTPException, Request

from services.api.session import SESSION_COOKIE, SignedValues
from services.common.config import Config, Member
from services.tickets import TicketStore


class Waker(Protocol):
    """Anything told that an outgoing mail was stored (the outbox relay)."""

    def wake(self) -> None: ...


class Releasing(Protocol):
    """What releases suspended mail through the pipeline (``services.suspended.Releaser``)."""

    def release(self, item_id: str, by: str | None) -> Any: ...


@dataclass(frozen=True)
class ApiContext:
    config: Config
    store: TicketStore
    relay: Waker | None  # None: nothing relays in this process (tests, a read-only api)
    releaser: Releasing | None = None  # None: no broker here, suspended mail cannot be released

    def stored(self) -> None:
        if self.relay is not None:
            self.relay.wake()


def context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.deskmail
    return ctx


def signed_in_agent(request: Request) -> Member | None:
    """The organization member a request acts as, per ``api.auth``.

    - ``Authorization: Bearer TOKEN`` (an API token, `deskmail tokens create`) is
      accepted in every mode; an unknown, revoked or expired token is 401.
    - ``none``: without a token there is no identity here (None) and a reply names
      its author itself; the api runs so only on loopback (see ``auth_refusal``).
    - ``proxy``: ``api.user_header`` names the agent, but only on a connection from
      ``api.auth.trusted_proxies``; from anywhere else the header is ignored.
    - ``oidc``: the signed session cookie set by /auth/callback
      (``services.api.signin``); without one a page redirects to /login (app.py).

    Raises HTTPException: 401 (JSON, with ``WWW-Authenticate``) without valid
    credentials, 403 when they name someone who is not an organization member.
    """
    ctx = context(request)
    config = ctx.config
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise _unauthorized("the Authorization header must be `Bearer TOKEN`")
        email = ctx.store.token_member(token.strip())
        if email is None:
            raise _unauthorized("the API token is unknown, revoked or expired")
        member = config.member(email)
        if member is None:
            raise HTTPException(403, f"{email} is no longer an organization member")
        return member
    if config.api.auth.mode == "none":
        return None
    if config.api.auth.mode == "oidc":
        return _session_member(request, config)
    header = config.api.user_header
    assert header is not None  # the config requires it in proxy mode
    if not _from_trusted_proxy(request, config.api.auth.trusted_proxies):
        raise _unauthorized("sign in: send an API token, or come through the authenticating proxy")
    value = request.headers.get(header, "").strip()
    if not value:
        raise _unauthorized(f"no {header} header: sign in through the proxy")
    member = config.member(value)
    if member is None:
        raise HTTPException(403, f"{value} is not an organization member")
    return member


def _session_member(request: Request, config: Config) -> Member:
    sessions: SignedValues = request.app.state.signin.sessions
    session = sessions.open(request.cookies.get(SESSION_COOKIE), time.time())
    email = session.get("email") if session else None
    if not isinstance(email, str):
        raise _unauthorized("sign in: open /login, or send an API token")
    member = config.member(email)
    if member is None:
        raise HTTPException(403, f"{email} is no longer an organization member")
    return member


def _unauthorized(reason: str) -> HTTPException:
    return HTTPException(401, reason, headers={"WWW-Authenticate": 'Bearer realm="deskmail"'})


def _from_trusted_proxy(request: Request, trusted: tuple[str, ...]) -> bool:
    host = request.client.host if request.client else None
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(entry, strict=False) for entry in trusted)


def auth_refusal(config: Config) -> str | None:
    """Why the api must not start with this config, or None.

    ``api.auth.mode: none`` lets anyone who reaches the api act as any member,
    so it is allowed only while the api listens on loopback.
    """
    if config.api.auth.mode != "none":
        return None
    host = config.api.listen.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback:
        return None
    return (f"api.auth.mode is none (no sign-in), so the api listens only on loopback, not on {config.api.listen}: "
            "set api.auth.mode: proxy (behind an authenticating proxy) or listen on 127.0.0.1")
