"""`deskmail suspended list|show|release`: mail that made no ticket or comment.

The list holds rejections (from the tickets database) and dead letters of
incoming mail (read from the dead-letter topic when a broker is configured or
given with --bootstrap; without one the list says that it shows rejections
only). ``release`` puts one item back through the pipeline
(``services.suspended``): it returns once the broker acknowledged it, and the
ticket appears when the ticketer has applied it. Only organization admins
release (``--as``).

Everything shown may come from a customer's mail, so every value goes through
``ticket_text.clean`` before the terminal sees it; ``show --raw`` writes the
original's exact bytes to a file or pipe, and a cleaned copy to a terminal.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from services.cli.common import (
    BadValue,
    bootstrap_option,
    bootstrap_servers,
    broker_errors,
    config_option,
    fail,
    kafka_clients,
    load_config,
    open_store,
)
from services.cli.ticket_text import clean, clean_text
from services.common.config import Config


@click.group("suspended")
def group() -> None:
    """Mail that made no ticket: list it, open it, release it."""


@group.command("list")
@config_option
@bootstrap_option
@click.option("--queue", default=None, help="Only this queue.")
@click.option("--reason", default=None, help="Only this reason code, e.g. external_not_accepted, auto_reply, "
                                             "loop, dead_letter.")
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def list_suspended(config_path: str | None, bootstrap: str | None, queue: str | None, reason: str | None,
                   limit: int, as_json: bool) -> None:
    """Suspended mail, newest first: time, id, queue, sender, reason, subject."""
    from services import suspended
    from services.common.suspended import DEAD_LETTER

    cfg = load_config(config_path)
    rejections: list[suspended.Item] = []
    if reason != DEAD_LETTER:
        with open_store(cfg) as store:
            page = store.list_suspended([queue] if queue else None, reason, limit=limit)
        rejections = [suspended.from_rejection(r) for r in page.items]
    letters: list[suspended.Item] = []
    if reason in (None, DEAD_LETTER):
        if bootstrap_servers(bootstrap, cfg):
            letters = _dead_letters(cfg, bootstrap)
        else:
            click.echo("dead letters not listed: no Kafka broker (pass --bootstrap or set "
                       "kafka.bootstrap_servers)", err=True)
    items = suspended.merged(rejections, letters, queue, reason, limit)
    for item in items:
        if as_json:
            click.echo(json.dumps(item.summary(), ensure_ascii=False))
        else:
            click.echo(_line(item))
    if not as_json:
        released = sum(1 for i in items if i.released_ticket)
        click.echo(f"{len(items)} suspended" + (f" ({released} released)" if released else ""), err=True)


def _dead_letters(cfg: Config, bootstrap: str | None) -> list[Any]:
    from services import deadletters, suspended
    from services.common.blobs import blob_store

    blobs = blob_store(cfg)
    with broker_errors("cannot read the dead letters"):
        letters = deadletters.read(kafka_clients(cfg, bootstrap))
    return [item for d in letters if (item := suspended.from_dead_letter(d, cfg, blobs)) is not None]


def _line(item: Any) -> str:
    subject = clean(item.subject) or "-"
    if item.released_ticket:
        subject = f"(released as {clean(item.released_ticket)}) {subject}"
    return (f"{item.time.isoformat()[:19]}  {clean(item.id):<8} {clean(item.queue) or '-':<10} "
            f"{clean(item.sender) or '-':<30} {clean(item.reason_code):<24} {subject}")


@group.command("show")
@click.argument("item_id", metavar="ID")
@config_option
@bootstrap_option
@click.option("--raw", is_flag=True, help="The original mail itself (its exact bytes, unless to a terminal).")
def show(item_id: str, config_path: str | None, bootstrap: str | None, raw: bool) -> None:
    """One suspended mail: what is known of it and its headers, or the original with --raw."""
    from services import deadletters, suspended
    from services.common.blobs import blob_store

    cfg = load_config(config_path)
    blobs = blob_store(cfg)
    try:
        parsed = suspended.parse_id(item_id, cfg)
    except suspended.SuspendedError as exc:
        fail(clean(str(exc)))
    original: bytes | None = None
    with broker_errors("cannot read the dead letter"):
        try:
            if isinstance(parsed, suspended.DeadLetterId):
                if not bootstrap_servers(bootstrap, cfg):
                    raise BadValue("a dead letter is read from the broker: pass --bootstrap or set "
                                   "kafka.bootstrap_servers")
                letter = deadletters.read_one(kafka_clients(cfg, bootstrap), parsed.partition, parsed.offset)
                item = suspended.from_dead_letter(letter, cfg, blobs) if letter is not None else None
                if letter is None or item is None:
                    fail(f"no suspended mail {parsed}")
                lines = _about(item, [("error class", letter.error_class), ("stage", letter.stage)])
                if raw or item.has_original:
                    original = _or_none(lambda: suspended.dead_letter_original(letter, cfg, blobs), raw)
            else:
                with open_store(cfg) as store:
                    row = store.get_suspended(parsed)
                if row is None:
                    fail(f"no suspended mail {parsed}")
                item = suspended.from_rejection(row)
                lines = _about(item, [("mailbox", row.mailbox), ("message-id", row.message_id),
                                      ("class", row.classification)])
                original = _or_none(lambda: suspended.original(row, blobs), raw)
        except suspended.SuspendedError as exc:
            fail(clean(str(exc)))
    if raw:
        assert original is not None
        if sys.stdout.isatty():
            click.echo(clean_text(original.decode("utf-8", "replace")), nl=False)
        else:
            sys.stdout.buffer.write(original)
            sys.stdout.buffer.flush()
        return
    click.echo("\n".join(lines))
    if original is not None:
        click.echo("")
        for name, value in suspended.header_summary(original):
            click.echo(f"{name}: {clean(value)}")


def _or_none(read: Any, needed: bool) -> bytes | None:
    """The original, or None when it is only shown in passing and cannot be read."""
    from services import suspended

    try:
        return bytes(read())
    except suspended.NoOriginal:
        if needed:
            raise
        return None


def _about(item: Any, extra: list[tuple[str, str | None]]) -> list[str]:
    if item.released_ticket:
        state = (f"released as {clean(item.released_ticket)} by {clean(item.released_by) or '-'}"
                 + (f" at {item.released_at:%Y-%m-%d %H:%M UTC}" if item.released_at else ""))
    else:
        state = "suspended"
    rows: list[tuple[str, str | None]] = [
        ("id", item.id), ("time", item.time.isoformat()), ("queue", item.queue), ("from", item.sender),
        ("subject", item.subject), ("reason", item.reason), ("state", state), *extra,
        ("original", "kept" if item.has_original else "not kept"),
    ]
    return [f"{name + ':':<12} {clean(value) or '-'}" for name, value in rows]


@group.command("release")
@click.argument("item_id", metavar="ID")
@click.option("--as", "admin", envvar="DESKMAIL_AGENT", required=True,
              help="The releasing admin's email (one of organization.admins; or DESKMAIL_AGENT).")
@config_option
@bootstrap_option
def release(item_id: str, admin: str, config_path: str | None, bootstrap: str | None) -> None:
    """Turn suspended mail into a ticket or comment through the normal pipeline (once)."""
    from services import deadletters, suspended
    from services.common import permissions
    from services.common.blobs import blob_store

    cfg = load_config(config_path)
    member = cfg.member(admin)
    if member is None or not permissions.is_admin(cfg, member):
        raise BadValue(f"{clean(admin)} is not an admin: only organization.admins release suspended mail")
    if not bootstrap_servers(bootstrap, cfg):
        raise BadValue("no Kafka broker: pass --bootstrap HOST:PORT or set kafka.bootstrap_servers")
    with open_store(cfg) as store, broker_errors("nothing was released"):
        kafka = kafka_clients(cfg, bootstrap)
        producer = kafka.producer()
        try:
            releaser = suspended.Releaser(cfg, store, blob_store(cfg), producer,
                                          lambda p, o: deadletters.read_one(kafka, p, o), stage="cli")
            try:
                done = releaser.release(item_id, member.email)
            except suspended.SuspendedError as exc:
                fail(clean(str(exc)))
        finally:
            producer.close()
    click.echo(clean(done.detail))
