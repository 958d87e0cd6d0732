"""`deskmail tickets list|show|set|reply`: the ticket page's operations on the command line.

``list`` lives in ``ticket_list`` (views, search, cursors), ``set`` in
``ticket_change`` (the workflow's fields, checked against a version).

``reply`` goes through ``services.api.replies`` exactly like the page: it writes
the comment and its outbox row; the relay of a running api process (or `deskmail
up`) sends it on. ``--relay-now`` relays pending outgoing mail to the broker from
this command, for when no api process runs. None of these commands migrates the
database: they ask for `deskmail db migrate` when it is not at this release's schema.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from services.cli.common import (
    bootstrap_option,
    bootstrap_servers,
    broker_errors,
    config_option,
    fail,
    kafka_clients,
    load_config,
    open_store,
)
from services.cli.ticket_change import set_fields
from services.cli.ticket_list import list_tickets
from services.cli.ticket_text import as_text, clean, people
from services.common.config import Config


@click.group("tickets")
def group() -> None:
    """Look at, change and answer tickets."""


group.add_command(list_tickets)
group.add_command(set_fields)


@group.command("show")
@click.argument("key")
@config_option
@click.option("--json", "as_json", is_flag=True, help="The ticket and its thread as one JSON object.")
@click.option("--quoted", "with_quoted", is_flag=True, help="Also print the quoted text split off each reply.")
def show(key: str, config_path: str | None, as_json: bool, with_quoted: bool) -> None:
    """Show a ticket (status, assignee, version, follow-ups) and its whole
    thread with its changes, oldest first. A reply by mail shows its new
    text; the quoted history split off it is counted (--quoted prints it)."""
    from services.api import serialize

    with open_store(load_config(config_path)) as store:
        detail = store.get_ticket(key)
    if detail is None:
        fail(f"no ticket {clean(key)}")
    if as_json:
        click.echo(json.dumps(serialize.ticket(detail), ensure_ascii=False, indent=2))
    else:
        click.echo(as_text(detail, with_quoted=with_quoted), nl=False)


@group.command("reply")
@click.argument("key")
@click.option("--text", required=True, help="The reply's text; '-' reads it from standard input.")
@click.option("--to", "to", multiple=True, help="A recipient (repeatable); default: the ticket's external participants.")
@click.option("--cc", multiple=True, help="A Cc recipient (repeatable).")
@click.option("--signature", default=None, help="Signature alias; default: the sending mailbox's first.")
@click.option("--internal", is_flag=True, help="An internal comment: stored, never emailed.")
@click.option("--as", "agent", envvar="DESKMAIL_AGENT", required=True,
              help="The replying organization member's email (or DESKMAIL_AGENT).")
@click.option("--relay-now", is_flag=True, help="Also relay pending outgoing mail to the broker now.")
@bootstrap_option
@config_option
def reply(
    key: str, text: str, to: tuple[str, ...], cc: tuple[str, ...], signature: str | None, internal: bool,
    agent: str, relay_now: bool, bootstrap: str | None, config_path: str | None,
) -> None:
    """Reply on a ticket as the page does: an email to the recipients, or with
    --internal a comment that is never emailed."""
    from services.api.replies import ReplyError, ReplyRequest, post_reply

    config = load_config(config_path)
    if relay_now and not bootstrap_servers(bootstrap, config):
        raise click.UsageError("--relay-now needs --bootstrap or kafka.bootstrap_servers")
    if text == "-":
        text = sys.stdin.read()
    with open_store(config) as store:
        request = ReplyRequest(
            ticket_key=key, author_email=agent, text=text, to=to or None, cc=cc,
            signature=signature, internal=internal,
        )
        try:
            stored = post_reply(config, store, request)
        except ReplyError as exc:
            fail(exc.message)
        e = stored.entry
        if e.kind == "mail_out":
            click.echo(f"{stored.ticket_key}: reply {e.id} {e.delivery_status}: to {people(e.to)}"
                       f"{'; cc ' + people(e.cc) if e.cc else ''} (outbound {e.outbound_id})")
        else:
            click.echo(f"{stored.ticket_key}: internal comment {e.id} stored")
        if relay_now:
            click.echo(f"relayed {_relay(config, store, bootstrap)} outgoing mail(s) to {config.topics['outbound']}")


def _relay(config: Config, store: Any, bootstrap: str | None) -> int:
    from services.api.relay import OutboxRelay

    with broker_errors("the reply is stored, but relaying failed"):
        producer = kafka_clients(config, bootstrap).producer()
        try:
            return OutboxRelay(store, producer, config.topics["outbound"]).relay_pending()
        finally:
            producer.close()
