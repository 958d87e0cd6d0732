"""`deskmail tickets list|show|reply`: the ticket page's operations on the command line.

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
from services.cli.ticket_text import as_text, people
from services.common.config import Config


@click.group("tickets")
def group() -> None:
    """Look at and answer tickets."""


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


@group.command("list")
@config_option
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--limit", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_tickets(config_path: str | None, queue: str | None, limit: int, as_json: bool) -> None:
    """List tickets, newest first."""
    with open_store(load_config(config_path)) as store:
        tickets = store.list_tickets(queue=queue, limit=limit)
    for t in tickets:
        if as_json:
            click.echo(json.dumps({
                "key": t.key, "queue": t.queue, "type": t.type, "components": list(t.components),
                "summary": t.summary, "author": t.author_email, "author_name": t.author_name,
                "created": _iso(t.created_at), "comments": t.comment_count,
            }, ensure_ascii=False))
        else:
            click.echo(f"{t.key:<14} {_iso(t.created_at)[:19]}  {t.author_email:<30} {t.comment_count:>3}  {t.summary}")
    if not as_json and not tickets:
        click.echo("no tickets", err=True)


@group.command("show")
@click.argument("key")
@config_option
@click.option("--json", "as_json", is_flag=True, help="The ticket and its thread as one JSON object.")
def show(key: str, config_path: str | None, as_json: bool) -> None:
    """Show a ticket and its whole thread, oldest first."""
    from services.api import serialize

    with open_store(load_config(config_path)) as store:
        detail = store.get_ticket(key)
    if detail is None:
        fail(f"no ticket {key}")
    if as_json:
        click.echo(json.dumps(serialize.ticket(detail), ensure_ascii=False, indent=2))
    else:
        click.echo(as_text(detail), nl=False)


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
