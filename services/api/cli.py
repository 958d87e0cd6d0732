"""`deskmail tickets show|reply`: the ticket page's operations on the command line.

``reply`` goes through ``services.api.replies`` exactly like the page: it
writes the comment and its outbox row; the relay of a running api process (or
`deskmail up`) sends it on. ``--relay-now`` relays pending outgoing mail to
the broker from this command, for when no api process runs.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from services.api import serialize
from services.tickets import Recipient, ThreadEntry, TicketDetail

_config_option = click.option(
    "--config", "config_path", envvar="DESKMAIL_CONFIG", type=click.Path(dir_okay=False),
    help="deskmail.yaml (or DESKMAIL_CONFIG).",
)


@click.group("tickets_extra")
def tickets_extra() -> None:
    """Commands added to `deskmail tickets`."""


@tickets_extra.command("show")
@click.argument("key")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="The ticket and its thread as one JSON object.")
def show(key: str, config_path: str | None, as_json: bool) -> None:
    """Show a ticket and its whole thread, oldest first."""
    from services.cli import _load
    from services.tickets import TicketStore

    store = TicketStore(_load(config_path).database_url)
    try:
        store.migrate()
        detail = store.get_ticket(key)
    finally:
        store.close()
    if detail is None:
        raise click.ClickException(f"no ticket {key}")
    if as_json:
        click.echo(json.dumps(serialize.ticket(detail), ensure_ascii=False, indent=2))
    else:
        click.echo(_as_text(detail), nl=False)


@tickets_extra.command("reply")
@click.argument("key")
@click.option("--text", required=True, help="The reply's text; '-' reads it from standard input.")
@click.option("--to", "to", multiple=True, help="A recipient (repeatable); default: the ticket's external participants.")
@click.option("--cc", multiple=True, help="A Cc recipient (repeatable).")
@click.option("--signature", default=None, help="Signature alias; default: the sending mailbox's first.")
@click.option("--internal", is_flag=True, help="An internal comment: stored, never emailed.")
@click.option("--as", "agent", envvar="DESKMAIL_AGENT", required=True,
              help="The replying organization member's email (or DESKMAIL_AGENT).")
@click.option("--relay-now", is_flag=True, help="Also relay pending outgoing mail to the broker now.")
@click.option("--bootstrap", envvar="DESKMAIL_BOOTSTRAP", default=None,
              help="Kafka bootstrap servers for --relay-now; overrides kafka.bootstrap_servers.")
@_config_option
def reply(
    key: str, text: str, to: tuple[str, ...], cc: tuple[str, ...], signature: str | None, internal: bool,
    agent: str, relay_now: bool, bootstrap: str | None, config_path: str | None,
) -> None:
    """Reply on a ticket as the page does: an email to the recipients, or with
    --internal a comment that is never emailed."""
    from services.api.replies import ReplyError, ReplyRequest, post_reply
    from services.cli import _bootstrap, _load
    from services.tickets import TicketStore

    config = _load(config_path)
    servers = _bootstrap(bootstrap) or list(config.kafka.bootstrap_servers)
    if relay_now and not servers:
        raise click.UsageError("--relay-now needs --bootstrap or kafka.bootstrap_servers")
    if text == "-":
        text = sys.stdin.read()
    store = TicketStore(config.database_url)
    try:
        store.migrate()
        request = ReplyRequest(
            ticket_key=key, author_email=agent, text=text, to=to or None, cc=cc,
            signature=signature, internal=internal,
        )
        try:
            stored = post_reply(config, store, request)
        except ReplyError as exc:
            raise click.ClickException(exc.message) from None
        e = stored.entry
        if e.kind == "mail_out":
            click.echo(f"{stored.ticket_key}: reply {e.id} {e.delivery_status}: to {_people(e.to)}"
                       f"{'; cc ' + _people(e.cc) if e.cc else ''} (outbound {e.outbound_id})")
        else:
            click.echo(f"{stored.ticket_key}: internal comment {e.id} stored")
        if relay_now:
            click.echo(f"relayed {_relay(config, store, servers)} outgoing mail(s) to {config.topics['outbound']}")
    finally:
        store.close()


def _relay(config: Any, store: Any, servers: list[str]) -> int:
    from services.api.relay import OutboxRelay
    from services.common.bus import Kafka
    from services.common.errors import Transient

    producer = Kafka(config, servers).producer()
    try:
        return OutboxRelay(store, producer, config.topics["outbound"]).relay_pending()
    except Transient as exc:
        raise click.ClickException(f"the reply is stored, but relaying failed: {exc}") from None
    finally:
        producer.close()


def _person(email: str, name: str | None) -> str:
    return f"{name} <{email}>" if name else email


def _people(people: tuple[Recipient, ...]) -> str:
    return ", ".join(_person(p.email, p.name) for p in people)


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _heading(e: ThreadEntry) -> str:
    who = _person(e.author_email, e.author_name)
    if e.kind == "mail_in":
        return f"mail from {who}"
    if e.kind == "mail_out":
        return f"reply by mail from {who}"
    return f"{'internal comment' if e.internal else 'comment'} by {who}"


def _as_text(t: TicketDetail) -> str:
    lines = [
        f"{t.key}  {t.summary}",
        f"queue {t.queue} · type {t.type or '-'} · components {', '.join(t.components) or '-'} · status {t.status}",
        f"from {_person(t.author_email, t.author_name)} · created {_when(t.created_at)}",
        "participants: " + (", ".join(
            f"{p.email} ({p.role}{'' if p.member else ', external'})" for p in t.participants) or "none"),
        "",
        f"--- mail from {_person(t.author_email, t.author_name)} · {_when(t.created_at)}",
        t.description.rstrip("\n"),
    ]
    opening = [a.filename for a in t.attachments if a.comment_id is None]
    if opening:
        lines.append(f"attachments: {', '.join(opening)}")
    for e in t.thread:
        lines += ["", f"--- {_heading(e)} · {_when(e.created_at)}"]
        if e.kind == "mail_out":
            lines.append(f"to: {_people(e.to)}" + (f"; cc: {_people(e.cc)}" if e.cc else ""))
            status = e.delivery_status or "-"
            lines.append(f"delivery: {status}" + (f" ({e.delivery_detail})" if e.delivery_detail else ""))
        lines.append(e.body.rstrip("\n"))
        files = [a.filename for a in t.attachments if a.comment_id == e.id]
        if files:
            lines.append(f"attachments: {', '.join(files)}")
    return "\n".join(lines) + "\n"
