"""API tokens: scripts and the CLI sign in to the JSON API with ``Authorization:
Bearer TOKEN``.

A token is ``dmk_`` plus 32 random bytes (URL-safe base64). It is shown once, when
it is made; the database keeps only its SHA-256, so a copy of the database (or a
backup) reveals no usable token, and a lookup by hash needs no comparison of
secrets. A token belongs to one organization member; whether that member may still
act (is still configured, has access to a queue) is decided on every request by
the api, not here. Revoking is immediate; an expired token is refused.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from services.tickets.errors import InvalidToken
from services.tickets.tables import TOKEN_NAME, api_tokens

PREFIX = "dmk_"


@dataclass(frozen=True)
class ApiToken:
    """What `deskmail tokens list` shows: never the token itself."""

    id: int
    member_email: str
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(conn: Connection, member_email: str, name: str, expires_at: datetime | None,
           now: datetime) -> tuple[int, str]:
    """Store a new token for ``member_email``; returns (id, the token)."""
    name = name.strip()
    if not name or len(name) > TOKEN_NAME or any(ch in name for ch in "\r\n\x00"):
        raise InvalidToken(f"a token name is 1-{TOKEN_NAME} characters on one line")
    if expires_at is not None and expires_at <= now:
        raise InvalidToken("the expiry is in the past")
    token = PREFIX + secrets.token_urlsafe(32)
    result = conn.execute(api_tokens.insert().values(
        member_email=member_email.lower(), name=name, token_sha256=digest(token), created_at=now,
        expires_at=expires_at,
    ))
    return int(result.inserted_primary_key[0]), token  # type: ignore[index]


def find(conn: Connection, token: str, now: datetime) -> str | None:
    """The member a valid (known, not revoked, not expired) token belongs to, else None."""
    if not token.startswith(PREFIX) or len(token) > 200:
        return None
    row = conn.execute(
        select(api_tokens.c.id, api_tokens.c.member_email, api_tokens.c.expires_at, api_tokens.c.revoked_at)
        .where(api_tokens.c.token_sha256 == digest(token))
    ).first()
    if row is None or row.revoked_at is not None:
        return None
    expires_at = _utc(row.expires_at)
    if expires_at is not None and expires_at <= now:
        return None
    conn.execute(update(api_tokens).where(api_tokens.c.id == row.id).values(last_used_at=now))
    return str(row.member_email)


def list_all(conn: Connection) -> list[ApiToken]:
    rows = conn.execute(select(api_tokens).order_by(api_tokens.c.id)).all()
    return [ApiToken(r.id, r.member_email, r.name, _utc(r.created_at) or r.created_at, _utc(r.expires_at),
                     _utc(r.revoked_at), _utc(r.last_used_at)) for r in rows]


def revoke(conn: Connection, token_id: int, now: datetime) -> bool:
    """Revoke a token; False when there is no such token or it was revoked already."""
    result = conn.execute(update(api_tokens).where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
                          .values(revoked_at=now))
    return bool(result.rowcount)


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)
