"""The `deskmail` command line: one module per command group, shared options and
exit codes in ``common`` (see there for what each exit code means)."""

from __future__ import annotations

import click

from services.cli import config, db, deadletters, mailbox, run, suspended, tickets, tokens, topics


@click.group()
@click.version_option(package_name="deskmail")
def main() -> None:
    """deskmail: every email sent to a queue's address becomes a ticket.

    Exit codes: 0 done, 1 the operation failed, 2 usage or configuration error,
    3 a dependency (database, broker) is unreachable or not ready.
    """


for group in (config.group, topics.group, topics.replay, deadletters.group, suspended.group, run.run, run.up,
              db.group, tickets.group, tokens.group, mailbox.group):
    main.add_command(group)
