"""`deskmail tokens create|list|revoke`: API tokens for scripts and the CLI.

A token signs in to the JSON API as one organization member
(`Authorization: Bearer TOKEN`) in every `api.auth.mode`. `create` prints it
once, as the last line of standard output; only its hash is stored.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import click

from services.cli.common import config_option, fail, load_config, open_store

_DURATION = re.compile(r"(\d{1,5})([dhw])")
_UNITS = {"h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}


def parse_expiry(value: str, now: datetime) -> datetime | None:
    """``90d``, ``12h``, ``2w`` from now, or ``never``; raises click.BadParameter."""
    if value == "never":
        return None
    match = _DURATION.fullmatch(value.strip())
    if match is None or int(match.group(1)) == 0:
        raise click.BadParameter(f"{value!r}: write a duration like 90d, 12h or 2w, or never", param_hint="--expires")
    return now + int(match.group(1)) * _UNITS[match.group(2)]


@click.group("tokens")
def group() -> None:
    """API tokens for scripts and the CLI."""


@group.command("create")
@click.option("--as", "member", required=True, help="The organization member the token acts as.")
@click.option("--name", default="cli", show_default=True, help="What the token is for (shown by `tokens list`).")
@click.option("--expires", default="90d", show_default=True, help="Lifetime: 90d, 12h, 2w, or never.")
@config_option
def create(member: str, name: str, expires: str, config_path: str | None) -> None:
    """Make a token; it is printed once, as the last line of standard output."""
    from services.tickets import InvalidToken

    config = load_config(config_path)
    if config.member(member) is None:
        raise click.BadParameter(f"{member} is not a member of the organization", param_hint="--as")
    now = datetime.now(timezone.utc)
    expires_at = parse_expiry(expires, now)
    with open_store(config) as store:
        try:
            token_id, token = store.create_token(member, name, expires_at, now)
        except InvalidToken as exc:
            fail(str(exc))
    until = expires_at.isoformat(timespec="seconds") if expires_at else "never"
    click.echo(f"token {token_id} for {member.lower()} ({name}), expires {until}; it is shown only now:")
    click.echo(token)


@group.command("list")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_tokens(config_path: str | None, as_json: bool) -> None:
    """List tokens (never the tokens themselves)."""
    with open_store(load_config(config_path)) as store:
        found = store.list_tokens()
    now = datetime.now(timezone.utc)

    def iso(value: datetime | None) -> str | None:
        return value.isoformat(timespec="seconds") if value else None

    for t in found:
        row = {"id": t.id, "member": t.member_email, "name": t.name, "state": t.state(now),
               "created": iso(t.created_at), "expires": iso(t.expires_at), "last_used": iso(t.last_used_at)}
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            click.echo(f"{t.id:>4}  {row['state']:<8} {t.member_email:<30} {t.name:<20} "
                       f"expires {row['expires'] or 'never'}  last used {row['last_used'] or 'never'}")
    if not as_json and not found:
        click.echo("no tokens", err=True)


@group.command("revoke")
@click.argument("token_id", type=click.IntRange(min=1))
@config_option
def revoke(token_id: int, config_path: str | None) -> None:
    """Revoke token TOKEN_ID at once."""
    with open_store(load_config(config_path)) as store:
        if not store.revoke_token(token_id):
            fail(f"no active token {token_id}")
    click.echo(f"token {token_id} revoked")
