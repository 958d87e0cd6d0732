"""Signed, expiring cookie values: the sign-in session and the sign-in in progress.

A value is ``base64(json).base64(hmac-sha256)``, keyed from ``api.session_secret``
and the value's purpose, so a session cookie is not accepted as a login
transaction or a form token. The content is readable by whoever holds the cookie
(the agent's own browser) but cannot be changed or prolonged: ``"exp"`` (Unix
seconds) is inside the signature. Nothing secret goes in: the session holds the
member's email, the transaction the state, nonce and PKCE verifier of one sign-in,
which are worthless once it completes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import Any

SESSION_COOKIE = "deskmail_session"
LOGIN_COOKIE = "deskmail_login"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class SignedValues:
    """Signs and opens cookie values for one purpose; the key never leaves the object."""

    __slots__ = ("_key",)

    def __init__(self, secret: str, purpose: str):
        self._key = hashlib.sha256(f"deskmail {purpose} v1\x00{secret}".encode()).digest()

    def __repr__(self) -> str:
        return "SignedValues(<key>)"

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def seal(self, data: dict[str, Any], expires_at: float) -> str:
        body = _b64(json.dumps({**data, "exp": int(expires_at)}, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def open(self, value: str | None, now: float) -> dict[str, Any] | None:
        """The sealed data, or None when ``value`` is missing, altered, signed with
        another key or purpose, or expired."""
        if not value or not value.isascii():
            return None
        body, dot, mac = value.partition(".")
        if not dot or not hmac.compare_digest(mac, self._mac(body)):
            return None
        try:
            data = json.loads(_unb64(body))
        except (ValueError, binascii.Error):
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or data["exp"] <= now:
            return None
        return data
