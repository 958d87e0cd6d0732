"""`deskmail db migrate`: the one command (besides the ticketer at start) that changes the schema."""

from __future__ import annotations

import click

from services.cli.common import config_option, load_config, store_errors


@click.group("db")
def group() -> None:
    """The tickets database."""


@group.command("migrate")
@config_option
def migrate(config_path: str | None) -> None:
    """Create or upgrade the tickets database schema."""
    from services.tickets import TicketStore

    with store_errors():
        store = TicketStore(load_config(config_path).database_url)
        try:
            store.migrate()
        finally:
            store.close()
    click.echo("database is up to date")
