"""`deskmail mailbox check|test-send`: a mailbox's connections, and a test mail."""

from __future__ import annotations

import click

from services.cli.common import FAILED, config_option, fail, load_config


@click.group("mailbox")
def group() -> None:
    """Check mailboxes and send test mail."""


@group.command("check")
@click.argument("address")
@config_option
def check(address: str, config_path: str | None) -> None:
    """Try the IMAP and SMTP settings of ADDRESS step by step; exit 1 if a step failed."""
    from services.mailcheck import check_mailbox

    cfg = load_config(config_path)
    try:
        steps = check_mailbox(cfg, address)
    except ValueError as exc:
        fail(str(exc))
    if not steps:
        click.echo(f"{address}: no IMAP or SMTP settings to check (an ingress address without smtp:)")
        return
    width = max(len(step.name) for step in steps)
    for step in steps:
        mark = "✓" if step.ok else "✗"
        click.echo(f"{mark} {step.name:<{width}}  {step.detail}")
    if not all(step.ok for step in steps):
        raise SystemExit(FAILED)


@group.command("test-send")
@click.argument("address")
@click.option("--to", "to", required=True, help="Recipient of the test email.")
@click.option("--signature", "signature", default=None, help="Signature alias (default: the mailbox's first).")
@config_option
def test_send(address: str, to: str, signature: str | None, config_path: str | None) -> None:
    """Send a short test email from ADDRESS through its SMTP settings; exit 1 if it was refused."""
    from services.mailcheck import send_test
    from services.common.smtp_failures import SmtpFailure

    cfg = load_config(config_path)
    try:
        result = send_test(cfg, address, to, signature)
    except ValueError as exc:
        fail(str(exc))
    except SmtpFailure as failure:
        kind = "temporary" if failure.temporary else "permanent"
        click.echo(f"✗ not sent ({kind} failure): {failure.reply}", err=True)
        raise SystemExit(FAILED) from None
    click.echo(f"✓ sent to {to}: {result.code} {result.reply}")
