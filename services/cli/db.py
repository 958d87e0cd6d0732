"""`deskmail db migrate` (the one command that changes the schema: on Kubernetes the
Job deskmail-db-migrate, and `deskmail up` before it starts the processes) and
`deskmail db status`."""

from __future__ import annotations

import json

import click

from services.cli.common import DATABASE_NEWER, UNAVAILABLE, config_option, load_config, store_errors


@click.group("db")
def group() -> None:
    """The tickets database."""


@group.command("migrate")
@config_option
def migrate(config_path: str | None) -> None:
    """Create or upgrade the tickets database schema.

    Refuses (exit code 4, changing nothing) a database a newer deskmail migrated.
    """
    from services.tickets import TicketStore

    with store_errors():
        store = TicketStore(load_config(config_path).database_url)
        try:
            store.migrate()
        finally:
            store.close()
    click.echo("database is up to date")


@group.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object: state, revision, head, version.")
def status(config_path: str | None, as_json: bool) -> None:
    """The schema's revision against this release's, without changing anything.

    Exit code 0 when it is current, 3 when it is missing or behind (`deskmail db
    migrate` would upgrade it), 4 when a newer deskmail migrated it.
    """
    from services.common import build
    from services.tickets import TicketStore

    with store_errors():
        store = TicketStore(load_config(config_path).database_url)
        try:
            state, revision, head = store.schema_revisions()
        finally:
            store.close()
    if as_json:
        click.echo(json.dumps({"state": state, "revision": revision, "head": head, "version": build.version()}))
    else:
        click.echo(f"{state}: the tickets database is at revision {revision or '(none)'}; "
                   f"this deskmail {build.version()} knows up to {head}")
    if state == "ahead":
        raise SystemExit(DATABASE_NEWER)
    if state != "current":
        raise SystemExit(UNAVAILABLE)
