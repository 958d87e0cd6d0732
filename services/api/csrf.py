"""Form tokens: a signed double-submit token, independent of who is signed in.

A page with a form puts a token in a cookie and the same token in a hidden
field; a form post is accepted only when both are present, equal, and signed
with the api's key. Another site can make a browser post a form but can neither
read the cookie nor guess a signature, so it cannot fill in the field. Signing
means a cookie planted from a neighbouring subdomain is worthless too.

The key is derived from ``api.session_secret`` when set (every replica and every
restart accepts the same tokens); unset, it is random per start, so a form
loaded before a restart is refused with "reload the page".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from services.common.config import Config

__all__ = ["COOKIE", "FIELD", "CsrfTokens"]

COOKIE = "deskmail_csrf"
FIELD = "csrf_token"
_PURPOSE = b"deskmail form token v1\x00"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class CsrfTokens:
    """Mints and checks form tokens with one key; the key never leaves the object."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes):
        self._key = key

    def __repr__(self) -> str:
        return "CsrfTokens(<key>)"

    @classmethod
    def from_config(cls, config: Config) -> CsrfTokens:
        secret = config.api_session_secret
        if secret is None:
            return cls(secrets.token_bytes(32))
        return cls(hashlib.sha256(_PURPOSE + secret.reveal().encode("utf-8")).digest())

    def _sign(self, nonce: str) -> str:
        return _b64(hmac.new(self._key, _PURPOSE + nonce.encode("ascii"), hashlib.sha256).digest())

    def mint(self) -> str:
        nonce = secrets.token_urlsafe(24)
        return f"{nonce}.{self._sign(nonce)}"

    def valid(self, token: str | None) -> bool:
        """Whether ``token`` was minted with this key."""
        if not token or not token.isascii():
            return False
        nonce, dot, signature = token.partition(".")
        return bool(dot) and hmac.compare_digest(signature, self._sign(nonce))

    def refusal(self, cookie: str | None, field: str | None) -> str | None:
        """Why a form post carrying ``cookie`` and ``field`` is refused, or None."""
        if not field:
            return "the form has no CSRF token: reload the page and send it again"
        if not cookie:
            return "no CSRF cookie came with the form (cookies blocked?): reload the page and send it again"
        if not hmac.compare_digest(cookie.encode("utf-8"), field.encode("utf-8")):
            return "the form's CSRF token does not match this browser's: reload the page and send it again"
        if not self.valid(cookie):
            return "the form's CSRF token has expired (the api restarted?): reload the page and send it again"
        return None
