"""`deskmail tickets show|reply`: the ticket page's operations on the command line."""

from __future__ import annotations

import click


@click.group("tickets_extra")
def tickets_extra() -> None:
    """Commands added to `deskmail tickets`."""
