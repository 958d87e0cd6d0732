"""A real OpenID Connect provider for the sign-in tests (the oidc-provider-mock package).

It runs in a thread on localhost, accepts any client id, secret and redirect URI,
and signs in whoever its authorization page is told (a predefined user's button,
or any ``sub`` typed in). ``set_user`` sets the claims its ID token carries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from oidc_provider_mock import User, run_server_in_thread

CLIENT_ID = "deskmail-tests"
CLIENT_SECRET = "oidc-client-Secret-9931"


@dataclass(frozen=True)
class Provider:
    issuer: str

    def set_user(self, sub: str, **claims: object) -> None:
        """The claims of ``sub``'s next ID tokens (replacing earlier ones)."""
        httpx.put(f"{self.issuer}/users/{sub}", json=claims, timeout=10).raise_for_status()


@contextmanager
def provider(*users: tuple[str, dict[str, object]]) -> Iterator[Provider]:
    with run_server_in_thread(user_claims=[User(sub=sub, claims=claims) for sub, claims in users]) as server:
        yield Provider(f"http://localhost:{server.server_port}")
