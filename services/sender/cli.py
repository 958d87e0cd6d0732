"""`deskmail mailbox ...`: check a mailbox's connections and send a test mail."""

from __future__ import annotations

import click


@click.group("mailbox")
def mailbox() -> None:
    """Check mailboxes and send test mail."""
