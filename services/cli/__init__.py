"""The `deskmail` command line: one module per command group, shared options and
exit codes in ``common`` (see there for what each exit code means)."""

from __future__ import annotations

import importlib
from typing import Any

import click

from services.common import build

# Each command, where it lives: a process started as `deskmail run router` loads the
# router's code, not the API's, the database's and every other command's (less memory
# in every pod, faster start).
COMMANDS = {
    "config": "services.cli.config:group",
    "topics": "services.cli.topics:group",
    "replay": "services.cli.replay:replay",
    "deadletters": "services.cli.deadletters:group",
    "suspended": "services.cli.suspended:group",
    "run": "services.cli.run:run",
    "up": "services.cli.run:up",
    "db": "services.cli.db:group",
    "tickets": "services.cli.tickets:group",
    "tokens": "services.cli.tokens:group",
    "mailbox": "services.cli.mailbox:group",
}


class LazyGroup(click.Group):
    """A group whose commands are imported when one is run (or help lists them)."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            if not isinstance(command, click.Command):
                raise TypeError(f"{self.lazy[cmd_name]} is not a click command")
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup, lazy=COMMANDS)
@click.version_option(build.version(), message=build.describe(), help="Show the version and the source revision, and exit.")
def main() -> None:
    """deskmail: every email sent to a queue's address becomes a ticket.

    Exit codes: 0 done, 1 the operation failed, 2 usage or configuration error,
    3 a dependency (database, broker) is unreachable or not ready, 4 the database
    was migrated by a newer deskmail.
    """
