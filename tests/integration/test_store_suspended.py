"""Suspended mail in the tickets store, on SQLite and PostgreSQL: rejections keep
their original's reference and reason code, the list pages and filters, a
release marks its rejection once, and retention deletes old rows and then
the raw mail nothing refers to."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from alembic import command as alembic_command
from prometheus_client import REGISTRY
from sqlalchemy import insert, select

from services.common.blobs import FolderBlobStore
from services.common.suspended import release_command_id, released_reason
from services.ticketer.runner import SuspendedRetention
from services.tickets import Applied, BadCursor, TicketStore
from services.tickets.migrations import alembic_config
from services.tickets.tables import rejections
from tests.harness.records import T0, command

pytestmark = pytest.mark.integration

STRANGER = {"email": "mallory@stranger.test", "name": "Mallory", "member": False}


@pytest.fixture
def store(db_url: str) -> Iterator[TicketStore]:
    with TicketStore(db_url) as s:
        s.migrate()
        yield s


def reject(n: int, reason: str = "external_not_accepted: mallory is not a member", **overrides: Any) -> dict[str, Any]:
    return command(n, **{"action": "reject", "author": STRANGER, "reason": reason, "raw_ref": f"sha256:{n:064x}",
                         **overrides})


def release(n: int, by: str = "root@example.com", **overrides: Any) -> dict[str, Any]:
    """The command the router makes of a release of ``reject(n)``: same mail, new id."""
    return command(n, **{"id": release_command_id(f"cmd-{n}"), "author": STRANGER, "reason": released_reason(by),
                         **overrides})


def test_a_rejection_keeps_its_original_and_reason_code(store: TicketStore) -> None:
    assert store.apply(reject(1)) == Applied("rejected", None, None)
    [item] = store.list_suspended().items
    assert (item.command_id, item.queue, item.author_email, item.reason_code, item.raw_ref) == (
        "cmd-1", "SUPPORT", "mallory@stranger.test", "external_not_accepted", f"sha256:{1:064x}")
    assert (item.released_at, item.released_by, item.released_ticket) == (None, None, None)
    assert store.get_suspended(item.id) == item and store.get_suspended(item.id + 1) is None
    # An outsider's reply that finds no thread is suspended mail too, original and all.
    store.apply(command(2, action="comment", classification="reply", author=STRANGER, reply_only=True,
                        in_reply_to="unknown@example.com", reason="external_not_accepted: reply only",
                        raw_ref="sha256:" + "2" * 64))
    assert [i.raw_ref for i in store.list_suspended().items] == ["sha256:" + "2" * 64, f"sha256:{1:064x}"]


def test_the_list_is_newest_first_filtered_and_paged_by_keyset(store: TicketStore) -> None:
    for n in range(1, 8):
        store.apply(reject(n, reason="auto_reply: out of office" if n % 3 == 0 else "loop: own address",
                           queue="SALES" if n == 7 else "SUPPORT", mailbox="sales@example.com" if n == 7 else
                           "support@example.com"))
    first = store.list_suspended(["SUPPORT"], limit=4)
    assert [i.command_id for i in first.items] == ["cmd-6", "cmd-5", "cmd-4", "cmd-3"] and first.next_cursor
    rest = store.list_suspended(["SUPPORT"], limit=4, cursor=first.next_cursor)
    assert [i.command_id for i in rest.items] == ["cmd-2", "cmd-1"] and rest.next_cursor is None
    assert [i.command_id for i in store.list_suspended(["SUPPORT"], "auto_reply").items] == ["cmd-6", "cmd-3"]
    assert [i.command_id for i in store.list_suspended(["SALES", "SUPPORT"], limit=2).items] == ["cmd-7", "cmd-6"]
    assert store.list_suspended([]).items == ()
    assert store.suspended_counts() == {("SUPPORT", "loop"): 4, ("SUPPORT", "auto_reply"): 2, ("SALES", "loop"): 1}
    assert store.suspended_counts("SALES") == {("SALES", "loop"): 1}
    with pytest.raises(BadCursor):
        store.list_suspended(cursor="1.2.3")


def test_a_release_marks_its_rejection_once_and_makes_one_ticket(store: TicketStore) -> None:
    store.apply(reject(1))
    assert store.apply(release(1)) == Applied("created", "SUPPORT-1", None)
    [item] = store.list_suspended().items
    assert (item.released_by, item.released_ticket) == ("root@example.com", "SUPPORT-1")
    assert item.released_at is not None and item.released_at.tzinfo == timezone.utc
    # A second release (an admin's second click, a replayed record) changes nothing.
    assert store.apply(release(1, by="other@example.com")) == Applied("duplicate", "SUPPORT-1", None)
    assert store.list_suspended().items == (item,)
    assert store.count_tickets() == 1
    assert store.suspended_counts() == {}  # a released mail waits no longer
    assert store.mark_released("cmd-1", "SUPPORT-9", "x@example.com") is False


def test_a_release_of_mail_known_meanwhile_marks_the_ticket_it_is(store: TicketStore) -> None:
    store.apply(reject(1))
    store.apply(command(5, message_id="msg-1@customer.org"))  # the same mail came in again and was accepted
    assert store.apply(release(1)) == Applied("duplicate", "SUPPORT-1", None)
    assert store.list_suspended().items[0].released_ticket == "SUPPORT-1"


def test_a_released_reply_becomes_a_comment_on_its_thread(store: TicketStore) -> None:
    store.apply(command(1))
    store.apply(reject(2, classification="reply", in_reply_to="msg-1@customer.org"))
    applied = store.apply(release(2, action="comment", classification="reply", in_reply_to="msg-1@customer.org"))
    assert (applied.outcome, applied.ticket_key) == ("commented", "SUPPORT-1")
    assert store.list_suspended().items[0].released_ticket == "SUPPORT-1"


def test_a_released_auto_reply_on_no_known_thread_opens_a_ticket(store: TicketStore) -> None:
    auto = {"classification": "auto_reply", "action": "comment", "in_reply_to": "gone@example.com"}
    assert store.apply(command(1, author=STRANGER, raw_ref="sha256:" + "1" * 64, **auto)).outcome == "rejected"
    [item] = store.list_suspended().items
    assert item.reason_code == "auto_reply" and item.raw_ref is not None
    assert store.apply(release(1, **auto)) == Applied("created", "SUPPORT-1", None)
    assert store.list_suspended().items[0].released_ticket == "SUPPORT-1"


def test_migration_fills_the_reason_code_of_rejections_recorded_before(store: TicketStore) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    with store.engine.begin() as conn:
        alembic_command.downgrade(alembic_config(url, conn), "0006")
    old = {"mailbox": "support@example.com", "queue": "SUPPORT", "classification": "new", "author_email": "a@b.test",
           "subject": "s", "message_id": "m", "received_at": T0, "recorded_at": T0}
    with store.engine.begin() as conn:
        for n, reason in enumerate(["no_queue_access: bob has no access", "loop", None, " : odd"]):
            conn.execute(insert(rejections).values(
                command_id=f"old-{n}", reason=reason, message_id=f"m{n}",
                **{k: v for k, v in old.items() if k != "message_id"}))
    store.migrate()
    with store.engine.connect() as conn:
        codes = dict(conn.execute(select(rejections.c.command_id, rejections.c.reason_code)).all())
    assert codes == {"old-0": "no_queue_access", "old-1": "loop", "old-2": "other", "old-3": "other"}
    assert all(i.raw_ref is None for i in store.list_suspended().items)  # nothing to release


@pytest.mark.parametrize("backend", ["folder", "s3"])
def test_retention_deletes_old_rows_then_the_blobs_nothing_refers_to(
        store: TicketStore, tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    import threading

    from services.common.blobs_s3 import S3BlobStore

    if backend == "s3":
        s3 = request.getfixturevalue("s3")
        bucket = s3.bucket()
        blobs: Any = S3BlobStore(s3.settings(bucket))
    else:
        blobs = FolderBlobStore(tmp_path / "blobs")
    old_raw, shared_raw, new_raw = b"old mail\r\n", b"mail rejected twice\r\n", b"new mail\r\n"
    old_ref, shared_ref, new_ref = blobs.put(old_raw), blobs.put(shared_raw), blobs.put(new_raw)
    now = datetime(2026, 12, 3, tzinfo=timezone.utc)
    store.apply(reject(1, raw_ref=old_ref, received_at=now - timedelta(days=40)))
    store.apply(reject(2, raw_ref=shared_ref, received_at=now - timedelta(days=35)))
    store.apply(reject(3, raw_ref=shared_ref, received_at=now - timedelta(days=1)))  # the same bytes, later
    store.apply(reject(4, raw_ref=new_ref, received_at=now - timedelta(days=29)))
    expired = REGISTRY.get_sample_value("deskmail_suspended_expired_total") or 0

    retention = SuspendedRetention(store, blobs, 30, threading.Event())
    assert retention.run_once(now=now) == 2
    assert [i.command_id for i in store.list_suspended().items] == ["cmd-3", "cmd-4"]
    assert not blobs.delete(old_ref)  # gone already
    assert blobs.get(shared_ref) == shared_raw and blobs.get(new_ref) == new_raw
    assert REGISTRY.get_sample_value("deskmail_suspended_expired_total") == expired + 2
    assert retention.run_once(now=now) == 0
    if backend == "s3":
        assert len(s3.keys(bucket)) == 2


def test_retention_zero_keeps_suspended_mail_forever(store: TicketStore, tmp_path: Path) -> None:
    import threading

    retention = SuspendedRetention(store, FolderBlobStore(tmp_path), 0, threading.Event())
    retention.start()
    assert not retention.thread.is_alive()
