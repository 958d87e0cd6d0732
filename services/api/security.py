"""Browser hardening around every request and response of the api.

``BrowserGuard`` is an ASGI middleware that

* adds the security headers to every response it sees (pages, JSON, errors,
  static files, refusals): a Content-Security-Policy without inline script or
  style, ``nosniff``, no Referer to other sites, ``DENY`` framing. A handler that needs a
  different policy (remote images on request, a sandboxed attachment) sets its
  own Content-Security-Policy header, which is kept;
* refuses a request whose ``Host`` is not deskmail's (DNS rebinding: a page at
  evil.test re-pointed to 127.0.0.1 reaches the api with ``Host: evil.test``);
* refuses an unsafe request (POST, PUT, PATCH, DELETE) from another origin. A
  form-like body (urlencoded, multipart, text/plain or no type: what a browser
  sends cross-site without asking) needs an ``Origin`` naming deskmail; ``null``
  (a sandboxed frame, a file:// page) and a missing Origin are refused. Other
  bodies (JSON) are checked when they carry an Origin.

The form token (``services.api.csrf``) is the second, independent check on forms.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.common.config import Config

__all__ = ["BrowserGuard", "SitePolicy", "content_security_policy"]

_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src {img}; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    # Not no-referrer: under it a browser sends "Origin: null" with the page's own form
    # posts, which the Origin check must refuse. same-origin sends no Referer to any
    # other site either, and makes a cross-site post carry Origin null (refused).
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
}
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The bodies a browser sends to another origin without a preflight.
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data", "text/plain", ""})
LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})
# Probes and scrapes address the pod by its IP and carry no agent data.
HOST_EXEMPT = frozenset({"/healthz", "/readyz", "/metrics"})


def content_security_policy(*, remote_images: bool = False) -> str:
    """The page policy; ``remote_images`` adds ``https:`` to img-src (the agent
    asked to load a mail's images, for that one response)."""
    return _POLICY.format(img="'self' https:" if remote_images else "'self'")


def _hostname(netloc: str) -> str | None:
    try:
        return urlsplit("//" + netloc.strip()).hostname
    except ValueError:
        return None


@dataclass(frozen=True)
class SitePolicy:
    """Which Host names and Origins are deskmail's own."""

    public_origin: str | None  # api.public_url, as a browser writes it in Origin
    hosts: frozenset[str]  # host names accepted in Host, with any port

    @classmethod
    def from_config(cls, config: Config) -> SitePolicy:
        hosts = set(LOOPBACK)
        listen = config.api.listen.host.strip("[]").lower()
        if listen not in WILDCARDS:
            hosts.add(listen)
        public = config.api.public_url
        if public is not None:
            hosts.add(urlsplit(public).hostname or "")
        return cls(public, frozenset(hosts))

    def refusal(self, method: str, path: str, headers: Headers) -> str | None:
        """Why the request is refused (403), or None."""
        host = headers.get("host", "")
        if path not in HOST_EXEMPT and _hostname(host) not in self.hosts:
            where = f"api.public_url ({self.public_origin})" if self.public_origin else "the listen address or localhost"
            return f"Host {host[:100]!r} is not this deskmail's: use {where}"
        if method not in UNSAFE_METHODS:
            return None
        origin = headers.get("origin")
        content_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if origin is None:
            if content_type in FORM_TYPES:
                return "a form post without an Origin header is refused: send it from deskmail's own page"
            return None
        if origin == "null":
            return "Origin null (a sandboxed frame or a local file) may not post to deskmail"
        if origin.lower() == self.public_origin:
            return None
        own = {host.strip().lower(), *(h.strip().lower() for h in headers.get("x-forwarded-host", "").split(","))}
        try:
            netloc = urlsplit(origin).netloc.lower()
        except ValueError:
            netloc = ""
        if netloc and netloc in own:
            return None
        return f"posted from another site ({origin[:100]}): deskmail accepts posts from its own pages only"


Refuser = Callable[[Request, int, str], Response]


class BrowserGuard:
    """The ASGI middleware: the headers on every response, the checks on every request."""

    def __init__(self, app: ASGIApp, site: SitePolicy, refuse: Refuser):
        self.app = app
        self.site = site
        self.refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        started = False

        async def send_hardened(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers.setdefault("content-security-policy", content_security_policy())
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        problem = self.site.refusal(scope["method"], scope["path"], Headers(scope=scope))
        if problem is not None:
            await self.refuse(Request(scope, receive), 403, problem)(scope, receive, send_hardened)
            return
        try:
            await self.app(scope, receive, send_hardened)
        except Exception:
            # Answer the 500 here, inside this middleware, so it carries the headers too;
            # then re-raise for Starlette's outermost handler, which logs it (and, the
            # response having started, sends nothing more).
            if not started:
                await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send_hardened)
            raise
