"""`deskmail config check`."""

from __future__ import annotations

import click

from services.cli.common import load_config
from services.common.config import Config


@click.group("config")
def group() -> None:
    """Validate configuration."""


@group.command("check")
@click.argument("path", type=click.Path(dir_okay=False), required=False, envvar="DESKMAIL_CONFIG")
def check(path: str | None) -> None:
    """Validate deskmail.yaml at PATH (or DESKMAIL_CONFIG); print each error with its line and exit 2 on errors."""
    cfg = load_config(path, what="missing argument PATH (the deskmail.yaml to check), or set DESKMAIL_CONFIG")
    mailboxes = cfg.mailboxes
    click.echo(
        f"{path}: ok: {len(cfg.queues)} queue(s), {len(mailboxes)} mailbox(es) "
        f"({sum(1 for m in mailboxes if m.imap)} IMAP, {sum(1 for m in mailboxes if m.ingress)} ingress), "
        f"{len(cfg.organization.members)} member(s), {sum(len(q.rules) for q in cfg.queues)} routing rule(s)"
    )
    blobs = f"s3 {cfg.blob_s3.describe()}" if cfg.blob_s3 else f"folder {cfg.blob_path}"
    click.echo(f"{path}: blobs: {blobs}")
    from services.api.context import auth_refusal

    refusal = auth_refusal(cfg)
    if refusal is not None:
        click.echo(f"{path}: warning: `deskmail run api` will refuse to start: {refusal}", err=True)
    if cfg.organization.members and not cfg.organization.sender_authentication.trusted_authserv_ids:
        click.echo(
            f"{path}: warning: member mail is trusted by its From line, which anyone can write; "
            "set organization.sender_authentication.trusted_authserv_ids to the receiving servers "
            "whose Authentication-Results prove it",
            err=True,
        )
    for warning in _rule_warnings(cfg):
        click.echo(f"{path}: warning: {warning}", err=True)


def _rule_warnings(cfg: Config) -> list[str]:
    """Rules that are valid but will not do what they seem to."""
    trusted = bool(cfg.organization.sender_authentication.trusted_authserv_ids)
    out = []
    for queue in cfg.queues:
        for rule in queue.rules:
            if rule.match.authenticated is not None and not trusted:
                out.append(f"rule {rule.name} of queue {queue.key} matches `authenticated: "
                           f"{str(rule.match.authenticated).lower()}`, but without "
                           "organization.sender_authentication.trusted_authserv_ids no mail proves its From")
            target = cfg.queue(rule.actions.queue) if rule.actions.queue else None
            if target is not None and not any(m.smtp for m in target.mailboxes):
                out.append(f"rule {rule.name} of queue {queue.key} moves tickets to {target.key}, which has no "
                           "mailbox with SMTP settings: its agents cannot answer them by mail")
    return out
